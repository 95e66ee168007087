"""The queue on the real API server: what kubectl shows first, fair share, caps, the exact view.

A queued test costs nothing while it waits: no writes, no steps. Slots go to
the namespace with the fewest running tests within a priority, and the queue
view (`GET /queue`, `agenttest queue`) says the order and why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agenttest_dev import devcluster
from agenttest_dev.modelserver import ScriptedModelServer

from support import SIMPLE_AGENT, Kube, Operator, agent_test

StartOperator = Callable[..., Operator]


def sleeping_agent(seconds: float) -> str:
    return f"""
import time
from strands import Agent
time.sleep({seconds})

def agent(model):
    return Agent(model=model)
"""


@pytest.fixture
def other(cluster: devcluster.Cluster, start_operator: StartOperator) -> Iterator[Kube]:
    """A second namespace, as another team's.

    Set up after the operator fixture, so torn down before it: its tests are deleted
    while the operator still runs and lets their finalizers go (otherwise the
    deletion waited out its 60 s timeout).
    """
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    yield Kube(cluster, namespace)
    cluster.kubectl("delete", "agenttests", "--all", "-n", namespace, "--timeout=60s", check=False)


def watching_both(start_operator: StartOperator, kube: Kube, other: Kube, **settings: Any) -> int:
    """An operator over both namespaces, its HTTP port on loopback; returns the port."""
    port = devcluster.free_port()
    start_operator(
        namespaces=f"{kube.namespace},{other.namespace}",
        metrics_port=port,
        http_host="127.0.0.1",
        **settings,
    )
    return port


def queue_document(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/queue", timeout=10) as response:
        return dict(json.loads(response.read()))


def started_at(kube: Kube, name: str) -> str:
    return str(kube.get(name)["status"]["execution"]["startedAt"])


def test_kubectl_get_watch_shows_pending_then_queued_from_the_first_event(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator(max_running=0)
    watcher = subprocess.Popen(
        [
            str(kube.cluster.binaries.kubectl),
            f"--kubeconfig={kube.cluster.kubeconfig}",
            "-n",
            kube.namespace,
            "get",
            "agenttests",
            "-w",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    try:
        kube.apply(agent_test("watched", SIMPLE_AGENT, model_server.url))
        kube.wait_for_phase("watched", "Queued")
        kube.wait_for("a position", lambda: kube.get("watched")["status"].get("queuePosition"))
        rows: list[list[str]] = []
        while not any("Queued" in row for row in rows):
            line = watcher.stdout.readline()
            assert line, "the watch ended"
            if not line.startswith("NAME"):
                rows.append(line.split())
    finally:
        watcher.terminate()
        watcher.wait()
    # NAME PHASE BACKEND MODEL ...: every row has its phase, the first one Pending.
    assert rows[0][:2] == ["watched", "Pending"], rows
    assert all(row[1] in ("Pending", "Queued") for row in rows), rows


def test_a_crowded_namespace_does_not_starve_a_quiet_one(
    kube: Kube,
    other: Kube,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
) -> None:
    port = watching_both(start_operator, kube, other, max_running=1)
    kube.apply(agent_test("crowd-0", sleeping_agent(120), model_server.url))
    kube.wait_for_phase("crowd-0", "Building", "Running")
    kube.apply(*[agent_test(f"crowd-{i}", SIMPLE_AGENT, model_server.url) for i in range(1, 6)])
    other.apply(agent_test("quiet", SIMPLE_AGENT, model_server.url))

    def quiet_first() -> dict[str, Any] | None:
        document = queue_document(port)
        names = [row["name"] for row in document["queued"]]
        return document if names[:1] == ["quiet"] and len(names) == 6 else None

    # The quiet namespace runs nothing: its test is next, though created last.
    document = kube.wait_for("quiet at the head of the queue", quiet_first)
    assert [row["name"] for row in document["queued"]] == [
        "quiet",
        *[f"crowd-{i}" for i in range(1, 6)],
    ]
    assert [row["position"] for row in document["queued"]] == [1, 2, 3, 4, 5, 6]
    assert {row["reason"] for row in document["queued"]} == {"no free slot (1/1 running)"}
    assert (document["running"], document["limit"]) == (1, 1)
    # Positions in status follow the same order.
    kube.wait_for(
        "positions written", lambda: other.get("quiet")["status"].get("queuePosition") == 1
    )

    # The command prints the same queue.
    printed = subprocess.run(
        [sys.executable, "-m", "agenttest.cli", "queue", "--url", f"http://127.0.0.1:{port}", "-A"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = printed.splitlines()
    assert lines[0].split()[:3] == ["POSITION", "NAMESPACE", "NAME"]
    assert lines[1].split()[:3] == ["1", other.namespace, "quiet"]

    # The slot frees: the quiet namespace's test takes it, before the crowd's next.
    kube.patch("crowd-0", {"spec": {"cancel": True}})
    other.wait_for_phase("quiet", "Succeeded", timeout=120)
    kube.wait_for_phase("crowd-1", "Succeeded", timeout=120)
    assert started_at(other, "quiet") <= started_at(kube, "crowd-1")
    assert started_at(kube, "crowd-0") <= started_at(other, "quiet")


def test_a_namespace_cap_holds_back_only_that_namespace(
    kube: Kube,
    other: Kube,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
) -> None:
    port = watching_both(start_operator, kube, other, max_running=5, max_running_per_namespace=1)
    kube.apply(*[agent_test(f"capped-{i}", sleeping_agent(30), model_server.url) for i in range(2)])
    kube.wait_for_phase("capped-0", "Building", "Running")
    other.apply(agent_test("free", SIMPLE_AGENT, model_server.url))
    other.wait_for_phase("free", "Succeeded", timeout=120)

    document = queue_document(port)
    [waiting] = document["queued"]
    assert waiting["name"] == "capped-1"
    assert waiting["reason"] == "namespace cap (1/1 running in namespace)"
    assert kube.get("capped-1")["status"]["phase"] == "Queued"
    kube.patch("capped-0", {"spec": {"cancel": True}})
    # The slot the namespace held frees: its next test starts at once.
    kube.wait_for_phase("capped-1", "Building", "Running", timeout=60)


def test_queued_tests_are_not_written_while_they_wait(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator(max_running=0)
    kube.apply(*[agent_test(f"idle-{i:02d}", SIMPLE_AGENT, model_server.url) for i in range(20)])

    def all_positioned() -> dict[str, str] | None:
        tests = kube.get_all()
        if len(tests) == 20 and all(t["status"].get("queuePosition") for t in tests):
            return {t["metadata"]["name"]: t["metadata"]["resourceVersion"] for t in tests}
        return None

    versions = kube.wait_for("every test queued with a position", all_positioned)
    assert sorted(t["status"]["queuePosition"] for t in kube.get_all()) == list(range(1, 21))
    # Nothing happens to a waiting test: over three poll intervals, not one write
    # (the old operator rewrote each at every one-second tick).
    time.sleep(3)
    assert {t["metadata"]["name"]: t["metadata"]["resourceVersion"] for t in kube.get_all()} == (
        versions
    )
    # No finalizer either: nothing runs for it, so a deletion needs no cleanup.
    assert all(not t["metadata"].get("finalizers") for t in kube.get_all())
