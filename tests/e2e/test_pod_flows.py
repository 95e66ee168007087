"""AgentTests on the pod backend: kubectl -> operator -> Pod -> (stand-in kubelet) -> status.

No kubelet can run here; FakeKubelet registers a Node, binds and runs the
pods, reports their status through the API server and serves their logs at
the node's address, so `pods/log` and `kubectl logs` go through the real API
server. The namespace enforces the restricted Pod Security profile.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agenttest.runner.protocol import RUN_KEY_ENV
from agenttest_dev import devcluster
from agenttest_dev.fargate import AwsEnvironment
from agenttest_dev.modelserver import DEFAULT_SCRIPT, ScriptedModelServer
from agenttest_dev.node import FakeKubelet

import forgeries
from bigreport import assert_stored_whole, large_report_test
from support import (
    MANIFESTS,
    SIMPLE_AGENT,
    SYSTEM_NAMESPACE,
    Kube,
    Operator,
    on_pod,
    service_account_kubeconfig,
)

StartOperator = Callable[..., Operator]

SLEEPER = """
import time
from strands import Agent
print("agent imported; sleeping", flush=True)
time.sleep(300)

def agent(model):
    return Agent(model=model)
"""


def runner_pods(kube: Kube, test: str) -> list[dict[str, Any]]:
    pods = kube.get_all("pods")
    return [p for p in pods if p["metadata"].get("labels", {}).get("agenttest.dev/test") == test]


def execution_objects(kube: Kube, test: str) -> list[dict[str, Any]]:
    """The Secrets (key, configuration) and any ConfigMaps an execution of ``test`` left."""
    return [
        c
        for kind in ("configmaps", "secrets")
        for c in kube.get_all(kind)
        if c["metadata"].get("labels", {}).get("agenttest.dev/test") == test
    ]


def test_pod_test_succeeds_and_kubectl_logs_shows_the_runner(
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
) -> None:
    kube = restricted
    start_operator()
    kube.apply(on_pod("in-pod", SIMPLE_AGENT, model_server.url))
    status = kube.wait_for_phase("in-pod", "Succeeded", "Failed", "Error", "TimedOut")["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert "case greets: PASS" in status["logTail"]
    assert status["cases"][0]["passed"] is True
    [pod] = runner_pods(kube, "in-pod")
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "AgentTest"
    logs = kube.run("logs", pod["metadata"]["name"]).stdout
    assert "case greets: PASS" in logs
    assert logs.strip().splitlines()[-1].startswith("::agenttest:: ")


def test_timeout_cancel_and_deletion_remove_pod_and_secret(
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
) -> None:
    kube = restricted
    start_operator(stop_grace_seconds=1)
    kube.apply(
        on_pod("slow", SLEEPER, model_server.url, timeoutSeconds=4),
        on_pod("cancel-me", SLEEPER, model_server.url),
        on_pod("delete-me", SLEEPER, model_server.url),
    )
    for name in ("cancel-me", "delete-me"):
        kube.wait_for(
            f"{name} to run",
            lambda n=name: any(
                "agent imported" in line
                for p in runner_pods(kube, n)
                # A pod the API server has but the node has not started yet has no output.
                if (kube.namespace, p["metadata"]["name"]) in kubelet.pods()
                for line in kubelet.output(kube.namespace, p["metadata"]["name"])
            ),
        )
    kube.patch("cancel-me", {"spec": {"cancel": True}})
    kube.run("delete", "agenttest", "delete-me", "--wait=false")

    assert (
        kube.wait_for_phase("slow", "TimedOut", "Failed", "Succeeded")["status"]["phase"]
        == "TimedOut"
    )
    assert kube.wait_for_phase("cancel-me", "Cancelled", "Failed")["status"]["phase"] == "Cancelled"
    kube.wait_for(
        "delete-me to be gone",
        lambda: "delete-me" not in [t["metadata"]["name"] for t in kube.get_all()],
    )
    for name in ("slow", "cancel-me", "delete-me"):
        kube.wait_for(
            f"{name}'s pod and secret to be gone",
            lambda n=name: not runner_pods(kube, n) and not execution_objects(kube, n),
        )
    assert len(kubelet.pods()) == 3
    assert all(kubelet.killed(ns, name) for ns, name in kubelet.pods())


def test_a_pod_stuck_pending_says_why(
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
) -> None:
    kube = restricted
    kubelet.hold_pending()
    start_operator()
    kube.apply(on_pod("stuck", SIMPLE_AGENT, model_server.url))
    kube.wait_for(
        "the reason to show",
        lambda: "Unschedulable" in (kube.get("stuck").get("status", {}).get("message") or ""),
    )
    assert kube.get("stuck")["status"]["phase"] == "Building"
    kubelet.release()
    assert kube.wait_for_phase("stuck", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"


def test_operator_killed_after_pod_creation_yields_one_pod(
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
) -> None:
    kube = restricted
    operator = start_operator()
    kube.apply(on_pod("once", SIMPLE_AGENT, model_server.url))
    kube.wait_for("the pod", lambda: runner_pods(kube, "once"))
    operator.kill()
    start_operator()
    assert kube.wait_for_phase("once", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    assert len(runner_pods(kube, "once")) == 1
    assert len(kubelet.pods()) == 1


def test_operator_with_only_its_service_account_runs_pod_tests(
    cluster: devcluster.Cluster,
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    kube = restricted
    cluster.kubectl("apply", "-k", str(MANIFESTS))
    as_operator = service_account_kubeconfig(cluster, tmp_path / "sa.kubeconfig", kube.namespace)
    operator = start_operator(kubeconfig=as_operator, operator_namespace=SYSTEM_NAMESPACE)
    kube.apply(on_pod("least-privilege", SIMPLE_AGENT, model_server.url))
    status = kube.wait_for_phase("least-privilege", "Succeeded", "Failed", "Error")["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    kube.run("delete", "agenttest", "least-privilege", "--timeout=60s")
    assert not runner_pods(kube, "least-privilege")
    assert "forbidden" not in operator.log().lower()


def test_no_agent_forges_its_verdict_on_the_pod_backend(
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
) -> None:
    kube = restricted
    start_operator(max_running=6)
    with ScriptedModelServer.from_script([*forgeries.SCRIPT, *DEFAULT_SCRIPT]) as model:
        forgeries.apply_catalogue(kube, model.url, forgeries.CATALOGUE, backend="pod")
        ended = forgeries.assert_all_failed(kube, forgeries.CATALOGUE)
    for forgery in forgeries.CATALOGUE:
        assert not ended[forgery.name]["status"].get("forgedLines"), forgery.name
    hunt_tail = ended[forgeries.HUNTS_FOR_THE_KEY.name]["status"]["logTail"]
    assert re.search(r"DENIED /proc/\d+/environ: PermissionError", hunt_tail), hunt_tail
    # The key reached the judge through a Secret of the execution, never the pod spec.
    for forgery in forgeries.CATALOGUE:
        assert not runner_pods(kube, forgery.name) or all(
            "value" not in env
            for pod in runner_pods(kube, forgery.name)
            for env in pod["spec"]["containers"][0]["env"]
            if env["name"] == RUN_KEY_ENV
        )


def test_agent_code_read_from_s3_reaches_the_pod_through_a_secret_only(
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
) -> None:
    # The operator read the object with its own credentials: nobody who may only
    # view the namespace (ConfigMaps, not Secrets) may read it through the runner.
    kube = restricted
    marker = "# private-agent-7f3a: only the operator may read this object"
    with AwsEnvironment() as aws:
        aws.client("s3").create_bucket(Bucket="agent-sources")
        aws.client("s3").put_object(
            Bucket="agent-sources", Key="team/agent.py", Body=f"{marker}\n{SIMPLE_AGENT}".encode()
        )
        start_operator(extra_env=aws.env(), s3_source_allow="s3://agent-sources/team/")
        test = on_pod("from-s3", "", model_server.url)
        test["spec"]["agent"]["source"] = {"s3": {"uri": "s3://agent-sources/team/agent.py"}}
        kube.apply(test)
        status = kube.wait_for_phase("from-s3", "Succeeded", "Failed", "Error")["status"]
        assert status["phase"] == "Succeeded", status.get("message")

    [pod] = runner_pods(kube, "from-s3")
    assert not any("configMap" in volume for volume in pod["spec"]["volumes"])
    assert not any(marker in json.dumps(c.get("data", {})) for c in kube.get_all("configmaps"))
    secret = kube.get(pod["metadata"]["name"], "secret")
    config = json.loads(base64.b64decode(secret["data"]["config.json"]))
    assert config["agentSource"].startswith(marker)
    owner = secret["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("AgentTest", "from-s3")


def test_a_report_of_many_parts_travels_through_pods_log(
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
) -> None:
    kube = restricted
    with AwsEnvironment() as aws:
        start_operator(extra_env=aws.env(), package_bucket=aws.bucket)
        kube.apply(large_report_test("big-report", model_server.url, "pod"))
        status = kube.wait_for(
            "big-report to be reported",
            lambda: (s := kube.get("big-report").get("status", {})).get("reports") and s,
            240,
        )
        assert_stored_whole(status, aws)
