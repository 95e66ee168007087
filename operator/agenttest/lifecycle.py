"""The AgentTest lifecycle as pure functions: (status, observation, now) -> status.

    Pending -> Queued -> Building -> Running -> Succeeded
                                            \\-> Failed | TimedOut | Cancelled | Error

Nothing here does I/O or reads a clock; handlers pass `now` in. Every
function returns a new status and leaves its argument alone.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from agenttest.models import (
    AgentTestSpec,
    AgentTestStatus,
    Backend,
    CaseResult,
    Condition,
    Execution,
    PackageRef,
    Phase,
)
from agenttest.runner.protocol import EXIT_TIMED_OUT

# Fields of the spec that define what a run does; changing any of them starts
# a new attempt. priority, cancel and ttlSecondsAfterFinished do not.
RUN_FIELDS = ("agent", "model", "cases", "backend", "timeout_seconds", "resources", "package")


def timestamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_fingerprint(spec: AgentTestSpec) -> str:
    fields = spec.model_dump(mode="json", include=set(RUN_FIELDS))
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


# --------------------------------------------------------------------------
# Attempts
# --------------------------------------------------------------------------


def new_attempt_reason(
    status: AgentTestStatus, spec: AgentTestSpec, generation: int, retry: str | None
) -> str | None:
    """Why a new attempt must start, or None. Cancel always wins over a restart."""
    if spec.cancel:
        return None
    if status.attempt == 0:
        return "first attempt"
    if retry and retry != status.observed_retry:
        return "retry requested by the agenttest.dev/retry annotation"
    if generation != status.observed_generation:
        if status.spec_hash != run_fingerprint(spec):
            return f"spec changed (generation {generation})"
        if status.phase == Phase.CANCELLED:
            return "cancel cleared"
    return None


def start_attempt(
    status: AgentTestStatus,
    spec: AgentTestSpec,
    generation: int,
    retry: str | None,
    reason: str,
) -> AgentTestStatus:
    """A fresh attempt, Pending, with everything of the previous one cleared."""
    return AgentTestStatus(
        phase=Phase.PENDING,
        message=f"attempt {status.attempt + 1}: {reason}",
        attempt=status.attempt + 1,
        observed_generation=generation,
        observed_retry=retry or status.observed_retry,
        spec_hash=run_fingerprint(spec),
        # Keep Ready/Succeeded for their transition times; a new attempt gets
        # its own package, so the old Packaged condition goes.
        conditions=[c for c in status.conditions if c.type != "Packaged"],
        log_tail=None,
        forged_lines=None,
    )


def observe_spec(status: AgentTestStatus, spec: AgentTestSpec, generation: int) -> AgentTestStatus:
    """Record a spec change that needs no new attempt (priority, ttl, cancel)."""
    return status.model_copy(
        update={"observed_generation": generation, "spec_hash": run_fingerprint(spec)}
    )


# --------------------------------------------------------------------------
# Queue and launch
# --------------------------------------------------------------------------


def admit(status: AgentTestStatus, backend: Backend) -> AgentTestStatus:
    """Pending -> Queued on the chosen backend."""
    return status.model_copy(
        update={"phase": Phase.QUEUED, "backend": backend, "message": "waiting for a slot"}
    )


def queue_position(status: AgentTestStatus, position: int | None) -> AgentTestStatus:
    return status.model_copy(update={"queue_position": position})


def launched(
    status: AgentTestStatus, backend: Backend, execution_id: str, now: datetime.datetime
) -> AgentTestStatus:
    """Queued -> Building: the backend accepted the execution."""
    return status.model_copy(
        update={
            "phase": Phase.BUILDING,
            "queue_position": None,
            "retry_after": None,
            "message": f"launched on {backend.value}",
            "execution": Execution(backend=backend, id=execution_id, started_at=timestamp(now)),
        }
    )


def progressed(status: AgentTestStatus, harness_phase: Phase | None) -> AgentTestStatus:
    """Building -> Running when the harness says it runs the cases."""
    if harness_phase == Phase.RUNNING and status.phase == Phase.BUILDING:
        return status.model_copy(update={"phase": Phase.RUNNING, "message": "running cases"})
    return status


def timed_out(status: AgentTestStatus, timeout_seconds: int, now: datetime.datetime) -> bool:
    started = parse_timestamp(status.execution.started_at if status.execution else None)
    return started is not None and (now - started).total_seconds() > timeout_seconds


# --------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HarnessResult:
    """The judge's final machine line, after its signature verified."""

    passed: bool
    reason: str = ""
    summary: str = ""
    cases: list[CaseResult] = field(default_factory=list)

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> HarnessResult:
        return cls(
            passed=event.get("passed") is True,
            reason=str(event.get("reason") or ""),
            summary=str(event.get("summary") or ""),
            cases=[CaseResult.model_validate(case) for case in event.get("cases") or []],
        )


def outcome(
    result: HarnessResult | None,
    exit_code: int | None,
    last_line: str,
    reason: str = "",
    expected_cases: list[str] | None = None,
    forged: int = 0,
) -> tuple[Phase, str]:
    """Decide the final phase from the verified result, the exit code and why it ended.

    Only a verified result can pass, and only when it names exactly the spec's
    cases and the judge also exited 0: a pass is never inferred from anything else.
    """
    phase, message = _outcome(result, exit_code, last_line, reason, expected_cases)
    if forged:
        lines = "line" if forged == 1 else "lines"
        message += f"; {forged} forged machine {lines} ignored"
    return phase, message


def _outcome(
    result: HarnessResult | None,
    exit_code: int | None,
    last_line: str,
    reason: str,
    expected_cases: list[str] | None,
) -> tuple[Phase, str]:
    if exit_code == EXIT_TIMED_OUT:
        return Phase.TIMED_OUT, (result.reason if result else "") or "the runner timed out"
    if result is not None:
        named = [case.name for case in result.cases]
        if expected_cases is not None and result.cases and named != expected_cases:
            return Phase.ERROR, (
                f"the verified result names cases {named}, not the spec's {expected_cases}"
            )
        if result.passed and exit_code != 0:
            return Phase.FAILED, f"the runner reported a pass but exited with code {exit_code}"
        if result.passed and expected_cases is not None and named != expected_cases:
            return Phase.FAILED, "the runner reported a pass without running the spec's cases"
        if result.passed:
            return Phase.SUCCEEDED, result.summary or "all cases passed"
        # The judge's reason already names the first failure; say it once.
        return Phase.FAILED, result.reason or "the test failed"
    why = f" ({reason})" if reason else ""
    tail = f"; last output: {last_line}" if last_line else ""
    if exit_code == 0:
        return Phase.ERROR, f"the runner exited without a verified result{tail}"
    return (
        Phase.FAILED,
        f"the runner exited with code {exit_code}{why} without a verified result{tail}",
    )


def finish(
    status: AgentTestStatus,
    phase: Phase,
    message: str,
    now: datetime.datetime,
    result: HarnessResult | None = None,
) -> AgentTestStatus:
    """Any phase -> a finished phase, with results, summary and duration."""
    update: dict[str, Any] = {
        "phase": phase,
        "message": message,
        "queue_position": None,
        "retry_after": None,
    }
    if status.execution is not None:
        execution = status.execution.model_copy(update={"completed_at": timestamp(now)})
        update["execution"] = execution
        started = parse_timestamp(execution.started_at)
        if started is not None:
            update["duration"] = format_duration((now - started).total_seconds())
    if result is not None:
        passed = sum(1 for case in result.cases if case.passed)
        update["cases"] = result.cases
        update["cases_passed"] = f"{passed}/{len(result.cases)}" if result.cases else None
        update["summary"] = result.summary or f"{passed}/{len(result.cases)} cases passed"
    else:
        update["summary"] = f"{phase.value}: {message}"
    return status.model_copy(update=update)


def infra_failure(
    status: AgentTestStatus,
    reason: str,
    now: datetime.datetime,
    max_retries: int,
    backoff_seconds: float,
) -> AgentTestStatus:
    """Lost capacity or a lost execution: requeue with backoff, then give up as Error.

    The attempt number stays: the test did not fail, the infrastructure did.
    """
    if status.infra_retries >= max_retries:
        return finish(
            status,
            Phase.ERROR,
            f"infrastructure failure after {max_retries} retries: {reason}",
            now,
        )
    delay = backoff_seconds * (2**status.infra_retries)
    return status.model_copy(
        update={
            "phase": Phase.QUEUED,
            "message": f"retrying after infrastructure failure: {reason}",
            "infra_retries": status.infra_retries + 1,
            "retry_after": timestamp(now + datetime.timedelta(seconds=delay)),
            "execution": None,
        }
    )


# --------------------------------------------------------------------------
# Conditions
# --------------------------------------------------------------------------


def _condition(
    previous: list[Condition],
    kind: str,
    state: str,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
) -> Condition:
    old = next((c for c in previous if c.type == kind), None)
    # lastTransitionTime moves only when the status flips (API conventions).
    moved = old is None or old.status != state or old.last_transition_time is None
    return Condition(
        type=kind,
        status=state,  # type: ignore[arg-type]
        reason=reason,
        message=message,
        last_transition_time=timestamp(now) if moved else old.last_transition_time,  # type: ignore[union-attr]
        observed_generation=generation,
    )


def with_conditions(
    status: AgentTestStatus, generation: int, now: datetime.datetime
) -> AgentTestStatus:
    """Ready and Succeeded derived from the phase.

    Succeeded follows Tekton: Unknown while in progress, then True or False.
    Ready follows kstatus: False until the test has succeeded, so
    `kubectl wait --for=condition=Ready` waits for a passing test.
    """
    phase = status.phase or Phase.PENDING
    message = status.message or ""
    if phase == Phase.SUCCEEDED:
        succeeded, ready = "True", "True"
    elif phase.finished:
        succeeded, ready = "False", "False"
    else:
        succeeded, ready = "Unknown", "False"
    conditions = [
        _condition(status.conditions, "Ready", ready, phase.value, message, generation, now),
        _condition(
            status.conditions, "Succeeded", succeeded, phase.value, message, generation, now
        ),
    ]
    # Conditions owned by other steps (Packaged) stay as they were.
    conditions += [c for c in status.conditions if c.type not in ("Ready", "Succeeded")]
    return status.model_copy(update={"conditions": conditions})


def packaged(
    status: AgentTestStatus,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
    package_name: str | None = None,
) -> AgentTestStatus:
    """Record the outcome of packaging a passing test (the Packaged condition)."""
    condition = _condition(
        status.conditions,
        "Packaged",
        "True" if ok else "False",
        reason,
        message,
        generation,
        now,
    )
    others = [c for c in status.conditions if c.type != "Packaged"]
    update: dict[str, Any] = {"conditions": [*others, condition]}
    if package_name:
        update["package_ref"] = PackageRef(name=package_name)
    return status.model_copy(update=update)


def needs_package(status: AgentTestStatus, enabled: bool) -> bool:
    """A passing test whose package has been neither made nor refused yet."""
    return (
        enabled
        and status.phase == Phase.SUCCEEDED
        and not any(c.type == "Packaged" for c in status.conditions)
    )
