"""The Executor protocol: launch, observe, read logs since a cursor, stop.

The data it speaks in (ExecutionKey, LaunchRequest, Observation, LogChunk)
lives in `agenttest.executions`, where the lifecycle can read it too.
"""

from __future__ import annotations

from typing import Protocol

from agenttest.executions import ExecutionKey, Launched, LaunchRequest, LogChunk, Observation
from agenttest.models import Backend


class BackendUnavailable(RuntimeError):
    """The backend cannot be used (not enabled, not configured)."""


class LaunchRefused(RuntimeError):
    """The backend refuses this request for good (e.g. an impossible size)."""


class Executor(Protocol):
    kind: Backend
    # How long to keep reading logs after the execution ended without a result
    # line, for backends whose logs arrive after the process is gone.
    log_grace_seconds: float

    async def launch(self, request: LaunchRequest) -> str:
        """Start the execution (or find the one already started); return its id."""
        ...

    async def locate(self, namespace: str, key: ExecutionKey) -> str | None:
        """The id of the execution `key` launched for a test in `namespace`, or None.

        Derived from the key and the test's own namespace (never from
        `status.execution.id`, which whoever may write status could point at
        anything): every stop, log read and cleanup acts on what this returns.
        """
        ...

    async def observe(self, execution_id: str) -> Observation: ...

    async def read_logs(self, execution_id: str, cursor: str | None) -> LogChunk:
        """Complete lines after `cursor` (None: from the start)."""
        ...

    async def stop(self, execution_id: str, reason: str) -> None:
        """Stop it and return once it is gone; stopping a gone execution is fine."""
        ...

    async def cleanup(self, execution_id: str) -> None:
        """Remove whatever the execution left behind."""
        ...

    async def launched(self) -> list[Launched]:
        """Every execution this backend still runs, for the sweeper (`controller.sweep`).

        A backend whose executions the API server's garbage collector removes
        with their AgentTest (owner references) may answer an empty list.
        """
        ...
