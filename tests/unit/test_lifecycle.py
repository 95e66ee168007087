from __future__ import annotations

import datetime
from typing import Any

from agenttest import lifecycle
from agenttest.kubeapi import merge_patch
from agenttest.models import AgentTestSpec, AgentTestStatus, Backend, CaseResult, Phase

T0 = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def spec(**changes: Any) -> AgentTestSpec:
    data: dict[str, Any] = {
        "agent": {"source": {"inline": "agent = None"}},
        "model": {"provider": "ollama", "modelId": "m", "endpoint": "http://m:1"},
        "cases": [{"name": "a", "query": "q"}],
    }
    data.update(changes)
    return AgentTestSpec.model_validate(data)


def started(test_spec: AgentTestSpec | None = None) -> AgentTestStatus:
    test_spec = test_spec or spec()
    status = lifecycle.start_attempt(AgentTestStatus(), test_spec, 1, None, "first attempt")
    status = lifecycle.admit(status, Backend.LOCAL)
    return lifecycle.launched(status, Backend.LOCAL, "exec-1", T0)


def test_first_attempt_then_no_new_attempt_until_something_changes() -> None:
    fresh = AgentTestStatus()
    assert lifecycle.new_attempt_reason(fresh, spec(), 1, None) == "first attempt"
    status = lifecycle.start_attempt(fresh, spec(), 1, None, "first attempt")
    assert (status.phase, status.attempt) == (Phase.PENDING, 1)
    assert lifecycle.new_attempt_reason(status, spec(), 1, None) is None


def test_run_defining_spec_change_starts_a_new_attempt_but_priority_does_not() -> None:
    status = lifecycle.finish(started(), Phase.SUCCEEDED, "ok", at(5))
    assert lifecycle.new_attempt_reason(status, spec(priority=3), 2, None) is None
    reason = lifecycle.new_attempt_reason(status, spec(timeoutSeconds=30), 2, None)
    assert reason == "spec changed (generation 2)"


def test_retry_annotation_starts_one_new_attempt_per_value() -> None:
    status = lifecycle.finish(started(), Phase.FAILED, "no", at(5))
    reason = lifecycle.new_attempt_reason(status, spec(), 1, "now")
    assert reason is not None
    retried = lifecycle.start_attempt(status, spec(), 1, "now", reason)
    assert retried.attempt == 2 and retried.execution is None and retried.cases == []
    assert lifecycle.new_attempt_reason(retried, spec(), 1, "now") is None


def test_cancel_wins_over_a_restart() -> None:
    status = lifecycle.finish(started(), Phase.SUCCEEDED, "ok", at(5))
    assert lifecycle.new_attempt_reason(status, spec(cancel=True), 1, "again") is None


def test_clearing_cancel_on_a_cancelled_test_runs_it_again() -> None:
    cancelled = lifecycle.finish(started(spec(cancel=True)), Phase.CANCELLED, "stop", at(1))
    assert lifecycle.new_attempt_reason(cancelled, spec(), 2, None) == "cancel cleared"


def test_launch_leaves_the_queue_and_records_the_execution() -> None:
    status = lifecycle.queue_position(started(), None, at(0))
    assert status.phase == Phase.BUILDING
    assert status.execution is not None and status.execution.id == "exec-1"
    assert status.execution.started_at == "2026-01-01T12:00:00Z"


def test_a_backoff_that_is_over_is_dropped_while_the_test_waits_for_a_slot() -> None:
    backing_off = AgentTestStatus(phase=Phase.QUEUED, retry_after="2026-01-01T12:00:05Z")
    assert lifecycle.queue_position(backing_off, 3, at(1)).retry_after is not None
    waiting = lifecycle.queue_position(backing_off, 3, at(5))
    assert (waiting.retry_after, waiting.queue_position) == (None, 3)


def test_runner_running_marker_moves_building_to_running_only() -> None:
    status = lifecycle.progressed(started(), Phase.RUNNING)
    assert status.phase == Phase.RUNNING
    assert lifecycle.progressed(started(), None).phase == Phase.BUILDING


def test_timeout_counts_from_launch() -> None:
    assert not lifecycle.timed_out(started(), 10, at(10))
    assert lifecycle.timed_out(started(), 10, at(10.5))


def test_outcomes() -> None:
    cases = [CaseResult(name="a", passed=True), CaseResult(name="b", passed=True)]
    passed = lifecycle.RunnerResult(passed=True, summary="2/2 cases passed", cases=cases)
    assert lifecycle.outcome(passed, 0, "", expected_cases=["a", "b"]) == (
        Phase.SUCCEEDED,
        "2/2 cases passed",
    )
    failing = lifecycle.RunnerResult(
        passed=False,
        reason='1 of 2 cases failed: b; b: contains "x": not found',
        cases=[CaseResult(name="b", passed=False, failures=['contains "x": not found'])],
    )
    phase, message = lifecycle.outcome(failing, 1, "")
    # The judge's reason already names the first failure: said once, not twice.
    assert phase == Phase.FAILED
    assert message == '1 of 2 cases failed: b; b: contains "x": not found'
    assert lifecycle.outcome(None, 124, "")[0] == Phase.TIMED_OUT
    phase, message = lifecycle.outcome(None, 137, "Killed")
    assert phase == Phase.FAILED and "137" in message and "Killed" in message
    assert "without a verified result" in message
    assert lifecycle.outcome(None, 0, "")[0] == Phase.ERROR


def test_a_pass_needs_exit_code_zero_and_exactly_the_specs_cases() -> None:
    cases = [CaseResult(name="a", passed=True)]
    passed = lifecycle.RunnerResult(passed=True, summary="1/1 cases passed", cases=cases)
    phase, message = lifecycle.outcome(passed, 1, "", expected_cases=["a"])
    assert phase == Phase.FAILED and "exited with code 1" in message
    phase, message = lifecycle.outcome(passed, None, "", expected_cases=["a"])
    assert phase == Phase.FAILED
    phase, message = lifecycle.outcome(passed, 0, "", expected_cases=["a", "b"])
    assert phase == Phase.ERROR and "not the spec's ['a', 'b']" in message
    empty = lifecycle.RunnerResult(passed=True, summary="0/0 cases passed")
    assert lifecycle.outcome(empty, 0, "", expected_cases=["a"])[0] == Phase.FAILED


def test_forged_lines_are_named_in_the_message() -> None:
    phase, message = lifecycle.outcome(None, 0, "", forged=2)
    assert phase == Phase.ERROR and message.endswith("; 2 forged machine lines ignored")


def test_finish_records_results_duration_and_completion() -> None:
    result = lifecycle.RunnerResult(
        passed=True, summary="1/1 cases passed", cases=[CaseResult(name="a", passed=True)]
    )
    status = lifecycle.finish(started(), Phase.SUCCEEDED, "ok", at(75), result)
    assert status.duration == "1m15s"
    assert status.cases_passed == "1/1"
    assert status.execution is not None and status.execution.completed_at is not None


def test_infrastructure_failures_back_off_then_end_in_error() -> None:
    status = started()
    status = lifecycle.infra_failure(status, "lost", at(1), max_retries=2, backoff_seconds=5)
    assert status.phase == Phase.QUEUED and status.infra_retries == 1 and status.attempt == 1
    assert status.retry_after == "2026-01-01T12:00:06Z"
    status = lifecycle.infra_failure(status, "lost", at(7), max_retries=2, backoff_seconds=5)
    assert status.retry_after == "2026-01-01T12:00:17Z"  # doubled
    status = lifecycle.infra_failure(status, "lost", at(20), max_retries=2, backoff_seconds=5)
    assert status.phase == Phase.ERROR and "after 2 retries: lost" in (status.message or "")


def test_conditions_follow_the_phase_and_keep_transition_times() -> None:
    running = lifecycle.with_conditions(lifecycle.progressed(started(), Phase.RUNNING), 1, T0)
    ready, succeeded = running.conditions
    assert (ready.status, succeeded.status) == ("False", "Unknown")
    later = lifecycle.with_conditions(running, 1, at(30))
    assert later.conditions[0].last_transition_time == "2026-01-01T12:00:00Z"
    done = lifecycle.with_conditions(
        lifecycle.finish(later, Phase.SUCCEEDED, "ok", at(40)), 1, at(40)
    )
    assert [(c.type, c.status, c.reason) for c in done.conditions] == [
        ("Ready", "True", "Succeeded"),
        ("Succeeded", "True", "Succeeded"),
    ]
    assert done.conditions[0].last_transition_time == "2026-01-01T12:00:40Z"
    failed = lifecycle.with_conditions(
        lifecycle.finish(later, Phase.FAILED, "no", at(40)), 1, at(40)
    )
    assert [c.status for c in failed.conditions] == ["False", "False"]
    assert failed.conditions[0].last_transition_time == "2026-01-01T12:00:00Z"  # stayed False


def test_merge_patch_sets_changes_and_nulls_removed_keys() -> None:
    old = {"phase": "Queued", "queuePosition": 2, "execution": {"id": "a", "startedAt": "t"}}
    new = {"phase": "Building", "execution": {"id": "a", "startedAt": "t", "backend": "local"}}
    assert merge_patch(old, new) == {
        "phase": "Building",
        "queuePosition": None,
        "execution": {"backend": "local"},
    }
    assert merge_patch(new, new) == {}
