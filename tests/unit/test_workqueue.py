"""The work queue: each key in line once, never on two workers, delays that supersede."""

from __future__ import annotations

import asyncio

from agenttest.workqueue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def take_ready(queue: WorkQueue) -> list[str]:
    """Every key in line now, without waiting."""

    async def drain() -> list[str]:
        taken = []
        while queue.scheduled_now():
            taken.append(await queue.get())
        return taken

    return asyncio.run(drain())


def test_a_key_added_twice_is_in_line_once() -> None:
    queue = WorkQueue()
    queue.add("a")
    queue.add("b")
    queue.add("a")
    assert take_ready(queue) == ["a", "b"]


def test_a_key_added_while_a_worker_holds_it_comes_back_after_done() -> None:
    queue = WorkQueue()
    queue.add("a")
    [held] = take_ready(queue)
    queue.add("a")  # an event while the step runs
    assert take_ready(queue) == [], "never two workers on one key"
    assert queue.busy("a")
    queue.done(held)
    assert take_ready(queue) == ["a"]


def test_the_earliest_delay_wins_and_an_add_supersedes_it() -> None:
    clock = Clock()
    queue = WorkQueue(clock)
    queue.add_after("a", 10)
    queue.add_after("a", 3)
    queue.add_after("a", 20)
    assert queue.scheduled("a") == 3
    clock.now = 3
    assert take_ready(queue) == ["a"]
    queue.done("a")
    queue.add_after("b", 5)
    queue.add("b")
    queue.done(take_ready(queue)[0])
    clock.now = 100
    assert take_ready(queue) == [], "the timer was superseded by the add"
    assert queue.scheduled("b") is None


def test_forget_drops_what_is_pending() -> None:
    clock = Clock()
    queue = WorkQueue(clock)
    queue.add("a")
    queue.add_after("b", 1)
    queue.forget("a")
    queue.forget("b")
    clock.now = 5
    assert take_ready(queue) == [] and len(queue) == 0


def test_a_waiting_worker_wakes_when_a_delay_runs_out() -> None:
    async def scenario() -> str:
        queue = WorkQueue()
        queue.add_after("later", 0.05)
        return await asyncio.wait_for(queue.get(), 5)

    assert asyncio.run(scenario()) == "later"


def test_a_waiting_worker_wakes_on_add() -> None:
    async def scenario() -> str:
        queue = WorkQueue()
        getter = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        queue.add("now")
        return await asyncio.wait_for(getter, 5)

    assert asyncio.run(scenario()) == "now"
