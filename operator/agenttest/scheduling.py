"""Which queued tests may start, in which order, and the slot accounting that keeps that true.

The queue is never stored. It is derived, on every decision, from the
phase, priority, namespace and creation time of every AgentTest (`plan`,
pure), so a restarted operator rebuilds it from the API server and never
starts a test twice.

The order (`plan`): higher priority first; within a priority, the next slot
goes to the namespace with the fewest running tests (counting the ones the
order has already placed before it); between namespaces running as many, to
the one that started a test least recently; then to the oldest test. One
namespace with 500 queued tests therefore takes turns with another with one,
even with a single slot (where both run none whenever it frees).
`namespace_limit` caps how many tests of one namespace hold a slot at once.
Queue positions and the queue view follow this same order.

`Scheduler` lays the phases this operator wrote last over the API server's
view, which lags them by a watch event, and hands out slots through one
explicit call, `claim`. It also remembers which positions were written when,
so that `positions_due` writes a changed position at most once per interval
per test, the first positions first.
"""

from __future__ import annotations

import asyncio
import datetime
import heapq
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from agenttest import queueview
from agenttest.lifecycle import parse_timestamp
from agenttest.models import AgentTestStatus, Backend, Phase

WAITING = frozenset({None, Phase.PENDING, Phase.QUEUED})


@dataclass(frozen=True)
class QueueEntry:
    """What the queue needs to know about one AgentTest."""

    uid: str
    namespace: str
    name: str
    priority: int
    created: str  # RFC 3339 from metadata.creationTimestamp: sorts chronologically
    phase: Phase | None
    # An infrastructure retry waits here, keeping its place, until this time.
    not_before: datetime.datetime | None = None
    # status.queuePosition as the API server has it.
    position: int | None = None
    # status.backend, set when the test is admitted: what the metrics count it under.
    backend: Backend | None = None

    @property
    def age_key(self) -> tuple[str, str]:
        return (self.created, self.name)


@dataclass(frozen=True)
class Waiting:
    """One test in the ordered queue."""

    entry: QueueEntry
    position: int  # 1-based: the order in which waiting tests get slots
    startable: bool  # may take a slot now
    reason: str  # why it waits, for people (the queue view)


@dataclass(frozen=True)
class QueuePlan:
    running: int
    limit: int
    namespace_limit: int  # 0: none
    running_by_namespace: dict[str, int]
    order: tuple[Waiting, ...]

    @property
    def startable(self) -> frozenset[str]:
        return frozenset(w.entry.uid for w in self.order if w.startable)

    @property
    def positions(self) -> dict[str, int]:
        """uid -> 1-based place among waiting tests."""
        return {w.entry.uid: w.position for w in self.order}


def fair_order(
    waiting: Iterable[QueueEntry], running: Mapping[str, int], served: Mapping[str, int]
) -> list[QueueEntry]:
    """Priority first; within it, the namespace with the fewest running, then the one
    served least recently (``served``: namespace -> sequence number of its last
    start, higher is later), then the oldest test."""
    by_priority: dict[int, dict[str, list[QueueEntry]]] = {}
    for entry in waiting:
        by_priority.setdefault(entry.priority, {}).setdefault(entry.namespace, []).append(entry)
    counts = Counter(running)
    last = dict(served)
    turn = max(last.values(), default=0)
    order: list[QueueEntry] = []
    for priority in sorted(by_priority, reverse=True):
        lines = {
            ns: deque(sorted(tests, key=lambda e: e.age_key))
            for ns, tests in by_priority[priority].items()
        }
        heads = [(counts[ns], last.get(ns, -1), line[0].age_key, ns) for ns, line in lines.items()]
        heapq.heapify(heads)
        while heads:
            *_, namespace = heapq.heappop(heads)
            line = lines[namespace]
            order.append(line.popleft())
            counts[namespace] += 1
            turn += 1
            last[namespace] = turn
            if line:
                heapq.heappush(heads, (counts[namespace], turn, line[0].age_key, namespace))
    return order


def plan(
    entries: Iterable[QueueEntry],
    limit: int,
    now: datetime.datetime,
    namespace_limit: int = 0,
    served: Mapping[str, int] | None = None,
) -> QueuePlan:
    """The ordered queue, and which waiting tests may start now within both limits."""
    entries = list(entries)
    running_by_namespace = Counter(e.namespace for e in entries if e.phase and e.phase.active)
    running = sum(running_by_namespace.values())
    waiting = (e for e in entries if e.phase in WAITING)
    order = fair_order(waiting, running_by_namespace, served or {})
    free = max(0, limit - running)
    taken = Counter(running_by_namespace)
    rows = []
    for position, entry in enumerate(order, start=1):
        startable = False
        if entry.not_before is not None and entry.not_before > now:
            reason = queueview.retry_backoff(entry.not_before)
        elif namespace_limit and taken[entry.namespace] >= namespace_limit:
            reason = queueview.namespace_cap(running_by_namespace[entry.namespace], namespace_limit)
        elif free <= 0:
            reason = queueview.no_free_slot(running, limit)
        else:
            startable, reason = True, queueview.NEXT_TO_START
            free -= 1
            taken[entry.namespace] += 1
        rows.append(Waiting(entry, position, startable, reason))
    return QueuePlan(running, limit, namespace_limit, dict(running_by_namespace), tuple(rows))


@dataclass(frozen=True)
class Claim:
    """The answer to asking for a slot: taken, or the place in the queue."""

    taken: bool
    position: int | None = None


Indexed = Callable[[], Iterable[QueueEntry]]


@dataclass
class Scheduler:
    """Slot accounting shared by all tests of this operator.

    The API server's view (the kopf index) lags our own writes by a watch
    event; the phases we last wrote are overlaid on it so two tests can never
    take the same free slot.
    """

    limit: int
    namespace_limit: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _written: dict[str, tuple[Phase | None, datetime.datetime | None]] = field(default_factory=dict)
    # Positions this operator wrote, and when: a test's position is written at most
    # once per interval (positions_due), and what was written counts as written.
    _positions: dict[str, tuple[int | None, datetime.datetime]] = field(default_factory=dict)
    # The last plan, reused until a slot frees or it is PLAN_TTL old: with thousands
    # queued, a plan per admitted test would cost a sort each (13 ms at 1,000).
    _plan: tuple[int, datetime.datetime, QueuePlan] | None = None
    _version: int = 0
    # Tests admitted since the last plan, placed after it in arrival order.
    _behind: dict[str, int] = field(default_factory=dict)
    # Positions (in the last plan) of the tests that took a slot since it was made:
    # everyone behind them has moved up.
    _taken: list[int] = field(default_factory=list)
    # namespace -> the number of the claim that last started one of its tests.
    _served: dict[str, int] = field(default_factory=dict)
    _claims: int = 0

    PLAN_TTL = datetime.timedelta(seconds=0.25)

    def entries(self, indexed: Iterable[QueueEntry]) -> list[QueueEntry]:
        result = []
        for entry in indexed:
            written = self._written.get(entry.uid)
            if written is not None:
                if (entry.phase, entry.not_before) == written:
                    del self._written[entry.uid]  # the API server has caught up
                else:
                    entry = replace(entry, phase=written[0], not_before=written[1])
            result.append(entry)
        return result

    def view(self, indexed: Indexed, now: datetime.datetime) -> QueuePlan:
        """The exact queue now, for people; changes nothing a claim relies on."""
        return plan(self.entries(indexed()), self.limit, now, self.namespace_limit, self._served)

    def fresh_plan(self, indexed: Indexed, now: datetime.datetime) -> QueuePlan:
        fresh = self.view(indexed, now)
        self._plan = (self._version, now, fresh)
        self._behind.clear()
        self._taken.clear()
        return fresh

    def plan(self, indexed: Indexed, now: datetime.datetime) -> QueuePlan:
        if self._plan is not None:
            version, made, cached = self._plan
            if version == self._version and now - made < self.PLAN_TTL:
                return cached
        return self.fresh_plan(indexed, now)

    async def claim(
        self,
        uid: str,
        indexed: Indexed,
        now: datetime.datetime,
        not_before: datetime.datetime | None = None,
    ) -> Claim:
        """Take a free slot for ``uid`` if the queue lets it start now.

        The slot is ours before the lock is released: a test that took one counts
        as running for every later plan, before anything is written.
        """
        async with self.lock:
            if self._written.get(uid, (None, None))[0] == Phase.BUILDING:
                # Claimed by an earlier step whose status did not get written: still ours.
                return Claim(True)
            # The caller's test waits now, whatever the index still shows (a new attempt
            # of a finished or superseded test is admitted and claims in one step).
            self._remember(uid, Phase.QUEUED, not_before, None)
            current = self.plan(indexed, now)
            positions = current.positions
            if uid not in positions and current.running < self.limit:
                # New since the plan and a slot is free: who gets it must be decided fairly.
                current = self.fresh_plan(indexed, now)
                positions = current.positions
            elif uid in positions and uid not in current.startable:
                waited = current.order[positions[uid] - 1].entry.not_before
                if waited is not None and waited <= now:
                    # Its backoff ended since the plan was made, which saw it backing off.
                    current = self.fresh_plan(indexed, now)
                    positions = current.positions
            if uid in current.startable:
                self._remember(uid, Phase.BUILDING, None, Phase.QUEUED)
                self._claims += 1
                row = current.order[positions[uid] - 1]
                self._served[row.entry.namespace] = self._claims
                self._taken.append(row.position)
                return Claim(True)
            if uid in positions:
                ahead = sum(1 for taken in self._taken if taken < positions[uid])
                return Claim(False, positions[uid] - ahead)
            # Admitted since the plan, with every slot taken: behind everyone in it.
            behind = len(positions) - len(self._taken) + len(self._behind) + 1
            position = self._behind.setdefault(uid, behind)
            return Claim(False, position)

    def release(self, uid: str) -> None:
        """A claimed slot that was not used (the test went away before it was held)."""
        if self._written.pop(uid, None) is not None:
            self._version += 1

    def record(
        self, uid: str, old: AgentTestStatus, new: AgentTestStatus, now: datetime.datetime
    ) -> bool:
        """The status just written for ``uid`` over ``old``: the view to lay over the index.

        True when it freed a slot (the next test may start now).
        """
        freed = self._remember(uid, new.phase, parse_timestamp(new.retry_after), old.phase)
        self.wrote_position(uid, new.queue_position, now)
        return freed

    def wrote_position(self, uid: str, position: int | None, now: datetime.datetime) -> None:
        previous = self._positions.get(uid)
        if previous is None or previous[0] != position:
            self._positions[uid] = (position, now)

    def forget(self, uid: str) -> None:
        self._positions.pop(uid, None)
        self._behind.pop(uid, None)
        self._written.pop(uid, None)
        self._version += 1  # it may have held a slot

    def positions_due(
        self, current: QueuePlan, now: datetime.datetime, interval: float, budget: int
    ) -> tuple[list[tuple[QueueEntry, int]], float | None]:
        """Positions to write now, first positions first, and seconds until the next is due.

        A position is written when it differs from what the test shows, at most
        once per ``interval`` per test and at most ``budget`` at a time.
        """
        due: list[tuple[QueueEntry, int]] = []
        wait: float | None = None
        every = datetime.timedelta(seconds=interval)
        for row in current.order:
            uid = row.entry.uid
            written = self._positions.get(uid)
            shown = written[0] if written is not None else row.entry.position
            if shown == row.position:
                continue
            if written is not None and now - written[1] < every:
                left = (written[1] + every - now).total_seconds()
                wait = left if wait is None else min(wait, left)
                continue
            if len(due) >= budget:
                wait = 0.0 if wait is None else min(wait, 1.0)
                break
            due.append((row.entry, row.position))
        # What the API server shows now needs no memory; what was written long ago neither.
        waiting = current.positions
        for uid, (_, when) in list(self._positions.items()):
            if uid not in waiting or now - when >= every:
                del self._positions[uid]
        return due, wait

    def _remember(
        self,
        uid: str,
        phase: Phase | None,
        not_before: datetime.datetime | None,
        was: Phase | None,
    ) -> bool:
        """Lay ``phase`` over the index for ``uid``; True when that freed a slot."""
        previous = self._written.get(uid)
        if previous == (phase, not_before):
            return False
        if previous is not None:
            was = previous[0]
        self._written[uid] = (phase, not_before)
        freed = was is not None and was.active and not (phase is not None and phase.active)
        if freed:
            # A slot freed: the cached plan is stale. A slot taken is not: the plan
            # handed out its free slots to its startable tests, and one of them
            # taking its own leaves the others' as they were. So a burst of a
            # thousand claims costs one plan, not a thousand.
            self._version += 1
        return freed
