"""What the harness prints: readable log lines and machine lines for the operator.

The operator tails the container's stdout live. Lines starting with MACHINE_PREFIX carry
compact JSON events; the last line of a run is always the result event. Everything else
is for people reading the log.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

MACHINE_PREFIX = "::agenttest:: "
LOG_PREFIX = "[agenttest] "

OUTPUT_LIMIT = 2000  # characters of an answer kept in the result
LOG_ANSWER_LIMIT = 500  # characters of an answer shown in the log

# Where the harness finds its configuration when not given --config: the JSON
# itself, or (when too large for a task's environment) an S3 URI holding it.
CONFIG_ENV = "AGENTTEST_CONFIG"
CONFIG_S3_ENV = "AGENTTEST_CONFIG_S3"

PHASE_BUILDING = "Building"
# The exit code when the harness's own clock ended a step: the code `timeout(1)`
# uses, so it reads as "killed by a timer".
EXIT_TIMED_OUT = 124
PHASE_RUNNING = "Running"


def truncate(text: str, limit: int) -> str:
    """Cut text to at most ``limit`` characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str) -> str:
    """Collapse all whitespace runs, so an answer fits on one log line."""
    return " ".join(text.split())


@dataclass(frozen=True)
class CaseOutcome:
    name: str
    passed: bool
    latency_seconds: float
    output: str = ""
    failures: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "latencySeconds": round(self.latency_seconds, 3),
            "output": truncate(self.output, OUTPUT_LIMIT),
            "failures": list(self.failures),
        }


@dataclass(frozen=True)
class RunResult:
    passed: bool
    reason: str
    total_cases: int
    cases: tuple[CaseOutcome, ...] = field(default=())

    @property
    def summary(self) -> str:
        passed = sum(1 for case in self.cases if case.passed)
        return f"{passed}/{self.total_cases} cases passed"

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "result",
            "passed": self.passed,
            "reason": self.reason,
            "summary": self.summary,
            "cases": [case.to_json() for case in self.cases],
        }


def failed_setup(reason: str, total_cases: int) -> RunResult:
    """A run that never got to its cases."""
    return RunResult(passed=False, reason=reason, total_cases=total_cases)


def judge(cases: Sequence[CaseOutcome], total_cases: int) -> RunResult:
    """The result of a run whose cases all ran."""
    failed = [case.name for case in cases if not case.passed]
    if not failed:
        return RunResult(passed=True, reason="", total_cases=total_cases, cases=tuple(cases))
    names = ", ".join(failed[:5]) + (", …" if len(failed) > 5 else "")
    # The first failure often explains all of them (e.g. the model is unreachable).
    first = next(case for case in cases if not case.passed)
    detail = truncate(first.failures[0], 200) if first.failures else "failed"
    reason = f"{len(failed)} of {len(cases)} cases failed: {names}; {first.name}: {detail}"
    return RunResult(passed=False, reason=reason, total_cases=total_cases, cases=tuple(cases))


class Emitter:
    """Writes lines to the log stream, flushing each, and keeps the result line last.

    The lock matters because the watchdog thread may print the result while the main
    thread is still running a case; once a result is out, later lines are dropped.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.lock = threading.RLock()
        self._finished = False

    def _write(self, line: str) -> None:
        with self.lock:
            if self._finished:
                return
            self._stream.write(line + "\n")
            self._stream.flush()

    def log(self, message: str) -> None:
        self._write(LOG_PREFIX + message)

    def machine(self, event: dict[str, Any]) -> None:
        # ASCII-only JSON survives any container locale and log pipeline unchanged.
        self._write(MACHINE_PREFIX + json.dumps(event, separators=(",", ":")))

    def phase(self, name: str) -> None:
        self.machine({"event": "phase", "phase": name})

    def result(self, result: RunResult) -> None:
        with self.lock:
            self.machine(result.to_json())
            self._finished = True
