"""Prometheus metrics of the operator, served on the metrics port."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram

from agenttest.lifecycle import parse_timestamp
from agenttest.models import AgentTestStatus

logger = logging.getLogger(__name__)

STATUS_WRITES = Counter("agenttest_status_writes_total", "Status patches written to AgentTests")
TRANSITIONS = Counter("agenttest_phase_transitions_total", "AgentTest phase transitions", ["phase"])
EXECUTION_SECONDS = Histogram(
    "agenttest_execution_seconds",
    "Wall-clock time of finished executions",
    ["phase"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600),
)


def record_transition(old: AgentTestStatus, new: AgentTestStatus) -> None:
    if new.phase is None:
        return
    TRANSITIONS.labels(phase=new.phase.value).inc()
    if new.phase.finished and new.execution is not None:
        started = parse_timestamp(new.execution.started_at)
        completed = parse_timestamp(new.execution.completed_at)
        if started and completed:
            EXECUTION_SECONDS.labels(phase=new.phase.value).observe(
                (completed - started).total_seconds()
            )
