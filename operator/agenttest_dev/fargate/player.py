"""`FargatePlayer`: the player's public face (start, stop, hooks, what tests ask) and its poll."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moto.backends import get_backend

from agenttest_dev.fargate.aws import (
    ACCOUNT_ID,
    REGION,
    AwsEnvironment,
    _claim,
    _release,
    logger,
    task_id,
)
from agenttest_dev.fargate.state import Failure, Run
from agenttest_dev.fargate.tasks import TaskRuntime


class FargatePlayer(TaskRuntime):
    """Plays Fargate (and the awslogs driver) for the tasks of one cluster.

    `stop_timeout` is the grace between SIGTERM and SIGKILL on StopTask (ECS's
    default is 30 s); `transition_seconds` is how long a task stays in each of
    PROVISIONING and PENDING, so that a watcher can see them.
    """

    def start(self) -> FargatePlayer:
        _claim("FargatePlayer", self)
        try:
            self._base = Path(tempfile.mkdtemp(prefix="fargate-player-"))
            # Tasks from before (an earlier player's) are history, not work.
            self._ignored = set(self._cluster_tasks())
            self._install_patches()
            self._stopping.clear()
            self._thread = threading.Thread(target=self._poll, name="fargate-player", daemon=True)
            self._thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill what still runs (as StopTask would), undo the patches, clean up.

        Raises if the player itself failed while playing (a fixture bug must
        not pass silently).
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout=self.stop_timeout + 15)
        self._restore_patches()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
        _release("FargatePlayer", self)
        if self._errors:
            raise RuntimeError(f"the Fargate player failed: {self._errors!r}") from self._errors[0]

    def __enter__(self) -> FargatePlayer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tasks(self) -> list[str]:
        """ARNs of every task the player has seen on its cluster, in order."""
        with self._lock:
            return list(self._order)

    def output(self, task_arn: str) -> list[str]:
        """Every log event the container produced, as sent to CloudWatch Logs.

        One entry per output line (stdout and stderr), without the newline; empty
        lines are dropped and lines over 256 KiB split, as the awslogs driver does.
        """
        with self._lock:
            return list(self._run(task_arn).output)

    def killed(self, task_arn: str) -> bool:
        """True if the player signalled the task's process (StopTask, interruption)."""
        with self._lock:
            return self._run(task_arn).killed

    def environment(self, task_arn: str) -> dict[str, str]:
        """The environment the task's process was started with."""
        with self._lock:
            return dict(self._run(task_arn).environment)

    def pid(self, task_arn: str) -> int | None:
        """The pid (and process group id) of the task's process, once started."""
        with self._lock:
            process = self._run(task_arn).process
            return None if process is None else int(process.pid)

    def command(self, task_arn: str) -> list[str]:
        """The argv the task's process was started with."""
        with self._lock:
            return list(self._run(task_arn).argv)

    def wait_for_tasks(self, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Wait until the player has seen at least `count` tasks; return all ARNs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.tasks()
            if len(seen) >= count:
                return seen
            time.sleep(self.poll_interval)
        raise TimeoutError(f"saw {len(self.tasks())} tasks, not {count}, in {timeout}s")

    def wait_stopped(self, task_arn: str, timeout: float = 60.0) -> None:
        """Wait until the player has finished with a task (it is STOPPED)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                run = self._runs.get(task_arn)
            if run is not None and run.done.wait(self.poll_interval):
                return
            if run is None:
                time.sleep(self.poll_interval)
        raise TimeoutError(f"task {task_arn} not STOPPED after {timeout}s")

    def wait_all_stopped(self, timeout: float = 60.0) -> None:
        """Wait until every task on the cluster is STOPPED and its logs are flushed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            arns = set(self._cluster_tasks()) - self._ignored
            with self._lock:
                runs = [self._runs.get(arn) for arn in arns]
            if all(run is not None and run.done.is_set() for run in runs):
                return
            time.sleep(self.poll_interval)
        raise TimeoutError(f"tasks still running after {timeout}s: {self.tasks()}")

    def count_calls(self, service: str, operation: str) -> int:
        """How many `operation` requests (e.g. "logs", "GetLogEvents") came over HTTP.

        Counts every request moto received, including throttled or failed ones;
        the player's own log writes do not go over HTTP and are not counted.
        """
        with self._lock:
            return self._calls[(service, operation)]

    def calls(self) -> dict[tuple[str, str], int]:
        """All HTTP calls so far, by (service, operation)."""
        with self._lock:
            return dict(self._calls)

    def fail_next_run_tasks(
        self,
        n: int = 1,
        reason: str = "RESOURCE:FARGATE",
        *,
        arn: str | None = None,
        capacity_provider: str | None = None,
    ) -> None:
        """The next `n` RunTask calls start nothing and answer ``failures``.

        That is how ECS answers when Fargate has no capacity: HTTP 200,
        ``tasks: []``, ``failures: [{"reason": ...}]``. Real capacity failures
        carry no ``arn`` (pass `arn` to add one). With `capacity_provider`
        ("FARGATE" also matches launchType FARGATE, or "FARGATE_SPOT"), only
        RunTask calls placing on that provider fail. A replay of a clientToken
        that already started a task still returns that task.
        """
        with self._lock:
            self._run_failures += [Failure(reason, arn, capacity_provider)] * n

    def fail_next_task_starts(
        self,
        n: int = 1,
        reason: str = "ResourceInitializationError: failed to configure ENI: timed out",
    ) -> None:
        """The next `n` tasks the player picks up stop before their container starts.

        ``stopCode`` TaskFailedToStart, the given ``stoppedReason``, no exit code:
        what ECS reports when Fargate cannot start a task it accepted.
        """
        with self._lock:
            self._start_failures += [reason] * n

    def interrupt(
        self,
        task_arn: str,
        reason: str = "Your Spot Task was interrupted.",
        stop_code: str = "SpotInterruption",
    ) -> None:
        """Stop a task as AWS would (default: a Spot interruption): SIGTERM, then SIGKILL."""
        with self._lock:
            task = self._run(task_arn).task
            if task.desired_status != "STOPPED":
                self._request_stop(task, reason, stop_code)

    def throttle_log_reads(self, n: int = 1) -> None:
        """The next `n` GetLogEvents calls fail with ThrottlingException ("Rate exceeded").

        HTTP 400 with ``__type`` ThrottlingException, as CloudWatch Logs answers.
        boto3 retries throttling by itself (legacy mode: up to 4 retries; standard:
        2), so one client call consumes several of the `n`.
        """
        with self._lock:
            self._log_throttles += n

    def _poll(self) -> None:
        while not self._stopping.wait(self.poll_interval):
            try:
                backend = get_backend("ecs")[ACCOUNT_ID][REGION]
                try:
                    found = list(backend.tasks.get(self.cluster, {}).items())
                except RuntimeError:  # RunTask added one while we looked: next tick
                    continue
                for arn, task in found:
                    if arn not in self._runs and arn not in self._ignored:
                        self._adopt(arn, task)
            except Exception as error:  # keep playing; report at stop()
                logger.exception("Fargate player poll failed")
                self._errors.append(error)

    def _adopt(self, arn: str, task: Any) -> None:
        assert self._base is not None
        directory = self._base / task_id(arn)
        run = Run(arn=arn, task=task, directory=directory)
        with self._lock:
            self._runs[arn] = run
            self._order.append(arn)
            # Tasks not created through the patched RunTask (StartTask, ...).
            if not hasattr(task, "version"):
                self._prepare_task(get_backend("ecs")[ACCOUNT_ID][REGION], task)
        run.thread = threading.Thread(
            target=self._play_safely, args=(run,), name=f"fargate-{task_id(arn)}", daemon=True
        )
        run.thread.start()


@dataclass
class Fargate:
    """Both halves together, for a test's `with` statement or fixture."""

    aws: AwsEnvironment
    player: FargatePlayer


def start_fargate(**player_options: Any) -> Iterator[Fargate]:
    """A generator for a pytest fixture: ``yield from start_fargate()``."""
    with AwsEnvironment() as aws, FargatePlayer(aws, **player_options) as player:
        yield Fargate(aws, player)
