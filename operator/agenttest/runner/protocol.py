"""What the judge prints: readable log lines and signed machine lines for the operator.

The operator tails the execution's output live. Lines starting with MACHINE_PREFIX carry
compact JSON events, each with a sequence number and an HMAC made with the attempt's key,
which only the judge holds; the operator acts on a machine line only when it verifies.
The last line of a run is always the result event. Everything else is for people
reading the log: the judge's own lines start with LOG_PREFIX, and whatever the agent
host printed is relayed with AGENT_PREFIX, so no byte the agent under test (or its
model) writes can begin a line of the execution's output.

Line format::

    ::agenttest:: <seq> <hmac-sha256 hex> <json>

where the HMAC covers ``"<seq> <json>"``, and ``seq`` starts at 1 and only increases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from agenttest.runner.trials import matrix_passed

MACHINE_PREFIX = "::agenttest:: "
LOG_PREFIX = "[agenttest] "
AGENT_PREFIX = "[agent] "

# The judge finds the attempt's signing key (hex) here, and removes it from its
# environment before it starts anything else.
RUN_KEY_ENV = "AGENTTEST_RUN_KEY"
# The models' credentials (JSON: matrix entry name, or "@judge", to the Secret's keys),
# for the judge's gateway only: the judge removes it from its environment at once too.
MODEL_CREDENTIALS_ENV = "AGENTTEST_MODEL_CREDENTIALS"

OUTPUT_LIMIT = 2000  # characters of an answer kept in the result
LOG_ANSWER_LIMIT = 500  # characters of an answer shown in the log
FAILURE_LIMIT = 1000  # characters of one failure text kept in the result
# The result line's size: below what CloudWatch Logs keeps as one event (256 KiB).
RESULT_LINE_LIMIT = 192 * 1024
TOOL_CALLS_LIMIT = 100  # tool names kept per case in the result
# Distributions listed in the result's environment: a run's real environment has a
# hundred or two; past this the result reports none rather than an incomplete list
# (a package pinned from part of an environment is not what was tested).
ENVIRONMENT_LIMIT = 400
ENVIRONMENT_ENTRY_LIMIT = 200  # characters of one name==version
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# One environment entry: a distribution name (PEP 508) == a version made of the
# characters PEP 440 versions use. Nothing else may reach the package's requirements.txt.
PIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?==[A-Za-z0-9.+!_-]{1,64}$")

# Where the judge finds its configuration when not given --config: the JSON
# itself, or (when too large for a task's environment) an S3 URI holding it.
CONFIG_ENV = "AGENTTEST_CONFIG"
CONFIG_S3_ENV = "AGENTTEST_CONFIG_S3"

PHASE_BUILDING = "Building"
# The exit code when the judge's own clock ended a step: the code `timeout(1)`
# uses, so it reads as "killed by a timer".
EXIT_TIMED_OUT = 124
PHASE_RUNNING = "Running"


def truncate(text: str, limit: int) -> str:
    """Cut text to at most ``limit`` characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def source_digest(source: str) -> str:
    """SHA-256 of agent.py as the agent host gets it: its UTF-8, hex.

    The operator hashes its snapshot the same way (sources.Snapshot), so equal
    digests mean the package holds the bytes that ran.
    """
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def one_line(text: str) -> str:
    """Collapse all whitespace runs, so an answer fits on one log line."""
    return " ".join(text.split())


# --------------------------------------------------------------------------- signing


class ForgedLine(ValueError):
    """A line that looks like a machine line but was not written by the judge."""


def parse_run_key(text: str) -> bytes:
    """The key as the operator hands it over: hex; anything else is used as its bytes."""
    try:
        return bytes.fromhex(text)
    except ValueError:
        return text.encode()


def _mac(key: bytes, seq: int, payload: str) -> str:
    return hmac.new(key, f"{seq} {payload}".encode(), hashlib.sha256).hexdigest()


def signed_line(key: bytes, seq: int, event: dict[str, Any]) -> str:
    """One machine line; ASCII-only JSON survives any locale and log pipeline unchanged."""
    payload = json.dumps(event, separators=(",", ":"))
    return f"{MACHINE_PREFIX}{seq} {_mac(key, seq, payload)} {payload}"


def verify_line(key: bytes, line: str, after_seq: int) -> tuple[int, dict[str, Any]]:
    """The sequence number and event of a machine line that verifies.

    Raises ForgedLine for a line that starts like a machine line but does not carry
    a valid HMAC under ``key``, is not a JSON object, or repeats an older sequence
    number (a replayed line).
    """
    body = line[len(MACHINE_PREFIX) :] if line.startswith(MACHINE_PREFIX) else ""
    seq_text, _, rest = body.partition(" ")
    mac, _, payload = rest.partition(" ")
    if not seq_text.isdigit() or len(seq_text) > 12:
        raise ForgedLine("no sequence number")
    seq = int(seq_text)
    if not hmac.compare_digest(mac, _mac(key, seq, payload)):
        raise ForgedLine("bad signature")
    if seq <= after_seq:
        raise ForgedLine(f"replayed sequence number {seq}")
    try:
        event = json.loads(payload)
    except json.JSONDecodeError:
        raise ForgedLine("signed payload is not JSON") from None
    if not isinstance(event, dict):
        raise ForgedLine("signed payload is not an object")
    return seq, event


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Observation:
    """What the judge's model gateway saw while one case ran (never the agent's word)."""

    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: tuple[str, ...] = ()

    def to_json(self, tools_limit: int = TOOL_CALLS_LIMIT) -> dict[str, Any]:
        return {
            "modelCalls": self.model_calls,
            "tokens": {"input": self.input_tokens, "output": self.output_tokens},
            "toolCalls": list(self.tool_calls[:tools_limit]),
        }


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a case as the judge saw it: for the report, never the result line."""

    trial: int  # 1-based
    passed: bool
    answer: str
    error: str | None
    latency_seconds: float
    observed: Observation
    cost_usd: float | None = None
    # Each evaluator's verdict: {"name", "passed", "score", "reason"}.
    evaluators: tuple[dict[str, Any], ...] = ()
    failures: tuple[str, ...] = ()
    judge_score: float | None = None
    judge_reason: str = ""
    # The judge's own time for the trial, the answer's wait excluded: evaluating it
    # (the LLM judge's calls included, when the case has a rubric).
    evaluation_seconds: float = 0.0


@dataclass(frozen=True)
class CaseOutcome:
    """A case (of one model) over all its trials.

    output, failures and observed describe one trial: the first that failed, else
    the last; failures say how many trials had each (trials.failure_counts).
    """

    name: str
    passed: bool
    latency_seconds: float  # mean over the trials
    output: str = ""
    failures: tuple[str, ...] = ()
    observed: Observation | None = None
    model: str | None = None  # the matrix entry; None without a matrix
    trials: int = 1
    passes: int | None = None  # None: one trial, passes is 1 or 0
    interval: tuple[float, float] | None = None
    judge_score: float | None = None  # mean over the trials
    judge_reason: str = ""
    runs: tuple[TrialRecord, ...] = ()

    @property
    def pass_count(self) -> int:
        if self.passes is not None:
            return self.passes
        return 1 if self.passed else 0

    def to_json(
        self,
        output_limit: int = OUTPUT_LIMIT,
        failure_limit: int = FAILURE_LIMIT,
        list_limit: int = TOOL_CALLS_LIMIT,
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "name": self.name,
            "passed": self.passed,
            "latencySeconds": round(self.latency_seconds, 3),
            "output": truncate(self.output, output_limit),
            "failures": [
                truncate(failure, failure_limit) for failure in self.failures[:list_limit]
            ],
        }
        if self.observed is not None:
            result.update(self.observed.to_json(list_limit))
        if self.model is not None:
            result["model"] = self.model
        if self.passes is not None:
            result["trials"] = self.trials
            result["passes"] = self.passes
        if self.interval is not None:
            result["interval"] = {
                "low": round(self.interval[0], 4),
                "high": round(self.interval[1], 4),
            }
        if self.judge_score is not None:
            result["judge"] = {
                "score": round(self.judge_score, 4),
                "reason": truncate(self.judge_reason, failure_limit),
            }
        return result


@dataclass(frozen=True)
class ModelOutcome:
    """How one model did over every case and trial."""

    name: str
    provider: str
    model_id: str
    passed: bool
    cases: int
    cases_passed: int
    trials_run: int
    trials_passed: int
    latency_mean: float
    latency_p95: float
    input_tokens: int
    output_tokens: int
    cost_usd: float | None

    @property
    def pass_rate(self) -> float:
        return self.trials_passed / self.trials_run if self.trials_run else 0.0

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "name": self.name,
            "provider": self.provider,
            "modelId": self.model_id,
            "passed": self.passed,
            "cases": self.cases,
            "casesPassed": self.cases_passed,
            "passRate": round(self.pass_rate, 4),
            "latencySeconds": {
                "mean": round(self.latency_mean, 3),
                "p95": round(self.latency_p95, 3),
            },
            "tokens": {"input": self.input_tokens, "output": self.output_tokens},
        }
        if self.cost_usd is not None:
            result["costUSD"] = round(self.cost_usd, 6)
        return result


@dataclass(frozen=True)
class ReportRef:
    """Which report the result vouches for: the parts before it (runner/reports.py).

    ``sha256`` is that of the report's uncompressed UTF-8 JSON; ``parts`` how many
    signed report lines carry it. Travels in the result event as ``report``.
    """

    sha256: str
    parts: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "parts": self.parts}

    @classmethod
    def parse(cls, value: object) -> ReportRef:
        """Raises ValueError for anything to_json never writes."""
        if not isinstance(value, dict):
            raise ValueError("report is not an object")
        digest, parts = value.get("sha256"), value.get("parts")
        if not (isinstance(digest, str) and _SHA256.match(digest)):
            raise ValueError("report.sha256 is not a SHA-256 in hex")
        if not isinstance(parts, int) or isinstance(parts, bool) or not 1 <= parts <= 10_000:
            raise ValueError("report.parts is not a count of parts")
        return cls(digest, parts)


@dataclass(frozen=True)
class RunResult:
    passed: bool
    reason: str
    total_cases: int
    cases: tuple[CaseOutcome, ...] = field(default=())
    timed_out: bool = False  # the run outlived its timeout (exit code EXIT_TIMED_OUT)
    # source_digest of the agent.py handed to the agent host; "" before the config was read.
    source_sha256: str = ""
    # The agent host's distributions as name==version (requirements.environment);
    # empty when not listed (setup failed first, or more than ENVIRONMENT_LIMIT).
    environment: tuple[str, ...] = ()
    models: tuple[ModelOutcome, ...] = ()
    trials: int = 1  # per case
    # The report emitted before the result (runner/reports.py.emit_report), if any.
    report: ReportRef | None = None
    # Tokens the judge model used scoring rubrics (for the report, not the result line).
    judge_tokens: tuple[int, int] = (0, 0)

    @property
    def summary(self) -> str:
        """ "2/3 cases passed", with the pass rate over every trial when a case had several."""
        passed = sum(1 for case in self.cases if case.passed)
        text = f"{passed}/{self.total_cases} cases passed"
        if self.trials > 1 and self.cases:
            run = sum(case.trials for case in self.cases)
            passes = sum(case.pass_count for case in self.cases)
            text += f", {100 * passes / run:.0f}% of {run} trials"
        return text

    def to_json(self) -> dict[str, Any]:
        """The result event, within RESULT_LINE_LIMIT: answers are cut shorter to fit.

        One line must travel whole through every log pipeline (CloudWatch Logs
        splits events over 256 KiB), so fifty long answers share the room.
        """
        output_limit, failure_limit, list_limit = OUTPUT_LIMIT, FAILURE_LIMIT, TOOL_CALLS_LIMIT
        while True:
            event: dict[str, Any] = {
                "event": "result",
                "passed": self.passed,
                "reason": truncate(self.reason, FAILURE_LIMIT),
                "summary": self.summary,
                "cases": [
                    case.to_json(output_limit, failure_limit, list_limit) for case in self.cases
                ],
            }
            if self.source_sha256:
                event["sourceSha256"] = self.source_sha256
            if self.environment:
                event["environment"] = list(self.environment)
            if self.models:
                event["models"] = [model.to_json() for model in self.models]
            if self.trials > 1:
                event["trials"] = self.trials
            if self.report is not None:
                event["report"] = self.report.to_json()
            size = len(json.dumps(event, separators=(",", ":")))
            if size <= RESULT_LINE_LIMIT or (output_limit <= 40 and list_limit <= 2):
                return event
            output_limit, failure_limit = max(40, output_limit // 2), max(80, failure_limit // 2)
            list_limit = max(2, list_limit // 2)


@dataclass(frozen=True)
class ResultEvent:
    """A result event as read back from a verified line: RunResult.to_json's shape.

    Parsed here, beside the code that writes it, so that the two cannot drift;
    the operator turns each case into its API type.
    """

    passed: bool
    reason: str
    summary: str
    cases: tuple[dict[str, Any], ...]
    source_sha256: str | None = None
    environment: tuple[str, ...] = ()
    models: tuple[dict[str, Any], ...] = ()
    report: ReportRef | None = None

    @classmethod
    def parse(cls, event: dict[str, Any]) -> ResultEvent:
        """Raises ValueError, naming the field, for anything RunResult never writes."""
        if event.get("event") != "result":
            raise ValueError("not a result event")
        passed, cases = event.get("passed"), event.get("cases", [])
        if not isinstance(passed, bool):
            raise ValueError("passed is not true or false")
        if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
            raise ValueError("cases is not a list of objects")
        digest = event.get("sourceSha256")
        if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
            raise ValueError("sourceSha256 is not a SHA-256 in hex")
        environment = event.get("environment", [])
        # Each entry ends up a line of the package's requirements.txt: only name==version.
        if (
            not isinstance(environment, list)
            or len(environment) > ENVIRONMENT_LIMIT
            or not all(
                isinstance(entry, str)
                and len(entry) <= ENVIRONMENT_ENTRY_LIMIT
                and PIN.match(entry)
                for entry in environment
            )
        ):
            raise ValueError(f"environment is not a list of at most {ENVIRONMENT_LIMIT} pins")
        models = event.get("models", [])
        if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
            raise ValueError("models is not a list of objects")
        report = event.get("report")
        return cls(
            passed=passed,
            reason=str(event.get("reason") or ""),
            summary=str(event.get("summary") or ""),
            cases=tuple(cases),
            source_sha256=digest,
            environment=tuple(environment),
            models=tuple(models),
            report=None if report is None else ReportRef.parse(report),
        )


def failed_setup(reason: str, total_cases: int) -> RunResult:
    """A run that never got to its cases."""
    return RunResult(passed=False, reason=reason, total_cases=total_cases)


def case_label(case: CaseOutcome) -> str:
    """A case's name, with its model in a matrix: "refund [small]"."""
    return f"{case.name} [{case.model}]" if case.model is not None else case.name


def verdict(
    cases: Sequence[CaseOutcome],
    total_cases: int,
    models: Sequence[ModelOutcome] = (),
    policy: str = "all",
    trials: int = 1,
) -> RunResult:
    """The result of a run whose cases all ran.

    With several models, each passes when all its cases did, and ``policy`` ("all"
    or "any") turns theirs into the test's.
    """
    failed = [case for case in cases if not case.passed]
    if len(models) > 1:
        passed = matrix_passed([model.passed for model in models], policy)
    else:
        passed = not failed
    result = RunResult(
        passed=passed,
        reason="",
        total_cases=total_cases,
        cases=tuple(cases),
        models=tuple(models),
        trials=trials,
    )
    if not failed:
        return result
    names = ", ".join(case_label(case) for case in failed[:5]) + (", …" if len(failed) > 5 else "")
    # The first failure often explains all of them (e.g. the model is unreachable).
    first = failed[0]
    detail = truncate(first.failures[0], 200) if first.failures else "failed"
    reason = f"{len(failed)} of {len(cases)} cases failed: {names}; {case_label(first)}: {detail}"
    if len(models) > 1:
        good = [model.name for model in models if model.passed]
        reason = f"models passed: {', '.join(good) or 'none'} (matrixPolicy {policy}); " + reason
    return dataclasses.replace(result, reason=reason)


class Redacting(Protocol):
    """Masks secret values in text and in JSON-ready values."""

    def __bool__(self) -> bool: ...

    def text(self, text: str) -> str: ...

    def value(self, value: Any) -> Any: ...

    def raw(self, data: bytes) -> bytes: ...

    @property
    def longest(self) -> int: ...


class Emitter:
    """Writes lines to the log stream, flushing each, and keeps the result line last.

    The lock matters because relay threads print the agent host's output while the main
    thread reports cases; once a result is out, later lines are dropped.
    """

    def __init__(self, stream: TextIO, key: bytes) -> None:
        self._stream = stream
        self._key = key
        self._seq = 0
        self.lock = threading.RLock()
        self._finished = False
        # Masks the models' credentials in every line (modelauth.Redactor), once known.
        self.redactor: Redacting | None = None

    def _write(self, line: str) -> None:
        with self.lock:
            if self._finished:
                return
            self._stream.write(line + "\n")
            self._stream.flush()

    def redact(self, text: str) -> str:
        """``text`` with the models' credentials masked."""
        return self.redactor.text(text) if self.redactor else text

    def log(self, message: str) -> None:
        self._write(LOG_PREFIX + self.redact(message))

    def relay(self, line: str) -> None:
        """A line the agent host printed, already made safe by the relay."""
        self._write(AGENT_PREFIX + self.redact(line))

    def machine(self, event: dict[str, Any]) -> None:
        if self.redactor:
            # Before signing: what is signed is what the operator reads.
            event = self.redactor.value(event)
        with self.lock:
            self._seq += 1
            self._write(signed_line(self._key, self._seq, event))

    def phase(self, name: str) -> None:
        self.machine({"event": "phase", "phase": name})

    def result(self, result: RunResult) -> None:
        with self.lock:
            self.machine(result.to_json())
            self._finished = True
