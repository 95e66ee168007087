"""Pure arithmetic of repeated trials: pass rates, intervals, and the verdict.

An LLM agent answers differently from run to run, so a case runs ``trials`` times
and passes when the share of passing trials reaches the pass threshold. The pass
rate comes with a 95% Wilson score interval, which, unlike the normal
approximation, stays inside [0, 1] and says something honest for 0 or n passes
of a few trials (3 of 3 gives [0.44, 1.0], not [1.0, 1.0]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054  # the standard normal quantile of 0.975


def wilson_interval(passes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of ``passes`` successes in ``trials`` (95% by default)."""
    if trials <= 0:
        return (0.0, 1.0)
    if not 0 <= passes <= trials:
        raise ValueError(f"passes {passes} is not between 0 and {trials}")
    p = passes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


def reaches(rate: float, threshold: float) -> bool:
    """Whether a pass rate meets the threshold.

    No tolerance is needed: passes / trials is the double nearest the exact
    fraction, and so is a threshold written as that fraction (7/10 and 0.7).
    """
    return rate >= threshold


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (0.95 for p95); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Tally:
    """How one case (of one model) did over its trials."""

    passes: int
    trials: int
    threshold: float

    @property
    def rate(self) -> float:
        return self.passes / self.trials if self.trials else 0.0

    @property
    def passed(self) -> bool:
        return self.trials > 0 and reaches(self.rate, self.threshold)

    @property
    def flaky(self) -> bool:
        return 0 < self.passes < self.trials

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.passes, self.trials)


def matrix_passed(model_verdicts: Sequence[bool], policy: str) -> bool:
    """The test's verdict from each model's: ``all`` of them, or ``any``."""
    if not model_verdicts:
        return False
    return any(model_verdicts) if policy == "any" else all(model_verdicts)


def failure_counts(failures_per_trial: Sequence[Sequence[str]]) -> list[str]:
    """Each distinct failure once, in first-seen order, with how many trials had it.

    ["contains \"x\": not found in answer (3 of 5 trials)"]; with one trial the
    failures are returned as they are.
    """
    trials = len(failures_per_trial)
    counts: dict[str, int] = {}
    for failures in failures_per_trial:
        for failure in dict.fromkeys(failures):
            counts[failure] = counts.get(failure, 0) + 1
    if trials <= 1:
        return list(counts)
    return [f"{failure} ({count} of {trials} trials)" for failure, count in counts.items()]
