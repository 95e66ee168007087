"""One reconciliation step of an AgentTest: gather facts, perform what `lifecycle` decides.

`reconcile` is called by the handlers for each unfinished test. `lifecycle.begin`
says what the step is for (nothing, cancel, launch, follow); for a test holding
an execution, the controller observes it and reads its logs, and
`lifecycle.follow` says what that means (keep going, wait for late logs, stop
it, or done). The controller performs those actions through the test's
executor and the scheduler, and decides nothing itself.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from agenttest import lifecycle, logtail, packaging, runkeys
from agenttest.backends.base import BackendUnavailable, Executor, LaunchRefused
from agenttest.executions import ExecutionKey, ExecutionState, LaunchRequest
from agenttest.lifecycle import Act, Next
from agenttest.models import AgentTest, AgentTestStatus, Backend, Phase
from agenttest.publishing import Publisher
from agenttest.scheduling import QueueEntry, Scheduler
from agenttest.settings import Settings
from agenttest.sources import SourceUnavailable, attempt_snapshot, runner_config, s3_grants

logger = logging.getLogger(__name__)

# Bounded so that one chatty execution cannot hold a step for long.
MAX_LOG_READS_PER_STEP = 16

Indexed = Callable[[], Iterable[QueueEntry]]


@dataclass
class Runtime:
    """Everything a step needs besides the test itself (built by `wiring`)."""

    settings: Settings
    executors: dict[Backend, Executor]
    scheduler: Scheduler
    # The operator secret every execution's signing key is derived from (runkeys).
    signing_secret: bytes = b""
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)
    progress: dict[str, logtail.Progress] = field(default_factory=dict)
    publisher: Publisher | None = None

    @property
    def retry_policy(self) -> lifecycle.RetryPolicy:
        return lifecycle.RetryPolicy(
            self.settings.infra_max_retries, self.settings.infra_backoff_seconds
        )

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


class _Transitions:
    """Collects every phase a step passes through."""

    def __init__(self, start: Phase | None) -> None:
        self.seen: list[tuple[Phase, str]] = []
        self._last = start

    def __call__(self, status: AgentTestStatus) -> AgentTestStatus:
        if status.phase is not None and status.phase != self._last:
            self.seen.append((status.phase, status.message or status.phase.value))
            self._last = status.phase
        return status


async def reconcile(rt: Runtime, test: AgentTest, indexed: Indexed) -> Step:
    passed = _Transitions(test.status.phase)
    begun = lifecycle.begin(test, rt.settings.default_backend)
    if begun.stop_previous:
        await _stop(rt, test.status, "superseded by a new attempt")
    for through in begun.passed:
        passed(through)
    status = passed(begun.status)
    if begun.next == Next.CANCEL:
        status = passed(
            await _stop_and_finish(
                rt, test.uid, status, Phase.CANCELLED, "cancelled: spec.cancel is true"
            )
        )
    elif begun.next == Next.LAUNCH:
        status = passed(await _try_launch(rt, test.with_status(status), indexed))
        if status.phase is not None and status.phase.active:
            status = passed(await _follow(rt, test.with_status(status)))
    elif begun.next == Next.FOLLOW:
        status = passed(await _follow(rt, test.with_status(status)))
    return Step(lifecycle.with_conditions(status, test.generation, rt.clock()), passed.seen)


async def _try_launch(rt: Runtime, test: AgentTest, indexed: Indexed) -> AgentTestStatus:
    status = test.status
    now = rt.clock()
    assert status.backend is not None  # set by lifecycle.admit
    try:
        executor = rt.executor(status.backend)
    except BackendUnavailable as error:
        return lifecycle.finish(status, Phase.ERROR, str(error), now)

    claim = await rt.scheduler.claim(test.uid, indexed, now)
    if not claim.taken:
        return lifecycle.queue_position(status, claim.position)

    key = ExecutionKey(test.uid, status.attempt, status.infra_retries)
    try:
        # Kept for the package when there will be one (sources.py says why).
        publisher = rt.publisher if test.spec.package.enabled else None
        store = publisher.snapshots if publisher is not None else None
        grants = s3_grants(rt.settings.s3_source_allow)
        snapshot = await attempt_snapshot(test, grants, store)
        execution_id = await executor.launch(
            LaunchRequest(
                key=key,
                namespace=test.namespace,
                test_name=test.name,
                runner_config=runner_config(test.spec, snapshot.text),
                timeout_seconds=test.spec.timeout_seconds,
                cpu=test.spec.resources.cpu,
                memory=test.spec.resources.memory,
                run_key=runkeys.derive(rt.signing_secret, key),
            )
        )
    except (SourceUnavailable, LaunchRefused) as error:
        return lifecycle.finish(status, Phase.ERROR, str(error), now)
    except Exception as error:
        logger.exception("launch of %s/%s failed", test.namespace, test.name)
        policy = rt.retry_policy
        return lifecycle.infra_failure(
            status, f"launch failed: {error}", now, policy.max_retries, policy.backoff_seconds
        )
    launched = lifecycle.launched(status, status.backend, execution_id, now)
    return launched.model_copy(update={"source": snapshot.status()})


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


async def _follow(rt: Runtime, test: AgentTest) -> AgentTestStatus:
    status = test.status
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
        progress = await _read_all(rt, executor, execution_id, rt.run_key(test.uid, status))

    followed = lifecycle.follow(
        status,
        test.spec,
        observation,
        progress,
        rt.clock(),
        executor.log_grace_seconds,
        rt.retry_policy,
    )
    if followed.act == Act.AWAIT_LOGS:
        rt.progress[execution_id] = replace(progress, exited_at=followed.exited_at)
    elif followed.act == Act.DONE:
        rt.progress.pop(execution_id, None)
    elif followed.act == Act.STOP:
        assert followed.stop_phase is not None
        return await _stop_and_finish(
            rt, test.uid, followed.status, followed.stop_phase, followed.stop_reason
        )
    return followed.status


def _execution(rt: Runtime, status: AgentTestStatus) -> tuple[Executor, str] | None:
    """The executor and id of the test's execution, if it has one we can reach."""
    if status.execution is None or status.backend is None or not status.execution.id:
        return None
    try:
        return rt.executor(status.backend), status.execution.id
    except BackendUnavailable:
        return None


async def _stop(rt: Runtime, status: AgentTestStatus, reason: str) -> None:
    found = _execution(rt, status)
    if found is not None:
        await found[0].stop(found[1], reason)


async def _stop_and_finish(
    rt: Runtime, uid: str, status: AgentTestStatus, phase: Phase, message: str
) -> AgentTestStatus:
    """Stop the execution if there is one, keep its last output, end in `phase`."""
    tail = ""
    found = _execution(rt, status)
    if found is not None:
        executor, execution_id = found
        await executor.stop(execution_id, message)
        progress = await _read_all(rt, executor, execution_id, rt.run_key(uid, status))
        rt.progress.pop(execution_id, None)
        tail = progress.tail
    return lifecycle.stopped(status, phase, message, tail, rt.clock())


async def delete(rt: Runtime, status: AgentTestStatus) -> None:
    """The test is being deleted: stop its execution and remove what it left."""
    found = _execution(rt, status)
    if found is not None:
        executor, execution_id = found
        await executor.cleanup(execution_id)
        rt.progress.pop(execution_id, None)


async def package(rt: Runtime, test: AgentTest) -> AgentTestStatus:
    """Publish the deployment package of a test that passed (the Packaged condition)."""
    status = test.status
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
        published = await rt.publisher.publish(test, now)
    except packaging.PackageTooLarge as error:
        return outcome(False, "PackageTooLarge", str(error))
    except SourceUnavailable as error:
        return outcome(False, "SourceUnavailable", str(error))
    except packaging.NotReproducible as error:
        return outcome(False, "NotReproducible", str(error))
    except Exception as error:
        # S3 or the API server refused for now: the next step tries again.
        logger.warning("publishing %s/%s failed: %s", test.namespace, test.name, error)
        return status
    return outcome(True, "Uploaded", f"{published.uri} ({published.size} bytes)", published.name)
