"""When a test is stepped, and the writes around a step: the operator's event-driven core.

Nothing happens for a test unless something about it changed. A step
(`controller.reconcile`) runs for a test when:

* a watch event shows something this operator has not acted on yet: a new
  test, a spec change, a retry, a cancel, a deletion (`wants_step`);
* the operator starts and sees the test for the first time;
* a slot frees and the queue says the test is next (`dispatch`);
* it holds an execution: again after `poll_interval`, to read its logs and state;
* its retry backoff or `ttlSecondsAfterFinished` runs out.

A queued test that nothing happens to costs no work at all: its place in the
queue is derived from the index (every AgentTest, listed at start and kept
from the watch) when it is needed, and its
`status.queuePosition` is rewritten only when it changed, at most once per
`queue_position_interval`, the first positions first (`write_positions`).

Keys go through a `WorkQueue`, so a test is never stepped by two workers at
once and a burst of events costs one step. Steps run on `workers` tasks.

The finalizer is this operator's own (`FINALIZER`), added when a test takes a
slot and before anything is launched for it: a queued test can be deleted at
once, and a test holding an execution cannot vanish under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agenttest import controller, events, kubeapi, lifecycle, metrics, queueview, redaction
from agenttest.models import (
    DEFAULT_TTL_SECONDS,
    GROUP,
    MAX_TTL_SECONDS,
    RETRY_ANNOTATION,
    AgentTest,
    AgentTestStatus,
    Backend,
    Phase,
)
from agenttest.scheduling import QueueEntry
from agenttest.workqueue import WorkQueue

logger = logging.getLogger(__name__)

FINALIZER = f"{GROUP}/finalizer"
# A deletion whose cleanup keeps failing lets go after this many tries: the
# sweeper stops what is left, and nothing stays stuck behind the finalizer.
DELETE_TRIES = 10

Body = Mapping[str, Any]


def _phase(value: Any) -> Phase | None:
    try:
        return Phase(value) if value else None
    except ValueError:
        return None


def _backend(value: Any) -> Backend | None:
    try:
        return Backend(value) if value else None
    except ValueError:
        return None


def wants_step(body: Body, status: Mapping[str, Any]) -> bool:
    """Whether a watch event shows something a step must act on (pure).

    Our own status writes come back as events too; they show nothing new, so
    a test does not step itself in a loop. A test holding an execution is
    looked at on its poll, not on its events.
    """
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return FINALIZER in (meta.get("finalizers") or [])
    phase = _phase(status.get("phase"))
    if phase is None or phase == Phase.PENDING:
        return True
    if int(meta.get("generation") or 1) != status.get("observedGeneration"):
        return True  # a spec change, a cancel, a priority
    retry = (meta.get("annotations") or {}).get(RETRY_ANNOTATION)
    if retry is not None and retry != status.get("observedRetry"):
        return True
    if phase.finished:
        try:
            parsed = AgentTestStatus.model_validate(dict(status))
        except ValidationError:
            return True  # the step says what is wrong with it
        enabled = bool((body.get("spec") or {}).get("package", {}).get("enabled", True))
        return lifecycle.needs_package(parsed, enabled) or lifecycle.needs_report(parsed)
    return False


def queue_entry(body: Body) -> QueueEntry:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    position = status.get("queuePosition")
    return QueueEntry(
        uid=str(meta.get("uid")),
        namespace=str(meta.get("namespace")),
        name=str(meta.get("name")),
        priority=int((body.get("spec") or {}).get("priority", 0)),
        created=str(meta.get("creationTimestamp")),
        phase=_phase(status.get("phase")),
        backend=_backend(status.get("backend")),
        not_before=lifecycle.parse_timestamp(status.get("retryAfter")),
        position=position if isinstance(position, int) else None,
    )


def _newer(version: str, than: str) -> bool:
    """resourceVersion order: etcd revisions in practice; otherwise only equality is known."""
    try:
        return int(version) > int(than)
    except ValueError:
        return False


@dataclass
class Written:
    """The status this operator last wrote for a test, until the watch shows it."""

    resource_version: str
    status: AgentTestStatus


@dataclass
class Reconciler:
    rt: controller.Runtime
    # What the queue needs about every AgentTest, by uid: listed at start (`seed`),
    # then kept from the watch. Not a kopf index: kopf holds every object's
    # handlers until every object is indexed, and with a thousand tests present
    # its wake-ups alone took 15-20 s before the first step.
    index: dict[str, QueueEntry] = field(default_factory=dict)
    queue: WorkQueue = field(default_factory=WorkQueue)
    # The latest body of a test in line because of an event, and of a test
    # holding an execution (stepped every poll); other tests keep none here.
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    written: dict[str, Written] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)
    delete_tries: dict[str, int] = field(default_factory=dict)
    dispatch_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    positions_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    poster: events.EventPoster = field(default_factory=events.EventPoster)

    # ------------------------------------------------------------------ events

    def entries(self) -> list[QueueEntry]:
        return list(self.index.values())

    async def seed(self, namespaces: Iterable[str]) -> int:
        """Every AgentTest there is, before anything starts: the queue must know them all
        (the running ones above all) before it hands out a slot. Returns how many.

        The watch then reports each of them too. One deleted between this listing
        and the watch's is looked at once and forgotten (its GET answers 404).
        """
        async for body in kubeapi.list_agenttests(tuple(namespaces)):
            entry = queue_entry(body)
            self.index[entry.uid] = entry
            if entry.phase is None or entry.phase != Phase.QUEUED:
                self.bodies[entry.uid] = body  # its step needs no GET
                self.queue.add(entry.uid)
        return len(self.index)

    def status_of(self, uid: str, body: Body) -> AgentTestStatus:
        """The status we last wrote (the body can lag a watch event behind), else the body's."""
        written = self.written.get(uid)
        if written is not None:
            return written.status
        return AgentTestStatus.model_validate(dict(body.get("status") or {}))

    def observe(self, kind: str | None, body: Body) -> None:
        """A watch event: remember what a step needs, put the test in line if it wants one."""
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid"))
        if kind == "DELETED":
            self.forget(uid)
            self.dispatch_wanted.set()  # it may have held a slot
            return
        self.index[uid] = queue_entry(body)
        version = str(meta.get("resourceVersion") or "")
        written = self.written.get(uid)
        if written is not None and (
            version == written.resource_version or _newer(version, written.resource_version)
        ):
            del self.written[uid]  # the watch has caught up with our write
            written = None
        status = written.status.wire() if written is not None else (body.get("status") or {})
        phase = _phase(status.get("phase"))
        first = uid not in self.known
        self.known.add(uid)
        copy = dict(body)
        if phase is not None and (phase.active or phase.finished) and uid in self.held:
            self.held[uid] = copy
        if wants_step(body, status):
            self.bodies[uid] = copy
            self.queue.add(uid)
        elif first and phase != Phase.QUEUED:
            # Seen for the first time (the operator started): a held execution is
            # followed again, a finished test's TTL timed; a queued test waits for
            # a slot like every other (`dispatch`).
            self.bodies[uid] = copy
            self.queue.add(uid)
        elif phase is not None and phase.active and not self.queue.busy(uid):
            self.bodies[uid] = copy
            self.queue.add(uid)  # holds an execution but nothing looks at it
        if first and phase == Phase.QUEUED:
            # The operator started: a queued test may start now if a slot is free
            # (dispatch), or when its retry backoff runs out.
            self.dispatch_wanted.set()
            self.positions_wanted.set()
            retry_at = lifecycle.parse_timestamp(status.get("retryAfter"))
            if retry_at is not None:
                self.queue.add_after(uid, (retry_at - self.rt.clock()).total_seconds())

    def queue_document(self) -> dict[str, Any]:
        """The exact queue now, for `GET /queue` (`agenttest queue`)."""
        now = self.rt.clock()
        current = self.rt.scheduler.view(self.entries, now)
        rows = [
            queueview.QueueRow(
                namespace=row.entry.namespace,
                name=row.entry.name,
                priority=row.entry.priority,
                position=row.position,
                waiting_since=row.entry.created,
                reason=row.reason,
            )
            for row in current.order
        ]
        return queueview.to_json(rows, current.running, current.limit, now)

    def forget(self, uid: str) -> None:
        self.index.pop(uid, None)
        self.queue.forget(uid)
        self.bodies.pop(uid, None)
        self.held.pop(uid, None)
        self.written.pop(uid, None)
        self.known.discard(uid)
        self.delete_tries.pop(uid, None)
        self.rt.scheduler.forget(uid)

    # ------------------------------------------------------------------ workers

    def start(self) -> None:
        """Start the workers, the dispatcher and the position writer, once."""
        if self.tasks:
            return
        for number in range(self.rt.settings.workers):
            self.tasks.append(asyncio.create_task(self._work_forever(), name=f"worker-{number}"))
        self.tasks.append(asyncio.create_task(self._dispatch_forever(), name="dispatch"))
        self.tasks.append(asyncio.create_task(self._positions_forever(), name="positions"))
        self.poster.start()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop stepping; give the Events already said up to ``grace`` seconds to go out."""
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.poster.drain(), grace)
        self.poster.stop()

    async def _work_forever(self) -> None:
        while True:
            uid = await self.queue.get()
            try:
                await self.step(uid)
            except Exception:
                # The API server or AWS, for now, or a bug: tried again at the next
                # poll (the controller ends a test whose step keeps failing).
                logger.exception("stepping %s failed; trying again", uid)
                self.queue.add_after(uid, self.rt.settings.poll_interval)
            finally:
                self.queue.done(uid)

    async def _body(self, uid: str) -> dict[str, Any] | None:
        body = self.bodies.pop(uid, None) or self.held.get(uid)
        if body is not None:
            return body
        entry = self.index.get(uid)
        if entry is None:
            return None
        try:
            fetched = await kubeapi.get_agenttest(entry.namespace, entry.name)
        except kubeapi.Gone:
            return None
        if str(fetched["metadata"].get("uid")) != uid:
            return None  # deleted and created again under the same name
        return fetched

    async def step(self, uid: str) -> None:
        body = await self._body(uid)
        if body is None:
            self.forget(uid)
            self.dispatch_wanted.set()
            return
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            await self._finalize(uid, body)
            return
        status = await self._drive(uid, body)
        await self._next_look(uid, body, status)

    async def _next_look(self, uid: str, body: dict[str, Any], status: AgentTestStatus) -> None:
        """When this test is looked at again, if ever, without an event."""
        rt = self.rt
        phase = status.phase
        now = rt.clock()
        if phase is not None and phase.active:
            self.held.setdefault(uid, body)  # an event during the step brought a newer one
            self.queue.add_after(uid, rt.settings.poll_interval)
            return
        if phase is None or not phase.finished:
            self.held.pop(uid, None)
            retry_at = lifecycle.parse_timestamp(status.retry_after)
            if retry_at is not None and retry_at > now:
                self.queue.add_after(uid, (retry_at - now).total_seconds())
            elif retry_at is not None:
                # Its backoff ended while the step ran: look again now. That step
                # drops the backoff if no slot is free (lifecycle.queue_position).
                self.queue.add(uid)
            return
        enabled = bool((body.get("spec") or {}).get("package", {}).get("enabled", True))
        if lifecycle.needs_package(status, enabled) or lifecycle.needs_report(status):
            self.held.setdefault(uid, body)  # the publisher backs off between its own tries
            self.queue.add_after(uid, rt.settings.poll_interval)
            return
        self.held.pop(uid, None)
        ttl = min(
            int((body.get("spec") or {}).get("ttlSecondsAfterFinished", DEFAULT_TTL_SECONDS)),
            MAX_TTL_SECONDS,
        )
        finished = lifecycle.finished_at(status) or now
        remaining = (finished + datetime.timedelta(seconds=ttl) - now).total_seconds()
        if remaining > 0:
            self.queue.add_after(uid, remaining)
            return
        meta = body.get("metadata") or {}
        await kubeapi.delete_agenttest(str(meta.get("namespace")), str(meta.get("name")))
        logger.info(
            "deleted %s/%s: ttlSecondsAfterFinished %ds passed",
            meta.get("namespace"),
            meta.get("name"),
            ttl,
        )

    # ------------------------------------------------------------------ a step

    async def _drive(self, uid: str, body: dict[str, Any]) -> AgentTestStatus:
        rt = self.rt
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        generation = int(meta.get("generation") or 1)
        try:
            old = self.status_of(uid, body)
        except ValidationError as error:
            # Someone wrote a status this operator cannot read: say so once, keep nothing of it.
            old = AgentTestStatus()
            new = lifecycle.unreadable(old, "status", _brief(error), generation, rt.clock())
            return await self._end(uid, body, old, new)
        try:
            test = AgentTest.from_body(body, old)
        except ValidationError as error:
            owner = controller.Owner(uid, namespace, name)
            await controller.stop(rt, owner, old, "its spec cannot be read")
            new = lifecycle.unreadable(old, "spec", _brief(error), generation, rt.clock())
            return await self._end(uid, body, old, new)

        async def hold() -> bool:
            return await self._hold(uid, body)

        step = await controller.reconcile(rt, test, self.entries, hold)
        written = await self.write_status(uid, body, old, step.status)
        # The step's Events first: storing a report and packaging take S3 round trips.
        _post_events(self.poster, body, old, written, step.transitions)
        if written.phase == Phase.ERROR and step.status.phase != Phase.ERROR:
            # The status was refused for its size and replaced by an Error.
            await controller.stop(
                rt, test, written, "its status could not be written", strict=False
            )
            return written
        # After the finished write, so the test shows its result first; the report
        # before the package, which holds it.
        if lifecycle.needs_report(written):
            reported = await controller.report(rt, test.with_status(written))
            written = await self.write_status(uid, body, written, reported)
        if lifecycle.needs_package(written, test.spec.package.enabled):
            packaged = await controller.package(rt, test.with_status(written))
            written = await self.write_status(uid, body, written, packaged)
        return written

    async def _end(
        self, uid: str, body: Body, old: AgentTestStatus, new: AgentTestStatus
    ) -> AgentTestStatus:
        written = await self.write_status(uid, body, old, new)
        if written.phase != old.phase or written.message != old.message:
            _post_events(self.poster, body, old, written, [(Phase.ERROR, written.message or "")])
        return written

    async def write_status(
        self, uid: str, body: Body, old: AgentTestStatus, new: AgentTestStatus
    ) -> AgentTestStatus:
        """Patch only what changed; remember it, since the watch lags our own writes.

        Returns the status as written: cleaned and bounded (`redaction`), or, if
        the API server refused it for its size anyway, a minimal Error status.
        """
        rt = self.rt
        if new.phase is not None and new.phase not in (Phase.PENDING, Phase.QUEUED):
            new = new.model_copy(update={"queue_position": None})
        new = redaction.status(new, rt.settings.log_tail_bytes)
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        changes = kubeapi.merge_patch(old.wire(), new.wire())
        if not changes:
            return new
        try:
            version = await kubeapi.patch_agenttest_status(namespace, name, changes)
        except kubeapi.Gone:
            return new  # deleted meanwhile; the deletion is an event of its own
        except kubeapi.TooLarge:
            logger.error("%s/%s: status refused for its size", namespace, name)
            new = lifecycle.too_large(new, rt.clock())
            changes = kubeapi.merge_patch(old.wire(), new.wire())
            version = await kubeapi.patch_agenttest_status(namespace, name, changes)
        self.written[uid] = Written(version, new)
        if rt.scheduler.record(uid, old, new, rt.clock()):
            self.dispatch_wanted.set()  # a slot freed: the next test starts now
        if new.queue_position is not None and new.queue_position != old.queue_position:
            # An admission's position is an estimate when the plan was cached (a test
            # admitted since is placed last); the writer corrects it after the interval.
            self.positions_wanted.set()
        metrics.record_write(body, old, new)
        return new

    async def _hold(self, uid: str, body: Body) -> bool:
        """Our finalizer on the test before anything is launched for it; False: it is going."""
        meta = body.get("metadata") or {}
        listed = [str(item) for item in meta.get("finalizers") or []]
        if FINALIZER in listed:
            return True
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        try:
            # Tried with the finalizers the body shows first; read again only if they changed.
            version = str(meta.get("resourceVersion") or "")
            return await kubeapi.add_finalizer(namespace, name, uid, FINALIZER, listed, version)
        except kubeapi.Gone:
            return False

    async def _finalize(self, uid: str, body: Body) -> None:
        """The test is being deleted: stop and remove its execution, then let it go."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        if FINALIZER not in (meta.get("finalizers") or []):
            return
        try:
            status = self.status_of(uid, body)
        except ValidationError:
            status = AgentTestStatus()  # an unreadable status names no execution to clean up
        try:
            await controller.delete(self.rt, namespace, uid, status)
        except Exception:
            tries = self.delete_tries[uid] = self.delete_tries.get(uid, 0) + 1
            if tries < DELETE_TRIES:
                logger.warning(
                    "%s/%s: cleaning up its execution failed (try %d); trying again",
                    namespace,
                    name,
                    tries,
                    exc_info=True,
                )
                self.queue.add_after(uid, 2.0 * tries)
                return
            logger.error(
                "%s/%s: letting it go after %d failed cleanups; the sweeper stops what is left",
                namespace,
                name,
                tries,
            )
        await kubeapi.remove_finalizer(namespace, name, uid, FINALIZER)
        self.forget(uid)
        self.dispatch_wanted.set()

    # ------------------------------------------------------------------ the queue

    async def _dispatch_forever(self) -> None:
        """A slot freed or a test arrived: put the tests that may start now in line."""
        while True:
            await self.dispatch_wanted.wait()
            self.dispatch_wanted.clear()
            try:
                # The cached plan unless a slot was taken or freed since (its version).
                current = self.rt.scheduler.plan(self.entries, self.rt.clock())
            except Exception:
                logger.exception("planning the queue failed")
                continue
            for row in current.order:
                if row.startable and not self.queue.busy(row.entry.uid):
                    self.queue.add(row.entry.uid)
            self.positions_wanted.set()
            # Let the steps just put in line take their slots before planning again.
            await asyncio.sleep(0.01)

    async def _positions_forever(self) -> None:
        """Rewrite changed queue positions, at most once per interval per test, first first."""
        settings = self.rt.settings
        while True:
            # Cleared before the round: a wish made while it writes is kept for the next.
            self.positions_wanted.clear()
            try:
                wait = await self.write_positions()
            except Exception:
                logger.exception("writing queue positions failed")
                wait = settings.queue_position_interval
            timeout = None if wait is None else max(wait, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.positions_wanted.wait(), timeout)
            await asyncio.sleep(1.0)  # at most one round of writes per second

    async def write_positions(self) -> float | None:
        rt = self.rt
        settings = rt.settings
        now = rt.clock()
        current = rt.scheduler.plan(self.entries, now)
        due, wait = rt.scheduler.positions_due(
            current,
            now,
            settings.queue_position_interval,
            settings.queue_position_writes_per_second,
        )
        for entry, position in due:
            if self.queue.busy(entry.uid) or self.queue.scheduled(entry.uid) == 0.0:
                wait = 0.0 if wait is None else min(wait, 1.0)  # looked at again next round
                continue  # a step is deciding about it right now
            try:
                await kubeapi.patch_agenttest_status(
                    entry.namespace, entry.name, {"queuePosition": position}
                )
            except kubeapi.Gone:
                continue
            rt.scheduler.wrote_position(entry.uid, position, now)
            written = self.written.get(entry.uid)
            if written is not None:
                written.status = written.status.model_copy(update={"queue_position": position})
            metrics.STATUS_WRITES.inc()
        return wait


def _brief(error: ValidationError) -> str:
    """pydantic's message without its documentation links, which say nothing to a user."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'value'}: {item['msg']}"
        for item in error.errors()
    )


def _post_events(
    poster: events.EventPoster,
    body: Body,
    old: AgentTestStatus,
    new: AgentTestStatus,
    transitions: list[tuple[Phase, str]],
) -> None:
    meta = body.get("metadata") or {}
    namespace, name, uid = (str(meta.get(key)) for key in ("namespace", "name", "uid"))

    def post(kind: str, reason: str, message: str) -> None:
        poster.post(events.Event(namespace, name, uid, kind, reason, message))

    if new.forged_lines and not old.forged_lines:
        post(
            "Warning",
            events.FORGED_OUTPUT,
            f"{new.forged_lines} line(s) of the execution's output posed as the judge's "
            "machine lines without its signature and were ignored",
        )
    flaky = lifecycle.flaky_cases(new)
    if flaky and new.phase is not None and new.phase.finished and new.phase != old.phase:
        # Said even when the test passed: a gate that passes 4 times in 5 is news.
        post(
            "Warning",
            events.FLAKY_CASES,
            "flaky cases (some trials passed, some failed): " + ", ".join(flaky),
        )
    for phase, message in transitions:
        failed = phase in (Phase.FAILED, Phase.ERROR, Phase.TIMED_OUT)
        post("Warning" if failed else "Normal", phase.value, message)
