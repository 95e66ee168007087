"""`FakeKubelet`: the node's public face (start, stop, hooks, what tests ask) and its pod watch."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config

from agenttest_dev.containers import signal_group
from agenttest_dev.node.logs import LogServing
from agenttest_dev.node.state import (
    DEFAULT_SCHEDULER,
    MAX_KILL_GRACE,
    POLL_SECONDS,
    TERMINAL,
    UNSCHEDULABLE_MESSAGE,
    KubeError,
    logger,
    rfc3339nano,
)


class FakeKubelet(LogServing):
    """Plays kube-scheduler and the kubelet of one node against a real API server.

    Use as a context manager (or `start()` / `stop()`).
    """

    def start(self) -> FakeKubelet:
        try:
            configuration = client.Configuration()
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig), client_configuration=configuration
            )
            configuration.connection_pool_maxsize = 32
            self._api = client.ApiClient(configuration)
            self._root = Path(tempfile.mkdtemp(prefix="fake-kubelet-"))
            self._stopping.clear()
            self.version = str(self._request("GET", "/version")["gitVersion"])
            self._start_server()
            self._register_node()
            self._started = True
            self._spawn(self._heartbeat_loop, "fake-kubelet-heartbeat")
            for namespace in self.namespaces if self.namespaces is not None else [None]:
                self._spawn(
                    functools.partial(self._watch_loop, namespace),
                    f"fake-kubelet-watch-{namespace or 'all'}",
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill what still runs (reported as a node shutdown), delete the Node, clean up.

        Raises if the kubelet itself failed while playing (a fixture bug must
        not pass silently).
        """
        self._stopping.set()
        # First the watches, the heartbeat and the log server: no pod is
        # taken on after this.
        with self._lock:
            watches = list(self._watches)
        for response in watches:
            with contextlib.suppress(Exception):
                response.shutdown()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        # Then the pods: each run sees the shutdown, kills its process and
        # reports it.
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.wake.set()
            with run.changed:
                run.changed.notify_all()
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout=MAX_KILL_GRACE + 15)
            if run.process is not None and run.process.poll() is None:
                signal_group(run.process.pid, signal.SIGKILL)
                run.process.wait(timeout=5)
        if self._started:
            self._started = False
            try:
                self._request("DELETE", f"/api/v1/nodes/{self.node_name}")
            except KubeError as error:
                if error.status != 404:
                    self._errors.append(error)
            except Exception as error:  # the API server may be gone already
                logger.warning("could not delete node %s: %s", self.node_name, error)
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()  # type: ignore[no-untyped-call]
            self._api = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        if self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"the fake kubelet failed: {errors!r}") from errors[0]

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def oom_kill_next(self, n: int = 1) -> None:
        """The next `n` containers started are killed at once and reported OOMKilled (137)."""
        with self._lock:
            self._oom_next += n

    def hold_pending(
        self, reason: str = "Unschedulable", message: str = UNSCHEDULABLE_MESSAGE
    ) -> None:
        """Bind no pod until `release()`: each gets PodScheduled=False reason/message instead."""
        with self._lock:
            self._hold = (reason, message)

    def release(self) -> None:
        """End `hold_pending()`: bind the pods that were held (if still unbound)."""
        with self._lock:
            self._hold = None
            held, self._held = dict(self._held), {}
        for uid, (namespace, name) in held.items():
            try:
                pod = self._request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
            except KubeError as error:
                if error.status == 404:
                    continue
                raise
            if pod["metadata"]["uid"] == uid:
                self._sync(pod)

    def pods(self) -> list[tuple[str, str]]:
        """(namespace, name) of every pod bound to this node that it took on, in order."""
        with self._lock:
            return list(self._order)

    def output(self, namespace: str, name: str) -> list[str]:
        """Every line the container wrote (stdout and stderr), without newlines."""
        run = self._run_of(namespace, name)
        with run.changed:
            return [raw.decode(errors="replace") for _, raw in run.lines]

    def timestamped_output(self, namespace: str, name: str) -> list[tuple[str, str]]:
        """(RFC3339Nano timestamp, line) for every output line."""
        run = self._run_of(namespace, name)
        with run.changed:
            return [(rfc3339nano(at), raw.decode(errors="replace")) for at, raw in run.lines]

    def environment(self, namespace: str, name: str) -> dict[str, str]:
        """The environment the container's process was started with."""
        return dict(self._run_of(namespace, name).environment)

    def command(self, namespace: str, name: str) -> list[str]:
        """The argv the container's process was started with (paths rewritten)."""
        return list(self._run_of(namespace, name).argv)

    def pid(self, namespace: str, name: str) -> int | None:
        """The pid (and process group id) of the container's process, once started."""
        process = self._run_of(namespace, name).process
        return None if process is None else int(process.pid)

    def killed(self, namespace: str, name: str) -> bool:
        """True if the kubelet signalled the container (deletion, deadline, OOM, shutdown)."""
        return self._run_of(namespace, name).killed

    def kill_reason(self, namespace: str, name: str) -> str | None:
        """Why it was killed: Deleted, DeadlineExceeded, OOMKilled, Evicted or Shutdown."""
        return self._run_of(namespace, name).kill_reason

    def host_path(self, namespace: str, name: str, path: str) -> Path:
        """Where a path inside the container (under a volume mount) is on this host."""
        run = self._run_of(namespace, name)
        rewritten = self._rewrite(path, run.mounts)
        if rewritten == path:
            raise ValueError(f"{path} is under no volume mount of {namespace}/{name}")
        return Path(rewritten)

    def wait_for_pods(self, count: int = 1, timeout: float = 30.0) -> list[tuple[str, str]]:
        """Wait until at least `count` pods were taken on; return them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.pods()
            if len(seen) >= count:
                return seen
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"took on {len(self.pods())} pods, not {count}, in {timeout}s")

    def wait_finished(self, namespace: str, name: str, timeout: float = 60.0) -> None:
        """Wait until the kubelet is done with the pod (final status reported)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                run = self._by_key.get((namespace, name))
            if run is not None and run.done.wait(POLL_SECONDS):
                return
            if run is None:
                time.sleep(POLL_SECONDS)
        raise TimeoutError(f"pod {namespace}/{name} not finished after {timeout}s")

    def _in_scope(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def _watch_loop(self, namespace: str | None) -> None:
        path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    listing = self._request("GET", path)
                    version = str(listing["metadata"]["resourceVersion"])
                    present = set()
                    for pod in listing["items"]:
                        present.add(pod["metadata"]["uid"])
                        self._sync(pod)
                    self._forget_missing(namespace, present)
                response = self._request(
                    "GET",
                    path,
                    query={
                        "watch": "true",
                        "resourceVersion": version,
                        "allowWatchBookmarks": "true",
                        "timeoutSeconds": "120",
                    },
                    timeout=(10.0, None),
                    stream=True,
                )
                with self._lock:
                    self._watches.add(response)
                try:
                    for event in self._events(response):
                        kind, pod = event["type"], event["object"]
                        if kind == "ERROR":
                            if pod.get("code") == 410:  # too old: list again
                                version = None
                                break
                            raise RuntimeError(f"pod watch error: {pod}")
                        version = str(pod["metadata"]["resourceVersion"])
                        if kind == "DELETED":
                            self._deleted(pod)
                        elif kind in ("ADDED", "MODIFIED"):
                            self._sync(pod)
                finally:
                    with self._lock:
                        self._watches.discard(response)
                    with contextlib.suppress(Exception):
                        response.release_conn()
            except Exception as error:
                if self._stopping.is_set():
                    return
                if isinstance(error, KubeError) and error.status == 410:
                    version = None
                logger.warning("pod watch (%s) interrupted: %s", namespace or "all", error)
                self._stopping.wait(0.2)

    @staticmethod
    def _events(response: Any) -> Iterator[dict[str, Any]]:
        pending = b""
        for chunk in response.stream(amt=None, decode_content=False):
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)

    def _forget_missing(self, namespace: str | None, present: set[str]) -> None:
        """After a re-list: pods we run that no longer exist were deleted meanwhile."""
        with self._lock:
            runs = [
                run
                for uid, run in self._runs.items()
                if uid not in present and (namespace is None or run.namespace == namespace)
            ]
        for run in runs:
            self._deleted(run.pod)

    def _deleted(self, pod: dict[str, Any]) -> None:
        with self._lock:
            run = self._runs.get(pod["metadata"]["uid"])
            self._held.pop(pod["metadata"]["uid"], None)
        if run is not None and not run.done.is_set():
            run.gone = True
            run.delete_grace = 0.0
            run.wake.set()

    def _sync(self, pod: dict[str, Any]) -> None:
        """React to one observed state of a pod: schedule it, run it or stop it."""
        metadata, spec = pod["metadata"], pod.get("spec") or {}
        if self._stopping.is_set() or not self._in_scope(metadata["namespace"]):
            return
        node = spec.get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node:
            if (
                spec.get("schedulerName", DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER
                and not metadata.get("deletionTimestamp")
                and phase not in TERMINAL
            ):
                self._schedule(pod)
            return
        if node != self.node_name:
            return
        uid = metadata["uid"]
        with self._lock:
            run = self._runs.get(uid)
            if run is None and not metadata.get("deletionTimestamp") and phase not in TERMINAL:
                if not self._stopping.is_set():
                    self._adopt(pod)
                return
        if run is None:
            # Deleted (or finished) before this kubelet took it on.
            if metadata.get("deletionTimestamp"):
                self._final_delete(metadata["namespace"], metadata["name"], uid)
            return
        if metadata.get("deletionTimestamp"):
            grace = float(metadata.get("deletionGracePeriodSeconds") or 0)
            if run.delete_grace is None:
                run.delete_grace = min(grace, MAX_KILL_GRACE)
                run.wake.set()
            if run.done.is_set():
                self._final_delete(run.namespace, run.name, run.uid, run)
