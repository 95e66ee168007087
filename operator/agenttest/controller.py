"""One reconciliation step of an AgentTest: decide with pure code, act through executors.

`reconcile` is called by the handlers about once a second per unfinished
test. It reads the test, asks `lifecycle` and `queue` what should happen,
performs the side effects (launch, stop, read logs) through the test's
executor, and returns the new status; the handler writes it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from pydantic import ValidationError

from agenttest import lifecycle, logtail, packaging, queue, runkeys
from agenttest.backends.base import (
    BackendUnavailable,
    ExecutionKey,
    ExecutionState,
    Executor,
    LaunchRefused,
    LaunchRequest,
)
from agenttest.models import AgentTestSpec, AgentTestStatus, Backend, Phase
from agenttest.publishing import Publisher
from agenttest.runner.protocol import PHASE_RUNNING
from agenttest.settings import Settings
from agenttest.sources import SourceUnavailable, fetch_source, harness_config

logger = logging.getLogger(__name__)

# Bounded so that one chatty execution cannot hold a step for long.
MAX_LOG_READS_PER_STEP = 16


@dataclass(frozen=True)
class TestView:
    """The parts of an AgentTest a step reads."""

    __test__ = False  # not a pytest class

    uid: str
    namespace: str
    name: str
    generation: int
    spec: AgentTestSpec
    status: AgentTestStatus
    retry: str | None = None


@dataclass
class Scheduler:
    """Slot accounting shared by all tests of this operator.

    The API server's view (the kopf index) lags our own writes by a watch
    event; the phases we last wrote are overlaid on it so two tests can never
    take the same free slot.
    """

    limit: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _written: dict[str, tuple[Phase | None, datetime.datetime | None]] = field(default_factory=dict)
    # Every queued test asks once a second; with hundreds queued, one plan
    # serves them all until a phase changes or it is PLAN_TTL old.
    _plan: tuple[int, datetime.datetime, queue.QueuePlan] | None = None
    _version: int = 0

    PLAN_TTL = datetime.timedelta(seconds=0.25)

    def entries(self, indexed: Iterable[queue.QueueEntry]) -> list[queue.QueueEntry]:
        result = []
        for entry in indexed:
            if entry.uid in self._written:
                phase, not_before = self._written[entry.uid]
                entry = replace(entry, phase=phase, not_before=not_before)
            result.append(entry)
        return result

    def plan(
        self, indexed: Callable[[], Iterable[queue.QueueEntry]], now: datetime.datetime
    ) -> queue.QueuePlan:
        if self._plan is not None:
            version, made, cached = self._plan
            if version == self._version and now - made < self.PLAN_TTL:
                return cached
        fresh = queue.plan(self.entries(indexed()), self.limit, now)
        self._plan = (self._version, now, fresh)
        return fresh

    def record(self, uid: str, status: AgentTestStatus) -> None:
        written = (status.phase, lifecycle.parse_timestamp(status.retry_after))
        if self._written.get(uid) != written:
            self._written[uid] = written
            self._version += 1

    def forget(self, uid: str) -> None:
        if self._written.pop(uid, None) is not None:
            self._version += 1


@dataclass
class Runtime:
    """Everything a step needs besides the test itself."""

    settings: Settings
    executors: dict[Backend, Executor]
    scheduler: Scheduler
    # The operator secret every execution's signing key is derived from (runkeys).
    signing_secret: bytes = b""
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)
    progress: dict[str, logtail.Progress] = field(default_factory=dict)
    publisher: Publisher | None = None

    def run_key(self, uid: str, status: AgentTestStatus) -> str:
        """The signing key of the test's current execution, derived, never read back."""
        key = ExecutionKey(uid, status.attempt, status.infra_retries)
        return runkeys.derive(self.signing_secret, key)

    def executor(self, backend: Backend) -> Executor:
        executor = self.executors.get(backend)
        if executor is not None:
            return executor
        if backend == Backend.LOCAL:
            raise BackendUnavailable(
                "the local backend is disabled: it runs untrusted code on the operator's host; "
                "start the operator with --enable-local-backend for development"
            )
        if backend == Backend.FARGATE:
            raise BackendUnavailable(
                "the fargate backend is not configured: set AGENTTEST_FARGATE_SUBNETS (and the "
                "other AGENTTEST_FARGATE_* settings from the infrastructure/ outputs)"
            )
        raise BackendUnavailable(f"the {backend.value} backend is not available in this operator")


@dataclass(frozen=True)
class Step:
    status: AgentTestStatus
    # Every phase passed through in this step, with its message, for Events.
    transitions: list[tuple[Phase, str]]


async def reconcile(
    rt: Runtime, test: TestView, indexed: Callable[[], Iterable[queue.QueueEntry]]
) -> Step:
    transitions: list[tuple[Phase, str]] = []

    def passed(status: AgentTestStatus) -> AgentTestStatus:
        last = transitions[-1][0] if transitions else test.status.phase
        if status.phase is not None and status.phase != last:
            transitions.append((status.phase, status.message or status.phase.value))
        return status

    status = await _advance(rt, test, indexed, passed)
    return Step(lifecycle.with_conditions(status, test.generation, rt.clock()), transitions)


async def _advance(
    rt: Runtime,
    test: TestView,
    indexed: Callable[[], Iterable[queue.QueueEntry]],
    passed: Callable[[AgentTestStatus], AgentTestStatus],
) -> AgentTestStatus:
    status, spec = test.status, test.spec

    reason = lifecycle.new_attempt_reason(status, spec, test.generation, test.retry)
    if reason:
        if status.execution is not None and status.phase and not status.phase.finished:
            await _stop(rt, status, "superseded by a new attempt")
        status = passed(lifecycle.start_attempt(status, spec, test.generation, test.retry, reason))
    elif test.generation != status.observed_generation:
        status = lifecycle.observe_spec(status, spec, test.generation)

    if status.phase is None or status.phase.finished:
        return status
    if spec.cancel:
        return passed(
            await _stop_and_finish(
                rt, test.uid, status, Phase.CANCELLED, "cancelled: spec.cancel is true"
            )
        )
    if status.phase == Phase.PENDING:
        status = passed(lifecycle.admit(status, spec.backend or rt.settings.default_backend))
    if status.phase == Phase.QUEUED:
        status = passed(await _try_launch(rt, test, status, indexed))
    if status.phase is not None and status.phase.active:
        status = passed(await _follow(rt, test.uid, status, spec))
    return status


async def _try_launch(
    rt: Runtime,
    test: TestView,
    status: AgentTestStatus,
    indexed: Callable[[], Iterable[queue.QueueEntry]],
) -> AgentTestStatus:
    now = rt.clock()
    assert status.backend is not None  # set by admit()
    try:
        executor = rt.executor(status.backend)
    except BackendUnavailable as error:
        return lifecycle.finish(status, Phase.ERROR, str(error), now)

    async with rt.scheduler.lock:
        plan = rt.scheduler.plan(indexed, now)
        if test.uid not in plan.startable:
            return lifecycle.queue_position(status, plan.positions.get(test.uid))
        claimed = lifecycle.launched(status, status.backend, "", now)
        rt.scheduler.record(test.uid, claimed)  # the slot is ours before we leave the lock

    key = ExecutionKey(test.uid, status.attempt, status.infra_retries)
    try:
        source = await fetch_source(test.spec.agent.source, test.namespace)
        execution_id = await executor.launch(
            LaunchRequest(
                key=key,
                namespace=test.namespace,
                test_name=test.name,
                harness_config=harness_config(test.spec, source),
                timeout_seconds=test.spec.timeout_seconds,
                run_key=runkeys.derive(rt.signing_secret, key),
                cpu=test.spec.resources.cpu,
                memory=test.spec.resources.memory,
            )
        )
    except (SourceUnavailable, LaunchRefused) as error:
        return lifecycle.finish(status, Phase.ERROR, str(error), now)
    except Exception as error:
        logger.exception("launch of %s/%s failed", test.namespace, test.name)
        return lifecycle.infra_failure(
            status,
            f"launch failed: {error}",
            now,
            rt.settings.infra_max_retries,
            rt.settings.infra_backoff_seconds,
        )
    return lifecycle.launched(status, status.backend, execution_id, now)


async def _read_all(
    rt: Runtime, executor: Executor, execution_id: str, run_key: str
) -> logtail.Progress:
    progress = rt.progress.get(execution_id) or logtail.Progress(execution_id)
    key = bytes.fromhex(run_key)
    for _ in range(MAX_LOG_READS_PER_STEP):
        chunk = await executor.read_logs(execution_id, progress.cursor)
        progress = logtail.follow(
            progress, chunk.lines, rt.settings.log_tail_bytes, chunk.cursor, key
        )
        progress = replace(progress, throttled=chunk.throttled)
        if not chunk.more:
            break
    rt.progress[execution_id] = progress
    return progress


async def _follow(
    rt: Runtime, uid: str, status: AgentTestStatus, spec: AgentTestSpec
) -> AgentTestStatus:
    assert status.execution is not None and status.backend is not None
    executor = rt.executor(status.backend)
    execution_id = status.execution.id
    # Observe before reading: an execution seen exited has all its output written.
    observation = await executor.observe(execution_id)
    if observation.state == ExecutionState.STARTING:
        # Not started yet (provisioning, pulling, scheduling): no output to read,
        # and log reads are rationed (CloudWatch Logs is rate-limited).
        progress = rt.progress.get(execution_id) or logtail.Progress(execution_id)
    else:
        progress = await _read_all(rt, executor, execution_id, rt.run_key(uid, status))
    status = status.model_copy(
        update={
            "log_tail": progress.tail or status.log_tail,
            "forged_lines": progress.forged or status.forged_lines,
        }
    )
    now = rt.clock()

    if observation.state == ExecutionState.EXITED:
        waiting = progress.throttled or _in_log_grace(rt, executor, progress, now)
        if (
            progress.result is None
            and waiting
            and not lifecycle.timed_out(status, spec.timeout_seconds, now)
        ):
            return status  # the last lines may still be on their way
        rt.progress.pop(execution_id, None)
        if observation.timed_out:
            return lifecycle.finish(status, Phase.TIMED_OUT, observation.reason, now)
        try:
            result = (
                lifecycle.HarnessResult.from_event(progress.result) if progress.result else None
            )
        except ValidationError as error:
            return lifecycle.finish(
                status, Phase.ERROR, f"the runner's result cannot be read: {error}", now
            )
        phase, message = lifecycle.outcome(
            result,
            observation.exit_code,
            progress.last_line,
            observation.reason,
            expected_cases=[case.name for case in spec.cases],
            forged=progress.forged,
        )
        return lifecycle.finish(status, phase, message, now, result)
    if observation.state == ExecutionState.MISSING:
        rt.progress.pop(execution_id, None)
        if observation.infra_failure:
            return lifecycle.infra_failure(
                status,
                observation.reason,
                now,
                rt.settings.infra_max_retries,
                rt.settings.infra_backoff_seconds,
            )
        return lifecycle.finish(status, Phase.ERROR, observation.reason, now)
    if lifecycle.timed_out(status, spec.timeout_seconds, now):
        return await _stop_and_finish(
            rt, uid, status, Phase.TIMED_OUT, f"timed out after {spec.timeout_seconds}s"
        )
    status = lifecycle.progressed(
        status, Phase.RUNNING if progress.harness_phase == PHASE_RUNNING else None
    )
    if observation.state == ExecutionState.STARTING and observation.reason:
        status = status.model_copy(update={"message": observation.reason})
    return status


def _execution(rt: Runtime, status: AgentTestStatus) -> tuple[Executor, str] | None:
    """The executor and id of the test's execution, if it has one we can reach."""
    if status.execution is None or status.backend is None or not status.execution.id:
        return None
    try:
        return rt.executor(status.backend), status.execution.id
    except BackendUnavailable:
        return None


def _in_log_grace(
    rt: Runtime, executor: Executor, progress: logtail.Progress, now: datetime.datetime
) -> bool:
    if progress.exited_at is None:
        rt.progress[progress.execution_id] = replace(progress, exited_at=now)
        return executor.log_grace_seconds > 0
    return (now - progress.exited_at).total_seconds() < executor.log_grace_seconds


async def _stop(rt: Runtime, status: AgentTestStatus, reason: str) -> None:
    found = _execution(rt, status)
    if found is not None:
        await found[0].stop(found[1], reason)


async def _stop_and_finish(
    rt: Runtime, uid: str, status: AgentTestStatus, phase: Phase, message: str
) -> AgentTestStatus:
    """Stop the execution if there is one, keep its last output, end in `phase`."""
    found = _execution(rt, status)
    if found is not None:
        executor, execution_id = found
        await executor.stop(execution_id, message)
        progress = await _read_all(rt, executor, execution_id, rt.run_key(uid, status))
        rt.progress.pop(execution_id, None)
        status = status.model_copy(update={"log_tail": progress.tail or status.log_tail})
    return lifecycle.finish(status, phase, message, rt.clock())


async def delete(rt: Runtime, status: AgentTestStatus) -> None:
    """The test is being deleted: stop its execution and remove what it left."""
    found = _execution(rt, status)
    if found is not None:
        executor, execution_id = found
        await executor.cleanup(execution_id)
        rt.progress.pop(execution_id, None)


async def package(rt: Runtime, test: TestView, status: AgentTestStatus) -> AgentTestStatus:
    """Publish the deployment package of a test that passed (the Packaged condition)."""
    now = rt.clock()

    def outcome(ok: bool, reason: str, message: str, name: str | None = None) -> AgentTestStatus:
        return lifecycle.packaged(status, ok, reason, message, test.generation, now, name)

    if rt.publisher is None:
        return outcome(
            False,
            "NotConfigured",
            "no package bucket: set AGENTTEST_PACKAGE_BUCKET to publish packages",
        )
    try:
        published = await rt.publisher.publish(
            test.spec, status, test.namespace, test.name, test.uid, lifecycle.timestamp(now)
        )
    except packaging.PackageTooLarge as error:
        return outcome(False, "PackageTooLarge", str(error))
    except SourceUnavailable as error:
        return outcome(False, "SourceUnavailable", str(error))
    except Exception as error:
        # S3 or the API server refused for now: the next step tries again.
        logger.warning("publishing %s/%s failed: %s", test.namespace, test.name, error)
        return status
    return outcome(True, "Uploaded", f"{published.uri} ({published.size} bytes)", published.name)
