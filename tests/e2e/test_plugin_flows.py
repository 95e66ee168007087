"""`kubectl agenttest logs|wait|results|cancel|retry`, run by kubectl itself, on a real operator.

kubectl finds `kubectl-agenttest` on PATH (the venv's bin directory here) and
runs it with the user's KUBECONFIG, as it would on a laptop.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agenttest.runner.protocol import AGENT_PREFIX
from agenttest_dev.modelserver import ScriptedModelServer

from support import (
    MANIFESTS,
    SIMPLE_AGENT,
    Kube,
    Operator,
    agent_test,
    service_account_kubeconfig,
    ticking_agent,
)

StartOperator = Callable[..., Operator]
VENV_BIN = Path(sys.executable).parent
FAILING = [{"name": "departs", "query": "Say hello", "expect": {"contains": ["goodbye"]}}]


def plugin_env(kubeconfig: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def plugin(
    kube: Kube, *args: str, kubeconfig: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`kubectl agenttest ARGS -n NS`, as a user types it."""
    return subprocess.run(
        [str(kube.cluster.binaries.kubectl), "agenttest", *args, "-n", kube.namespace],
        env=plugin_env(kubeconfig or kube.cluster.kubeconfig),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Background:
    """`kubectl agenttest ARGS` running on, its output collected line by line."""

    def __init__(self, kube: Kube, *args: str) -> None:
        self.process = subprocess.Popen(
            [str(kube.cluster.binaries.kubectl), "agenttest", *args, "-n", kube.namespace],
            env=plugin_env(kube.cluster.kubeconfig),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def finish(self, timeout: float = 60) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)
        return code

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()


def tail(kube: Kube, name: str) -> str:
    return str(kube.get(name).get("status", {}).get("logTail") or "")


def ticks(lines: list[str]) -> list[int]:
    return [
        int(line.removeprefix(AGENT_PREFIX).split()[1])
        for line in lines
        if re.fullmatch(r"tick \d+", line.removeprefix(AGENT_PREFIX))
    ]


def test_logs_follow_prints_each_line_once_and_exits_0_when_it_passes(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator()
    kube.apply(agent_test("ticker", ticking_agent(lines=25, every=0.15), model_server.url))
    follower = Background(kube, "logs", "-f", "ticker")
    waiter = Background(kube, "wait", "ticker", "--timeout", "60")

    assert follower.finish() == 0, follower.stderr()
    assert ticks(follower.lines) == list(range(25)), follower.lines
    assert "case greets: PASS" in "\n".join(follower.lines)
    assert follower.lines[-1].startswith("--- ticker: Succeeded (attempt 1)")
    assert waiter.finish() == 0, waiter.stderr()
    assert waiter.lines == [line.strip("- ") for line in follower.lines[-1:]]

    # Without -f: what the tail holds now, then exit 0.
    logs = plugin(kube, "logs", "ticker")
    assert logs.returncode == 0, logs.stderr
    assert ticks(logs.stdout.splitlines())[-1] == 24

    results = plugin(kube, "results", "ticker")
    assert results.returncode == 0, results.stderr
    header, _, columns, row = results.stdout.splitlines()
    assert header.startswith("ticker: Succeeded (attempt 1)")
    assert columns.split()[:4] == ["CASE", "MODEL", "RESULT", "PASSES"]
    assert row.split()[:4] == ["greets", "default", "PASS", "1/1"]


def test_a_failing_test_ends_logs_follow_and_wait_with_1(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator()
    kube.apply(agent_test("fails", SIMPLE_AGENT, model_server.url, cases=FAILING))
    follower = Background(kube, "logs", "-f", "fails")
    waiter = Background(kube, "wait", "fails")
    assert follower.finish() == 1, follower.stderr()
    assert waiter.finish() == 1, waiter.stderr()
    assert "case departs: FAIL" in "\n".join(follower.lines)
    assert waiter.lines[0].startswith("fails: Failed (attempt 1)")

    results = plugin(kube, "results", "fails", "-o", "json")
    assert results.returncode == 0, results.stderr
    assert '"passed": false' in results.stdout and '"phase": "Failed"' in results.stdout


def test_wait_gives_up_with_2_and_so_do_missing_refused_and_unreachable(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    start_operator(max_running=0)  # nothing starts: the test stays Queued
    kube.apply(agent_test("stuck", SIMPLE_AGENT, model_server.url))
    kube.wait_for_phase("stuck", "Queued")

    waited = plugin(kube, "wait", "stuck", "--timeout", "1")
    assert waited.returncode == 2, waited.stderr
    assert "not finished after 1s: stuck: Queued" in waited.stderr

    missing = plugin(kube, "logs", "nosuch")
    assert missing.returncode == 2
    assert f"no AgentTest nosuch in namespace {kube.namespace}" in missing.stderr

    # A user with no RoleBinding in the namespace.
    kube.run("create", "serviceaccount", "nobody")
    nobody = service_account_kubeconfig(
        kube.cluster, tmp_path / "nobody.kubeconfig", kube.namespace, "nobody", kube.namespace
    )
    refused = plugin(kube, "cancel", "stuck", kubeconfig=nobody)
    assert refused.returncode == 2
    assert "refused to get agenttests" in refused.stderr and "agenttest-tester" in refused.stderr

    # A kubeconfig whose server is not there.
    gone = tmp_path / "gone.kubeconfig"
    gone.write_text(nobody.read_text().replace(kube.cluster.url, "https://127.0.0.1:9"))
    unreachable = plugin(kube, "wait", "stuck", kubeconfig=gone)
    assert unreachable.returncode == 2
    assert "cannot reach the API server at https://127.0.0.1:9: [Errno 111] Connection refused" in (
        unreachable.stderr
    )
    assert "Traceback" not in missing.stderr + refused.stderr + unreachable.stderr


def test_retry_starts_attempt_2_which_logs_follow_keeps_following(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator()
    kube.apply(agent_test("again", ticking_agent(lines=20, every=0.3), model_server.url))
    follower = Background(kube, "logs", "-f", "again")
    kube.wait_for("attempt 1 to tick", lambda: ticks(follower.lines))

    retried = plugin(kube, "retry", "again")
    assert retried.returncode == 0, retried.stderr
    assert "attempt 2 starts" in retried.stdout

    assert follower.finish() == 0, follower.stderr()
    marker = next(
        i for i, line in enumerate(follower.lines) if line == "--- attempt 2: retry requested ---"
    )
    first, second = ticks(follower.lines[:marker]), ticks(follower.lines[marker:])
    assert first == list(range(len(first))) and 0 < len(first) < 20
    assert second == list(range(20)), follower.lines
    assert follower.lines[-1].startswith("--- again: Succeeded (attempt 2)")
    assert kube.get("again")["status"]["attempt"] == 2


def test_cancel_makes_a_running_test_cancelled(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """As a tester holding only the ClusterRole agenttest-tester: it is all the commands need."""
    kube.cluster.kubectl("apply", "-f", str(MANIFESTS / "tester-role.yaml"))
    kube.run("create", "serviceaccount", "tester")
    kube.run(
        "create",
        "rolebinding",
        "tester",
        "--clusterrole=agenttest-tester",
        f"--serviceaccount={kube.namespace}:tester",
    )
    tester = service_account_kubeconfig(
        kube.cluster, tmp_path / "tester.kubeconfig", kube.namespace, "tester", kube.namespace
    )
    start_operator()
    kube.apply(agent_test("long", ticking_agent(lines=300, every=0.2), model_server.url))
    kube.wait_for("the agent to tick", lambda: "tick 2" in tail(kube, "long"))

    cancelled = plugin(kube, "cancel", "long", kubeconfig=tester)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancel requested" in cancelled.stdout
    waited = plugin(kube, "wait", "long", "--timeout", "30", kubeconfig=tester)
    assert waited.returncode == 1, waited.stderr
    assert waited.stdout.startswith("long: Cancelled")
    status: dict[str, Any] = kube.get("long")["status"]
    assert status["phase"] == "Cancelled"
    logs = plugin(kube, "logs", "long", kubeconfig=tester)
    assert logs.returncode == 0 and ticks(logs.stdout.splitlines())[:3] == [0, 1, 2]
    again = plugin(kube, "cancel", "long", kubeconfig=tester)
    assert again.returncode == 0 and "already finished (Cancelled)" in again.stdout
