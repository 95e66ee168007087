"""Pass rates of repeated trials: the Wilson interval, thresholds, and the verdict."""

from __future__ import annotations

import pytest

from agenttest.runner.config import Case, ModelConfig
from agenttest.runner.judge import summarise_case, summarise_model
from agenttest.runner.protocol import Observation, TrialRecord, verdict
from agenttest.runner.trials import (
    Tally,
    failure_counts,
    matrix_passed,
    percentile,
    reaches,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("passes", "trials", "low", "high"),
    [
        # Reference values of the 95% Wilson score interval.
        (3, 5, 0.2307, 0.8824),
        (5, 5, 0.5655, 1.0),
        (0, 5, 0.0, 0.4345),
        (1, 1, 0.2065, 1.0),
        (18, 20, 0.6990, 0.9721),
    ],
)
def test_wilson_interval(passes: int, trials: int, low: float, high: float) -> None:
    got = wilson_interval(passes, trials)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="between 0 and 5"):
        wilson_interval(6, 5)


def test_a_rate_at_its_threshold_passes_and_below_it_fails() -> None:
    assert reaches(7 / 10, 0.7) and reaches(1.0, 1.0) and not reaches(0.6, 0.61)
    assert Tally(7, 10, 0.7).passed and not Tally(6, 10, 0.7).passed


def test_flaky_means_some_but_not_all() -> None:
    assert [Tally(p, 3, 1.0).flaky for p in (0, 1, 2, 3)] == [False, True, True, False]


def test_nearest_rank_percentile() -> None:
    assert percentile([], 0.95) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(n) for n in range(1, 21)], 0.95) == 19.0


def test_matrix_policy() -> None:
    assert matrix_passed([True, True], "all") and not matrix_passed([True, False], "all")
    assert matrix_passed([True, False], "any") and not matrix_passed([False, False], "any")
    assert not matrix_passed([], "any")


def test_failures_are_counted_across_trials() -> None:
    assert failure_counts([["a"]]) == ["a"]
    assert failure_counts([["a", "b"], [], ["a"]]) == ["a (2 of 3 trials)", "b (1 of 3 trials)"]


def record(trial: int, passed: bool, answer: str, failures: tuple[str, ...] = ()) -> TrialRecord:
    return TrialRecord(
        trial, passed, answer, None, 0.1 * trial, Observation(1, 10, 5, ()), 0.001, (), failures
    )


MODEL = ModelConfig("ollama", "m", "http://model", name="small")


def test_a_case_over_its_trials_shows_the_first_failing_trial() -> None:
    runs = [record(1, True, "Rome"), record(2, False, "Milan", ("wrong",)), record(3, True, "Rome")]
    outcome = summarise_case(Case("italy", "q"), MODEL, runs, threshold=0.6)
    assert (outcome.passed, outcome.pass_count, outcome.trials) == (True, 2, 3)
    assert outcome.output == "Milan" and outcome.failures == ("wrong (1 of 3 trials)",)
    assert outcome.latency_seconds == pytest.approx(0.2)
    assert outcome.model == "small"
    assert outcome.to_json()["interval"] == {"low": 0.2077, "high": 0.9385}
    strict = summarise_case(Case("italy", "q"), None, runs, threshold=1.0)
    assert not strict.passed and "model" not in strict.to_json()


def test_model_summary_and_the_matrix_verdict() -> None:
    good_case = summarise_case(Case("c", "q"), MODEL, [record(1, True, "x")] * 2, 1.0)
    good = summarise_model(MODEL, [good_case])
    assert (good.passed, good.cases_passed, good.pass_rate) == (True, 1, 1.0)
    assert (good.input_tokens, good.output_tokens) == (20, 10)
    assert good.cost_usd == pytest.approx(0.002)
    bad_model = ModelConfig("ollama", "b", "http://model", name="big")
    bad_case = summarise_case(Case("c", "q"), bad_model, [record(1, False, "y", ("no",))], 1.0)
    bad = summarise_model(bad_model, [bad_case])
    for policy, passed in (("all", False), ("any", True)):
        result = verdict([good_case, bad_case], 2, [good, bad], policy, trials=2)
        assert result.passed is passed
        assert result.reason.startswith(f"models passed: small (matrixPolicy {policy}); ")
        assert "c [big]: no" in result.reason
