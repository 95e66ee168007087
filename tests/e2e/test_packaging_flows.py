"""Passing tests become DeploymentPackages backed by an object in S3 (moto over HTTP)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agenttest_dev.fargate import AwsEnvironment
from agenttest_dev.modelserver import ScriptedModelServer

from s3policy import S3PolicyProxy
from support import SIMPLE_AGENT, Kube, Operator, agent_test

StartOperator = Callable[..., Operator]


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsEnvironment]:
    with AwsEnvironment() as environment:
        yield environment


@pytest.fixture
def start_publishing_operator(
    start_operator: StartOperator, aws: AwsEnvironment
) -> Callable[..., Operator]:
    def start(**settings: Any) -> Operator:
        return start_operator(extra_env=aws.env(), package_bucket=aws.bucket, **settings)

    return start


def packages(kube: Kube) -> list[dict[str, Any]]:
    return kube.get_all("deploymentpackages")


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def wait_packaged(kube: Kube, name: str) -> dict[str, Any]:
    def packaged() -> dict[str, Any] | None:
        status = kube.get(name).get("status", {})
        return status if condition(status, "Packaged") else None

    result: dict[str, Any] = kube.wait_for(f"{name} to be packaged", packaged)
    return result


def test_passing_test_yields_a_package_in_s3(
    kube: Kube,
    start_publishing_operator: Callable[..., Operator],
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
    tmp_path: Path,
) -> None:
    start_publishing_operator()
    kube.apply(agent_test("ships", SIMPLE_AGENT, model_server.url))
    status = wait_packaged(kube, "ships")
    assert status["phase"] == "Succeeded"
    packaged = condition(status, "Packaged")
    assert packaged is not None and packaged["status"] == "True", packaged
    [package] = packages(kube)
    assert status["packageRef"]["name"] == package["metadata"]["name"] == "ships-a1"

    spec = package["spec"]
    owner = package["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("AgentTest", "ships", True)
    assert spec["agentTestRef"]["attempt"] == 1
    ready = condition(package.get("status", {}), "Ready")
    assert ready is not None and ready["status"] == "True"

    body = aws.client("s3").get_object(Bucket=spec["bucket"], Key=spec["key"])["Body"].read()
    assert spec["s3Uri"] == f"s3://{spec['bucket']}/{spec['key']}"
    assert hashlib.sha256(body).hexdigest() == spec["sha256"]
    assert len(body) == spec["sizeBytes"]
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert sorted(names) == sorted(spec["files"])
    assert {"agent.py", "app.py", "Dockerfile", "requirements.txt", "manifest.json"} <= set(names)
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(body)).read("manifest.json"))
    assert json.dumps(manifest).count("ships") >= 1

    kube.run("wait", "--for=condition=Ready", "deploymentpackage/ships-a1", "--timeout=5s")

    # What a user does next: fetch it, verified, or hand out a URL.
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **aws.env(), "KUBECONFIG": str(kube.cluster.kubeconfig)}
        return subprocess.run(
            [sys.executable, "-m", "agenttest.cli", "package", *args, "-n", kube.namespace],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    target = tmp_path / "ships.zip"
    fetched = cli("download", "ships-a1", "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == spec["sha256"]
    assert "verified" in fetched.stdout
    url = cli("url", "ships-a1", "--expires", "2h")
    assert url.returncode == 0 and spec["key"] in url.stdout and "X-Amz-Expires=7200" in url.stdout
    plugin = subprocess.run(
        [
            str(Path(sys.executable).parent / "kubectl-agenttest"),
            "url",
            "ships-a1",
            "-n",
            kube.namespace,
        ],
        env={**os.environ, **aws.env(), "KUBECONFIG": str(kube.cluster.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert plugin.returncode == 0 and spec["key"] in plugin.stdout, plugin.stderr
    too_long = cli("url", "ships-a1", "--expires", "8d")
    assert too_long.returncode != 0 and "7d" in too_long.stderr


def test_failing_or_disabled_tests_yield_none(
    kube: Kube,
    start_publishing_operator: Callable[..., Operator],
    model_server: ScriptedModelServer,
) -> None:
    start_publishing_operator()
    failing = [{"name": "no", "query": "Say hello", "expect": {"contains": ["goodbye"]}}]
    kube.apply(
        agent_test("fails", SIMPLE_AGENT, model_server.url, cases=failing),
        agent_test("quiet", SIMPLE_AGENT, model_server.url, package={"enabled": False}),
    )
    assert kube.wait_for_phase("fails", "Failed", "Succeeded")["status"]["phase"] == "Failed"
    quiet = kube.wait_for_phase("quiet", "Succeeded", "Failed")["status"]
    assert condition(quiet, "Packaged") is None
    assert "packageRef" not in quiet
    assert packages(kube) == []


def test_oversize_package_gets_a_clear_condition_and_no_object(
    kube: Kube,
    start_publishing_operator: Callable[..., Operator],
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
) -> None:
    start_publishing_operator(package_max_bytes=1000)
    kube.apply(agent_test("huge", SIMPLE_AGENT, model_server.url))
    status = wait_packaged(kube, "huge")
    packaged = condition(status, "Packaged")
    assert packaged is not None
    assert (packaged["status"], packaged["reason"]) == ("False", "PackageTooLarge")
    assert "over the 1000 byte limit" in packaged["message"]
    assert packages(kube) == []
    listed = aws.client("s3").list_objects_v2(
        Bucket=aws.bucket, Prefix=f"packages/{kube.namespace}"
    )
    assert listed.get("KeyCount", 0) == 0


def test_second_attempt_second_package_and_deletion_collects_both(
    kube: Kube,
    start_publishing_operator: Callable[..., Operator],
    model_server: ScriptedModelServer,
) -> None:
    start_publishing_operator()
    kube.apply(agent_test("twice", SIMPLE_AGENT, model_server.url))
    wait_packaged(kube, "twice")
    kube.run("annotate", "agenttest", "twice", "agenttest.dev/retry=again")
    kube.wait_for("attempt 2", lambda: kube.get("twice")["status"].get("attempt") == 2)
    status = wait_packaged(kube, "twice")
    assert status["packageRef"]["name"] == "twice-a2"
    assert sorted(p["metadata"]["name"] for p in packages(kube)) == ["twice-a1", "twice-a2"]

    kube.run("delete", "agenttest", "twice", "--timeout=60s")
    # kube-controller-manager's garbage collector follows the owner references.
    kube.wait_for("the packages to be collected", lambda: packages(kube) == [])


@pytest.fixture
def policed(aws: AwsEnvironment) -> Iterator[S3PolicyProxy]:
    """S3 answering as it answers the operator's role (infrastructure/): policed by prefix."""
    with S3PolicyProxy(aws.endpoint, aws.bucket, prefix="packages/") as proxy:
        yield proxy


@pytest.fixture
def start_policed_operator(
    start_operator: StartOperator, aws: AwsEnvironment, policed: S3PolicyProxy
) -> Callable[..., Operator]:
    def start(**settings: Any) -> Operator:
        # S3 alone goes through the policy; every other service stays on moto.
        env = {**aws.env(), "AWS_ENDPOINT_URL_S3": policed.endpoint}
        return start_operator(extra_env=env, package_bucket=aws.bucket, **settings)

    return start


def test_a_missing_key_answered_403_counts_as_absent(
    kube: Kube,
    start_policed_operator: Callable[..., Operator],
    policed: S3PolicyProxy,
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
) -> None:
    start_policed_operator()
    kube.apply(agent_test("listless", SIMPLE_AGENT, model_server.url))
    status = wait_packaged(kube, "listless")
    packaged = condition(status, "Packaged")
    assert packaged is not None and packaged["status"] == "True", packaged
    [package] = packages(kube)
    key = package["spec"]["key"]
    assert ("HEAD", key, 403) in policed.answered
    head = aws.client("s3").head_object(Bucket=aws.bucket, Key=key)
    assert head["Metadata"]["sha256"] == package["spec"]["sha256"]


def test_an_upload_the_policy_refuses_ends_packaged_false_once(
    kube: Kube,
    start_policed_operator: Callable[..., Operator],
    policed: S3PolicyProxy,
    model_server: ScriptedModelServer,
) -> None:
    start_policed_operator(package_prefix="elsewhere/")
    kube.apply(agent_test("refused", SIMPLE_AGENT, model_server.url))
    status = wait_packaged(kube, "refused")
    assert status["phase"] == "Succeeded"
    packaged = condition(status, "Packaged")
    assert packaged is not None
    assert (packaged["status"], packaged["reason"]) == ("False", "UploadRefused"), packaged
    assert "AccessDenied" in packaged["message"] and "elsewhere/" in packaged["message"]
    # Refused for good: tried once, not again at every step.
    assert policed.count("PUT") == 1
    assert packages(kube) == []


def test_a_throttled_upload_is_retried_until_it_lands(
    kube: Kube,
    start_policed_operator: Callable[..., Operator],
    policed: S3PolicyProxy,
    model_server: ScriptedModelServer,
) -> None:
    # More SlowDowns than one boto3 call retries by itself: the publisher retries too.
    policed.fail_next("PUT", 7, 503, "SlowDown")
    start_policed_operator()
    kube.apply(agent_test("throttled", SIMPLE_AGENT, model_server.url))
    status = wait_packaged(kube, "throttled")
    packaged = condition(status, "Packaged")
    assert packaged is not None and packaged["status"] == "True", packaged
    assert policed.count("PUT", 503) == 7
    assert policed.count("PUT", 200) == 1
    assert [p["metadata"]["name"] for p in packages(kube)] == ["throttled-a1"]


def test_a_name_cut_at_a_dash_still_labels_its_package(
    kube: Kube,
    start_publishing_operator: Callable[..., Operator],
    model_server: ScriptedModelServer,
) -> None:
    # Label values hold 63 characters; this name's 63rd is "-", which no label may end in.
    name = "n" * 62 + "-cut-here"
    start_publishing_operator()
    kube.apply(agent_test(name, SIMPLE_AGENT, model_server.url))
    status = wait_packaged(kube, name)
    packaged = condition(status, "Packaged")
    assert packaged is not None and packaged["status"] == "True", packaged
    [package] = packages(kube)
    assert package["metadata"]["name"] == f"{name}-a1"
    assert package["metadata"]["labels"]["agenttest.dev/test"] == "n" * 62


def test_a_package_that_cannot_render_ends_packaged_false(
    kube: Kube,
    start_operator: StartOperator,
    aws: AwsEnvironment,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(Path(__file__).resolve().parents[2] / "templates" / "package", templates)
    (templates / "NOTES.md.j2").write_text("Deployed by {{ no_such_variable }}\n")
    env = {**aws.env(), "AGENTTEST_TEMPLATES_DIR": str(templates)}
    start_operator(extra_env=env, package_bucket=aws.bucket)
    kube.apply(agent_test("unrenderable", SIMPLE_AGENT, model_server.url))
    status = wait_packaged(kube, "unrenderable")
    packaged = condition(status, "Packaged")
    assert packaged is not None
    assert (packaged["status"], packaged["reason"]) == ("False", "RenderFailed"), packaged
    assert "no_such_variable" in packaged["message"]
    assert packages(kube) == []
