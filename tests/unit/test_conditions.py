from __future__ import annotations

from agenttest import conditions
from agenttest.models import ConditionType

from test_lifecycle import at


def test_a_condition_keeps_its_transition_time_until_its_status_flips() -> None:
    listed = conditions.set_condition([], ConditionType.READY, "False", "Running", "", 1, at(0))
    listed = conditions.set_condition(
        listed, ConditionType.SUCCEEDED, "Unknown", "Running", "", 1, at(0)
    )
    same = conditions.set_condition(listed, ConditionType.READY, "False", "Running", "x", 2, at(5))
    assert [c.type for c in same] == ["Ready", "Succeeded"]  # replaced where it was
    ready = conditions.get(same, ConditionType.READY)
    assert ready is not None
    assert (ready.last_transition_time, ready.message, ready.observed_generation) == (
        "2026-01-01T12:00:00Z",
        "x",
        2,
    )
    flipped = conditions.set_condition(same, ConditionType.READY, "True", "Succeeded", "", 2, at(9))
    assert (
        conditions.get(flipped, ConditionType.READY).last_transition_time == "2026-01-01T12:00:09Z"
    )  # type: ignore[union-attr]
    assert conditions.has(flipped, ConditionType.SUCCEEDED)
    assert not conditions.has(conditions.without(flipped, ConditionType.READY), ConditionType.READY)
