"""The pure answer checks: each failure must name the expectation that failed."""

from __future__ import annotations

from agenttest.runner.config import Expectation
from agenttest.runner.expectations import (
    check_answer,
    check_contains,
    check_latency,
    check_not_contains,
    check_regex,
)

ANSWER = "The capital of France is Paris."


def test_empty_expectation_checks_nothing() -> None:
    assert check_answer("", 99.0, Expectation()) == []


def test_contains_ignores_case_by_default() -> None:
    assert check_contains(ANSWER, ("paris", "FRANCE"), case_sensitive=False) == []


def test_contains_names_each_missing_needle() -> None:
    assert check_contains(ANSWER, ("Paris", "Berlin", "Rome"), case_sensitive=False) == [
        'contains "Berlin": not found in answer',
        'contains "Rome": not found in answer',
    ]


def test_case_sensitive_contains() -> None:
    assert check_contains(ANSWER, ("paris",), case_sensitive=True) == [
        'contains "paris": not found in answer'
    ]


def test_not_contains() -> None:
    assert check_not_contains(ANSWER, ("berlin",), case_sensitive=False) == []
    assert check_not_contains(ANSWER, ("PARIS",), case_sensitive=False) == [
        'notContains "PARIS": found in answer'
    ]
    assert check_not_contains(ANSWER, ("PARIS",), case_sensitive=True) == []


def test_needles_with_quotes_stay_on_one_unambiguous_line() -> None:
    assert check_contains("x", ('say "hi"\nnow',), case_sensitive=False) == [
        'contains "say \\"hi\\"\\nnow": not found in answer'
    ]


def test_regex_searches_anywhere_as_written() -> None:
    assert check_regex(ANSWER, r"capital of \w+") == []
    assert check_regex(ANSWER, None) == []
    assert check_regex(ANSWER, r"^Paris") == ['regex "^Paris": no match in answer']
    # Case-sensitive unless the pattern says otherwise.
    assert check_regex(ANSWER, r"PARIS") == ['regex "PARIS": no match in answer']
    assert check_regex(ANSWER, r"(?i)PARIS") == []


def test_invalid_regex_is_a_failure_naming_the_error() -> None:
    assert check_regex(ANSWER, r"Par(is") == [
        'regex "Par(is": invalid regex: missing ), unterminated subpattern at position 3'
    ]


def test_latency() -> None:
    assert check_latency(0.5, None) == []
    assert check_latency(1.0, 1.0) == []
    assert check_latency(2.314, 1.0) == ["maxLatencySeconds 1.0: took 2.31s"]


def test_check_answer_reports_every_failure_in_a_stable_order() -> None:
    expect = Expectation(
        contains=("Berlin",),
        not_contains=("Paris",),
        regex=r"\d+",
        case_sensitive=False,
        max_latency_seconds=0.1,
    )
    assert check_answer(ANSWER, 0.25, expect) == [
        'contains "Berlin": not found in answer',
        'notContains "Paris": found in answer',
        'regex "\\d+": no match in answer',
        "maxLatencySeconds 0.1: took 0.25s",
    ]


def test_check_answer_passes_when_everything_holds() -> None:
    expect = Expectation(
        contains=("paris",), not_contains=("berlin",), regex="Paris", max_latency_seconds=1.0
    )
    assert check_answer(ANSWER, 0.2, expect) == []
