"""No test wedges the operator, and the operator acts only on what it derived.

Each test here is a way one AgentTest, or whoever may edit its status, could
hold a slot forever, point the operator at someone else's objects, or leak a
credential into what everyone in the namespace reads.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

from agenttest_dev import devcluster
from agenttest_dev.modelserver import ScriptedModelServer
from agenttest_dev.node import FakeKubelet

from support import SIMPLE_AGENT, Kube, Operator, agent_test, pid_alive

StartOperator = Callable[..., Operator]

SLEEPER = """
import os, time
from strands import Agent
with open(os.path.join({directory!r}, f"{{os.getpid()}}.pid"), "w") as f:
    f.write(str(os.getpid()))
print("agent imported; sleeping", flush=True)
time.sleep(300)

def agent(model):
    return Agent(model=model)
"""


def start_sleeper(kube: Kube, name: str, endpoint: str, directory: Path, **spec: object) -> int:
    kube.apply(agent_test(name, SLEEPER.format(directory=str(directory)), endpoint, **spec))
    pid_file = kube.wait_for("the agent to start", lambda: next(directory.glob("*.pid"), None))
    return int(pid_file.read_text())


def edit_status(kube: Kube, name: str, patch: dict[str, object]) -> None:
    kube.run(
        "patch", "agenttest", name, "--subresource=status", "--type=merge", "-p", json.dumps(patch)
    )


def finished(kube: Kube, name: str, timeout: float = 90.0) -> dict[str, object]:
    status = kube.wait_for_phase(
        name, "Succeeded", "Failed", "Error", "TimedOut", "Cancelled", timeout=timeout
    )["status"]
    assert isinstance(status, dict)
    return status


def test_a_status_that_makes_every_step_fail_ends_in_error_and_frees_the_slot(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    operator = start_operator(max_running=1)
    pid = start_sleeper(kube, "wedged", model_server.url, tmp_path, timeoutSeconds=300)
    operator.kill()
    # What a restarted operator reads back: a start time no step can parse.
    edit_status(kube, "wedged", {"status": {"execution": {"startedAt": "not-a-time"}}})
    kube.apply(agent_test("next", SIMPLE_AGENT, model_server.url))
    start_operator(max_running=1)

    status = finished(kube, "wedged")
    assert status["phase"] == "Error"
    assert "not-a-time" in str(status["message"])
    assert not pid_alive(pid), "the wedged test's execution must be stopped"
    assert finished(kube, "next")["phase"] == "Succeeded", "its slot must go to the next test"


def test_an_executions_output_never_outlives_its_timeout_nor_leaks_credentials(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator()
    chatty = """
import sys
from strands import Agent
print("DB_PASSWORD=hunter2 NAME_TOKEN=tok-123456", flush=True)
print('{"SecretAccessKey": "wJalrXUtnFEMI"} https://alice:s3cr3t@db.internal/', flush=True)
print("\\x1b[31mred\\x1b[0m \\u202eevil", flush=True)
raise RuntimeError("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9 " + "x" * 600_000)
"""
    kube.apply(agent_test("chatty", chatty, model_server.url, timeoutSeconds=60))
    status = finished(kube, "chatty")
    assert status["phase"] == "Failed"
    # The status (the spec holds them, of course), with every character as it is.
    written = json.dumps(kube.get("chatty")["status"], ensure_ascii=False)
    events = kube.run("get", "events", "-o", "json").stdout
    for secret in ("hunter2", "tok-123456", "wJalrXUtnFEMI", "s3cr3t", "eyJhbGciOiJIUzI1NiJ9"):
        assert secret not in written and secret not in events, secret
    for invisible in ("\x1b", "\u202e", "\x9b"):
        assert invisible not in written
    assert len(str(status["message"]).encode()) <= 2048
    assert len(written) < 64 * 1024, "600 KB of exception must not reach the status"


def test_a_ttl_beyond_a_year_is_refused_by_the_api_server(
    kube: Kube, model_server: ScriptedModelServer
) -> None:
    manifest = agent_test("forever", SIMPLE_AGENT, model_server.url)
    manifest["spec"]["ttlSecondsAfterFinished"] = 10**12
    answer = kube.apply(manifest, check=False)
    assert answer.returncode != 0
    assert "spec.ttlSecondsAfterFinished" in answer.stderr


def test_an_execution_whose_test_vanished_is_swept(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    operator = start_operator(sweep_interval=1)
    pid = start_sleeper(kube, "orphan", model_server.url, tmp_path)
    operator.kill()
    # Someone removes the finalizer while no operator runs, and deletes the test.
    kube.run(
        "patch", "agenttest", "orphan", "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
    )
    kube.run("delete", "agenttest", "orphan", "--timeout=30s")
    start_operator(sweep_interval=1)
    kube.wait_for("the orphaned execution to be stopped", lambda: not pid_alive(pid))


# --------------------------------------------------------------------------- pod backend


def test_an_edited_execution_id_cannot_point_the_operator_at_other_objects(
    cluster: devcluster.Cluster,
    kube: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    victims = f"victim-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", victims)
    cluster.kubectl("create", "configmap", "aws-auth", "-n", victims, "--from-literal=a=b")
    operator = start_operator(stop_grace_seconds=1)
    sleeper = SLEEPER.format(directory="/tmp")
    kube.apply(agent_test("edited", sleeper, model_server.url, backend="pod", timeoutSeconds=10))
    kube.wait_for(
        "the agent to run",
        lambda: any(
            "agent imported" in line
            for _, name in kubelet.pods()
            for line in kubelet.output(kube.namespace, name)
        ),
    )
    operator.kill()
    edit_status(kube, "edited", {"status": {"execution": {"id": f"{victims}/aws-auth"}}})
    start_operator(stop_grace_seconds=1)

    assert finished(kube, "edited")["phase"] == "TimedOut"
    cluster.kubectl("get", "configmap", "aws-auth", "-n", victims)  # still there
    kube.wait_for("the runner pod to go", lambda: not kube.get_all("pods"))
    cluster.kubectl("delete", "namespace", victims, "--wait=false")


def test_a_huge_exception_at_import_on_a_pod_ends_failed_with_a_small_status(
    kube: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
) -> None:
    start_operator()
    raising = 'raise RuntimeError("boom " + "x" * 600_000)\n'
    kube.apply(agent_test("huge", raising, model_server.url, backend="pod", timeoutSeconds=20))
    status = finished(kube, "huge")
    assert status["phase"] == "Failed", status.get("message")
    assert "boom" in str(status["message"])
    assert len(json.dumps(status)) < 64 * 1024
