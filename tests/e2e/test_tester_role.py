"""The tester role of manifests/tester-role.yaml, and packages that only the operator vouches for.

A tester bound to ClusterRole agenttest-tester (and nothing else) runs the
whole flow from kubectl: submits a test, watches it pass, reads and downloads
its package, deletes it. What decides the verdict stays out of reach: the
test's status, Secrets, the package's spec. And `agenttest package download`
fetches only a package the operator recorded in the test's status: a
DeploymentPackage made by anyone else, pointing at other bytes with a
matching sha256, is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agenttest_dev import devcluster
from agenttest_dev.fargate import AwsEnvironment
from agenttest_dev.modelserver import ScriptedModelServer

from support import MANIFESTS, SIMPLE_AGENT, Kube, Operator, agent_test, service_account_kubeconfig

StartOperator = Callable[..., Operator]
TESTER = "tester"


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsEnvironment]:
    with AwsEnvironment() as environment:
        yield environment


@pytest.fixture
def tester(cluster: devcluster.Cluster, kube: Kube, tmp_path: Path) -> Path:
    """A kubeconfig of someone holding only the tester role, in the test's namespace."""
    cluster.kubectl("apply", "-f", str(MANIFESTS / "tester-role.yaml"))
    kube.run("create", "serviceaccount", TESTER)
    kube.run(
        "create",
        "rolebinding",
        TESTER,
        "--clusterrole=agenttest-tester",
        f"--serviceaccount={kube.namespace}:{TESTER}",
    )
    return service_account_kubeconfig(
        cluster, tmp_path / "tester.kubeconfig", kube.namespace, TESTER, kube.namespace
    )


def as_user(
    kubeconfig: Path, cluster: devcluster.Cluster, *args: str, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.binaries.kubectl), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        input=input_text,
        check=False,
        timeout=60,
    )


def package_cli(
    kubeconfig: Path, aws: AwsEnvironment, namespace: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **aws.env(), "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [sys.executable, "-m", "agenttest.cli", "package", *args, "-n", namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def packaged(kube: Kube, name: str) -> dict[str, Any] | None:
    status: dict[str, Any] = kube.get(name).get("status", {})
    done = any(c["type"] == "Packaged" for c in status.get("conditions", []))
    return status if done else None


def test_a_tester_runs_the_whole_flow_and_cannot_touch_the_verdict(
    cluster: devcluster.Cluster,
    kube: Kube,
    tester: Path,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
    tmp_path: Path,
) -> None:
    start_operator(extra_env=aws.env(), package_bucket=aws.bucket)
    manifest = json.dumps(agent_test("mine", SIMPLE_AGENT, model_server.url))
    created = as_user(tester, cluster, "apply", "-f", "-", input_text=manifest)
    assert created.returncode == 0, created.stderr

    # Watches it to the end with its own rights only.
    def tester_sees_packaged() -> dict[str, Any] | None:
        got = as_user(tester, cluster, "get", "agenttest", "mine", "-o", "json")
        assert got.returncode == 0, got.stderr
        status: dict[str, Any] = json.loads(got.stdout).get("status", {})
        return (
            status if any(c["type"] == "Packaged" for c in status.get("conditions", [])) else None
        )

    status = kube.wait_for("the tester to see mine packaged", tester_sees_packaged)
    assert status["phase"] == "Succeeded", status.get("message")
    listed = as_user(tester, cluster, "get", "deploymentpackages", "-o", "name")
    assert listed.stdout.split() == ["deploymentpackage.agenttest.dev/mine-a1"], listed.stderr
    target = tmp_path / "mine.zip"
    fetched = package_cli(tester, aws, kube.namespace, "download", "mine-a1", "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
    assert "verified" in fetched.stdout

    # The verdict, the keys and the package are out of reach.
    forged = {"status": {"phase": "Succeeded", "message": "trust me"}}
    refusals = [
        as_user(
            tester,
            cluster,
            "patch",
            "agenttest",
            "mine",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(forged),
        ),
        as_user(tester, cluster, "get", "secrets"),
        as_user(
            tester,
            cluster,
            "patch",
            "deploymentpackage",
            "mine-a1",
            "--type=merge",
            "-p",
            '{"spec": {"summary": "edited"}}',
        ),
        as_user(tester, cluster, "delete", "deploymentpackage", "mine-a1"),
        as_user(tester, cluster, "logs", "-l", "agenttest.dev/test=mine"),
    ]
    for refused in refusals:
        assert refused.returncode != 0 and "forbidden" in refused.stderr, refused.args
    assert kube.get("mine")["status"]["message"] != "trust me"

    # Cancel and retry are spec and annotation patches: the tester may.
    retried = as_user(tester, cluster, "annotate", "agenttest", "mine", "agenttest.dev/retry=1")
    assert retried.returncode == 0, retried.stderr
    kube.wait_for("attempt 2", lambda: kube.get("mine")["status"].get("attempt") == 2)
    deleted = as_user(tester, cluster, "delete", "agenttest", "mine", "--timeout=60s")
    assert deleted.returncode == 0, deleted.stderr
    kube.wait_for("mine to be gone", lambda: kube.get_all() == [])


def test_download_fetches_only_the_package_the_operator_recorded(
    cluster: devcluster.Cluster,
    kube: Kube,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
    tmp_path: Path,
) -> None:
    start_operator(extra_env=aws.env(), package_bucket=aws.bucket)
    kube.apply(agent_test("real", SIMPLE_AGENT, model_server.url))
    status = kube.wait_for("real to be packaged", lambda: packaged(kube, "real"))
    assert status["phase"] == "Succeeded", status.get("message")
    real = kube.get("real-a1", "deploymentpackage")

    # Its spec cannot be changed, by anyone: not even the cluster admin.
    edited = kube.run(
        "patch",
        "deploymentpackage",
        "real-a1",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"sha256": "0" * 64}}),
        check=False,
    )
    assert edited.returncode != 0
    assert "spec is immutable" in edited.stderr, edited.stderr
    kube.run("label", "deploymentpackage", "real-a1", "reviewed=yes")  # metadata stays free

    # Someone who may create packages points one at other bytes, sha256 and all,
    # owned by the same test.
    evil = b"PK not what was tested"
    aws.client("s3").put_object(Bucket=aws.bucket, Key="evil.zip", Body=evil)
    forged = {
        "apiVersion": "agenttest.dev/v1alpha1",
        "kind": "DeploymentPackage",
        "metadata": {
            "name": "real-a1-hotfix",
            "ownerReferences": real["metadata"]["ownerReferences"],
        },
        "spec": {
            **real["spec"],
            "s3Uri": f"s3://{aws.bucket}/evil.zip",
            "key": "evil.zip",
            "sha256": hashlib.sha256(evil).hexdigest(),
            "sizeBytes": len(evil),
        },
    }
    kube.apply(forged)
    target = tmp_path / "forged.zip"
    admin = kube.cluster.kubeconfig
    refused = package_cli(
        admin, aws, kube.namespace, "download", "real-a1-hotfix", "-o", str(target)
    )
    assert refused.returncode == 1
    assert "records package real-a1, not real-a1-hotfix" in refused.stderr, refused.stderr
    assert not target.exists()
    no_url = package_cli(admin, aws, kube.namespace, "url", "real-a1-hotfix")
    assert no_url.returncode == 1 and "evil.zip" not in no_url.stdout

    # The recorded one still downloads.
    fetched = package_cli(admin, aws, kube.namespace, "download", "real-a1", "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
