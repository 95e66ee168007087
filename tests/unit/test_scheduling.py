from __future__ import annotations

import datetime

from agenttest.models import Phase
from agenttest.scheduling import QueueEntry, plan

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def entry(
    name: str,
    phase: Phase | None = Phase.QUEUED,
    priority: int = 0,
    second: int = 0,
    not_before: datetime.datetime | None = None,
) -> QueueEntry:
    return QueueEntry(
        uid=name,
        namespace="ns",
        name=name,
        priority=priority,
        created=f"2026-01-01T00:00:{second:02d}Z",
        phase=phase,
        not_before=not_before,
    )


def test_free_slots_go_to_priority_then_age() -> None:
    entries = [
        entry("old-low", second=1),
        entry("new-high", priority=5, second=9),
        entry("mid-low", second=3),
        entry("running", Phase.RUNNING),
    ]
    result = plan(entries, limit=3, now=NOW)
    assert result.running == 1
    assert result.startable == {"new-high", "old-low"}
    assert result.positions == {"new-high": 1, "old-low": 2, "mid-low": 3}


def test_nothing_starts_when_the_limit_is_reached() -> None:
    entries = [entry("a", Phase.BUILDING), entry("b", Phase.RUNNING), entry("c")]
    assert plan(entries, limit=2, now=NOW).startable == frozenset()


def test_finished_tests_hold_no_slot_and_no_place() -> None:
    entries = [entry("done", Phase.SUCCEEDED), entry("failed", Phase.FAILED), entry("c")]
    result = plan(entries, limit=1, now=NOW)
    assert result.startable == {"c"} and result.positions == {"c": 1}


def test_pending_tests_wait_in_line_too() -> None:
    result = plan([entry("new", None, second=2), entry("queued", second=1)], limit=1, now=NOW)
    assert result.startable == {"queued"}
    assert result.positions == {"queued": 1, "new": 2}


def test_a_backing_off_retry_keeps_its_place_but_lets_others_start() -> None:
    later = NOW + datetime.timedelta(seconds=30)
    entries = [entry("retrying", second=1, not_before=later), entry("next", second=2)]
    result = plan(entries, limit=1, now=NOW)
    assert result.startable == {"next"}
    assert result.positions["retrying"] == 1
    assert plan(entries, limit=1, now=later).startable == {"retrying"}
