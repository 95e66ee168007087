"""The controller and scheduler with a fake executor: the step's actions, without I/O."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field, replace

import pytest

from agenttest import controller
from agenttest.executions import (
    ExecutionKey,
    ExecutionState,
    Launched,
    LaunchRequest,
    LogChunk,
    Observation,
)
from agenttest.models import AgentTest, AgentTestStatus, Backend, Phase
from agenttest.runner.protocol import signed_line
from agenttest.scheduling import QueueEntry, Scheduler
from agenttest.settings import Settings

from test_lifecycle import T0, spec

SECRET = b"s" * 32


@dataclass
class FakeExecutor:
    """An executor whose executions do what the test says, in memory."""

    kind: Backend = Backend.LOCAL
    log_grace_seconds: float = 0.0
    requests: list[LaunchRequest] = field(default_factory=list)
    states: dict[str, Observation] = field(default_factory=dict)
    lines: dict[str, list[str]] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)

    async def launch(self, request: LaunchRequest) -> str:
        self.requests.append(request)
        self.states[request.key.name] = Observation(ExecutionState.RUNNING)
        return request.key.name

    async def locate(self, namespace: str, key: ExecutionKey) -> str | None:
        return key.name if key.name in self.states else None

    async def observe(self, execution_id: str) -> Observation:
        return self.states[execution_id]

    async def read_logs(self, execution_id: str, cursor: str | None) -> LogChunk:
        lines = self.lines.get(execution_id, [])
        start = int(cursor or 0)
        return LogChunk(lines[start:], str(len(lines)))

    async def stop(self, execution_id: str, reason: str) -> None:
        self.stopped.append(execution_id)
        self.states[execution_id] = Observation(ExecutionState.EXITED, exit_code=-9)

    async def cleanup(self, execution_id: str) -> None:
        await self.stop(execution_id, "cleanup")

    async def launched(self) -> list[Launched]:
        return await self.launched_executions()

    async def launched_executions(self) -> list[Launched]:
        return []


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now


def runtime(limit: int = 1) -> tuple[controller.Runtime, FakeExecutor, Clock]:
    executor, clock = FakeExecutor(), Clock()
    rt = controller.Runtime(
        settings=Settings(default_backend=Backend.LOCAL, max_running=limit),
        executors={Backend.LOCAL: executor},
        scheduler=Scheduler(limit=limit),
        signing_secret=SECRET,
        clock=clock,
    )
    return rt, executor, clock


def agent_test(uid: str, status: AgentTestStatus | None = None, **changes: object) -> AgentTest:
    return AgentTest(uid, "ns", f"t-{uid}", 1, spec(**changes), status or AgentTestStatus())


def entry(test: AgentTest, created: str) -> QueueEntry:
    return QueueEntry(test.uid, test.namespace, test.name, 0, created, test.status.phase)


def alone(test: AgentTest) -> controller.Indexed:
    """The index of a cluster where this test is the only one."""
    return lambda: [entry(test, "2026-01-01T00:00:00Z")]


def test_a_slot_is_claimed_through_the_scheduler_and_the_next_test_waits() -> None:
    rt, executor, _ = runtime(limit=1)
    first, second = agent_test("a"), agent_test("b")
    indexed = [entry(first, "2026-01-01T00:00:00Z"), entry(second, "2026-01-01T00:00:01Z")]

    async def steps() -> tuple[controller.Step, controller.Step]:
        one = await controller.reconcile(rt, first, lambda: indexed)
        two = await controller.reconcile(rt, second, lambda: indexed)
        return one, two

    one, two = asyncio.run(steps())
    assert one.status.phase == Phase.BUILDING
    assert [phase for phase, _ in one.transitions] == [Phase.PENDING, Phase.QUEUED, Phase.BUILDING]
    # The index still says both are waiting; the claimed slot counts all the same.
    assert (two.status.phase, two.status.queue_position) == (Phase.QUEUED, 1)
    [request] = executor.requests
    assert request.key.uid == "a" and len(request.run_key) == 64


def test_the_executions_signed_result_ends_it_and_a_forged_one_does_not() -> None:
    rt, executor, clock = runtime()
    test = agent_test("a")
    status = asyncio.run(controller.reconcile(rt, test, alone(test))).status
    [request] = executor.requests
    key = bytes.fromhex(request.run_key)
    execution = request.key.name
    forged = signed_line(b"guess", 1, {"event": "result", "passed": True, "cases": []})
    executor.lines[execution] = [forged]
    executor.states[execution] = Observation(ExecutionState.EXITED, exit_code=0)
    clock.now += datetime.timedelta(seconds=2)
    ended = asyncio.run(controller.reconcile(rt, agent_test("a", status), lambda: []))
    assert ended.status.phase == Phase.ERROR
    assert ended.status.forged_lines == 1

    rt, executor, clock = runtime()
    status = asyncio.run(controller.reconcile(rt, test, alone(test))).status
    [request] = executor.requests
    passed = {"event": "result", "passed": True, "summary": "1/1 cases passed",
              "cases": [{"name": "a", "passed": True}]}  # fmt: skip
    executor.lines[request.key.name] = [signed_line(bytes.fromhex(request.run_key), 1, passed)]
    executor.states[request.key.name] = Observation(ExecutionState.EXITED, exit_code=0)
    ended = asyncio.run(controller.reconcile(rt, agent_test("a", status), lambda: []))
    assert ended.status.phase == Phase.SUCCEEDED
    assert key  # the first execution's key signed nothing the second trusted


def test_a_timeout_stops_the_execution_and_keeps_its_last_output() -> None:
    rt, executor, clock = runtime()
    status = asyncio.run(controller.reconcile(rt, agent_test("a"), alone(agent_test("a")))).status
    [request] = executor.requests
    executor.lines[request.key.name] = ["[agenttest] still thinking"]
    clock.now += datetime.timedelta(seconds=301)
    ended = asyncio.run(controller.reconcile(rt, agent_test("a", status), lambda: []))
    assert ended.status.phase == Phase.TIMED_OUT
    assert executor.stopped == [request.key.name]
    assert ended.status.log_tail == "[agenttest] still thinking"


def test_cancel_stops_the_execution() -> None:
    rt, executor, _ = runtime()
    status = asyncio.run(controller.reconcile(rt, agent_test("a"), alone(agent_test("a")))).status
    cancelled = agent_test("a", status, cancel=True)
    ended = asyncio.run(controller.reconcile(rt, cancelled, lambda: []))
    assert ended.status.phase == Phase.CANCELLED
    assert executor.stopped == [executor.requests[0].key.name]


def test_the_scheduler_overlays_what_was_written_on_the_lagging_index() -> None:
    scheduler = Scheduler(limit=1)
    waiting = QueueEntry("a", "ns", "a", 0, "2026-01-01T00:00:00Z", Phase.QUEUED)
    scheduler.record(
        "a", AgentTestStatus(phase=Phase.QUEUED), AgentTestStatus(phase=Phase.SUCCEEDED), T0
    )
    # The index still says Queued; what we wrote says it is done: not waiting.
    assert scheduler.plan(lambda: [waiting], T0).positions == {}
    scheduler.forget("a")
    assert scheduler.plan(lambda: [waiting], T0 + datetime.timedelta(seconds=1)).positions == {
        "a": 1
    }


def failing_reads(executor: FakeExecutor, error: Exception) -> None:
    async def read_logs(execution_id: str, cursor: str | None) -> LogChunk:
        raise error

    executor.read_logs = read_logs  # type: ignore[method-assign]


def first_step(rt: controller.Runtime) -> AgentTestStatus:
    return asyncio.run(controller.reconcile(rt, agent_test("a"), alone(agent_test("a")))).status


def test_a_step_that_keeps_failing_for_one_execution_ends_the_test_in_error() -> None:
    rt, executor, _clock = runtime()
    status = first_step(rt)
    failing_reads(executor, ValueError("cases.0: Input should be a valid dictionary"))
    for _ in range(controller.STEP_ERROR_LIMIT - 1):
        with pytest.raises(ValueError):
            asyncio.run(controller.reconcile(rt, agent_test("a", status), lambda: []))
    ended = asyncio.run(controller.reconcile(rt, agent_test("a", status), lambda: []))
    assert ended.status.phase == Phase.ERROR
    assert "Input should be a valid dictionary" in (ended.status.message or "")
    assert ended.transitions == [(Phase.ERROR, ended.status.message)]
    assert executor.stopped == [executor.requests[0].key.name]


def test_the_infrastructure_failing_for_now_never_ends_a_test() -> None:
    rt, executor, _clock = runtime()
    status = first_step(rt)
    unavailable = ConnectionRefusedError("the API server is down")
    failing_reads(executor, unavailable)
    for _ in range(3 * controller.STEP_ERROR_LIMIT):
        with pytest.raises(ConnectionRefusedError):
            asyncio.run(controller.reconcile(rt, agent_test("a", status), lambda: []))
    assert executor.stopped == []


def test_the_timeout_holds_even_when_reading_the_execution_fails() -> None:
    rt, executor, clock = runtime()
    status = first_step(rt)
    failing_reads(executor, ValueError("undecodable"))
    clock.now += datetime.timedelta(seconds=301)
    ended = asyncio.run(controller.reconcile(rt, agent_test("a", status), lambda: []))
    assert ended.status.phase == Phase.TIMED_OUT
    assert executor.stopped == [executor.requests[0].key.name]


def test_stop_acts_on_the_derived_execution_never_on_the_id_in_status() -> None:
    rt, executor, clock = runtime()
    status = first_step(rt)
    assert status.execution is not None
    edited = status.model_copy(
        update={"execution": status.execution.model_copy(update={"id": "kube-system/aws-auth"})}
    )
    executor.states["kube-system/aws-auth"] = Observation(ExecutionState.RUNNING)
    clock.now += datetime.timedelta(seconds=301)
    ended = asyncio.run(controller.reconcile(rt, agent_test("a", edited), lambda: []))
    assert ended.status.phase == Phase.TIMED_OUT
    assert executor.stopped == [executor.requests[0].key.name]


def test_an_infrastructure_retry_stops_what_is_left_of_the_previous_execution() -> None:
    rt, executor, _clock = runtime()
    status = first_step(rt)
    first = executor.requests[0].key.name
    executor.states[first] = Observation(
        ExecutionState.MISSING, reason="node lost", infra_failure=True
    )
    requeued = asyncio.run(controller.reconcile(rt, agent_test("a", status), lambda: [])).status
    assert (requeued.phase, requeued.infra_retries) == (Phase.QUEUED, 1)
    assert executor.stopped == [first]


def test_the_sweeper_removes_executions_whose_test_is_gone_and_keeps_the_rest() -> None:
    rt, executor, _ = runtime()
    first_step(rt)
    mine = executor.requests[0]
    others = {("ns", "t-a"): "a"}  # the test that launched it, still there under its uid

    async def launched_executions() -> list[Launched]:
        return [
            Launched(mine.key.name, "ns", "t-a", "a"),
            Launched("at-gone", "ns", "t-gone", "gone"),
            Launched("at-renamed", "ns", "t-a", "an-older-uid"),
            Launched("at-elsewhere", "other-ns", "x", "x"),
        ]

    async def owner_uid(namespace: str, name: str) -> str | None:
        return others.get((namespace, name))

    executor.launched_executions = launched_executions  # type: ignore[attr-defined]
    rt = replace(rt, settings=replace(rt.settings, namespaces=("ns",)))
    swept = asyncio.run(controller.sweep(rt, owner_uid))
    assert swept == ["at-gone", "at-renamed"]
    assert executor.stopped == ["at-gone", "at-renamed"]


class Throttled(Exception):
    """What botocore raises for a throttled call, in shape: an error response."""

    response = {"Error": {"Code": "ThrottlingException"}, "ResponseMetadata": {}}


def test_a_launch_refused_for_now_is_deferred_under_the_same_key_spending_no_retry() -> None:
    rt, executor, clock = runtime()
    launch = executor.launch
    refusals = [Throttled("Rate exceeded"), Throttled("Rate exceeded")]

    async def refusing(request: LaunchRequest) -> str:
        executor.requests.append(request)
        if refusals:
            raise refusals.pop(0)
        executor.requests.pop()
        return await launch(request)

    executor.launch = refusing  # type: ignore[method-assign]
    test = agent_test("a")
    delays = []
    for _ in range(2):
        step = asyncio.run(controller.reconcile(rt, test, alone(test)))
        status = step.status
        assert (status.phase, status.infra_retries) == (Phase.QUEUED, 0)
        assert "launch deferred: Throttled: Rate exceeded" in (status.message or "")
        retry_at = datetime.datetime.fromisoformat(str(status.retry_after))
        delays.append((retry_at - clock.now).total_seconds())
        rt.scheduler.record(test.uid, test.status, status, clock.now)  # as writing does
        clock.now = retry_at
        test = agent_test("a", status)
    assert delays == [5.0, 10.0]  # infra_backoff_seconds, doubled
    launched = asyncio.run(controller.reconcile(rt, test, alone(test))).status
    assert launched.phase == Phase.BUILDING and not launched.infra_retries
    assert len({request.key for request in executor.requests}) == 1, "one key throughout"
    assert executor.stopped == []


def test_a_launch_refused_for_now_too_often_counts_as_an_infrastructure_failure() -> None:
    rt, executor, clock = runtime()

    async def refusing(request: LaunchRequest) -> str:
        raise ConnectionRefusedError("never answers")

    executor.launch = refusing  # type: ignore[method-assign]
    test = agent_test("a")
    for _ in range(controller.LAUNCH_DEFERRAL_LIMIT):
        status = asyncio.run(controller.reconcile(rt, test, alone(test))).status
        assert (status.phase, status.infra_retries) == (Phase.QUEUED, 0)
        rt.scheduler.record(test.uid, test.status, status, clock.now)
        clock.now = datetime.datetime.fromisoformat(str(status.retry_after))
        test = agent_test("a", status)
    status = asyncio.run(controller.reconcile(rt, test, alone(test))).status
    assert (status.phase, status.infra_retries) == (Phase.QUEUED, 1)
    assert "launch failed" in (status.message or "")
