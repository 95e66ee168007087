"""followview: what `agenttest logs`, `wait` and `results` make of a test as read."""

from __future__ import annotations

from typing import Any

import pytest

from agenttest import followview, logtail
from agenttest.followview import DROPPED, Following, advance, exit_code, new_lines


def read(
    tail: list[str] | None = None,
    phase: str = "Running",
    attempt: int = 1,
    execution: str | None = "exec-1",
    generation: int = 1,
    observed: int | None = 1,
    retry: str | None = None,
    observed_retry: str | None = None,
    **status: Any,
) -> dict[str, Any]:
    """An AgentTest as the API server returns it."""
    meta: dict[str, Any] = {"name": "t", "namespace": "ns", "generation": generation}
    if retry is not None:
        meta["annotations"] = {"agenttest.dev/retry": retry}
    body: dict[str, Any] = {"phase": phase, "attempt": attempt, **status}
    if tail:
        body["logTail"] = "\n".join(tail)
    if execution:
        body["execution"] = {"backend": "local", "id": execution}
    if observed is not None:
        body["observedGeneration"] = observed
    if observed_retry is not None:
        body["observedRetry"] = observed_retry
    return {"metadata": meta, "status": body}


def printed(*reads: dict[str, Any]) -> list[str]:
    following, out = Following(), []
    for test in reads:
        following, lines = advance(following, test)
        out += lines
    return out


# ------------------------------------------------------------------ tail diffing


def test_new_lines_is_what_follows_the_overlap() -> None:
    assert new_lines([], ["a", "b"]) == (["a", "b"], False)
    assert new_lines(["a", "b"], ["a", "b"]) == ([], False)
    assert new_lines(["a", "b"], ["a", "b", "c"]) == (["c"], False)
    # The window slid by one while two arrived.
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == (["d", "e"], False)
    # Slid past everything printed: all of it is new, and lines were missed.
    assert new_lines(["a", "b"], ["x", "y"]) == (["x", "y"], True)
    # An empty tail after output (a cleared one) has nothing new and dropped nothing.
    assert new_lines(["a"], []) == ([], False)


def test_repeated_lines_at_the_seam_are_never_printed_twice() -> None:
    # The longest overlap wins: "tick" lines already seen are not printed again.
    assert new_lines(["x", "tick", "tick"], ["tick", "tick", "tick"]) == (["tick"], False)
    assert new_lines(["a", "b", "a", "b"], ["a", "b", "a", "b", "a", "b"]) == (["a", "b"], False)


def test_a_sliding_tail_prints_every_line_once_in_order() -> None:
    """Lines fed through the operator's own bounded tail, read after every few lines."""
    tail, reads = "", []
    for n in range(200):
        tail = logtail.append(tail, [f"tick {n}"], limit=120)
        if n % 7 == 0 or n == 199:
            reads.append(read(tail.split("\n")))
    out = printed(*reads)
    assert out == [f"tick {n}" for n in range(200)]


def test_a_window_that_slid_past_says_lines_were_dropped() -> None:
    out = printed(read(["tick 1", "tick 2"]), read(["tick 8", "tick 9"]))
    assert out == ["tick 1", "tick 2", DROPPED, "tick 8", "tick 9"]


def test_a_new_attempt_is_announced_and_its_tail_printed_from_the_start() -> None:
    first = read(["build", "tick 1", "done"], phase="Succeeded")
    retried = read(
        phase="Pending", attempt=2, execution=None, message="attempt 2: retry requested by x"
    )
    running = read(["build", "tick 1"], attempt=2, execution="exec-2")
    assert printed(first, retried, running) == [
        "build",
        "tick 1",
        "done",
        "--- attempt 2: retry requested by x ---",
        "build",
        "tick 1",
    ]
    # Seen only once it ran: the marker still comes, the lines are all new.
    assert printed(first, running)[3:] == ["--- attempt 2 ---", "build", "tick 1"]
    honoured = read(["build"], attempt=2, execution="exec-2", observed_retry="r2")
    assert printed(first, honoured)[3:] == ["--- attempt 2: retry requested ---", "build"]


def test_the_first_attempt_starting_is_not_announced() -> None:
    assert printed(read(phase="Pending", attempt=0, execution=None), read(["a"])) == ["a"]


def test_a_new_execution_keeps_the_old_tail_until_it_prints() -> None:
    lost = read(["build", "tick 1"], execution=None, phase="Queued", infraRetries=1)
    relaunched = read(["build", "tick 1"], execution="exec-2", phase="Building", infraRetries=1)
    printing = read(["build"], execution="exec-2", infraRetries=1)
    out = printed(read(["build", "tick 1"]), lost, relaunched, printing)
    assert out == [
        "build",
        "tick 1",
        "--- new execution exec-2 (infrastructure retry 1) ---",
        "build",
    ]


# ------------------------------------------------------------------ verdict


@pytest.mark.parametrize(
    ("phase", "code"),
    [
        ("Succeeded", 0),
        ("Failed", 1),
        ("TimedOut", 1),
        ("Cancelled", 1),
        ("Error", 1),
        ("Running", None),
        ("Queued", None),
        ("Pending", None),
        ("", None),
    ],
)
def test_exit_code_by_phase(phase: str, code: int | None) -> None:
    assert exit_code(read(phase=phase)) == code


def test_a_verdict_the_operator_is_about_to_replace_does_not_count() -> None:
    # A retry annotated but not yet honoured: attempt N+1 is coming.
    assert exit_code(read(phase="Succeeded", retry="2", observed_retry="1")) is None
    assert exit_code(read(phase="Succeeded", retry="2", observed_retry="2")) == 0
    # A spec change not yet seen (it may start a new attempt).
    assert exit_code(read(phase="Failed", generation=3, observed=2)) is None
    # A test the operator has not looked at yet.
    assert exit_code(read(phase="", observed=None)) is None


def test_state_line() -> None:
    assert (
        followview.state_line("t", read(phase="Succeeded", summary="2/2 cases passed"))
        == "t: Succeeded (attempt 1) - 2/2 cases passed"
    )
    queued = read(phase="Queued", queuePosition=3, message="waiting for a slot")
    assert followview.state_line("t", queued) == (
        "t: Queued (attempt 1) position 3 in the queue - waiting for a slot"
    )


# ------------------------------------------------------------------ results

SINGLE = [
    {"name": "greets", "passed": True, "output": "hello"},
    {"name": "departs", "passed": False, "failures": ["contains 'goodbye': not found"]},
]
MATRIX = [
    {
        "name": "greets",
        "model": "small",
        "passed": True,
        "trials": 5,
        "passes": 4,
        "passRate": 0.8,
        "interval": {"low": 0.3755, "high": 0.9638},
        "flaky": True,
        "failures": ["contains 'hello': not found"],
    },
    {"name": "greets", "model": "large", "passed": True, "trials": 5, "passes": 5},
]
MODELS = [
    {
        "name": "small",
        "modelId": "m-small",
        "passed": True,
        "casesPassed": "1/1",
        "passRate": 0.8,
        "costUSD": 0.002,
    },
    {"name": "large", "modelId": "m-large", "passed": True, "casesPassed": "1/1", "passRate": 1},
]


def test_results_of_single_trials_read_as_one_trial_each() -> None:
    test = read(phase="Failed", summary="1/2 cases passed", cases=SINGLE)
    header, rule, top, *rows = followview.results_text("t", test).splitlines()
    assert header == "t: Failed (attempt 1) - 1/2 cases passed"
    assert rule == ""
    assert top.split()[:4] == ["CASE", "MODEL", "RESULT", "PASSES"]
    assert rows[0].split()[:6] == ["greets", "default", "PASS", "1/1", "100%", "-"]
    assert rows[1].split()[:4] == ["departs", "default", "FAIL", "0/1"]
    assert rows[1].endswith("contains 'goodbye': not found")


def test_results_of_a_matrix_with_trials() -> None:
    test = read(phase="Succeeded", cases=MATRIX, models=MODELS)
    lines = followview.results_text("t", test).splitlines()
    assert lines[1] == "model small (m-small): PASS, 1/1 cases, 80% of trials, $0.002"
    assert lines[2] == "model large (m-large): PASS, 1/1 cases, 100% of trials"
    small, large = lines[5], lines[6]
    # A case that passes its threshold with a failing trial: PASS, flaky, the failure shown.
    assert small.split()[:7] == ["greets", "small", "PASS", "4/5", "80%", "38%-96%", "yes"]
    assert small.endswith("contains 'hello': not found")
    assert large.split()[:5] == ["greets", "large", "PASS", "5/5", "100%"]


def test_results_before_any_case_says_so() -> None:
    assert followview.results_text("t", read(phase="Queued")).splitlines()[-1] == (
        "no case results yet"
    )
    assert followview.results_text("t", read(phase="Error")).splitlines()[-1] == "no results"


def test_results_document_keeps_the_status_as_recorded() -> None:
    test = read(phase="Succeeded", cases=MATRIX, models=MODELS, casesPassed="2/2")
    document = followview.results_document(test)
    assert document["cases"] == MATRIX and document["models"] == MODELS
    assert (document["phase"], document["finished"], document["casesPassed"]) == (
        "Succeeded",
        True,
        "2/2",
    )
