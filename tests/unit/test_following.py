"""lifecycle.begin and lifecycle.follow: what a step decides, without I/O."""

from __future__ import annotations

import dataclasses

from agenttest import lifecycle
from agenttest.executions import ExecutionState, Observation
from agenttest.lifecycle import Act, Next, RetryPolicy
from agenttest.logtail import Progress
from agenttest.models import AgentTest, AgentTestStatus, Backend, Phase

from test_lifecycle import at, spec, started

POLICY = RetryPolicy(max_retries=2, backoff_seconds=5)
RUNNING = Observation(ExecutionState.RUNNING)
PASSED = {"event": "result", "passed": True, "summary": "1/1 cases passed",
          "cases": [{"name": "a", "passed": True}]}  # fmt: skip


def follow(
    observation: Observation,
    progress: Progress | None = None,
    seconds: float = 1,
    status: AgentTestStatus | None = None,
    grace: float = 0,
) -> lifecycle.Followed:
    return lifecycle.follow(
        status or started(), spec(), observation, progress or Progress("exec-1"), at(seconds),
        grace, POLICY,
    )  # fmt: skip


def test_a_running_execution_keeps_going_and_reports_the_runners_phase() -> None:
    followed = follow(RUNNING, Progress("exec-1", runner_phase="Running", tail="hi"))
    assert followed.act == Act.KEEP
    assert followed.status.phase == Phase.RUNNING and followed.status.log_tail == "hi"


def test_the_timeout_stops_a_running_execution() -> None:
    followed = follow(RUNNING, seconds=301)  # the spec's timeout: the default 300 s
    assert (followed.act, followed.stop_phase) == (Act.STOP, Phase.TIMED_OUT)
    assert followed.stop_reason == "timed out after 300s"
    assert follow(RUNNING, seconds=299).act == Act.KEEP


def test_an_exit_without_a_result_waits_for_late_logs_only_within_the_grace() -> None:
    exited = Observation(ExecutionState.EXITED, exit_code=0)
    first = follow(exited, seconds=10, grace=5)
    assert (first.act, first.exited_at) == (Act.AWAIT_LOGS, at(10))
    later = follow(exited, Progress("exec-1", exited_at=first.exited_at), seconds=14, grace=5)
    assert later.act == Act.AWAIT_LOGS
    done = follow(exited, Progress("exec-1", exited_at=first.exited_at), seconds=16, grace=5)
    assert done.act == Act.DONE and done.status.phase == Phase.ERROR
    # No grace for backends whose output is complete when they exit.
    assert follow(exited, seconds=10).act == Act.DONE


def test_a_throttled_read_waits_but_never_past_the_timeout() -> None:
    exited = Observation(ExecutionState.EXITED, exit_code=0)
    throttled = Progress("exec-1", throttled=True)
    assert follow(exited, throttled, seconds=10).act == Act.AWAIT_LOGS
    assert follow(exited, throttled, seconds=301).act == Act.DONE


def test_a_verified_pass_ends_succeeded_and_the_backends_deadline_timed_out() -> None:
    exited = Observation(ExecutionState.EXITED, exit_code=0)
    followed = follow(exited, Progress("exec-1", result=PASSED))
    assert (followed.act, followed.status.phase) == (Act.DONE, Phase.SUCCEEDED)
    deadline = Observation(ExecutionState.EXITED, 137, "DeadlineExceeded", timed_out=True)
    assert follow(deadline).status.phase == Phase.TIMED_OUT


def test_a_result_that_does_not_parse_ends_error_instead_of_raising() -> None:
    exited = Observation(ExecutionState.EXITED, exit_code=0)
    broken = Progress("exec-1", result={"event": "result", "passed": True, "cases": [42]})
    followed = follow(exited, broken)
    assert followed.status.phase == Phase.ERROR
    assert "result cannot be read" in (followed.status.message or "")


def test_a_lost_execution_is_retried_with_backoff_then_ends_error() -> None:
    lost = Observation(ExecutionState.MISSING, reason="gone", infra_failure=True)
    status = started()
    for retry, seconds in ((1, 10), (2, 20)):
        followed = follow(lost, status=status, seconds=seconds)
        assert followed.act == Act.DONE
        status = followed.status
        assert (status.phase, status.infra_retries, status.attempt) == (Phase.QUEUED, retry, 1)
    status = lifecycle.launched(status, Backend.LOCAL, "exec-2", at(30))
    final = follow(lost, status=status, seconds=31)
    assert final.status.phase == Phase.ERROR and "after 2 retries: gone" in (
        final.status.message or ""
    )
    # Gone for a reason that is the test's own: no retry.
    deleted = follow(Observation(ExecutionState.MISSING, reason="pod deleted"), seconds=5)
    assert deleted.status.phase == Phase.ERROR


def test_begin_says_what_the_step_is_for() -> None:
    def test(status: AgentTestStatus, **changes: object) -> AgentTest:
        base = AgentTest("uid", "ns", "t", 1, spec(), status)
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    fresh = lifecycle.begin(test(AgentTestStatus()), Backend.POD)
    assert (fresh.next, fresh.status.phase, fresh.status.backend) == (
        Next.LAUNCH,
        Phase.QUEUED,
        Backend.POD,
    )
    assert lifecycle.begin(test(started()), Backend.POD).next == Next.FOLLOW
    cancelled = lifecycle.begin(test(started(), spec=spec(cancel=True)), Backend.POD)
    assert cancelled.next == Next.CANCEL
    # A new spec supersedes the running execution: stop it, start attempt 2.
    changed = lifecycle.begin(
        test(started(), generation=2, spec=spec(timeoutSeconds=60)), Backend.POD
    )
    assert changed.stop_previous and changed.status.attempt == 2
    assert changed.next == Next.LAUNCH
    done = lifecycle.finish(started(), Phase.FAILED, "no", at(3))
    assert lifecycle.begin(test(done), Backend.POD).next == Next.NOTHING
