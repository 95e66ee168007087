"""`agenttest package download|url NAME`: fetch a DeploymentPackage's zip.

Reads the DeploymentPackage with the current kubeconfig, then S3 with boto3's
default credentials (the user's own, not the operator's).

A DeploymentPackage is only a pointer, and anyone allowed to create one can
point it anywhere. So before anything is fetched, the package is checked
against what the operator recorded where only the operator writes: the status
of the AgentTest it came from (``agenttests/status``, which no tester role
grants; see manifests/tester-role.yaml). That status names the package
(``packageRef``) with the S3 URI and sha256 the operator uploaded. The test,
not the package's own status, is the record: it is what a user looked at to
see that the agent passed, and a package created by someone else (or deleted
and created again) has no such test naming it. The package must also be owned
by that test (the owner reference's uid) and come from its current attempt.
Then the bytes must hash to the package's sha256 (its spec is immutable, so
that is the one the operator wrote).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path
from typing import Any

from agenttest import clientconfig
from agenttest.models import AGENTTEST_PLURAL, GROUP, PACKAGE_PLURAL, VERSION

MAX_URL_SECONDS = 7 * 24 * 3600  # what S3 allows for a SigV4 presigned URL
_DURATION = re.compile(r"^(\d+)([smhd]?)$")


def parse_duration(text: str) -> int:
    """Seconds from '900', '15m', '12h' or '7d'; at most 7 days."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 900, 15m, 12h or 7d")
    seconds = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if not 1 <= seconds <= MAX_URL_SECONDS:
        raise argparse.ArgumentTypeError(f"{text} is outside 1s..7d (S3's presigning limit)")
    return seconds


class Unvouched(Exception):
    """The package is not one the operator recorded; the message says how it differs."""


def check_recorded(package: dict[str, Any], test: dict[str, Any] | None) -> None:
    """Raise Unvouched unless `test` (the AgentTest it names) records exactly this package."""
    name = package["metadata"]["name"]
    spec = package["spec"]
    ref = spec.get("agentTestRef") or {}
    owners = [
        owner
        for owner in package["metadata"].get("ownerReferences") or []
        if owner.get("kind") == "AgentTest" and owner.get("controller")
    ]
    if [owner.get("uid") for owner in owners] != [ref.get("uid")]:
        raise Unvouched(f"{name} is not owned by the AgentTest it names ({ref.get('name')})")
    if test is None or test["metadata"].get("uid") != ref.get("uid"):
        raise Unvouched(
            f"the AgentTest {ref.get('name')} that {name} names no longer exists: "
            "nothing the operator recorded vouches for it"
        )
    status = test.get("status") or {}
    # A matrix test records one package per passing model, the first also as packageRef.
    refs = [status.get("packageRef") or {}, *(status.get("packages") or [])]
    record = next((r for r in refs if r.get("name") == name), None)
    if record is None:
        recorded = ", ".join(sorted({r["name"] for r in refs if r.get("name")})) or "none"
        raise Unvouched(f"the AgentTest {ref.get('name')} records package {recorded}, not {name}")
    if ref.get("attempt") != status.get("attempt"):
        raise Unvouched(
            f"{name} comes from attempt {ref.get('attempt')}, the test is at attempt "
            f"{status.get('attempt')}"
        )
    # What the operator uploaded, as it recorded it in the test's status (only
    # the operator may write that); the bytes are then checked against sha256.
    uploaded = (record.get("s3Uri"), record.get("sha256"))
    if uploaded != (spec.get("s3Uri"), spec.get("sha256")):
        raise Unvouched(
            f"{name} points at {spec.get('s3Uri')} (sha256 {spec.get('sha256')}), but the "
            f"AgentTest records {uploaded[0] or 'no upload'} (sha256 {uploaded[1]})"
        )


def custom_objects(namespace: str | None) -> tuple[Any, str]:
    """The custom objects API as the kubeconfig's user, and the namespace (default: the
    context's)."""
    from kubernetes import client

    api, namespace = clientconfig.connect(namespace)
    return client.CustomObjectsApi(api), namespace


def _package(name: str, namespace: str | None) -> dict[str, Any]:
    api, namespace = custom_objects(namespace)
    found: Any = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PACKAGE_PLURAL, name)
    return dict(found)


def _vouched_package(name: str, namespace: str | None) -> dict[str, Any]:
    """The package, once its AgentTest's status vouches for it (else Unvouched)."""
    from kubernetes.client.exceptions import ApiException

    api, namespace = custom_objects(namespace)
    package: Any = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PACKAGE_PLURAL, name)
    test_name = (package.get("spec", {}).get("agentTestRef") or {}).get("name", "")
    try:
        test: Any = api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, AGENTTEST_PLURAL, test_name
        )
    except ApiException as error:
        if error.status != 404:
            raise
        test = None
    check_recorded(dict(package), None if test is None else dict(test))
    return dict(package)


def download(name: str, namespace: str | None, output: Path | None) -> int:
    import boto3

    try:
        spec = _vouched_package(name, namespace)["spec"]
    except Unvouched as error:
        print(f"error: {error}; not downloaded", file=sys.stderr)
        return 1
    data = boto3.client("s3").get_object(Bucket=spec["bucket"], Key=spec["key"])["Body"].read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec["sha256"]:
        print(
            f"error: {spec['s3Uri']} has sha256 {digest}, the package records "
            f"{spec['sha256']}; not written",
            file=sys.stderr,
        )
        return 1
    target = output or Path(f"{name}.zip")
    target.write_bytes(data)
    print(f"{target} ({len(data)} bytes, sha256 {digest} verified)")
    return 0


def presigned_url(name: str, namespace: str | None, expires: int) -> int:
    import boto3
    from botocore.config import Config

    try:
        spec = _vouched_package(name, namespace)["spec"]
    except Unvouched as error:
        print(f"error: {error}; no URL made", file=sys.stderr)
        return 1
    # SigV4: its URLs carry a relative expiry, which S3 caps at 7 days.
    s3 = boto3.client("s3", config=Config(signature_version="s3v4"))
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": spec["bucket"], "Key": spec["key"]}, ExpiresIn=expires
    )
    print(url)
    return 0


def add_parser(sub: Any) -> None:
    package = sub.add_parser("package", help="download a DeploymentPackage or print its URL")
    verbs = package.add_subparsers(dest="verb", required=True)
    get = verbs.add_parser("download", help="write the zip locally and verify its sha256")
    get.add_argument("name")
    get.add_argument("-n", "--namespace")
    get.add_argument("-o", "--output", type=Path)
    url = verbs.add_parser("url", help="print a presigned URL")
    url.add_argument("name")
    url.add_argument("-n", "--namespace")
    url.add_argument(
        "--expires",
        type=parse_duration,
        default=3600,
        help="how long the URL works: 900, 15m, 12h, 7d (at most 7d)",
    )


def run(args: argparse.Namespace) -> int:
    if args.verb == "download":
        return download(args.name, args.namespace, args.output)
    return presigned_url(args.name, args.namespace, args.expires)
