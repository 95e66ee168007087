"""Which queued tests may start: pure functions over the tests the API server holds.

The queue is never stored. It is derived, on every decision, from the
phase, priority and creation time of every AgentTest, so a restarted operator
rebuilds it from the API server and never starts a test twice.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

from agenttest.models import Phase

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
