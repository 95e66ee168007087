"""The operator SIGKILLed at exact points of a test's life, then started again.

`crash_at` (agenttest.crashpoints) makes the operator kill itself where a crash
hurts most: a slot claimed but nothing launched, an execution launched but not
recorded, a pass recorded but not packaged, a deletion begun but not done; and
a plain kill while the test runs. What a user sees afterwards must be as if
nothing had happened: the test ends once, in its phase, from one execution,
with at most one package, and a deleted test goes away with nothing left running.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agenttest_dev.fargate import AwsEnvironment
from agenttest_dev.modelserver import ScriptedModelServer

from support import Kube, Operator, agent_test, pid_alive

StartOperator = Callable[..., Operator]


def counted_agent(directory: Path, seconds_per_case: float = 0.0) -> str:
    """An agent whose every run leaves `<pid>.run` in `directory`; each case takes a while."""
    return f"""
import os, time
from strands import Agent

with open(os.path.join({str(directory)!r}, f"{{os.getpid()}}.run"), "w") as mark:
    mark.write(str(os.getpid()))

class Deliberate(Agent):
    def __call__(self, *args, **kwargs):
        with open(os.path.join({str(directory)!r}, f"{{os.getpid()}}.case"), "w"):
            pass
        time.sleep({seconds_per_case})
        return super().__call__(*args, **kwargs)

def agent(model):
    return Deliberate(model=model)
"""


def runs(directory: Path) -> list[int]:
    """The pids of every agent host that ran (one per execution)."""
    return sorted(int(path.read_text()) for path in directory.glob("*.run"))


def records(state_dir: Path) -> list[str]:
    """The local backend's execution records (one directory per execution)."""
    return sorted(path.name for path in state_dir.iterdir()) if state_dir.exists() else []


def events(kube: Kube, name: str) -> list[str]:
    """The reasons of the Events about the test `name`, one entry per Event (and repeat)."""
    return [event["reason"] for event in kube.events(name) for _ in range(event.get("count") or 1)]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def crashed(kube: Kube, operator: Operator) -> None:
    """Wait until the operator killed itself, and check it died by SIGKILL."""
    process = operator.process
    assert process is not None
    kube.wait_for("the operator to reach its crash point", lambda: process.poll() is not None)
    assert process.returncode == -signal.SIGKILL, operator.log()[-2000:]
    assert "killing the operator here (fault injection)" in operator.log()


def assert_ended_once(kube: Kube, name: str, agent_runs: Path, state_dir: Path) -> dict[str, Any]:
    """Succeeded, from one execution, and said once; returns the status."""
    status = kube.wait_for_phase(name, "Succeeded", "Failed", "Error", "TimedOut")["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["attempt"] == 1
    assert not status.get("infraRetries"), status.get("message")
    assert len(runs(agent_runs)) == 1, f"the agent ran {len(runs(agent_runs))} times"
    assert len(records(state_dir)) == 1, records(state_dir)
    kube.wait_for("the Succeeded Event", lambda: "Succeeded" in events(kube, name))
    reasons = events(kube, name)
    assert reasons.count("Succeeded") == 1, reasons
    for phase in ("Queued", "Building", "Running", "Failed", "Error"):
        assert reasons.count(phase) <= 1, reasons
    return status


@pytest.mark.parametrize("point", ["claimed", "launched"])
def test_a_crash_around_the_launch_launches_once(
    point: str,
    kube: Kube,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    agent_runs = tmp_path / "agent-runs"
    agent_runs.mkdir()
    operator = start_operator(crash_at=point)
    kube.apply(agent_test("crash", counted_agent(agent_runs), model_server.url))
    crashed(kube, operator)
    if point == "claimed":
        assert records(tmp_path / "runs") == [], "nothing is launched before the claim is used"
    else:
        assert len(records(tmp_path / "runs")) == 1
    start_operator()
    assert_ended_once(kube, "crash", agent_runs, tmp_path / "runs")


def test_a_kill_while_running_follows_the_same_execution(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    agent_runs = tmp_path / "agent-runs"
    agent_runs.mkdir()
    operator = start_operator()
    kube.apply(agent_test("crash", counted_agent(agent_runs, 4.0), model_server.url))
    kube.wait_for_phase("crash", "Running")
    kube.wait_for("a case to run", lambda: next(agent_runs.glob("*.case"), None))
    operator.kill()
    start_operator()
    status = assert_ended_once(kube, "crash", agent_runs, tmp_path / "runs")
    assert "case greets: PASS" in status["logTail"]


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsEnvironment]:
    with AwsEnvironment() as environment:
        yield environment


def test_a_crash_before_packaging_packages_once(
    kube: Kube,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
    tmp_path: Path,
) -> None:
    agent_runs = tmp_path / "agent-runs"
    agent_runs.mkdir()
    publishing = {"extra_env": aws.env(), "package_bucket": aws.bucket}
    operator = start_operator(crash_at="packaging", **publishing)
    kube.apply(agent_test("crash", counted_agent(agent_runs), model_server.url))
    crashed(kube, operator)
    before = kube.get("crash")["status"]
    assert before["phase"] == "Succeeded", "the crash point is after the pass is written"
    assert condition(before, "Packaged") is None
    assert kube.get_all("deploymentpackages") == []

    start_operator(**publishing)

    def packaged() -> dict[str, Any] | None:
        status = kube.get("crash")["status"]
        return status if condition(status, "Packaged") else None

    status = kube.wait_for("the package", packaged)
    assert_ended_once(kube, "crash", agent_runs, tmp_path / "runs")
    done = condition(status, "Packaged")
    assert done is not None and done["status"] == "True", done
    [package] = kube.get_all("deploymentpackages")
    assert package["metadata"]["name"] == status["packageRef"]["name"] == "crash-a1"
    listed = aws.client("s3").list_objects_v2(
        Bucket=aws.bucket, Prefix=f"packages/{kube.namespace}/"
    )
    zips = [entry["Key"] for entry in listed.get("Contents", []) if entry["Key"].endswith(".zip")]
    assert zips == [package["spec"]["key"]]


def test_a_crash_mid_deletion_finishes_the_deletion(
    kube: Kube,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    agent_runs = tmp_path / "agent-runs"
    agent_runs.mkdir()
    operator = start_operator(crash_at="deleting")
    kube.apply(agent_test("crash", counted_agent(agent_runs, 300.0), model_server.url))
    kube.wait_for("a case to run", lambda: next(agent_runs.glob("*.case"), None))
    [pid] = runs(agent_runs)
    kube.run("delete", "agenttest", "crash", "--wait=false")
    crashed(kube, operator)
    assert kube.get("crash")["metadata"].get("deletionTimestamp"), "held by the finalizer"
    assert pid_alive(pid), "the crash came before the cleanup"

    start_operator()
    kube.wait_for("the deletion to complete", lambda: kube.get_all() == [])
    assert not pid_alive(pid), "the agent's process must be gone"
    assert records(tmp_path / "runs") == [], "no execution record is left"
