"""kube-apiserver stopped for about 20 s in the middle of a run, then started again.

The outage has a control plane of its own (this module's `cluster`, which the
shared fixtures pick up in its place), so no other test sees its API server go.
While it is down the operator can neither read nor write an AgentTest; the
execution goes on. Once it is back, the test must end as if nothing happened,
its log tail holding every line of the run once, in order; and
`kubectl agenttest logs -f`, following it throughout, prints each line once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agenttest_dev import devcluster
from agenttest_dev.modelserver import ScriptedModelServer

import support
from support import CRDS, Kube, Operator, agent_test, install_operator_identity

StartOperator = Callable[..., Operator]

LINES = 80
EVERY_SECONDS = 0.5
# The tail shows line STOP_AT when the API server goes; it comes back once the
# agent printed line START_AT, STOP_AT..START_AT lines later (about 20 s).
STOP_AT, START_AT = 10, 50


@pytest.fixture(scope="module")
def cluster() -> Iterator[devcluster.Cluster]:
    """A control plane for this module alone: its API server is stopped mid-test."""
    with devcluster.Cluster(devcluster.find_binaries()) as running:
        running.install_crds(CRDS)
        install_operator_identity(running)
        yield running


def ticking_agent(lines: int, every: float) -> str:
    """An agent that prints `tick NNN` lines for a while before it answers."""
    return support.ticking_agent(lines, every, "tick {n:03d}")


def test_an_apiserver_outage_mid_run_loses_and_repeats_no_line(
    kube: Kube,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    start_operator()
    kube.apply(
        agent_test(
            "ticks", ticking_agent(LINES, EVERY_SECONDS), model_server.url, timeoutSeconds=180
        )
    )

    follower = subprocess.Popen(
        [
            str(kube.cluster.binaries.kubectl),
            "agenttest",
            "logs",
            "-f",
            "ticks",
            "-n",
            kube.namespace,
        ],
        env={
            **os.environ,
            "KUBECONFIG": str(kube.cluster.kubeconfig),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def tail() -> str:
        return str(kube.get("ticks").get("status", {}).get("logTail") or "")

    kube.wait_for(f"tick {STOP_AT:03d} in the tail", lambda: f"tick {STOP_AT:03d}" in tail())
    (record,) = (tmp_path / "runs").iterdir()
    output = record / "output.log"
    kube.cluster.stop_apiserver()
    try:
        kube.wait_for(
            f"the agent to print tick {START_AT:03d} while the API server is down",
            lambda: f"tick {START_AT:03d}" in output.read_text(errors="replace"),
        )
    finally:
        kube.cluster.start_apiserver()

    status = kube.wait_for_phase("ticks", "Succeeded", "Failed", "Error", "TimedOut")["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert not status.get("infraRetries")
    ticks = re.findall(r"tick (\d{3})", status["logTail"])
    assert ticks == [f"{n:03d}" for n in range(LINES)], status["logTail"]
    assert "case greets: PASS" in status["logTail"]

    # The follower waited out the outage, then went on where it was.
    try:
        out, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    assert re.findall(r"tick (\d{3})", out) == [f"{n:03d}" for n in range(LINES)], out
