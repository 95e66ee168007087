"""What the Fargate player keeps: the tasks it plays, the injected failures, one lock."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moto.backends import get_backend

from agenttest_dev.containers import RUNNER_IMAGE, RUNNER_REPOSITORY, Image
from agenttest_dev.fargate.aws import ACCOUNT_ID, REGION, AwsEnvironment, _now

# Images the player can "pull", by repository (registry host and tag stripped).
DEFAULT_IMAGES: dict[str, Image] = {RUNNER_REPOSITORY: RUNNER_IMAGE}


@dataclass
class Run:
    """One task the player has seen, and what it did with it."""

    arn: str
    task: Any  # moto's ecs Task
    directory: Path
    stream: str | None = None
    output: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    process: Any = None  # subprocess.Popen[bytes]
    killed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


@dataclass
class Failure:
    reason: str
    arn: str | None
    capacity_provider: str | None


class PlayerState:
    """The state every part of the player shares, under one lock.

    `stop_timeout` is the grace between SIGTERM and SIGKILL on StopTask (ECS's
    default is 30 s); `transition_seconds` is how long a task stays in each of
    PROVISIONING and PENDING, so that a watcher can see them.
    """

    def __init__(
        self,
        aws: AwsEnvironment,
        *,
        cluster: str | None = None,
        images: dict[str, Image] | None = None,
        stop_timeout: float = 2.0,
        poll_interval: float = 0.02,
        flush_interval: float = 0.05,
        transition_seconds: float = 0.02,
    ) -> None:
        self.aws = aws
        self.cluster = cluster or aws.cluster
        self.images = dict(DEFAULT_IMAGES if images is None else images)
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self.flush_interval = flush_interval
        self.transition_seconds = transition_seconds
        self._lock = threading.RLock()
        self._runs: dict[str, Run] = {}
        self._order: list[str] = []
        self._tokens = aws.client_tokens
        self._run_failures: list[Failure] = []
        self._start_failures: list[str] = []
        self._log_throttles = 0
        self._calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self._errors: list[BaseException] = []
        self._patches: list[tuple[type, str, Any]] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._base: Path | None = None
        self._ignored: set[str] = set()

    def _cluster_tasks(self) -> dict[str, Any]:
        backend = get_backend("ecs")[ACCOUNT_ID][REGION]
        return dict(backend.tasks.get(self.cluster, {}))

    def _run(self, task_arn: str) -> Run:
        try:
            return self._runs[task_arn]
        except KeyError:
            raise KeyError(f"the Fargate player has not seen task {task_arn}") from None

    def _set_status(self, task: Any, status: str) -> None:
        with self._lock:
            task.version = getattr(task, "version", 0) + 1
            task.last_status = status

    def _stop_requested(self, task: Any) -> bool:
        return bool(task.desired_status == "STOPPED")

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _request_stop(self, task: Any, reason: str | None, stop_code: str) -> None:
        """What StopTask (or an interruption) does to a task: ask for STOPPED."""
        with self._lock:
            task.desired_status = "STOPPED"
            task.stop_code = stop_code
            task.stopped_reason = reason
            task.stopping_at = _now()
            task.version = getattr(task, "version", 0) + 1
