"""What `agenttest logs`, `wait` and `results` make of an AgentTest as read. Pure.

The log: status.logTail is a bounded window over the current execution's
output that slides as lines arrive (logtail.append). A follower sees a
sequence of those windows and prints each line once: the new part of a
window is what follows the longest overlap between the end of the previous
window and the start of this one. No overlap means the window slid past what
was printed, and the follower says lines were dropped. A new attempt starts
with an empty tail; a new execution within an attempt (an infrastructure
retry) leaves the old execution's tail in place until the new one prints.

The verdict: a test has finished when its phase is terminal and the operator
has seen its latest spec and retry annotation (what the operator itself
checks before it steps a test): a retry just requested or a spec just changed
is about to start another attempt, so the old verdict no longer counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agenttest import reports
from agenttest.models import DEFAULT_MODEL_NAME, FINISHED_PHASES, RETRY_ANNOTATION, Phase

EXIT_PASSED = 0
EXIT_FAILED = 1
# No such test, refused, unreachable, or (wait) not finished in time.
EXIT_TROUBLE = 2

DROPPED = "… (lines dropped)"
_FINISHED = {phase.value for phase in FINISHED_PHASES}


# ------------------------------------------------------------------ verdict


def status_of(test: Mapping[str, Any]) -> Mapping[str, Any]:
    return test.get("status") or {}


def phase_of(test: Mapping[str, Any]) -> str:
    return str(status_of(test).get("phase") or "")


def settled(test: Mapping[str, Any]) -> bool:
    """The operator has acted on the test's latest spec and retry annotation."""
    meta = test.get("metadata") or {}
    status = status_of(test)
    if int(meta.get("generation") or 1) != status.get("observedGeneration"):
        return False
    retry = (meta.get("annotations") or {}).get(RETRY_ANNOTATION)
    return not retry or retry == status.get("observedRetry")


def exit_code(test: Mapping[str, Any]) -> int | None:
    """EXIT_PASSED or EXIT_FAILED once the test has finished; None while it has not."""
    phase = phase_of(test)
    if phase not in _FINISHED or not settled(test):
        return None
    return EXIT_PASSED if phase == Phase.SUCCEEDED.value else EXIT_FAILED


def state_line(name: str, test: Mapping[str, Any]) -> str:
    """``name: Phase (attempt N) - message``; the queue position while it waits."""
    status = status_of(test)
    words = [f"{name}: {phase_of(test) or 'Pending'}"]
    if status.get("attempt"):
        words.append(f"(attempt {status['attempt']})")
    if status.get("queuePosition"):
        words.append(f"position {status['queuePosition']} in the queue")
    message = status.get("summary") if phase_of(test) in _FINISHED else None
    message = message or status.get("message")
    line = " ".join(words)
    return f"{line} - {reports.cut(str(message), 300)}" if message else line


# ------------------------------------------------------------------ the log


def new_lines(shown: Sequence[str], tail: Sequence[str]) -> tuple[list[str], bool]:
    """The lines of ``tail`` after what ``shown`` (the previous window) already had.

    Returns (new lines, dropped): dropped is True when the windows do not
    overlap, so lines between them were never seen. The longest overlap wins:
    a line repeated at the seam is then taken as seen, never printed twice.
    """
    if not shown:
        return list(tail), False
    if list(tail) == list(shown):
        return [], False
    for start in range(max(0, len(shown) - len(tail)), len(shown)):
        overlap = len(shown) - start
        if shown[start] == tail[0] and list(shown[start:]) == list(tail[:overlap]):
            return list(tail[overlap:]), False
    return list(tail), bool(tail)


def tail_lines(test: Mapping[str, Any]) -> list[str]:
    tail = str(status_of(test).get("logTail") or "")
    return tail.split("\n") if tail else []


@dataclass(frozen=True)
class Following:
    """What a follower has seen of a test's log."""

    attempt: int | None = None  # None: nothing seen yet
    execution: str | None = None  # the newest execution seen in this attempt
    shown: tuple[str, ...] = ()  # the window as last seen, all of it printed
    # The previous execution's tail, still in status until the new execution prints.
    stale: tuple[str, ...] | None = None
    observed_retry: str | None = None  # the retry annotation the operator last honoured


def advance(following: Following, test: Mapping[str, Any]) -> tuple[Following, list[str]]:
    """The lines to print for ``test`` as now read (markers included), and the new state."""
    status = status_of(test)
    attempt = int(status.get("attempt") or 0)
    execution = (status.get("execution") or {}).get("id")
    tail = tuple(tail_lines(test))
    out: list[str] = []
    if following.attempt is not None and attempt != following.attempt:
        # start_attempt clears the tail: everything in it now is the new attempt's.
        if following.attempt > 0:
            message = str(status.get("message") or "")
            if not message.startswith(f"attempt {attempt}:"):  # seen after its first step
                retried = status.get("observedRetry") != following.observed_retry
                message = f"attempt {attempt}" + (": retry requested" if retried else "")
            out.append(f"--- {message} ---")
        following = Following(attempt=attempt, execution=execution)
    elif execution and following.execution and execution != following.execution:
        retries = status.get("infraRetries")
        reason = f" (infrastructure retry {retries})" if retries else ""
        out.append(f"--- new execution {execution}{reason} ---")
        following = Following(attempt, execution, (), following.shown)
    following = replace(
        following,
        attempt=attempt,
        execution=execution or following.execution,
        observed_retry=status.get("observedRetry"),
    )
    if following.stale is not None:
        if tail == following.stale:
            return following, out  # the new execution has printed nothing yet
        following = replace(following, stale=None, shown=())
    lines, dropped = new_lines(following.shown, tail)
    if dropped:
        out.append(DROPPED)
    return replace(following, shown=tail), out + lines


# ------------------------------------------------------------------ results


def report_cases(test: Mapping[str, Any]) -> list[dict[str, Any]]:
    """status.cases in the shape of a report's cases, so reports.table renders them.

    A single trial records no trials or passes: it is 1 trial, passed or not.
    """
    cases = []
    for case in status_of(test).get("cases") or []:
        trials = case.get("trials") or 1
        passes = case.get("passes")
        if passes is None:
            passes = 1 if case.get("passed") else 0
        rate = case.get("passRate")
        cases.append(
            {
                "name": case.get("name", ""),
                "model": case.get("model") or DEFAULT_MODEL_NAME,
                "passed": bool(case.get("passed")),
                "passes": passes,
                "trials": trials,
                "passRate": rate if rate is not None else round(passes / trials, 4),
                "interval": case.get("interval"),
                "flaky": bool(case.get("flaky")),
                "failures": list(case.get("failures") or []),
            }
        )
    return cases


def _model_line(model: Mapping[str, Any]) -> str:
    words = [
        f"model {model.get('name')} ({model.get('modelId')}):",
        "PASS" if model.get("passed") else "FAIL",
        f"{model.get('casesPassed')} cases, {reports.rate(model.get('passRate'))} of trials",
    ]
    latency = model.get("latencySeconds") or {}
    if latency:
        words.append(f"latency mean {latency.get('mean')}s p95 {latency.get('p95')}s")
    tokens = model.get("tokens") or {}
    if tokens:
        words.append(f"tokens {tokens.get('input', 0)} in / {tokens.get('output', 0)} out")
    if model.get("costUSD") is not None:
        words.append(f"${model['costUSD']}")
    return " ".join(words[:2]) + ", " + ", ".join(words[2:])


def results_text(name: str, test: Mapping[str, Any]) -> str:
    """The state line, a line per model (a matrix), and the case table."""
    lines = [state_line(name, test)]
    models = status_of(test).get("models") or []
    if len(models) > 1:
        lines += [_model_line(model) for model in models]
    cases = report_cases(test)
    if not cases:
        lines.append("no case results yet" if phase_of(test) not in _FINISHED else "no results")
        return "\n".join(lines)
    return "\n".join([*lines, "", reports.table({"cases": cases}, verdict=True)])


def results_document(test: Mapping[str, Any]) -> dict[str, Any]:
    """The results as JSON: the status's summary fields, cases and models as recorded."""
    meta = test.get("metadata") or {}
    status = status_of(test)
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "phase": status.get("phase"),
        "finished": exit_code(test) is not None,
        "attempt": status.get("attempt"),
        "summary": status.get("summary"),
        "message": status.get("message"),
        "casesPassed": status.get("casesPassed"),
        "models": list(status.get("models") or []),
        "cases": list(status.get("cases") or []),
    }
