"""Two operator replicas, exactly one active: the Lease decides, and a takeover loses nothing.

Both replicas run as the operator's ServiceAccount with the RBAC of
manifests/ (so its Lease rights are proven enough), share the local backend's
state directory as two pods share nothing but the cluster and the execution
backend, and contend for the Lease agenttest-operator in agenttest-system.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agenttest.runner.protocol import AGENT_PREFIX
from agenttest_dev import devcluster
from agenttest_dev.modelserver import ScriptedModelServer

from support import (
    SIMPLE_AGENT,
    SYSTEM_NAMESPACE,
    Kube,
    Operator,
    agent_test,
    service_account_kubeconfig,
)

LEASE = "agenttest-operator"
# Short, so the takeover is quick: the standby takes over ~6 s after the holder's
# last renewal; the holder gives up 4.5 s after it.
ELECTION = {
    "leader_election": "true",
    "lease_duration_seconds": 6,
    "lease_renew_seconds": 1.5,
}

StartReplica = Callable[..., Operator]


def ticking_agent(directory: Path, lines: int, every: float) -> str:
    """An agent that records its process (one file per run) and prints `tick N` over time."""
    return f"""
import os, time
open(os.path.join({str(directory)!r}, f"{{os.getpid()}}.started"), "w").close()
for n in range({lines}):
    print(f"tick {{n}}", flush=True)
    time.sleep({every})
{SIMPLE_AGENT}"""


def identity(operator: Operator) -> str:
    assert operator.process is not None
    return f"{socket.gethostname()}_{operator.process.pid}"


def holder(kube: Kube) -> str:
    lease = kube.cluster.kubectl("get", "lease", LEASE, "-n", SYSTEM_NAMESPACE, "-o", "json")
    spec: dict[str, Any] = json.loads(lease.stdout)["spec"]
    return str(spec.get("holderIdentity") or "")


def ticks(log_tail: str) -> list[int]:
    return [
        int(line.removeprefix(AGENT_PREFIX).split()[1])
        for line in log_tail.splitlines()
        if re.fullmatch(r"tick \d+", line.removeprefix(AGENT_PREFIX))
    ]


def drop_lease(cluster: devcluster.Cluster) -> None:
    cluster.kubectl("delete", "lease", LEASE, "-n", SYSTEM_NAMESPACE, "--ignore-not-found")


@pytest.fixture
def start_replica(
    cluster: devcluster.Cluster, kube: Kube, tmp_path: Path
) -> Iterator[StartReplica]:
    """`agenttest run` with leader election, as the ServiceAccount; one log file per replica."""
    drop_lease(cluster)  # whatever an earlier run left
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "sa.kubeconfig", kube.namespace)
    replicas: list[Operator] = []

    def start(name: str, **settings: Any) -> Operator:
        replica = Operator(
            cluster,
            kube.namespace,
            tmp_path / "runs",
            tmp_path / f"{name}.log",
            kubeconfig=kubeconfig,
            operator_namespace=SYSTEM_NAMESPACE,
            **{**ELECTION, **settings},
        )
        replicas.append(replica.start())
        return replica

    yield start
    # Delete the tests while the active replica still runs, so finalizers are
    # honoured and no harness process outlives the test.
    if any(r.process and r.process.poll() is None for r in replicas):
        kube.run("delete", "agenttests", "--all", "--timeout=60s", check=False)
    for replica in replicas:
        replica.stop()
    drop_lease(cluster)


def test_one_of_two_replicas_acts_and_the_other_takes_over_a_running_test(
    kube: Kube,
    start_replica: StartReplica,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    first, second = start_replica("first"), start_replica("second")
    replicas = {identity(first): first, identity(second): second}

    # Exactly one holds the Lease and leads; the other says it waits for it.
    active_id = kube.wait_for("a replica to hold the Lease", lambda: holder(kube) or None)
    assert active_id in replicas, (active_id, list(replicas))
    active = replicas[active_id]
    standby = first if active is second else second
    kube.wait_for("the active replica to lead", lambda: "leading: holding Lease" in active.log())
    waiting = f"standby: waiting for Lease {SYSTEM_NAMESPACE}/{LEASE}, held by {active_id}"
    kube.wait_for("the standby to wait", lambda: waiting in standby.log())
    assert "leading" not in standby.log()

    # A test long enough to outlive the takeover.
    started = tmp_path / "agents"
    started.mkdir()
    kube.apply(agent_test("ticking", ticking_agent(started, lines=60, every=0.4), model_server.url))

    def tail_ticks() -> list[int]:
        return ticks(kube.get("ticking").get("status", {}).get("logTail") or "")

    before = kube.wait_for(
        "the tail to show ticks", lambda: len(tail_ticks()) >= 5 and tail_ticks()
    )
    # The standby has not touched the test while waiting.
    assert "ticking" not in standby.log()

    # It has led all along: it never gave the Lease up on its own.
    assert "leadership lost" not in active.log()
    active.kill()
    kube.wait_for(
        "the standby to hold the Lease", lambda: holder(kube) == identity(standby), timeout=60
    )
    test = kube.wait_for_phase("ticking", "Succeeded", "Failed", "Error", "TimedOut", timeout=120)
    status = test["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["attempt"] == 1
    assert not status.get("infraRetries"), status.get("infraRetries")

    # One execution: one record on the backend, one agent process ever started.
    assert len(list((tmp_path / "runs").iterdir())) == 1
    assert len(list(started.glob("*.started"))) == 1

    # The tail goes on from where it was: every line once, in order, from
    # before the kill and after it.
    final = ticks(status["logTail"])
    assert final == list(range(60)), final
    assert before == final[: len(before)]

    log = standby.log()
    assert "leadership lost" not in log
    assert log.index(waiting) < log.index("leading: holding Lease"), log
    assert "ticking" not in log[: log.index("leading: holding Lease")]


def test_a_replica_stopped_gracefully_hands_the_lease_over_at_once(
    kube: Kube, start_replica: StartReplica, model_server: ScriptedModelServer
) -> None:
    # A minute-long Lease: only a release lets the standby in within the wait.
    first, second = (start_replica(name, lease_duration_seconds=60) for name in ("a", "b"))
    replicas = {identity(first): first, identity(second): second}
    active_id = kube.wait_for("a replica to hold the Lease", lambda: holder(kube) or None)
    active = replicas[active_id]
    standby = first if active is second else second
    kube.wait_for("the standby to wait", lambda: "standby: waiting" in standby.log())

    active.stop()  # SIGTERM, as a rolling update or a drain sends
    assert active.process is not None and active.process.returncode == 0
    assert f"released Lease {SYSTEM_NAMESPACE}/{LEASE}" in active.log()
    kube.wait_for(
        "the standby to take the released Lease",
        lambda: holder(kube) == identity(standby),
        timeout=30,
    )
    # And it acts: a test runs to the end.
    kube.apply(agent_test("after-handover", SIMPLE_AGENT, model_server.url))
    status = kube.wait_for_phase("after-handover", "Succeeded", "Failed", "Error")["status"]
    assert status["phase"] == "Succeeded", status.get("message")
