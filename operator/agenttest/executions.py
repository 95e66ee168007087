"""What an execution is, as the decisions see it: identity, request, observation, logs.

Pure data shared by the backends (which produce it) and the lifecycle (which
decides on it). Every backend derives the identity of an execution from the
test's uid, its attempt and its infrastructure retry (`ExecutionKey`), so
launching twice, for example after the operator restarted mid-launch, finds the
first execution instead of starting a second one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExecutionKey:
    uid: str
    attempt: int
    retry: int = 0

    @property
    def name(self) -> str:
        """A DNS-label-safe name, unique per execution."""
        return f"at-{self.uid[:8]}-{self.uid[-12:]}-a{self.attempt}-r{self.retry}"


@dataclass(frozen=True)
class LaunchRequest:
    key: ExecutionKey
    namespace: str
    test_name: str
    runner_config: dict[str, Any]
    timeout_seconds: int
    # The execution's signing key (hex): only the judge may ever see it.
    run_key: str = ""
    # The models' credentials (credentials.read_for), by matrix entry: for the judge's
    # environment only, like the run key. Empty when no model names one.
    model_credentials: dict[str, dict[str, str]] = field(default_factory=dict)
    cpu: str = "1"
    memory: str = "2Gi"


@dataclass(frozen=True)
class Launched:
    """An execution a backend holds, with the AgentTest it was launched for (the sweeper's view)."""

    execution_id: str
    namespace: str
    test_name: str
    uid: str


class ExecutionState(enum.Enum):
    STARTING = "starting"  # accepted, not yet running (provisioning, scheduling)
    RUNNING = "running"
    EXITED = "exited"
    MISSING = "missing"  # the backend has no such execution any more


@dataclass(frozen=True)
class Observation:
    state: ExecutionState
    exit_code: int | None = None
    reason: str = ""
    # True when the execution died of something other than the test itself
    # (lost capacity, an evicted pod, a killed host): retried, never Failed.
    infra_failure: bool = False
    # True when the backend itself ended it for running too long (a pod's
    # activeDeadlineSeconds): the test timed out rather than failed.
    timed_out: bool = False


@dataclass(frozen=True)
class LogChunk:
    lines: list[str] = field(default_factory=list)
    cursor: str | None = None  # pass back to continue after these lines
    more: bool = False  # more is ready to read right away
    throttled: bool = False  # the read was refused for now; the cursor did not move
    # When the newest of `lines` was written (Unix time), where the backend knows it:
    # how far the log tail lags behind the execution (metrics.LOG_TAIL_LAG_SECONDS).
    newest_at: float | None = None
