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
from importlib import metadata
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
    # Only the attempt's agent.py, kept at launch; no zip.
    keys = [entry["Key"] for entry in listed.get("Contents", [])]
    assert [key.rsplit("/", 2)[-2:] for key in keys] == [["source", "agent.py"]]


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


def test_a_prefix_the_policy_refuses_ends_packaged_false_once(
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
    # The policy first refuses keeping the tested agent.py at launch: the test still
    # runs and passes, and with nothing kept there is nothing to package.
    assert (packaged["status"], packaged["reason"]) == ("False", "SourceUnavailable"), packaged
    assert "elsewhere/" in packaged["message"]
    # Refused for good: tried once, not again at every step.
    assert policed.count("PUT", 403) == 1
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
    # The agent.py kept at launch, the report's junit.xml and report.json, the package.
    assert policed.count("PUT", 200) == 4
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


def gated_agent(directory: Path, marker: str) -> str:
    """An agent that says it started, then waits for the test's go-ahead before answering.

    ``marker`` makes two versions of it differ in their bytes and nothing else.
    """
    return f"""# version: {marker}
import os, time
from strands import Agent

open(os.path.join({str(directory)!r}, "started"), "w").close()
while not os.path.exists(os.path.join({str(directory)!r}, "go")):
    time.sleep(0.05)

def agent(model):
    return Agent(model=model, system_prompt="Be brief.")
"""


def package_files(aws: AwsEnvironment, package: dict[str, Any]) -> zipfile.ZipFile:
    spec = package["spec"]
    body = aws.client("s3").get_object(Bucket=spec["bucket"], Key=spec["key"])["Body"].read()
    return zipfile.ZipFile(io.BytesIO(body))


def test_package_holds_the_source_that_ran_when_its_config_map_changes_mid_run(
    kube: Kube,
    start_publishing_operator: Callable[..., Operator],
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
    tmp_path: Path,
) -> None:
    start_publishing_operator()
    tested, edited = gated_agent(tmp_path, "tested"), gated_agent(tmp_path, "edited later")
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "agent-code"},
        "data": {"agent.py": tested},
    }
    kube.apply(config_map)
    test = agent_test("edited", "", model_server.url)
    test["spec"]["agent"]["source"] = {"configMapRef": {"name": "agent-code"}}
    kube.apply(test)
    kube.wait_for("the agent to start", lambda: (tmp_path / "started").exists())
    kube.apply({**config_map, "data": {"agent.py": edited}})
    (tmp_path / "go").touch()

    status = wait_packaged(kube, "edited")
    assert status["phase"] == "Succeeded", status.get("message")
    packaged = condition(status, "Packaged")
    assert packaged is not None and packaged["status"] == "True", packaged
    [package] = packages(kube)
    assert package_files(aws, package).read("agent.py").decode() == tested
    digest = hashlib.sha256(tested.encode()).hexdigest()
    assert status["source"]["sha256"] == digest


def from_config_map(kube: Kube, name: str, source: str, endpoint: str) -> dict[str, Any]:
    """Apply a ConfigMap holding ``source``; return an AgentTest that reads it."""
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-code"},
            "data": {"agent.py": source},
        }
    )
    test = agent_test(name, "", endpoint)
    test["spec"]["agent"]["source"] = {"configMapRef": {"name": f"{name}-code"}}
    return test


def test_a_restarted_operator_packages_the_source_that_ran(
    kube: Kube,
    start_publishing_operator: Callable[..., Operator],
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
    tmp_path: Path,
) -> None:
    tested, edited = gated_agent(tmp_path, "tested"), gated_agent(tmp_path, "edited later")
    operator = start_publishing_operator()
    kube.apply(from_config_map(kube, "restarted", tested, model_server.url))
    kube.wait_for("the agent to start", lambda: (tmp_path / "started").exists())
    # The operator dies mid-run; the source changes before another one takes over.
    operator.kill()
    from_config_map(kube, "restarted", edited, model_server.url)
    start_publishing_operator()
    (tmp_path / "go").touch()

    status = wait_packaged(kube, "restarted")
    packaged = condition(status, "Packaged")
    assert packaged is not None and packaged["status"] == "True", packaged
    [package] = packages(kube)
    assert package_files(aws, package).read("agent.py").decode() == tested
    assert status["source"]["testedSha256"] == hashlib.sha256(tested.encode()).hexdigest()


def test_a_snapshot_changed_after_the_run_is_not_packaged(
    kube: Kube,
    start_publishing_operator: Callable[..., Operator],
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
    tmp_path: Path,
) -> None:
    start_publishing_operator()
    kube.apply(agent_test("swapped", gated_agent(tmp_path, "tested"), model_server.url))
    kube.wait_for("the agent to start", lambda: (tmp_path / "started").exists())
    uid = kube.get("swapped")["metadata"]["uid"]
    key = f"packages/{kube.namespace}/swapped/{uid}/attempt-1/source/agent.py"
    aws.client("s3").put_object(Bucket=aws.bucket, Key=key, Body=b"import os  # not what ran\n")
    (tmp_path / "go").touch()

    status = wait_packaged(kube, "swapped")
    assert status["phase"] == "Succeeded"
    packaged = condition(status, "Packaged")
    assert packaged is not None
    assert (packaged["status"], packaged["reason"]) == ("False", "SourceUnavailable")
    assert "not the tested" in packaged["message"]
    assert packages(kube) == []


def tiny_wheel(directory: Path, name: str, version: str) -> Path:
    """A pure-Python wheel built by hand: installable with no index and no build step."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in [*files, f"{info}/RECORD"]))
    return path


def test_package_pins_the_versions_the_run_installed(
    kube: Kube,
    start_publishing_operator: Callable[..., Operator],
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
    tmp_path: Path,
) -> None:
    # A distribution the operator does not have: only the run can know its version.
    wheel = tiny_wheel(tmp_path, "tinypin", "4.5.6")
    test = agent_test("pinned", "import tinypin\n" + SIMPLE_AGENT, model_server.url)
    test["spec"]["agent"]["requirements"] = [f"tinypin@{wheel.as_uri()}"]
    start_publishing_operator()
    kube.apply(test)

    status = wait_packaged(kube, "pinned")
    assert status["phase"] == "Succeeded", status.get("message")
    assert "tinypin==4.5.6" in status["environment"]
    [package] = packages(kube)
    lines = package_files(aws, package).read("requirements.txt").decode().splitlines()
    assert "tinypin==4.5.6" in lines
    # The framework at the version the run imported, beside the agent's own requirement.
    assert f"strands-agents=={metadata.version('strands-agents')}" in lines
    assert f"tinypin@{wheel.as_uri()}" in lines
    assert not any(line.startswith(("agenttest-operator", "pip==")) for line in lines)


def from_s3(name: str, uri: str, endpoint: str) -> dict[str, Any]:
    test = agent_test(name, "", endpoint)
    test["spec"]["agent"]["source"] = {"s3": {"uri": uri}}
    return test


def test_s3_sources_are_read_only_where_the_operator_allows(
    kube: Kube,
    start_publishing_operator: Callable[..., Operator],
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="agent-sources")
    for key in ("team/agent.py", "private/agent.py", "other-team/agent.py"):
        s3.put_object(Bucket="agent-sources", Key=key, Body=SIMPLE_AGENT.encode())
    # One prefix for every namespace, one for this test's namespace only, and one
    # granted to another namespace, which this one must not get.
    start_publishing_operator(
        s3_source_allow=(
            "s3://agent-sources/team/,"
            f"{kube.namespace}=s3://agent-sources/other-team/,"
            "elsewhere=s3://agent-sources/private/"
        )
    )
    kube.apply(
        from_s3("allowed", "s3://agent-sources/team/agent.py", model_server.url),
        from_s3("mine", "s3://agent-sources/other-team/agent.py", model_server.url),
        from_s3("theirs", "s3://agent-sources/private/agent.py", model_server.url),
        from_s3("prefix-lookalike", "s3://agent-sources/team-b/agent.py", model_server.url),
    )
    for name in ("allowed", "mine"):
        status = wait_packaged(kube, name)
        assert status["phase"] == "Succeeded", status.get("message")
        assert status["source"]["origin"].startswith("s3://agent-sources/")
    for name in ("theirs", "prefix-lookalike"):
        status = kube.wait_for_phase(name, "Error", "Succeeded", "Failed")["status"]
        assert status["phase"] == "Error"
        assert "AGENTTEST_S3_SOURCE_ALLOW" in status["message"]
    [allowed] = [p for p in packages(kube) if p["metadata"]["name"] == "allowed-a1"]
    assert package_files(aws, allowed).read("agent.py").decode() == SIMPLE_AGENT


MATRIX_SCRIPT = [
    {"match": r"capital of france", "models": ["good", "also-good"], "reply": "Paris."},
    {"match": r"capital of france", "reply": "Lyon, I think."},
]


def test_each_passing_model_of_a_matrix_gets_its_own_package(
    kube: Kube,
    start_publishing_operator: Callable[..., Operator],
    aws: AwsEnvironment,
    tmp_path: Path,
) -> None:
    start_publishing_operator()
    case = {"name": "capital", "query": "The capital of France?", "expect": {"contains": ["Paris"]}}
    with ScriptedModelServer.from_script(MATRIX_SCRIPT) as model:
        manifest = agent_test("matrix", SIMPLE_AGENT, model.url, cases=[case])
        del manifest["spec"]["model"]
        manifest["spec"]["matrixPolicy"] = "any"
        manifest["spec"]["models"] = [
            {"name": name, "provider": "ollama", "modelId": name, "endpoint": model.url}
            for name in ("good", "bad", "also-good")
        ]
        kube.apply(manifest)
        status = wait_packaged(kube, "matrix")
    assert status["phase"] == "Succeeded", status.get("message")
    packaged = condition(status, "Packaged")
    assert packaged is not None and packaged["status"] == "True", packaged
    made = {package["metadata"]["name"]: package for package in packages(kube)}
    assert sorted(made) == ["matrix-a1-also-good", "matrix-a1-good"]
    assert [ref["model"] for ref in status["packages"]] == ["good", "also-good"]
    assert status["packageRef"]["name"] == "matrix-a1-good"
    for name, package in made.items():
        spec = package["spec"]
        assert spec["model"] == name.removeprefix("matrix-a1-")
        body = aws.client("s3").get_object(Bucket=spec["bucket"], Key=spec["key"])["Body"].read()
        manifest_json = json.loads(zipfile.ZipFile(io.BytesIO(body)).read("manifest.json"))
        # Each package runs the model it passed with, and carries that model's cases.
        assert manifest_json["model"]["modelId"] == spec["model"]
        assert [case["name"] for case in manifest_json["test"]["cases"]] == ["capital"]
    # Both download verified: each is recorded in the test's status.
    env = {**os.environ, **aws.env(), "KUBECONFIG": str(kube.cluster.kubeconfig)}
    fetched = subprocess.run(
        [sys.executable, "-m", "agenttest.cli", "package", "download", "matrix-a1-also-good",
         "-n", kube.namespace, "-o", str(tmp_path / "also.zip")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
