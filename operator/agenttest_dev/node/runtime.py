"""The pod runtime: a bound pod's container as a process, and the pod's status as a kubelet's.

Pending/ContainerCreating (or an image that cannot be pulled, or a mount that
waits for its ConfigMap), Running, then Succeeded or Failed with the exit code;
activeDeadlineSeconds, graceful deletion, OOM kills on request, eviction for
the pod's own ephemeral-storage use (storage.py) and the node's shutdown stop it.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import threading
import time
from typing import Any

from agenttest_dev.containers import capture, signal_group, spawn
from agenttest_dev.node import storage
from agenttest_dev.node.podspec import PodSpec
from agenttest_dev.node.state import (
    DEADLINE_MESSAGE,
    IMAGE_NOT_KNOWN,
    MAX_KILL_GRACE,
    NODE_IP,
    POLL_SECONDS,
    PULL_BACKOFF_SECONDS,
    RETRY_SECONDS,
    SHUTDOWN_GRACE,
    SHUTDOWN_MESSAGE,
    STORAGE_CHECK_SECONDS,
    TERMINAL,
    UNSUPPORTED,
    KubeError,
    NotYet,
    Run,
    Unsupported,
    logger,
    rfc3339,
)


class PodRuntime(PodSpec):
    """Runs and reports the pods bound to the node."""

    def _adopt(self, pod: dict[str, Any]) -> Run:
        """Take on a pod bound to this node (called with the lock held)."""
        assert self._root is not None
        metadata = pod["metadata"]
        container = pod["spec"]["containers"][0]
        directory = self._root / "pods" / metadata["uid"]
        directory.mkdir(parents=True)
        run = Run(
            namespace=metadata["namespace"],
            name=metadata["name"],
            uid=metadata["uid"],
            pod=pod,
            directory=directory,
            container=container["name"],
            image=container.get("image", ""),
        )
        if metadata.get("deletionTimestamp"):
            run.delete_grace = min(
                float(metadata.get("deletionGracePeriodSeconds") or 0), MAX_KILL_GRACE
            )
        self._runs[run.uid] = run
        self._by_key[run.key] = run
        if run.key in self._order:
            self._order.remove(run.key)
        self._order.append(run.key)
        run.thread = threading.Thread(
            target=self._play_safely, args=(run,), name=f"fake-kubelet-{run.name}", daemon=True
        )
        run.thread.start()
        return run

    def _play_safely(self, run: Run) -> None:
        try:
            self._play(run)
        except BaseException as error:
            if not self._stopping.is_set() and not run.gone:
                logger.exception("fake kubelet failed playing pod %s/%s", *run.key)
                self._errors.append(error)
        finally:
            if run.process is not None and run.process.poll() is None:
                signal_group(run.process.pid, signal.SIGKILL)
            with run.changed:
                run.output_closed = True
                run.changed.notify_all()
            run.done.set()
        if run.delete_grace is not None and not run.gone:
            try:
                self._final_delete(run.namespace, run.name, run.uid, run)
            except Exception as error:
                if not self._stopping.is_set():
                    self._errors.append(error)

    def _interruption(self, run: Run) -> str | None:
        """Why a pod that has not finished must stop now, if it must."""
        if run.delete_grace is not None:
            return "Deleted"
        if self._stopping.is_set():
            return "Shutdown"
        deadline = (run.pod.get("spec") or {}).get("activeDeadlineSeconds")
        # Counted from the start time the kubelet keeps (status.startTime shows
        # it in whole seconds).
        if (
            deadline is not None
            and run.start_nanos
            and time.time_ns() >= run.start_nanos + int(deadline) * 10**9
        ):
            return "DeadlineExceeded"
        return None

    def _pause(self, run: Run, seconds: float | None) -> str | None:
        """Wait (forever if `seconds` is None) unless the pod must stop; return why."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            cause = self._interruption(run)
            if cause is not None:
                return cause
            if deadline is not None and time.monotonic() >= deadline:
                return None
            run.wake.wait(POLL_SECONDS * 5)
            run.wake.clear()

    def _play(self, run: Run) -> None:
        container = run.pod["spec"]["containers"][0]
        run.start_nanos = time.time_ns()
        waiting: dict[str, Any] = {"reason": "ContainerCreating"}
        if not self._report(run, "Pending", {"waiting": waiting}):
            return
        entrypoint = self._entrypoint(run.image)
        if entrypoint is None:
            self._pull_fails(run)
            return
        prepared = self._prepare_until_ready(run, container, entrypoint, waiting)
        if prepared is None:
            return
        waiting = prepared
        cause = self._interruption(run)
        if cause is not None:
            self._end_unstarted(run, cause, waiting)
            return
        started = self._start_container(run)
        if started is None:
            return
        process, reader = started
        self._supervise(run, process)
        # The container is gone: so is everything else that ran in it.
        signal_group(process.pid, signal.SIGKILL)
        reader.join(timeout=5)
        with run.changed:
            run.output_closed = True
            run.changed.notify_all()
        self._report_exit(run, process)

    def _pull_fails(self, run: Run) -> None:
        """An image the node does not know: ErrImagePull, then ImagePullBackOff until stopped."""
        self._event(run.pod, "Pulling", f'Pulling image "{run.image}"', container=run.container)
        waiting = {"reason": "ErrImagePull", "message": IMAGE_NOT_KNOWN}
        self._report(run, "Pending", {"waiting": waiting})
        self._event(
            run.pod,
            "Failed",
            f'Failed to pull image "{run.image}": {IMAGE_NOT_KNOWN}',
            "Warning",
            container=run.container,
        )
        cause = self._pause(run, PULL_BACKOFF_SECONDS)
        if cause is None:
            waiting = {
                "reason": "ImagePullBackOff",
                "message": f'Back-off pulling image "{run.image}": ErrImagePull: '
                + IMAGE_NOT_KNOWN,
            }
            self._report(run, "Pending", {"waiting": waiting})
            self._event(
                run.pod,
                "BackOff",
                f'Back-off pulling image "{run.image}"',
                "Normal",
                container=run.container,
            )
            cause = self._pause(run, None)
        self._end_unstarted(run, cause, waiting)

    def _prepare_until_ready(
        self,
        run: Run,
        container: dict[str, Any],
        entrypoint: list[str],
        waiting: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Prepare, retrying while a reference is missing; the last waiting state, or None
        if the pod ended meanwhile (reported)."""
        while True:
            try:
                self._prepare(run, container, entrypoint)
                return waiting
            except Unsupported as error:
                self._fail_to_start(run, str(error), UNSUPPORTED)
                return None
            except NotYet as error:
                if waiting.get("message") != error.message:
                    waiting = {"reason": error.reason, "message": error.message}
                    self._report(run, "Pending", {"waiting": waiting})
                    self._event(run.pod, "Failed", f"Error: {error.message}", "Warning")
                cause = self._pause(run, RETRY_SECONDS)
                if cause is not None:
                    self._end_unstarted(run, cause, waiting)
                    return None

    def _start_container(self, run: Run) -> tuple[subprocess.Popen[bytes], threading.Thread] | None:
        """Start the process and report Running; None if it could not start (reported)."""
        self._event(
            run.pod,
            "Pulled",
            f'Container image "{run.image}" already present on machine',
            container=run.container,
        )
        try:
            assert run.cwd is not None
            process = spawn(run.argv, run.environment, run.cwd, merge_stderr=True)
        except OSError as error:
            self._fail_to_start(
                run,
                "failed to create containerd task: failed to create shim task: OCI runtime "
                f"create failed: exec: {run.argv[0]!r}: {error.strerror}",
            )
            return None
        with self._lock:
            run.process = process
            run.oom = self._oom_next > 0
            self._oom_next = max(0, self._oom_next - 1)
        reader = self._read_output(run, process)
        run.started = True
        run.started_at = rfc3339(time.time_ns())
        run.container_id = "containerd://" + hashlib.sha256(run.uid.encode()).hexdigest()
        self._event(
            run.pod, "Created", f"Created container: {run.container}", container=run.container
        )
        self._report(run, "Running", {"running": {"startedAt": run.started_at}}, ready=True)
        self._event(
            run.pod, "Started", f"Started container {run.container}", container=run.container
        )
        return process, reader

    def _report_exit(self, run: Run, process: subprocess.Popen[bytes]) -> None:
        """The container terminated: its exit code, and the pod's final phase."""
        code = process.returncode
        exit_code = 128 - code if code < 0 else code
        reason = "Completed" if exit_code == 0 else "Error"
        if run.kill_reason == "OOMKilled":
            exit_code, reason = 137, "OOMKilled"
        terminated = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": run.started_at,
            "finishedAt": rfc3339(time.time_ns()),
            "containerID": run.container_id,
        }
        if run.kill_reason == "Evicted":
            # Killed without grace; containerd reports SIGKILL as 137, "Error".
            exit_code, reason = 137, "Error"
            terminated.update(exitCode=exit_code, reason=reason)
        phase = "Succeeded" if exit_code == 0 else "Failed"
        pod_reason = pod_message = None
        if run.kill_reason == "Evicted":
            phase, pod_reason, pod_message = "Failed", "Evicted", run.eviction
        elif run.kill_reason == "DeadlineExceeded":
            phase, pod_reason, pod_message = "Failed", "DeadlineExceeded", DEADLINE_MESSAGE
        elif run.kill_reason == "Shutdown":
            phase, pod_reason, pod_message = "Failed", "Terminated", SHUTDOWN_MESSAGE
        self._report(run, phase, {"terminated": terminated}, reason=pod_reason, message=pod_message)

    def _supervise(self, run: Run, process: subprocess.Popen[bytes]) -> None:
        """Until the process exits: OOM kills, deadlines, deletions, shutdown."""
        kill_at: float | None = None
        check_storage_at = time.monotonic() + STORAGE_CHECK_SECONDS
        watch_storage = storage.limited(run.pod)
        if run.oom:
            run.killed, run.kill_reason = True, "OOMKilled"
            signal_group(process.pid, signal.SIGKILL)
        while process.poll() is None:
            if run.kill_reason is None and watch_storage and time.monotonic() >= check_storage_at:
                check_storage_at = time.monotonic() + STORAGE_CHECK_SECONDS
                message = self._storage_eviction(run)
                if message is not None:
                    # The eviction manager kills at once (no grace) and says why.
                    run.killed, run.kill_reason, run.eviction = True, "Evicted", message
                    self._event(run.pod, "Evicted", message, "Warning")
                    signal_group(process.pid, signal.SIGKILL)
            if run.kill_reason is None:
                cause = self._interruption(run)
                if cause is not None:
                    run.killed, run.kill_reason = True, cause
                    grace = {
                        "Deleted": run.delete_grace or 0.0,
                        "Shutdown": SHUTDOWN_GRACE,
                    }.get(cause, self._termination_grace(run))
                    if cause == "DeadlineExceeded":
                        self._event(run.pod, "DeadlineExceeded", DEADLINE_MESSAGE, "Warning")
                    self._event(
                        run.pod,
                        "Killing",
                        f"Stopping container {run.container}",
                        container=run.container,
                    )
                    signal_group(process.pid, signal.SIGTERM)
                    kill_at = time.monotonic() + grace
            elif kill_at is not None and time.monotonic() >= kill_at:
                signal_group(process.pid, signal.SIGKILL)
                kill_at = None
            run.wake.wait(POLL_SECONDS)
            run.wake.clear()
        process.wait()

    @staticmethod
    def _storage_eviction(run: Run) -> str | None:
        """The eviction manager's look at the pod's disk: emptyDirs and the writable layer."""
        volumes = run.directory / "volumes"
        usage = {
            volume["name"]: storage.disk_usage(volumes / volume["name"])
            for volume in run.pod["spec"].get("volumes") or []
            if "emptyDir" in volume
        }
        # What the container writes outside its volumes lands in these
        # (its writable layer, were its root not read-only).
        layer = sum(storage.disk_usage(run.directory / part) for part in ("rootfs", "home", "tmp"))
        return storage.eviction_message(run.pod, usage, layer)

    @staticmethod
    def _termination_grace(run: Run) -> float:
        grace = (run.pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        return min(float(30 if grace is None else grace), MAX_KILL_GRACE)

    def _read_output(self, run: Run, process: subprocess.Popen[bytes]) -> threading.Thread:
        """Capture the container's log: every line timestamped, never earlier than the last."""
        assert process.stdout is not None
        last = 0

        def append(raw: bytes) -> None:
            nonlocal last
            last = max(time.time_ns(), last)
            # Kept as bytes: a kubelet serves whatever the container wrote,
            # undecoded, and so must this stand-in.
            with run.changed:
                run.lines.append((last, raw.removesuffix(b"\n")))
                run.changed.notify_all()

        return capture(process.stdout, append, f"fake-kubelet-log-{run.name}")

    def _end_unstarted(self, run: Run, cause: str | None, waiting: dict[str, Any]) -> None:
        """The pod ends before its container ever started."""
        reason = message = None
        if cause == "DeadlineExceeded":
            reason, message = "DeadlineExceeded", DEADLINE_MESSAGE
            self._event(run.pod, "DeadlineExceeded", DEADLINE_MESSAGE, "Warning")
        elif cause == "Shutdown":
            reason, message = "Terminated", SHUTDOWN_MESSAGE
        self._report(run, "Failed", {"waiting": waiting}, reason=reason, message=message)

    def _fail_to_start(self, run: Run, message: str, pod_reason: str | None = None) -> None:
        terminated = {
            "exitCode": 128,
            "reason": "StartError",
            "message": message,
            "startedAt": "1970-01-01T00:00:00Z",
            "finishedAt": rfc3339(time.time_ns()),
        }
        self._event(run.pod, "Failed", f"Error: {message}", "Warning", container=run.container)
        self._report(
            run,
            "Failed",
            {"terminated": terminated},
            reason=pod_reason,
            message=message if pod_reason else None,
        )

    def _final_delete(self, namespace: str, name: str, uid: str, run: Run | None = None) -> None:
        """The kubelet's last word on a deleted pod: delete it for good (grace 0)."""
        if run is not None:
            with self._lock:
                if run.final_deleted:
                    return
                run.final_deleted = True
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        try:
            self._request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body)
        except KubeError as error:
            if error.status not in (404, 409):
                raise

    def _condition(
        self, run: Run, kind: str, ok: bool, reason: str | None = None, message: str | None = None
    ) -> dict[str, Any]:
        status = "True" if ok else "False"
        previous = run.conditions.get(kind)
        since = previous[1] if previous and previous[0] == status else rfc3339(time.time_ns())
        run.conditions[kind] = (status, since)
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": since,
        }

    def _report(
        self,
        run: Run,
        phase: str,
        state: dict[str, Any],
        *,
        ready: bool = False,
        reason: str | None = None,
        message: str | None = None,
    ) -> bool:
        """Patch pods/status as a kubelet does; False if the pod is gone."""
        if run.gone:
            return False
        terminal = phase in TERMINAL
        if ready:
            not_ready: tuple[str | None, str | None] = (None, None)
        elif terminal:
            not_ready = ("PodCompleted", None)
        else:
            not_ready = ("ContainersNotReady", f"containers with unready status: [{run.container}]")
        container_status = self._container_status(run, state, ready)
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": [
                self._condition(run, "PodReadyToStartContainers", not terminal),
                self._condition(run, "Initialized", True),
                self._condition(run, "ContainersReady", ready, *not_ready),
                self._condition(run, "Ready", ready, *not_ready),
            ],
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "podIP": NODE_IP,
            "podIPs": [{"ip": NODE_IP}],
            "startTime": rfc3339(run.start_nanos),
            "containerStatuses": [container_status],
            "reason": reason,
            "message": message,
        }
        generation = run.pod["metadata"].get("generation")
        if generation is not None:
            status["observedGeneration"] = generation
        try:
            self._patch(
                f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status",
                {"metadata": {"uid": run.uid}, "status": status},
            )
        except KubeError as error:
            if error.status in (404, 409):  # deleted, or replaced by a namesake
                run.gone = True
                return False
            raise
        return True

    @staticmethod
    def _container_status(run: Run, state: dict[str, Any], ready: bool) -> dict[str, Any]:
        """The one containerStatuses entry: which state it is in, and the image it runs."""
        return {
            "name": run.container,
            "image": run.image,
            "imageID": run.image_id if run.started else "",
            "containerID": run.container_id,
            "ready": ready,
            "started": "running" in state,
            "restartCount": 0,
            "state": {
                "waiting": state.get("waiting"),
                "running": state.get("running"),
                "terminated": state.get("terminated"),
            },
        }
