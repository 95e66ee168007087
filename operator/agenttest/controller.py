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
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from agenttest import (
    crashpoints,
    credentials,
    faults,
    lifecycle,
    logtail,
    metrics,
    packaging,
    reports,
    runkeys,
)
from agenttest.backends.base import BackendUnavailable, Executor, LaunchRefused
from agenttest.credentials import CredentialsUnavailable
from agenttest.executions import ExecutionKey, ExecutionState, LaunchRequest, Observation
from agenttest.lifecycle import Act, Next
from agenttest.models import AgentTest, AgentTestStatus, Backend, PackageRef, Phase, Reports
from agenttest.publishing import Publisher
from agenttest.reporting import ReportStore
from agenttest.s3objects import PublishDeferred, PublishRefused
from agenttest.scheduling import QueueEntry, Scheduler
from agenttest.settings import Settings
from agenttest.sources import SourceUnavailable, attempt_snapshot, runner_config, s3_grants

logger = logging.getLogger(__name__)

# Bounded so that one chatty execution cannot hold a step for long.
MAX_LOG_READS_PER_STEP = 16
# A step that raised this many times in a row for the same execution, for a
# reason that is not the infrastructure's (`faults.transient`), ends the test
# in Error: the same input would make it raise at every poll, holding a slot.
STEP_ERROR_LIMIT = 3
# A launch refused for now (throttling, a 5xx, a connection refused) is tried
# again under the same key after a backoff that doubles up to the cap, spending
# no infrastructure retry; past the limit in a row it counts as one after all
# (an OSError that is no passing weather, say, must not defer a test forever).
LAUNCH_DEFERRAL_LIMIT = 10
LAUNCH_DEFERRAL_MAX_SECONDS = 60.0

Indexed = Callable[[], Iterable[QueueEntry]]
# Makes sure the test cannot vanish under an execution before one is launched
# for it (the reconciler adds its finalizer); False: the test is going away.
Hold = Callable[[], Awaitable[bool]]


async def _always_held() -> bool:
    return True


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
    # Where finished tests' reports go; None: no results bucket and no package bucket.
    report_store: ReportStore | None = None
    # Reports assembled from a finished execution's output and not stored yet, per
    # (uid, attempt); they live only here until stored (Reported=Unknown meanwhile).
    pending_reports: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    # Steps that raised in a row, per execution (see STEP_ERROR_LIMIT).
    step_errors: dict[ExecutionKey, int] = field(default_factory=dict)
    # Launches refused for now in a row, per execution (see LAUNCH_DEFERRAL_LIMIT).
    launch_deferrals: dict[ExecutionKey, int] = field(default_factory=dict)

    @property
    def retry_policy(self) -> lifecycle.RetryPolicy:
        return lifecycle.RetryPolicy(
            self.settings.infra_max_retries, self.settings.infra_backoff_seconds
        )

    def run_key(self, uid: str, status: AgentTestStatus) -> str:
        """The signing key of the test's current execution, derived, never read back."""
        return runkeys.derive(self.signing_secret, execution_key(uid, status))

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
class Owner:
    """What names a test's executions when its spec is not at hand (deletion, a bad spec)."""

    uid: str
    namespace: str
    name: str


def execution_key(uid: str, status: AgentTestStatus) -> ExecutionKey:
    """The identity of the test's current execution: its uid, attempt and retry."""
    return ExecutionKey(uid, status.attempt, status.infra_retries)


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


async def reconcile(
    rt: Runtime, test: AgentTest, indexed: Indexed, hold: Hold = _always_held
) -> Step:
    """One step; a step that keeps raising for the same execution ends the test in Error."""
    key = execution_key(test.uid, test.status)
    try:
        step = await _reconcile(rt, test, indexed, hold)
    except Exception as error:
        if faults.transient(error):
            raise  # the API server or AWS, for now: the next poll tries again
        count = rt.step_errors[key] = rt.step_errors.get(key, 0) + 1
        if count < STEP_ERROR_LIMIT:
            raise
        logger.exception("%s/%s: giving up after %d failed steps", test.namespace, test.name, count)
        del rt.step_errors[key]
        reason = (
            f"the operator cannot follow this test: {faults.describe(error)} "
            f"(the same step failed {count} times in a row)"
        )
        status = await _stop_and_finish(rt, test, test.status, Phase.ERROR, reason, strict=False)
        step = Step(status, [(Phase.ERROR, reason)] if test.status.phase != Phase.ERROR else [])
        return Step(
            lifecycle.with_conditions(step.status, test.generation, rt.clock()), step.transitions
        )
    rt.step_errors.pop(key, None)
    return step


async def _reconcile(rt: Runtime, test: AgentTest, indexed: Indexed, hold: Hold) -> Step:
    passed = _Transitions(test.status.phase)
    begun = lifecycle.begin(test, rt.settings.default_backend)
    if begun.stop_previous:
        await stop(rt, test, test.status, "superseded by a new attempt")
    for through in begun.passed:
        passed(through)
    status = passed(begun.status)
    if begun.next == Next.CANCEL:
        status = passed(
            await _stop_and_finish(
                rt, test, status, Phase.CANCELLED, "cancelled: spec.cancel is true"
            )
        )
    elif begun.next == Next.LAUNCH:
        status = passed(await _try_launch(rt, test.with_status(status), indexed, hold))
        if status.phase is not None and status.phase.active:
            status = passed(await _follow(rt, test.with_status(status)))
    elif begun.next == Next.FOLLOW:
        status = passed(await _follow(rt, test.with_status(status)))
    return Step(lifecycle.with_conditions(status, test.generation, rt.clock()), passed.seen)


async def _try_launch(
    rt: Runtime, test: AgentTest, indexed: Indexed, hold: Hold
) -> AgentTestStatus:
    status = test.status
    now = rt.clock()
    assert status.backend is not None  # set by lifecycle.admit
    try:
        executor = rt.executor(status.backend)
    except BackendUnavailable as error:
        return lifecycle.finish(status, Phase.ERROR, str(error), now)

    waits_until = lifecycle.parse_timestamp(status.retry_after)
    claim = await rt.scheduler.claim(test.uid, indexed, now, waits_until)
    if not claim.taken:
        return lifecycle.queue_position(status, claim.position, now)
    try:
        held = await hold()
    except Exception:
        rt.scheduler.release(test.uid)
        raise
    if not held:
        rt.scheduler.release(test.uid)  # it is being deleted: nothing may start for it
        return status
    crashpoints.reached("claimed")
    claimed = time.monotonic()

    key = ExecutionKey(test.uid, status.attempt, status.infra_retries)
    try:
        # Kept for the package when there will be one (sources.py says why).
        publisher = rt.publisher if test.spec.package.enabled else None
        store = publisher.snapshots if publisher is not None else None
        grants = s3_grants(rt.settings.s3_source_allow)
        snapshot = await attempt_snapshot(test, grants, store)
        model_credentials = await credentials.read_for(test.namespace, test.spec)
        execution_id = await executor.launch(
            LaunchRequest(
                key=key,
                namespace=test.namespace,
                test_name=test.name,
                runner_config=runner_config(test.spec, snapshot.text, rt.settings.price_table()),
                timeout_seconds=test.spec.timeout_seconds,
                cpu=test.spec.resources.cpu,
                memory=test.spec.resources.memory,
                run_key=runkeys.derive(rt.signing_secret, key),
                model_credentials=model_credentials,
            )
        )
    except (SourceUnavailable, CredentialsUnavailable, LaunchRefused) as error:
        return lifecycle.finish(status, Phase.ERROR, str(error), now)
    except Exception as error:
        deferrals = rt.launch_deferrals.get(key, 0)
        if faults.transient(error) and deferrals < LAUNCH_DEFERRAL_LIMIT:
            # AWS or the API server refused a call for now: nothing was lost, and
            # the launch is idempotent, so the same key launches again later.
            rt.launch_deferrals[key] = deferrals + 1
            delay = min(
                LAUNCH_DEFERRAL_MAX_SECONDS, rt.settings.infra_backoff_seconds * 2**deferrals
            )
            logger.warning(
                "launch of %s/%s deferred %.1fs: %s",
                test.namespace,
                test.name,
                delay,
                faults.describe(error),
            )
            # From now, not from before the launch: its own retries can take a while.
            return lifecycle.launch_deferred(status, faults.describe(error), rt.clock(), delay)
        rt.launch_deferrals.pop(key, None)
        logger.exception("launch of %s/%s failed", test.namespace, test.name)
        # Whatever part of this execution the backend did start must not run on
        # beside the next one: the retry launches under a new key.
        await stop(rt, test, status, "its launch failed", strict=False)
        policy = rt.retry_policy
        return lifecycle.infra_failure(
            status, f"launch failed: {error}", now, policy.max_retries, policy.backoff_seconds
        )
    rt.launch_deferrals.pop(key, None)
    metrics.record_launch(status.backend, time.monotonic() - claimed)
    crashpoints.reached("launched")
    launched = lifecycle.launched(status, status.backend, execution_id, now)
    return launched.model_copy(update={"source": snapshot.status()})


async def _read_all(
    rt: Runtime, executor: Executor, execution_id: str, run_key: str
) -> logtail.Progress:
    progress = rt.progress.get(execution_id) or logtail.Progress(execution_id)
    key = bytes.fromhex(run_key)
    for _ in range(MAX_LOG_READS_PER_STEP):
        chunk = await executor.read_logs(execution_id, progress.cursor)
        if chunk.newest_at is not None:
            metrics.record_log_lag(executor.kind, time.time() - chunk.newest_at)
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
    # First and always: nothing an execution wrote, and no error reading it,
    # may keep a test past its timeout.
    over_time = lifecycle.timed_out(status, test.spec.timeout_seconds, rt.clock())
    try:
        followed = await _look(rt, test)
    except Exception:
        if not over_time:
            raise
        logger.warning("%s/%s: timed out; its last look failed", test.namespace, test.name)
        reason = f"timed out after {test.spec.timeout_seconds}s"
        followed = lifecycle.Followed(status, Act.STOP, Phase.TIMED_OUT, reason)
    if followed.act == Act.STOP:
        assert followed.stop_phase is not None
        return await _stop_and_finish(
            rt, test, followed.status, followed.stop_phase, followed.stop_reason
        )
    if followed.act == Act.DONE and followed.status.phase == Phase.QUEUED:
        # Requeued after an infrastructure failure: what is left of this
        # execution goes before the next one starts under a new key.
        await stop(rt, test, status, "retried after an infrastructure failure", strict=False)
    return followed.status


async def _look(rt: Runtime, test: AgentTest) -> lifecycle.Followed:
    """Observe the test's execution, read its output, and let `lifecycle.follow` decide."""
    status = test.status
    assert status.backend is not None
    executor = rt.executor(status.backend)
    execution_id = await executor.locate(test.namespace, execution_key(test.uid, status))
    if execution_id is None:
        observation = Observation(
            ExecutionState.MISSING,
            reason="the backend has no execution for this attempt",
            infra_failure=True,
        )
        progress = logtail.Progress("")
    else:
        # Observe before reading: an execution seen exited has all its output written.
        observation = await executor.observe(execution_id)
        if observation.state == ExecutionState.STARTING:
            # Not started yet (provisioning, pulling, scheduling): no output to
            # read, and log reads are rationed (CloudWatch Logs is rate-limited).
            progress = rt.progress.get(execution_id) or logtail.Progress(execution_id)
        else:
            run_key = rt.run_key(test.uid, status)
            progress = await _read_all(rt, executor, execution_id, run_key)

    followed = lifecycle.follow(
        status,
        test.spec,
        observation,
        progress,
        rt.clock(),
        executor.log_grace_seconds,
        rt.retry_policy,
    )
    if execution_id is not None and followed.act == Act.AWAIT_LOGS:
        rt.progress[execution_id] = replace(progress, exited_at=followed.exited_at)
    elif execution_id is not None and followed.act == Act.DONE:
        rt.progress.pop(execution_id, None)
    if followed.report is not None:
        rt.pending_reports[(test.uid, status.attempt)] = followed.report
    return followed


async def _locate(
    rt: Runtime, test: AgentTest | Owner, status: AgentTestStatus
) -> tuple[Executor, str] | None:
    """The executor and id of the execution `status` names, derived from the test.

    From the test's uid and namespace (which nobody can edit) and the attempt
    and retry: never `status.execution.id`, which whoever may write status
    could point at another namespace's objects.
    """
    if status.backend is None or status.attempt == 0:
        return None
    try:
        executor = rt.executor(status.backend)
    except BackendUnavailable:
        return None
    execution_id = await executor.locate(test.namespace, execution_key(test.uid, status))
    return None if execution_id is None else (executor, execution_id)


async def stop(
    rt: Runtime, test: AgentTest | Owner, status: AgentTestStatus, reason: str, strict: bool = True
) -> None:
    """Stop the execution `status` names; `strict=False` logs a failure instead of raising."""
    try:
        found = await _locate(rt, test, status)
        if found is not None:
            await found[0].stop(found[1], reason)
            rt.progress.pop(found[1], None)
    except Exception:
        if strict:
            raise
        logger.warning(
            "%s/%s: could not stop its execution (%s); the backend's own deadline and the "
            "sweeper remain",
            test.namespace,
            test.name,
            reason,
            exc_info=True,
        )


async def _stop_and_finish(
    rt: Runtime,
    test: AgentTest,
    status: AgentTestStatus,
    phase: Phase,
    message: str,
    strict: bool = True,
) -> AgentTestStatus:
    """Stop the execution if there is one, keep its last output, end in `phase`."""
    tail = ""
    found = await _locate(rt, test, status) if strict else None
    if found is not None:
        executor, execution_id = found
        await executor.stop(execution_id, message)
        try:
            progress = await _read_all(rt, executor, execution_id, rt.run_key(test.uid, status))
            tail = progress.tail
        except Exception:
            # The last lines are a courtesy; the stop is what matters.
            logger.warning("could not read the last output of %s", execution_id, exc_info=True)
        rt.progress.pop(execution_id, None)
    elif not strict:
        await stop(rt, test, status, message, strict=False)
    return lifecycle.stopped(status, phase, message, tail, rt.clock())


async def delete(rt: Runtime, namespace: str, uid: str, status: AgentTestStatus) -> None:
    """The test is being deleted: stop its execution and remove what it left."""
    found = await _locate(rt, Owner(uid, namespace, ""), status)
    crashpoints.reached("deleting")
    if found is not None:
        executor, execution_id = found
        await executor.cleanup(execution_id)
        rt.progress.pop(execution_id, None)
    for key in [key for key in rt.step_errors if key.uid == uid]:
        del rt.step_errors[key]
    for key in [key for key in rt.launch_deferrals if key.uid == uid]:
        del rt.launch_deferrals[key]
    for pending in [pending for pending in rt.pending_reports if pending[0] == uid]:
        del rt.pending_reports[pending]


OwnerUid = Callable[[str, str], Awaitable[str | None]]


async def sweep(rt: Runtime, owner_uid: OwnerUid) -> list[str]:
    """Stop and remove executions whose AgentTest is gone; return their ids.

    The finalizer normally does this; the sweeper catches what it cannot: a
    test deleted while the operator was down after someone removed the
    finalizer, or a test recreated under the same name (another uid).
    `owner_uid(namespace, name)` answers the uid of the AgentTest there now.
    """
    swept = []
    watched = rt.settings.namespaces
    for executor in rt.executors.values():
        for execution in await executor.launched():
            if watched and execution.namespace not in watched:
                continue  # another operator's (a shared ECS cluster)
            try:
                if await owner_uid(execution.namespace, execution.test_name) == execution.uid:
                    continue
            except Exception:
                logger.warning("cannot tell whether %s is orphaned", execution, exc_info=True)
                continue
            logger.warning(
                "sweeping %s: its AgentTest %s/%s (uid %s) is gone",
                execution.execution_id,
                execution.namespace,
                execution.test_name,
                execution.uid,
            )
            await executor.cleanup(execution.execution_id)
            rt.progress.pop(execution.execution_id, None)
            swept.append(execution.execution_id)
    return swept


async def package(rt: Runtime, test: AgentTest) -> AgentTestStatus:
    """Publish the deployment package of a test that passed (the Packaged condition)."""
    crashpoints.reached("packaging")
    status = test.status
    now = rt.clock()

    def outcome(
        ok: bool,
        reason: str,
        message: str,
        package: PackageRef | None = None,
        packages: list[PackageRef] | None = None,
    ) -> AgentTestStatus:
        return lifecycle.packaged(
            status, ok, reason, message, test.generation, now, package, packages
        )

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
    except PublishRefused as error:
        return outcome(False, error.reason, error.message)
    except PublishDeferred:
        return status  # transient: the publisher logged it and backs off before the next try
    except packaging.NotReproducible as error:
        return outcome(False, "NotReproducible", str(error))
    except Exception as error:
        # S3 or the API server refused for now: the next step tries again.
        logger.warning("publishing %s/%s failed: %s", test.namespace, test.name, error)
        return status
    refs = [
        PackageRef(name=one.name, s3_uri=one.uri, sha256=one.sha256, model=one.model)
        for one in published
    ]
    if not test.spec.matrix:
        [one] = published
        return outcome(True, "Uploaded", f"{one.uri} ({one.size} bytes)", refs[0])
    named = ", ".join(f"{one.model} {one.uri}" for one in published)
    message = f"{len(published)} package{'s' if len(published) != 1 else ''}: {named}"
    return outcome(True, "Uploaded", message, refs[0] if refs else None, refs)


async def report(rt: Runtime, test: AgentTest) -> AgentTestStatus:
    """Store the report of a finished test (the Reported condition, status.reports)."""
    status = test.status
    now = rt.clock()
    attempt = (test.uid, status.attempt)

    def outcome(
        ok: bool, reason: str, message: str, stored: Reports | None = None
    ) -> AgentTestStatus:
        rt.pending_reports.pop(attempt, None)
        return lifecycle.reported(status, ok, reason, message, test.generation, now, stored)

    if rt.report_store is None:
        return outcome(
            False,
            "NotConfigured",
            "no results bucket: set AGENTTEST_RESULTS_BUCKET (or AGENTTEST_PACKAGE_BUCKET) "
            "to store reports",
        )
    document = rt.pending_reports.get(attempt)
    try:
        if document is None:
            # This operator did not see the test end (it restarted in between): the
            # execution's output still holds the signed report.
            rt.report_store.backoff.wait(attempt, now)
            try:
                document = await reread_report(rt, test)
            except Exception as error:
                if not faults.transient(error):
                    raise
                raise rt.report_store.backoff.failed(attempt, now, error) from error
            if document is None:
                return outcome(
                    False,
                    "ReportLost",
                    "the operator restarted before it stored the report, and the execution's "
                    "output no longer holds it; retry the test for a new one",
                )
        stored = await rt.report_store.store(test, document, now)
    except PublishRefused as error:
        return outcome(False, error.reason, error.message)
    except PublishDeferred:
        return status  # transient: the store logged it and backs off before the next try
    except Exception as error:
        # Reading the output again failed for good (the execution is gone, its result
        # cannot be read): the report is lost, which is said once.
        return outcome(False, "ReportLost", f"the report cannot be read again: {error}")
    return outcome(True, "Stored", stored.json_, stored)


# Reads of a finished execution's output when its report is read again: its whole
# output, at most (a report is at most runner.reports.MAX_PARTS lines of 64 KiB).
REREAD_LIMIT = 256


async def reread_report(rt: Runtime, test: AgentTest) -> dict[str, Any] | None:
    """The report of the test's finished execution, read again from its output.

    None when the execution, its verified result or the report that result names
    is not there (any more). Only lines signed with the attempt's key count, as on
    the first read.
    """
    found = await _locate(rt, test, test.status)
    if found is None:
        return None
    executor, execution_id = found
    key = bytes.fromhex(rt.run_key(test.uid, test.status))
    progress = logtail.Progress(execution_id)
    for _ in range(REREAD_LIMIT):
        chunk = await executor.read_logs(execution_id, progress.cursor)
        progress = logtail.follow(progress, chunk.lines, 1, chunk.cursor, key)  # no tail
        if progress.result is not None or not chunk.more:
            break
    if progress.result is None:
        return None
    result = lifecycle.RunnerResult.from_event(progress.result)
    assembled = reports.assemble(result.report, progress.report_parts, progress.report_problem)
    return assembled.document if assembled is not None else None
