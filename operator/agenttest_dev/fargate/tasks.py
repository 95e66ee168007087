"""A task's life as Fargate plays it: PROVISIONING -> PENDING -> RUNNING -> STOPPED.

The container's process runs under the shared container runtime
(`agenttest_dev.containers`) with the environment the ECS agent would give it:
the image's ENTRYPOINT followed by the command (the RunTask override's, else the
task definition's, else the image's CMD), as Docker runs it. Its output goes
through the awslogs driver (`awslogs`); StopTask, a Spot interruption or the
player's own stop end it with SIGTERM to the container's PID 1, then SIGKILL to
everything after `stop_timeout`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from moto.backends import get_backend

from agenttest.runner.confine import children
from agenttest_dev.containers import Image, container_path, find_image, signal_group, spawn
from agenttest_dev.fargate.aws import ACCOUNT_ID, REGION, _now, logger, task_id
from agenttest_dev.fargate.awslogs import LogShipper
from agenttest_dev.fargate.ecsapi import EcsApi
from agenttest_dev.fargate.state import Run

# What a task's container is: its definition, the RunTask override for it, its image.
ContainerSpec = tuple[dict[str, Any], dict[str, Any], Image]


def stop_container(shim: int) -> None:
    """StopTask's SIGTERM, as Docker sends it: to the container's PID 1 alone.

    That is the command the shim runs (its child), not the shim nor the group:
    whatever else runs in the container hears of the stop only through PID 1,
    so a PID 1 that wraps the real work must pass it on.
    """
    for pid in children(shim):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)


class TaskRuntime(EcsApi):
    """Plays each task the player adopted, in a thread of its own."""

    def _play_safely(self, run: Run) -> None:
        try:
            self._play(run)
        except Exception as error:
            logger.exception("Fargate player failed on %s", run.arn)
            self._errors.append(error)
            with contextlib.suppress(Exception):
                self._finish(run, None, "TaskFailedToStart", f"fixture error: {error}")
        finally:
            run.done.set()

    def _play(self, run: Run) -> None:
        self._wait(self.transition_seconds)
        if self._aborted_before_start(run) or not self._pending(run):
            return
        spec = self._container_spec(run)
        if spec is None:
            return
        container_def, override, image = spec
        group = self._open_log_stream(run, container_def)
        if group is False:
            return
        entrypoint = list(container_def.get("entryPoint") or image.entrypoint)
        if "command" in override:
            command = list(override["command"] or [])
        else:
            command = list(container_def.get("command") or image.command)
        argv = entrypoint + command
        environment = self._environment(run, image, container_def, override)
        with self._lock:
            run.argv = argv
            run.environment = environment
        self._wait(self.transition_seconds)
        if self._aborted_before_start(run):
            return
        try:
            process = spawn(argv, environment, run.directory / "work", merge_stderr=False)
        except OSError as error:
            self._finish(
                run,
                exit_code=None,
                code="TaskFailedToStart",
                reason=f"CannotStartContainerError: {error.strerror}: {argv[:1]}",
                container_reason=f"CannotStartContainerError: {error.strerror}",
            )
            return
        self._run_container(run, process, group, argv)

    def _pending(self, run: Run) -> bool:
        """PROVISIONING -> PENDING; False if an injected start failure stopped the task."""
        task = run.task
        with self._lock:
            start_failure = self._start_failures.pop(0) if self._start_failures else None
            now = _now()
            task.pull_started_at = now
            task.connectivity = "CONNECTED"
            task.connectivity_at = now
        self._set_status(task, "PENDING")
        if start_failure is not None:
            self._wait(self.transition_seconds)
            self._finish(run, exit_code=None, code="TaskFailedToStart", reason=start_failure)
            return False
        return True

    def _container_spec(self, run: Run) -> ContainerSpec | None:
        """The task's container, its override and its image; None if the pull failed."""
        task = run.task
        backend = get_backend("ecs")[ACCOUNT_ID][REGION]
        definition = backend.describe_task_definition(task.task_definition_arn)
        # moto models one container per task (the first of the task definition).
        container_def: dict[str, Any] = definition.container_definitions[0]
        name = container_def["name"]
        override: dict[str, Any] = next(
            (
                o
                for o in (task.overrides or {}).get("containerOverrides") or []
                if o.get("name") == name
            ),
            {},
        )
        image = self._image(container_def.get("image", ""))
        if image is None:
            reference = container_def.get("image", "")
            pull_error = (
                "CannotPullContainerError: pull image manifest has been retried 7 time(s): "
                f"failed to resolve ref docker.io/{reference}: not found"
            )
            self._wait(self.transition_seconds)
            self._finish(
                run,
                exit_code=None,
                code="TaskFailedToStart",
                reason=pull_error,
                container_reason=pull_error,
            )
            return None
        return container_def, override, image

    def _open_log_stream(
        self, run: Run, container_def: dict[str, Any]
    ) -> str | Literal[False] | None:
        """The awslogs driver: the stream exists before the container starts.

        The log group (None without awslogs), or False if the task stopped because
        the group does not exist.
        """
        log_config = container_def.get("logConfiguration") or {}
        if log_config.get("logDriver") != "awslogs":
            return None
        options = log_config.get("options") or {}
        group = options.get("awslogs-group")
        prefix = options.get("awslogs-stream-prefix")
        name = container_def["name"]
        run.stream = f"{prefix}/{name}/{task_id(run.arn)}" if prefix else task_id(run.arn)
        logs = get_backend("logs")[ACCOUNT_ID][REGION]
        if group not in logs.groups:
            self._finish(
                run,
                exit_code=None,
                code="TaskFailedToStart",
                reason=(
                    "CannotStartContainerError: failed to initialize logging driver: "
                    "ResourceNotFoundException: The specified log group does not exist."
                ),
            )
            return False
        logs.create_log_stream(group, run.stream)
        return None if group is None else str(group)

    def _run_container(
        self, run: Run, process: subprocess.Popen[bytes], group: str | None, argv: list[str]
    ) -> None:
        """RUNNING until the process ends, then STOPPED with its exit code."""
        task = run.task
        run.process = process
        shipper = LogShipper(
            task_id(run.arn), group, run.stream, self.flush_interval, self._delivered(run)
        )
        assert process.stdout is not None and process.stderr is not None
        readers = [shipper.reader(process.stdout), shipper.reader(process.stderr)]
        with self._lock:
            now = _now()
            task.pull_stopped_at = now
            task.started_at = now
            for container in task.containers:
                container.runtime_id = f"{task_id(run.arn)}-{uuid.uuid4().int % 10**10:010d}"
                container.image_digest = "sha256:" + uuid.uuid5(uuid.NAMESPACE_URL, argv[0]).hex * 2
                container.last_status = "RUNNING"
        self._set_status(task, "RUNNING")
        self._supervise(run, process, shipper)
        # The container is gone: so is everything else that ran in it.
        signal_group(process.pid, signal.SIGKILL)
        for reader in readers:
            reader.join(timeout=5)
        shipper.pump(final=True)
        code = process.returncode
        exit_code = 128 - code if code < 0 else code
        self._finish(
            run,
            exit_code=exit_code,
            code="EssentialContainerExited",
            reason="Essential container in task exited",
        )

    def _delivered(self, run: Run) -> Callable[[list[str]], None]:
        """Where the shipper reports what it sent: the run's output, as tests read it."""

        def record(messages: list[str]) -> None:
            with self._lock:
                run.output.extend(messages)

        return record

    def _supervise(self, run: Run, process: subprocess.Popen[bytes], shipper: LogShipper) -> None:
        """Ship the output while the process runs; a stop is SIGTERM, then SIGKILL."""
        task = run.task
        term_at: float | None = None
        killed_hard = False
        while process.poll() is None:
            shipper.pump()
            if term_at is None and (self._stop_requested(task) or self._stopping.is_set()):
                with self._lock:
                    if not self._stop_requested(task):  # the player is shutting down
                        self._request_stop(task, "Fargate player stopped", "UserInitiated")
                    run.killed = True
                self._set_status(task, "STOPPING")
                stop_container(process.pid)
                term_at = time.monotonic()
            elif (
                term_at is not None
                and not killed_hard
                and time.monotonic() - term_at >= self.stop_timeout
            ):
                signal_group(process.pid, signal.SIGKILL)
                killed_hard = True
            time.sleep(self.poll_interval)

    def _aborted_before_start(self, run: Run) -> bool:
        """StopTask (or the player's shutdown) before the container started."""
        if not self._stop_requested(run.task) and not self._stopping.is_set():
            return False
        if not self._stop_requested(run.task):
            self._request_stop(run.task, "Fargate player stopped", "UserInitiated")
        self._finish(run, exit_code=None, code="UserInitiated", reason="Task stopped by user")
        return True

    def _image(self, reference: str) -> Image | None:
        return find_image(reference, self.images)

    def _environment(
        self, run: Run, image: Image, container_def: dict[str, Any], override: dict[str, Any]
    ) -> dict[str, str]:
        """The container's environment: nothing of this process's own."""
        home = run.directory / "home"
        work = run.directory / "work"
        scratch = run.directory / "tmp"
        for directory in (home, work, scratch):
            directory.mkdir(parents=True, exist_ok=True)
        environment = {
            "PATH": container_path(),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            # What the ECS agent adds to every Fargate container.
            "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
            "AWS_REGION": self.aws.region,
            # The task role's credentials (ECS hands them out through its endpoint).
            **self.aws.env(),
            **dict(image.environment),
        }
        for pair in container_def.get("environment") or []:
            environment[pair["name"]] = pair["value"]
        for pair in override.get("environment") or []:
            environment[pair["name"]] = pair["value"]
        # The container's filesystem is this task's directory, whatever the
        # task definition says HOME is (the CDK app's /tmp is a task volume).
        environment["HOME"] = str(home)
        environment["TMPDIR"] = str(scratch)
        return environment

    def _finish(
        self,
        run: Run,
        exit_code: int | None,
        code: str,
        reason: str,
        container_reason: str | None = None,
    ) -> None:
        """The task is over: container stopped, task STOPPED (logs already flushed)."""
        task = run.task
        with self._lock:
            now = _now()
            for container in task.containers:
                container.exitCode = exit_code
                container.last_status = "STOPPED"
                if container_reason is not None:
                    container.reason = container_reason
            if task.desired_status != "STOPPED" or getattr(task, "stop_code", None) is None:
                # Not asked to stop: the task ended by itself (or failed to start).
                task.desired_status = "STOPPED"
                task.stop_code = code
                task.stopped_reason = reason
                task.stopping_at = now
            task.execution_stopped_at = now
        self._set_status(task, "DEPROVISIONING")
        with self._lock:
            task.stopped_at = _now()
        self._set_status(task, "STOPPED")
