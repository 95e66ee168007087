"""Launch to first case: `python tests/bench/runner.py` prints JSON.

Spawns `python -m agenttest.runner` with a one-case config against the scripted
model, the way every backend starts an execution, and times until the line
`case greets: asking` appears on its stdout: interpreter start, the judge's
set-up, the agent host's start (Strands imported, agent.py loaded) and the
gateway, everything before the first question.

To compare with another version of the runner, point AGENTTEST_BENCH_BASELINE at
that checkout's operator/ directory (for example a `git worktree` of an older
commit): its figures are measured alternately with this one's, under the same load.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agenttest.runner.protocol import RUN_KEY_ENV
from agenttest_dev.modelserver import ScriptedModelServer

AGENT = """
from strands import Agent

def agent(model):
    return Agent(model=model, system_prompt="Be brief.")
"""
MARKER = b"case greets: asking"


def _once(endpoint: str, pythonpath: str | None) -> float:
    with tempfile.TemporaryDirectory() as work:
        config = Path(work, "config.json")
        config.write_text(
            json.dumps(
                {
                    "agentSource": AGENT,
                    "model": {"provider": "ollama", "modelId": "scripted", "endpoint": endpoint},
                    "cases": [{"name": "greets", "query": "Say hello"}],
                    "timeoutSeconds": 60,
                }
            )
        )
        env = {"PATH": os.environ["PATH"], "HOME": work, RUN_KEY_ENV: "00" * 32}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "agenttest.runner", "--config", str(config), "--workdir", work],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=work,
        )
        assert process.stdout is not None
        first = None
        for line in process.stdout:
            if first is None and MARKER in line:
                first = time.perf_counter() - started
        process.wait()
        if first is None:
            raise RuntimeError("the runner never asked the first case")
        return first


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
    }


def first_case_latency(samples: int = 20) -> dict[str, object]:
    baseline = os.environ.get("AGENTTEST_BENCH_BASELINE")
    current: list[float] = []
    before: list[float] = []
    with ScriptedModelServer() as model:
        _once(model.url, None)  # warm the page cache
        for _ in range(samples):
            current.append(_once(model.url, None))
            if baseline:
                before.append(_once(model.url, baseline))
    result: dict[str, object] = {"launch_to_first_case_seconds": _summary(current)}
    if baseline:
        result["baseline_launch_to_first_case_seconds"] = _summary(before)
    return result


if __name__ == "__main__":
    print(json.dumps(first_case_latency(), indent=2))
