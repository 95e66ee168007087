from __future__ import annotations

import asyncio
import datetime

from agenttest.models import AgentTestStatus, Phase
from agenttest.scheduling import QueueEntry, Scheduler, plan

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def entry(
    name: str,
    phase: Phase | None = Phase.QUEUED,
    priority: int = 0,
    second: int = 0,
    not_before: datetime.datetime | None = None,
    namespace: str = "ns",
    position: int | None = None,
) -> QueueEntry:
    return QueueEntry(
        uid=name,
        namespace=namespace,
        name=name,
        priority=priority,
        created=f"2026-01-01T00:00:{second:02d}Z",
        phase=phase,
        not_before=not_before,
        position=position,
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


def test_a_namespace_with_many_queued_does_not_starve_one_with_one() -> None:
    crowd = [entry(f"a{i}", second=i, namespace="crowded") for i in range(10)]
    lone = entry("b", second=30, namespace="quiet")
    result = plan([*crowd, lone], limit=2, now=NOW)
    # Both namespaces run nothing: the oldest test first, then the namespace
    # with fewer running (quiet) although its test is the newest.
    assert result.startable == {"a0", "b"}
    assert [w.entry.name for w in result.order][:4] == ["a0", "b", "a1", "a2"]


def test_the_namespace_with_fewest_running_goes_first() -> None:
    entries = [
        entry("busy-run", Phase.RUNNING, namespace="busy"),
        entry("busy-run2", Phase.RUNNING, namespace="busy"),
        entry("busy-next", second=1, namespace="busy"),
        entry("idle-next", second=5, namespace="idle"),
    ]
    result = plan(entries, limit=3, now=NOW)
    assert result.startable == {"idle-next"}
    assert result.positions == {"idle-next": 1, "busy-next": 2}


def test_priority_comes_before_fair_share() -> None:
    entries = [
        entry("low-idle", second=1, namespace="idle"),
        entry("high-busy", priority=9, second=9, namespace="busy"),
        entry("running", Phase.RUNNING, namespace="busy"),
    ]
    assert plan(entries, limit=2, now=NOW).startable == {"high-busy"}


def test_a_namespace_cap_holds_its_tests_and_says_why() -> None:
    entries = [
        entry("r1", Phase.RUNNING, namespace="capped"),
        entry("r2", Phase.BUILDING, namespace="capped"),
        entry("c1", second=1, namespace="capped"),
        entry("o1", second=2, namespace="other"),
    ]
    result = plan(entries, limit=10, now=NOW, namespace_limit=2)
    assert result.startable == {"o1"}
    [capped] = [w for w in result.order if w.entry.name == "c1"]
    assert not capped.startable
    assert capped.reason == "namespace cap (2/2 running in namespace)"


def test_why_a_test_waits_is_said() -> None:
    later = NOW + datetime.timedelta(seconds=30)
    entries = [
        entry("run", Phase.RUNNING),
        entry("backing-off", second=1, not_before=later),
        entry("next", second=2),
        entry("last", second=3),
    ]
    reasons = {w.entry.name: w.reason for w in plan(entries, limit=2, now=NOW).order}
    assert reasons == {
        "backing-off": "retry backoff until 2026-01-01T00:00:30Z",
        "next": "next to start",
        "last": "no free slot (1/2 running)",
    }


def test_positions_are_written_when_changed_first_first_at_most_once_per_interval() -> None:
    scheduler = Scheduler(limit=0)
    entries = [entry(f"t{i}", second=i, position=i + 1) for i in range(5)]
    # t0 left the queue: everyone behind moves up by one.
    moved = entries[1:]
    current = plan(moved, limit=0, now=NOW)
    due, _ = scheduler.positions_due(current, NOW, interval=5, budget=2)
    assert [(e.name, p) for e, p in due] == [("t1", 1), ("t2", 2)], "first positions first"
    for written, position in due:
        scheduler.wrote_position(written.uid, position, NOW)
    due, wait = scheduler.positions_due(current, NOW, interval=5, budget=2)
    assert [(e.name, p) for e, p in due] == [("t3", 3), ("t4", 4)]
    for written, position in due:
        scheduler.wrote_position(written.uid, position, NOW)
    # Nothing changed: nothing to write, now or later.
    assert scheduler.positions_due(current, NOW, interval=5, budget=2) == ([], None)
    # t1 leaves too, one second later: the others changed, but were written a second ago.
    current = plan(moved[1:], limit=0, now=NOW)
    soon = NOW + datetime.timedelta(seconds=1)
    due, wait = scheduler.positions_due(current, soon, interval=5, budget=10)
    assert due == [] and wait == 4.0
    later = NOW + datetime.timedelta(seconds=5)
    due, _ = scheduler.positions_due(current, later, interval=5, budget=10)
    assert [(e.name, p) for e, p in due] == [("t2", 1), ("t3", 2), ("t4", 3)]


def test_a_test_admitted_after_the_plan_is_placed_behind_it() -> None:
    scheduler = Scheduler(limit=1)
    known = [entry("run", Phase.RUNNING), entry("a", second=1)]

    async def claims() -> list[int | None]:
        first = await scheduler.claim("a", lambda: known, NOW)
        late = [*known, entry("b", second=2), entry("c", second=3)]
        second = await scheduler.claim("b", lambda: late, NOW)
        third = await scheduler.claim("c", lambda: late, NOW)
        return [first.position, second.position, third.position]

    assert asyncio.run(claims()) == [1, 2, 3]


def test_a_claim_whose_status_was_not_written_stays_taken() -> None:
    scheduler = Scheduler(limit=1)
    queued = [entry("a"), entry("b", second=1)]

    async def claims() -> tuple[bool, bool, bool]:
        first = await scheduler.claim("a", lambda: queued, NOW)
        # The launch's status write failed; the index still says Queued.
        again = await scheduler.claim("a", lambda: queued, NOW)
        other = await scheduler.claim("b", lambda: queued, NOW)
        return first.taken, again.taken, other.taken

    assert asyncio.run(claims()) == (True, True, False)


def test_a_released_claim_frees_its_slot() -> None:
    scheduler = Scheduler(limit=1)
    queued = [entry("a"), entry("b", second=1)]

    async def claims() -> bool:
        await scheduler.claim("a", lambda: queued, NOW)
        scheduler.release("a")
        gone = [entry("b", second=1)]
        return (await scheduler.claim("b", lambda: gone, NOW)).taken

    assert asyncio.run(claims())


def test_a_finished_write_frees_the_slot_for_the_next_plan() -> None:
    scheduler = Scheduler(limit=1)
    index = [entry("a", Phase.RUNNING), entry("b", second=1)]
    assert scheduler.plan(lambda: index, NOW).startable == frozenset()
    scheduler.record(
        "a", AgentTestStatus(phase=Phase.RUNNING), AgentTestStatus(phase=Phase.SUCCEEDED), NOW
    )
    # Within the plan's lifetime, but a slot freed: the plan is made again.
    assert scheduler.plan(lambda: index, NOW).startable == {"b"}


def test_with_one_slot_namespaces_take_turns() -> None:
    # Whenever the single slot frees, both namespaces run nothing: the one that
    # started a test least recently goes first, or the crowd would always win
    # on age alone.
    crowd = [entry(f"a{i}", second=i, namespace="crowded") for i in range(1, 5)]
    quiet = entry("b", second=30, namespace="quiet")
    result = plan([*crowd, quiet], limit=1, now=NOW, served={"crowded": 7})
    assert result.startable == {"b"}
    assert [w.entry.name for w in result.order] == ["b", "a1", "a2", "a3", "a4"]


def test_claims_remember_which_namespace_was_served() -> None:
    scheduler = Scheduler(limit=1)
    index = [entry("a1", namespace="crowded"), entry("a2", second=1, namespace="crowded")]

    async def scenario() -> list[str]:
        assert (await scheduler.claim("a1", lambda: index, NOW)).taken
        scheduler.record(
            "a1", AgentTestStatus(phase=Phase.BUILDING), AgentTestStatus(phase=Phase.SUCCEEDED), NOW
        )
        later = [*index[1:], entry("b", second=9, namespace="quiet")]
        return [w.entry.name for w in scheduler.view(lambda: later, NOW).order]

    assert asyncio.run(scenario()) == ["b", "a2"]


def test_a_claim_after_a_backoff_ends_does_not_trust_the_plan_made_during_it() -> None:
    scheduler = Scheduler(limit=1)
    until = NOW + datetime.timedelta(seconds=0.1)  # within the plan's lifetime (PLAN_TTL)
    index = [entry("retrying", not_before=until)]

    async def claims() -> tuple[bool, bool]:
        during = await scheduler.claim("retrying", lambda: index, NOW, until)
        # A moment later the backoff is over.
        after = await scheduler.claim("retrying", lambda: index, until, until)
        return during.taken, after.taken

    assert asyncio.run(claims()) == (False, True)


def test_a_new_attempt_claims_though_the_index_still_shows_it_finished() -> None:
    # A retry of a finished test is admitted and claims in one step, before its
    # status says Queued: the index still says Succeeded.
    scheduler = Scheduler(limit=1)
    index = [entry("again", Phase.SUCCEEDED)]
    assert asyncio.run(scheduler.claim("again", lambda: index, NOW)).taken
