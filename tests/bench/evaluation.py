"""Evaluation at scale: `python tests/bench/evaluation.py` prints JSON.

One AgentTest's worth of work, 50 cases x 5 trials x 2 models (500 trials),
run by the judge (`python -m agenttest.runner`, as every backend starts it)
against the scripted model with a real Strands agent that calls a tool: the
wall time of the whole run, and the evaluation overhead per trial from the
judge's report (`evaluationSeconds`): everything the judge does for a trial
except wait for the agent's answer (opening and closing the gateway's record,
the Strands Evals evaluators, the tally). `make bench` also times the same test
as an AgentTest through the operator (run.py). The cases carry deterministic checks only (no LLM
judge), which is what the target is about: p95 under 20 ms per trial.
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
from typing import Any

from agenttest.runner.protocol import RUN_KEY_ENV
from agenttest_dev.modelserver import ScriptedModelServer

CASES = 50
TRIALS = 5
MODELS = ("small", "large")

AGENT = '''
from strands import Agent, tool

@tool
def lookup(topic: str) -> str:
    """Look a topic up.

    Args:
        topic: What to look up.
    """
    return f"facts about {topic}"

def agent(model):
    return Agent(model=model, tools=[lookup])
'''

SCRIPT = [
    {
        "match": r"question (\d+)",
        "toolCalls": [{"name": "lookup", "arguments": {"topic": "numbers"}}],
        "reply": '{"answer": 42, "source": "{tool_result}"}',
    }
]

SCHEMA = {
    "type": "object",
    "required": ["answer"],
    "properties": {"answer": {"type": "integer"}, "source": {"type": "string"}},
}


def config(endpoint: str) -> dict[str, Any]:
    expect = {
        "contains": ["42"],
        "notContains": ["error"],
        "regex": r"\d+",
        "startsWith": "{",
        "jsonSchema": SCHEMA,
        "toolCalled": ["lookup"],
        "toolNotCalled": ["delete"],
        "toolSequence": {"tools": ["lookup"], "match": "exact"},
        "maxToolCalls": 3,
        "maxTokens": 10000,
        "maxCostUSD": 1.0,
        "maxLatencySeconds": 60,
    }
    return {
        "agentSource": AGENT,
        "models": [
            {"name": name, "provider": "ollama", "modelId": name, "endpoint": endpoint}
            for name in MODELS
        ],
        "cases": [
            {"name": f"case-{n}", "query": f"Answer question {n}.", "expect": expect}
            for n in range(CASES)
        ],
        "trials": TRIALS,
        "timeoutSeconds": 600,
        "prices": {name: {"inputPerMillion": 1.0, "outputPerMillion": 2.0} for name in MODELS},
    }


def agent_test(name: str, endpoint: str) -> dict[str, Any]:
    """The same work as an AgentTest for the operator (local backend, no price table)."""
    raw = config(endpoint)
    for case in raw["cases"]:
        case["expect"] = {k: v for k, v in case["expect"].items() if k != "maxCostUSD"}
    return {
        "apiVersion": "agenttest.dev/v1alpha1",
        "kind": "AgentTest",
        "metadata": {"name": name},
        "spec": {
            "agent": {"source": {"inline": AGENT}},
            "models": raw["models"],
            "cases": raw["cases"],
            "trials": TRIALS,
            "backend": "local",
            "timeoutSeconds": 600,
            "package": {"enabled": False},
        },
    }


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def measure_evaluation() -> dict[str, Any]:
    """The judge as every backend starts it, a process of its own, writing its report."""
    with ScriptedModelServer.from_script(SCRIPT) as model, tempfile.TemporaryDirectory() as work:
        config_file = Path(work, "config.json")
        config_file.write_text(json.dumps(config(model.url)))
        env = {"PATH": os.environ["PATH"], "HOME": work, RUN_KEY_ENV: "00" * 32}
        started = time.perf_counter()
        finished = subprocess.run(
            [sys.executable, "-m", "agenttest.runner", "--config", str(config_file),
             "--workdir", work, "--report-dir", work],
            env=env, cwd=work, capture_output=True, timeout=900, check=False,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        if finished.returncode != 0:
            raise RuntimeError(f"the benchmark's test did not pass: {finished.stdout[-2000:]!r}")
        report = json.loads(Path(work, "report.json").read_text())
    runs = [run for case in report["cases"] for run in case["runs"]]
    overhead_ms = [run["evaluationSeconds"] * 1000 for run in runs]
    answer = [run["latencySeconds"] for run in runs]
    return {
        "evaluation": {
            "shape": f"{CASES} cases x {TRIALS} trials x {len(MODELS)} models",
            "trials": len(runs),
            "judge_seconds": round(elapsed, 2),
            "answer_seconds_p50": round(statistics.median(answer), 4),
            "overhead_per_trial_ms": {
                "p50": round(statistics.median(overhead_ms), 2),
                "p95": round(_p95(overhead_ms), 2),
                "max": round(max(overhead_ms), 2),
            },
            "target_overhead_p95_ms": 20.0,
        }
    }


if __name__ == "__main__":
    json.dump(measure_evaluation(), sys.stdout, indent=2)
    print()
