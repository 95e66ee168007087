"""Which queued tests may start, and the slot accounting that keeps that true.

The queue is never stored. It is derived, on every decision, from the
phase, priority and creation time of every AgentTest (`plan`, pure), so a
restarted operator rebuilds it from the API server and never starts a test
twice. `Scheduler` lays the phases this operator wrote last over the API
server's view, which lags them by a watch event, and hands out slots through
one explicit call, `claim`.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from agenttest.lifecycle import parse_timestamp
from agenttest.models import AgentTestStatus, Phase

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

    @property
    def order(self) -> tuple[int, str, str, str]:
        """Priority first (higher earlier), then creation order, then name for ties."""
        return (-self.priority, self.created, self.namespace, self.name)


@dataclass(frozen=True)
class QueuePlan:
    running: int
    startable: frozenset[str]
    positions: dict[str, int]  # uid -> 1-based place among waiting tests


def plan(entries: Iterable[QueueEntry], limit: int, now: datetime.datetime) -> QueuePlan:
    """Decide which waiting tests may start now without exceeding `limit`."""
    entries = list(entries)
    running = sum(1 for entry in entries if entry.phase is not None and entry.phase.active)
    waiting = sorted((e for e in entries if e.phase in WAITING), key=lambda e: e.order)
    free = max(0, limit - running)
    startable = [e.uid for e in waiting if e.not_before is None or e.not_before <= now][:free]
    return QueuePlan(
        running=running,
        startable=frozenset(startable),
        positions={entry.uid: place for place, entry in enumerate(waiting, start=1)},
    )


@dataclass(frozen=True)
class Claim:
    """The answer to asking for a slot: taken, or the place in the queue."""

    taken: bool
    position: int | None = None


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
    # Every queued test asks at each of its steps; with hundreds queued, one plan
    # serves them all until a phase changes or it is PLAN_TTL old.
    _plan: tuple[int, datetime.datetime, QueuePlan] | None = None
    _version: int = 0

    PLAN_TTL = datetime.timedelta(seconds=0.25)

    def entries(self, indexed: Iterable[QueueEntry]) -> list[QueueEntry]:
        result = []
        for entry in indexed:
            if entry.uid in self._written:
                phase, not_before = self._written[entry.uid]
                entry = replace(entry, phase=phase, not_before=not_before)
            result.append(entry)
        return result

    def plan(
        self, indexed: Callable[[], Iterable[QueueEntry]], now: datetime.datetime
    ) -> QueuePlan:
        if self._plan is not None:
            version, made, cached = self._plan
            if version == self._version and now - made < self.PLAN_TTL:
                return cached
        fresh = plan(self.entries(indexed()), self.limit, now)
        self._plan = (self._version, now, fresh)
        return fresh

    async def claim(
        self, uid: str, indexed: Callable[[], Iterable[QueueEntry]], now: datetime.datetime
    ) -> Claim:
        """Take a free slot for ``uid`` if the queue lets it start now.

        The slot is ours before the lock is released: a test that took one counts
        as running for every later plan, before anything is written.
        """
        async with self.lock:
            current = self.plan(indexed, now)
            if uid not in current.startable:
                return Claim(False, current.positions.get(uid))
            self._remember(uid, Phase.BUILDING, None)
            return Claim(True)

    def record(self, uid: str, status: AgentTestStatus) -> None:
        """The status just written for ``uid``: the view to lay over the index."""
        self._remember(uid, status.phase, parse_timestamp(status.retry_after))

    def forget(self, uid: str) -> None:
        if self._written.pop(uid, None) is not None:
            self._version += 1

    def _remember(
        self, uid: str, phase: Phase | None, not_before: datetime.datetime | None
    ) -> None:
        if self._written.get(uid) != (phase, not_before):
            self._written[uid] = (phase, not_before)
            self._version += 1
