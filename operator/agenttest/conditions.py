"""Conditions as the Kubernetes API conventions want them: pure helpers.

`lastTransitionTime` moves only when a condition's status flips; each
condition carries the generation it was computed for.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Literal

from agenttest.models import Condition, ConditionType

Status = Literal["True", "False", "Unknown"]


def stamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get(conditions: Sequence[Condition], kind: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == kind), None)


def has(conditions: Sequence[Condition], kind: ConditionType) -> bool:
    return get(conditions, kind) is not None


def without(conditions: Sequence[Condition], kind: ConditionType) -> list[Condition]:
    return [c for c in conditions if c.type != kind]


def set_condition(
    conditions: Sequence[Condition],
    kind: ConditionType,
    status: Status,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
) -> list[Condition]:
    """The list with ``kind`` set: replaced where it was, else appended."""
    old = get(conditions, kind)
    moved = old is None or old.status != status or old.last_transition_time is None
    new = Condition(
        type=kind.value,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=stamp(now) if moved or old is None else old.last_transition_time,
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == kind else c for c in conditions]
