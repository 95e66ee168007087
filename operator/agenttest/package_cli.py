"""`agenttest package download|url NAME`: fetch a DeploymentPackage's zip.

Reads the DeploymentPackage with the current kubeconfig, then S3 with boto3's
default credentials (the user's own, not the operator's).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path
from typing import Any

from agenttest.models import GROUP, PACKAGE_PLURAL, VERSION

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


def _package(name: str, namespace: str | None) -> dict[str, Any]:
    from kubernetes import client, config

    config.load_kube_config()  # type: ignore[no-untyped-call]
    if namespace is None:
        _, context = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        namespace = context.get("context", {}).get("namespace") or "default"
    found: Any = client.CustomObjectsApi().get_namespaced_custom_object(
        GROUP, VERSION, namespace, PACKAGE_PLURAL, name
    )
    return dict(found)


def download(name: str, namespace: str | None, output: Path | None) -> int:
    import boto3

    spec = _package(name, namespace)["spec"]
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

    spec = _package(name, namespace)["spec"]
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
