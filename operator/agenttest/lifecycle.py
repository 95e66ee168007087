"""The AgentTest lifecycle as pure functions: facts in, the new status and what to do out.

    Pending -> Queued -> Building -> Running -> Succeeded
                                            \\-> Failed | TimedOut | Cancelled | Error

Nothing here does I/O or reads a clock; the controller gathers the facts (the
test, what its executor observed, what was read of its logs, the time) and
performs the action decided here. Every function returns a new status and
leaves its argument alone. The two decisions a step is made of are `begin`
(attempts, cancel, admission: what the step is for) and `follow` (what an
execution's state and output mean for the test).
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from agenttest import conditions, reports
from agenttest.executions import ExecutionState, Observation
from agenttest.logtail import Progress
from agenttest.models import (
    AgentTest,
    AgentTestSpec,
    AgentTestStatus,
    Backend,
    CaseResult,
    ConditionType,
    Execution,
    ModelResult,
    PackageRef,
    Phase,
    Reports,
)
from agenttest.runner.protocol import EXIT_TIMED_OUT, PHASE_RUNNING, ReportRef, ResultEvent

# Fields of the spec that define what a run does; changing any of them starts
# a new attempt. priority, cancel and ttlSecondsAfterFinished do not.
RUN_FIELDS = ("agent", "model", "cases", "backend", "timeout_seconds", "resources", "package")


def timestamp(now: datetime.datetime) -> str:
    return conditions.stamp(now)


def parse_timestamp(value: str | None) -> datetime.datetime | None:
    """A timestamp from status; None when absent or not a time (status is writable by others)."""
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


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
        # its own package and report, so the old Packaged and Reported conditions go.
        conditions=conditions.without(
            conditions.without(status.conditions, ConditionType.PACKAGED),
            ConditionType.REPORTED,
        ),
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


def queue_position(
    status: AgentTestStatus, position: int | None, now: datetime.datetime
) -> AgentTestStatus:
    """Still waiting, at `position`; a retry backoff that is over is dropped: from now on
    the test waits for a slot like any other."""
    update: dict[str, Any] = {"queue_position": position}
    retry_at = parse_timestamp(status.retry_after)
    if retry_at is not None and retry_at <= now:
        update["retry_after"] = None
    return status.model_copy(update=update)


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


def progressed(status: AgentTestStatus, runner_phase: Phase | None) -> AgentTestStatus:
    """Building -> Running when the runner says it runs the cases."""
    if runner_phase == Phase.RUNNING and status.phase == Phase.BUILDING:
        return status.model_copy(update={"phase": Phase.RUNNING, "message": "running cases"})
    return status


def timed_out(status: AgentTestStatus, timeout_seconds: int, now: datetime.datetime) -> bool:
    """Raises ValueError when the start time cannot be read: a test must not escape its timeout."""
    value = status.execution.started_at if status.execution else None
    started = parse_timestamp(value)
    if value and started is None:
        raise ValueError(f"status.execution.startedAt {value!r} is not a time")
    return started is not None and (now - started).total_seconds() > timeout_seconds


# --------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerResult:
    """The judge's final machine line, after its signature verified."""

    passed: bool
    reason: str = ""
    summary: str = ""
    cases: list[CaseResult] = field(default_factory=list)
    # What the package is made from (sources.py): the digest of the agent.py the
    # judge ran, and the agent host's distributions.
    source_sha256: str | None = None
    environment: list[str] = field(default_factory=list)
    models: list[ModelResult] = field(default_factory=list)
    report: ReportRef | None = None  # the report sent before the result, if any

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> RunnerResult:
        """Raises ValueError (pydantic's ValidationError is one) for a shape it cannot use."""
        read = ResultEvent.parse(event)
        return cls(
            passed=read.passed,
            reason=read.reason,
            summary=read.summary,
            cases=[case_result(case) for case in read.cases],
            source_sha256=read.source_sha256,
            environment=list(read.environment),
            models=[model_result(model) for model in read.models],
            report=read.report,
        )


def case_result(case: dict[str, Any]) -> CaseResult:
    """A case of the judge's result as the status shows it: the rate and flakiness derived."""
    result = CaseResult.model_validate(case)
    if result.trials and result.passes is not None:
        if not 0 <= result.passes <= result.trials:
            raise ValueError(f"case {result.name}: passes {result.passes} of {result.trials}")
        result.pass_rate = round(result.passes / result.trials, 4)
        result.flaky = 0 < result.passes < result.trials
    return result


def model_result(model: dict[str, Any]) -> ModelResult:
    """One model of the judge's result (ModelOutcome.to_json) as the status shows it."""
    cases, passed = int(model.get("cases") or 0), int(model.get("casesPassed") or 0)
    return ModelResult.model_validate(
        {**model, "casesPassed": f"{passed}/{cases}", "passed": bool(model.get("passed"))}
    )


def case_label(case: CaseResult) -> str:
    """How a case is named where a matrix can repeat it: "refund [small]"."""
    return case.name if case.model is None else f"{case.name} [{case.model}]"


def expected_case_labels(spec: AgentTestSpec) -> list[str]:
    """The cases a full result names, in order: each case of each model."""
    if not spec.matrix:
        return [case.name for case in spec.cases]
    return [f"{case.name} [{model.name}]" for model in spec.model_entries() for case in spec.cases]


def flaky_cases(status: AgentTestStatus) -> list[str]:
    """Cases some of whose trials passed and some failed, e.g. "refund 3/5"."""
    return [
        f"{case_label(case)} {case.passes}/{case.trials}" for case in status.cases if case.flaky
    ]


def outcome(
    result: RunnerResult | None,
    exit_code: int | None,
    last_line: str,
    reason: str = "",
    expected_cases: list[str] | None = None,
    forged: int = 0,
    trials: int = 1,
) -> tuple[Phase, str]:
    """Decide the final phase from the verified result, the exit code and why it ended.

    Only a verified result can pass, and only when it names exactly the spec's
    cases and the judge also exited 0: a pass is never inferred from anything else.
    """
    phase, message = _outcome(result, exit_code, last_line, reason, expected_cases, trials)
    if forged:
        lines = "line" if forged == 1 else "lines"
        message += f"; {forged} forged machine {lines} ignored"
    return phase, message


def _outcome(
    result: RunnerResult | None,
    exit_code: int | None,
    last_line: str,
    reason: str,
    expected_cases: list[str] | None,
    trials: int = 1,
) -> tuple[Phase, str]:
    if exit_code == EXIT_TIMED_OUT:
        return Phase.TIMED_OUT, (result.reason if result else "") or "the runner timed out"
    if result is not None:
        named = [case_label(case) for case in result.cases]
        if expected_cases is not None and result.cases and named != expected_cases:
            return Phase.ERROR, (
                f"the verified result names cases {named}, not the spec's {expected_cases}"
            )
        if result.passed and exit_code != 0:
            return Phase.FAILED, f"the runner reported a pass but exited with code {exit_code}"
        if result.passed and expected_cases is not None and named != expected_cases:
            return Phase.FAILED, "the runner reported a pass without running the spec's cases"
        if result.passed and any((case.trials or 1) != trials for case in result.cases):
            return Phase.FAILED, f"the runner reported a pass without running {trials} trials"
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
    result: RunnerResult | None = None,
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
        update["cases_passed"] = cases_column(result.cases)
        update["summary"] = result.summary or f"{passed}/{len(result.cases)} cases passed"
        update["models"] = result.models
        update["environment"] = result.environment
        if status.source is not None:
            tested = {"tested_sha256": result.source_sha256}
            update["source"] = status.source.model_copy(update=tested)
    else:
        update["summary"] = f"{phase.value}: {message}"
    return status.model_copy(update=update)


def cases_column(cases: list[CaseResult]) -> str | None:
    """ "2/3", and with several trials per case the pass rate over all of them: "2/3 (87%)"."""
    if not cases:
        return None
    passed = sum(1 for case in cases if case.passed)
    text = f"{passed}/{len(cases)}"
    trials = sum(case.trials or 1 for case in cases)
    if trials > len(cases):
        passes = sum(case.passes if case.passes is not None else int(case.passed) for case in cases)
        text += f" ({100 * passes / trials:.0f}%)"
    return text


def unreadable(
    status: AgentTestStatus, what: str, error: str, generation: int, now: datetime.datetime
) -> AgentTestStatus:
    """A spec or status the operator cannot parse: Error, said once.

    The generation is recorded as observed, so the test is not stepped again
    (and the Error not said again) until someone changes it.
    """
    ended = finish(status, Phase.ERROR, f"invalid {what}: {error}", now)
    return ended.model_copy(update={"observed_generation": generation})


def too_large(status: AgentTestStatus, now: datetime.datetime) -> AgentTestStatus:
    """What is written instead of a status the API server refused for its size."""
    kept = AgentTestStatus(
        attempt=status.attempt,
        backend=status.backend,
        execution=status.execution,
        infra_retries=status.infra_retries,
        observed_generation=status.observed_generation,
        observed_retry=status.observed_retry,
        spec_hash=status.spec_hash,
        conditions=status.conditions,
    )
    message = "the status was too large for the API server to store; its results were dropped"
    return with_conditions(
        finish(kept, Phase.ERROR, message, now), status.observed_generation or 0, now
    )


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


def launch_deferred(
    status: AgentTestStatus, reason: str, now: datetime.datetime, delay_seconds: float
) -> AgentTestStatus:
    """A launch refused for now (throttled, a 5xx): stay Queued, try again after the delay.

    Unlike `infra_failure`, nothing is counted: no execution was lost, a call
    was refused, and the next launch uses the same key, so it finds whatever
    the refused one started instead of starting another.
    """
    return status.model_copy(
        update={
            "phase": Phase.QUEUED,
            "message": f"launch deferred: {reason}",
            "retry_after": timestamp(now + datetime.timedelta(seconds=delay_seconds)),
            "execution": None,
        }
    )


# --------------------------------------------------------------------------
# Conditions
# --------------------------------------------------------------------------


def with_conditions(
    status: AgentTestStatus, generation: int, now: datetime.datetime
) -> AgentTestStatus:
    """Ready and Succeeded derived from the phase.

    Succeeded follows Tekton: Unknown while in progress, then True or False.
    Ready follows kstatus: False until the test has succeeded, so
    `kubectl wait --for=condition=Ready` waits for a passing test.
    Conditions owned by other steps (Packaged) stay as they were.
    """
    phase = status.phase or Phase.PENDING
    message = status.message or ""
    succeeded: conditions.Status
    ready: conditions.Status
    if phase == Phase.SUCCEEDED:
        succeeded, ready = "True", "True"
    elif phase.finished:
        succeeded, ready = "False", "False"
    else:
        succeeded, ready = "Unknown", "False"
    listed = conditions.set_condition(
        status.conditions, ConditionType.READY, ready, phase.value, message, generation, now
    )
    listed = conditions.set_condition(
        listed, ConditionType.SUCCEEDED, succeeded, phase.value, message, generation, now
    )
    return status.model_copy(update={"conditions": listed})


def packaged(
    status: AgentTestStatus,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
    package: PackageRef | None = None,
    packages: list[PackageRef] | None = None,
) -> AgentTestStatus:
    """Record the outcome of packaging a passing test (the Packaged condition, packageRef)."""
    update: dict[str, Any] = {}
    if package is not None:
        update["package_ref"] = package
    if packages:
        update["packages"] = packages
    kind = ConditionType.PACKAGED
    return _settled(status, kind, ok, reason, message, generation, now, update)


def _settled(
    status: AgentTestStatus,
    kind: ConditionType,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
    update: dict[str, Any],
) -> AgentTestStatus:
    """A step after the verdict (packaging, reporting) done, or refused for good."""
    listed = conditions.set_condition(
        status.conditions, kind, "True" if ok else "False", reason, message, generation, now
    )
    return status.model_copy(update={**update, "conditions": listed})


def wants_step(
    status: AgentTestStatus, package_enabled: bool, generation: int, retry: str | None
) -> bool:
    """Unfinished; passed but not yet packaged; or finished and asked for a new attempt."""
    if status.phase is None or not status.phase.finished:
        return True
    if needs_package(status, package_enabled) or needs_report(status):
        return True
    return (retry is not None and retry != status.observed_retry) or (
        generation != status.observed_generation
    )


def finished_at(status: AgentTestStatus) -> datetime.datetime | None:
    """When the test finished: its execution's end, else when Succeeded last flipped."""
    succeeded = conditions.get(status.conditions, ConditionType.SUCCEEDED)
    return parse_timestamp(
        (status.execution.completed_at if status.execution else None)
        or (succeeded.last_transition_time if succeeded else None)
    )


def needs_package(status: AgentTestStatus, enabled: bool) -> bool:
    """A passing test whose package has been neither made nor refused yet.

    Not while its report is being stored: the package holds the stored report.
    """
    return (
        enabled
        and status.phase == Phase.SUCCEEDED
        and not conditions.has(status.conditions, ConditionType.PACKAGED)
        and not needs_report(status)
    )


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------

REPORT_PENDING = "Pending"


def needs_report(status: AgentTestStatus) -> bool:
    """A finished test whose report arrived and is neither stored nor refused yet."""
    reported = conditions.get(status.conditions, ConditionType.REPORTED)
    return (
        status.phase is not None
        and status.phase.finished
        and reported is not None
        and reported.status == "Unknown"
    )


def report_arrived(
    status: AgentTestStatus, assembled: reports.Assembled | None, now: datetime.datetime
) -> AgentTestStatus:
    """A finished status with what became of the report its result named.

    Assembled: Reported=Unknown until the controller has stored it. Not: said once,
    in the message (and so in the phase's Event) and in Reported=False.
    """
    if assembled is None:
        return status
    generation = status.observed_generation or 0
    if assembled.document is not None:
        listed = conditions.set_condition(
            status.conditions,
            ConditionType.REPORTED,
            "Unknown",
            REPORT_PENDING,
            "storing the report",
            generation,
            now,
        )
        return status.model_copy(update={"conditions": listed})
    problem = f"the report cannot be read: {assembled.problem}; none is stored"
    listed = conditions.set_condition(
        status.conditions,
        ConditionType.REPORTED,
        "False",
        "ReportUnreadable",
        problem,
        generation,
        now,
    )
    message = f"{status.message}; {problem}" if status.message else problem
    return status.model_copy(update={"conditions": listed, "message": message})


def reported(
    status: AgentTestStatus,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
    stored: Reports | None = None,
) -> AgentTestStatus:
    """Record the outcome of storing a report (the Reported condition, status.reports)."""
    update: dict[str, Any] = {} if stored is None else {"reports": stored}
    kind = ConditionType.REPORTED
    return _settled(status, kind, ok, reason, message, generation, now, update)


# --------------------------------------------------------------------------
# A step's decisions
# --------------------------------------------------------------------------


class Next(enum.Enum):
    """What a step does after `begin`."""

    NOTHING = "nothing"  # finished, or nothing to do
    CANCEL = "cancel"  # stop the execution (if any) and end Cancelled
    LAUNCH = "launch"  # queued: ask the scheduler for a slot, launch if one is free
    FOLLOW = "follow"  # holds an execution: observe it and read its logs


@dataclass(frozen=True)
class Begun:
    status: AgentTestStatus
    next: Next
    stop_previous: bool = False  # a new attempt supersedes a running execution
    # The statuses passed through on the way (a new attempt, admission), for Events.
    passed: tuple[AgentTestStatus, ...] = ()


def begin(test: AgentTest, default_backend: Backend) -> Begun:
    """Attempts, spec changes, cancel and admission: what this step is for."""
    status, spec = test.status, test.spec
    stop_previous = False
    passed: list[AgentTestStatus] = []
    reason = new_attempt_reason(status, spec, test.generation, test.retry)
    if reason:
        stop_previous = (
            status.execution is not None and status.phase is not None and not status.phase.finished
        )
        status = start_attempt(status, spec, test.generation, test.retry, reason)
        passed.append(status)
    elif test.generation != status.observed_generation:
        status = observe_spec(status, spec, test.generation)

    if status.phase is None or status.phase.finished:
        return Begun(status, Next.NOTHING, stop_previous, tuple(passed))
    if spec.cancel:
        return Begun(status, Next.CANCEL, stop_previous, tuple(passed))
    if status.phase == Phase.PENDING:
        status = admit(status, spec.backend or default_backend)
        passed.append(status)
    if status.phase == Phase.QUEUED:
        return Begun(status, Next.LAUNCH, stop_previous, tuple(passed))
    return Begun(status, Next.FOLLOW, stop_previous, tuple(passed))


@dataclass(frozen=True)
class RetryPolicy:
    """Infrastructure failures retried per attempt, and the first backoff."""

    max_retries: int = 3
    backoff_seconds: float = 5.0


class Act(enum.Enum):
    """What the controller does with an execution after `follow`."""

    KEEP = "keep"  # still going: look again at the next poll
    AWAIT_LOGS = "await-logs"  # exited, its last lines may still be on their way
    STOP = "stop"  # stop it, keep its last output, then end as `stop_phase` says
    DONE = "done"  # the test's phase is final (or it is requeued): forget the execution


@dataclass(frozen=True)
class Followed:
    status: AgentTestStatus
    act: Act
    stop_phase: Phase | None = None
    stop_reason: str = ""
    # When the execution was first seen exited without a result (log grace).
    exited_at: datetime.datetime | None = None
    # The report the verified result named, assembled: for the controller to store.
    report: dict[str, Any] | None = None


def follow(
    status: AgentTestStatus,
    spec: AgentTestSpec,
    observation: Observation,
    progress: Progress,
    now: datetime.datetime,
    log_grace_seconds: float,
    retry: RetryPolicy,
) -> Followed:
    """What the executor observed and the logs said, for a test holding an execution."""
    status = status.model_copy(
        update={
            "log_tail": progress.tail or status.log_tail,
            "forged_lines": progress.forged or status.forged_lines,
        }
    )
    over_time = timed_out(status, spec.timeout_seconds, now)
    if observation.state == ExecutionState.EXITED:
        exited_at = progress.exited_at or now
        in_grace = (now - exited_at).total_seconds() < log_grace_seconds
        if progress.result is None and (progress.throttled or in_grace) and not over_time:
            return Followed(status, Act.AWAIT_LOGS, exited_at=exited_at)
        ended, report = _ended(status, spec, observation, progress, now)
        return Followed(ended, Act.DONE, report=report)
    if observation.state == ExecutionState.MISSING:
        if observation.infra_failure:
            retried = infra_failure(
                status, observation.reason, now, retry.max_retries, retry.backoff_seconds
            )
            return Followed(retried, Act.DONE)
        return Followed(finish(status, Phase.ERROR, observation.reason, now), Act.DONE)
    if over_time:
        reason = f"timed out after {spec.timeout_seconds}s"
        return Followed(status, Act.STOP, Phase.TIMED_OUT, reason)
    running = Phase.RUNNING if progress.runner_phase == PHASE_RUNNING else None
    status = progressed(status, running)
    if observation.state == ExecutionState.STARTING and observation.reason:
        status = status.model_copy(update={"message": observation.reason})
    return Followed(status, Act.KEEP)


def _ended(
    status: AgentTestStatus,
    spec: AgentTestSpec,
    observation: Observation,
    progress: Progress,
    now: datetime.datetime,
) -> tuple[AgentTestStatus, dict[str, Any] | None]:
    """The final status of an execution that exited, and the report its result named."""
    if observation.timed_out:
        return finish(status, Phase.TIMED_OUT, observation.reason, now), None
    try:
        result = RunnerResult.from_event(progress.result) if progress.result else None
    except ValueError as error:
        reason = f"the runner's result cannot be read: {error}"
        return finish(status, Phase.ERROR, reason, now), None
    phase, message = outcome(
        result,
        observation.exit_code,
        progress.last_line,
        observation.reason,
        expected_cases=expected_case_labels(spec),
        forged=progress.forged,
        trials=spec.trials,
    )
    ended = finish(status, phase, message, now, result)
    if result is None:
        return ended, None
    assembled = reports.assemble(result.report, progress.report_parts, progress.report_problem)
    return report_arrived(ended, assembled, now), assembled.document if assembled else None


def stopped(
    status: AgentTestStatus, phase: Phase, message: str, tail: str, now: datetime.datetime
) -> AgentTestStatus:
    """An execution the operator stopped (cancel, timeout), with its last output kept."""
    return finish(
        status.model_copy(update={"log_tail": tail or status.log_tail}), phase, message, now
    )
