"""The keys of tests to reconcile: each in line at most once, never on two workers at once.

The semantics of client-go's workqueue, which every Kubernetes controller
relies on, in a few lines of asyncio:

* `add(key)` puts a key in line unless it is in line already; a key added
  while a worker holds it goes back in line when that worker is `done`, so
  no change is lost and no two workers ever step the same test at once.
* `add_after(key, delay)` puts it in line later (the next look at a running
  execution, a retry's backoff, a finished test's TTL); the earliest of
  several pending times wins, and an immediate `add` supersedes them.
* `forget(key)` drops whatever is pending for a key (a deleted test).

A key that nobody adds costs nothing: this is what keeps a queued test free.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import Callable


class WorkQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._line: deque[str] = deque()
        self._in_line: set[str] = set()
        self._working: set[str] = set()
        self._again: set[str] = set()  # added while a worker held it
        self._due: dict[str, float] = {}  # key -> when it goes in line
        self._timers: list[tuple[float, int, str]] = []  # (due, seq, key); stale ones skipped
        self._seq = 0
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._in_line) + len(self._due)

    def add(self, key: str) -> None:
        self._due.pop(key, None)
        if key in self._working:
            self._again.add(key)
        elif key not in self._in_line:
            self._line.append(key)
            self._in_line.add(key)
            self._wakeup.set()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        if key in self._in_line:
            return  # it runs sooner anyway, and then decides its next time itself
        due = self._clock() + delay
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        self._seq += 1
        heapq.heappush(self._timers, (due, self._seq, key))
        self._wakeup.set()

    def forget(self, key: str) -> None:
        self._due.pop(key, None)
        self._again.discard(key)
        if key in self._in_line:
            self._in_line.discard(key)
            self._line.remove(key)

    def scheduled_now(self) -> bool:
        """Whether `get` would return at once."""
        self._promote_due()
        return bool(self._line)

    def busy(self, key: str) -> bool:
        """A worker holds it, or it is in line for one."""
        return key in self._working or key in self._in_line

    def scheduled(self, key: str) -> float | None:
        """Seconds until ``key`` is due (0 when in line), None when nothing is pending."""
        if key in self._in_line:
            return 0.0
        due = self._due.get(key)
        return None if due is None else max(0.0, due - self._clock())

    async def get(self) -> str:
        """The next key to work on; the caller must call `done(key)` when it is finished."""
        while True:
            self._promote_due()
            if self._line:
                key = self._line.popleft()
                self._in_line.discard(key)
                self._working.add(key)
                return key
            self._wakeup.clear()
            timeout = self._timers[0][0] - self._clock() if self._timers else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def done(self, key: str) -> None:
        self._working.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    def _promote_due(self) -> None:
        now = self._clock()
        while self._timers and self._timers[0][0] <= now:
            due, _, key = heapq.heappop(self._timers)
            if self._due.get(key) != due:
                continue  # superseded by an earlier time, an add, or forget
            del self._due[key]
            self.add(key)
