"""Fault injection for the tests: the operator SIGKILLs itself at a named point of a test's life.

A crash at an exact point is what proves that a restarted operator repeats
nothing and loses nothing: a launch claimed but not made, made but not
recorded, a pass recorded but not packaged, a deletion begun but not done.
`reached(point)` does nothing unless the setting `crash_at` (testing only)
names that point; then the process kills itself on the spot, with no chance
to clean up, as a node failure or the OOM killer would.
"""

from __future__ import annotations

import logging
import os
import signal

from agenttest import settings

logger = logging.getLogger(__name__)

# The points the controller passes, in the order a test meets them.
POINTS = frozenset({"claimed", "launched", "packaging", "deleting"})


def reached(point: str) -> None:
    """SIGKILL this process if the setting `crash_at` names `point`."""
    if point not in POINTS:
        raise ValueError(f"unknown crash point {point!r}")
    if settings.active().crash_at != point:
        return
    logger.error("crash_at=%s: killing the operator here (fault injection)", point)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
