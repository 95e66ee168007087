"""A node for the test control plane: `FakeKubelet` plays kube-scheduler and a kubelet.

The dev cluster (agenttest_dev.devcluster) runs the real etcd, kube-apiserver and
kube-controller-manager but no scheduler and no kubelet, because this machine
has no container runtime. `FakeKubelet` fills that gap honestly, through the
real API server only, so that whatever creates pods (the operator's pod
backend, the Job controller, kubectl) sees what it would see on a cluster:

* **the node**: registers the Node ``node_name`` (created if absent), reports
  it Ready with InternalIP 127.0.0.1, capacity cpu 8 / memory 32Gi / pods 110,
  the kubelet endpoint port and a nodeInfo whose kubeletVersion is the API
  server's version, and posts a heartbeat every ``heartbeat_interval`` seconds.
  As no node lifecycle controller runs, it also lifts the not-ready taint that
  admission puts on every new node. `stop()` deletes the Node.
* **the scheduler**: binds every pod without ``spec.nodeName`` (in
  ``namespaces``, or all) whose schedulerName is the default one to the node,
  through the ``binding`` subresource as kube-scheduler does (which sets
  PodScheduled=True). A pod whose nodeSelector the node does not match, and
  every pod while `hold_pending()` is in force, gets PodScheduled=False
  (Unschedulable) instead, as kube-scheduler reports it.
* **the kubelet**: runs the first container of every pod bound to the node as
  a local process (own process group, scrubbed environment, stdout and stderr
  in one captured stream, every line timestamped), and reports the pod's
  status through ``pods/status`` like a kubelet: Pending/ContainerCreating,
  Running, then Succeeded or Failed with the container's exit code. It
  enforces ``activeDeadlineSeconds`` (DeadlineExceeded), honours graceful
  deletion (SIGTERM, SIGKILL after min(grace, 5) s, then the kubelet's final
  delete with gracePeriodSeconds=0) and serves ``/containerLogs`` over HTTPS
  so that ``kubectl logs`` and the ``pods/log`` API work through the real
  API server (timestamps, sinceTime, sinceSeconds, tailLines, limitBytes,
  follow).

How a container becomes a process
---------------------------------
``images`` maps an image (a full reference, or a repository: registry host and
tag are ignored) to its ENTRYPOINT. Any image whose repository ends with
``runner`` (``agenttest/runner:0.1.0``) is the runner image, whose entrypoint
is this interpreter's ``-m agenttest.runner``. Docker's rules apply:
``container.command`` replaces the entrypoint, ``container.args`` are appended;
``$(VAR)`` references are expanded from the container's env as Kubernetes does.
An image the mapping does not know fails to pull (ErrImagePull, then
ImagePullBackOff, message "image not known to the fake kubelet").

Pod volumes become per-pod directories: ``emptyDir`` an empty one,
``configMap`` / ``secret`` (and ``projected`` sources of those kinds) one file
per key (``items`` honoured; a missing ConfigMap or Secret keeps the pod in
ContainerCreating until it appears, as a kubelet retries the mount). Then every
occurrence of a volumeMount's ``mountPath`` that starts a path in the command,
the args and the container's env values is rewritten to the host directory
(``--config /etc/agenttest/config.json`` -> ``--config <pod>/volumes/config/
config.json``); ``workingDir`` likewise (a path outside every mount is created
under the pod's directory). Env ``valueFrom`` supports ``fieldRef``,
``configMapKeyRef`` and ``secretKeyRef``; ``envFrom`` both of its kinds.

The process's environment is PATH (this interpreter's bin directory first),
LANG, PYTHONUNBUFFERED=1, HOSTNAME, HOME and TMPDIR (per-pod directories;
TMPDIR is the volume mounted at /tmp if there is one), then the container's
env. Nothing of this process's own environment leaks in.

What it does not do (the pod fails with reason ``UnsupportedByFakeKubelet``
and the container terminates with StartError where noted): volumes other than
the ones above (fails), env ``resourceFieldRef`` (fails), containers after the
first and init containers (ignored), restart policies other than Never
(treated as Never), probes, resource limits (use `oom_kill_next()`), and
``securityContext``: processes run as this process's user, with a writable
filesystem. Admission (Pod Security) is the API server's and is real.

Typical use::

    with FakeKubelet(cluster.kubeconfig, namespaces=[namespace]) as kubelet:
        ...create a pod...
        (pod,) = kubelet.wait_for_pods(1)
        kubelet.wait_finished(*pod)
        assert kubelet.output(*pod)[-1].startswith("::agenttest:: ")

Only one FakeKubelet per node name may run at a time; two with different
node names must watch disjoint namespaces (both would bind the same pods).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from kubernetes import client, config

from containershim import container_command, kill_tree

logger = logging.getLogger(__name__)

NODE_IP = "127.0.0.1"
DEFAULT_SCHEDULER = "default-scheduler"
RUNNER_ENTRYPOINT = [sys.executable, "-m", "agenttest.runner"]
# The docker default PATH, after this interpreter's own bin directory (the
# runner image's Python comes first on its PATH, too).
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CAPACITY = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
NOT_READY_TAINT = "node.kubernetes.io/not-ready"

IMAGE_NOT_KNOWN = "image not known to the fake kubelet"
UNSCHEDULABLE_MESSAGE = "0/1 nodes are available: 1 Insufficient cpu."
SELECTOR_MISMATCH = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
SHUTDOWN_MESSAGE = "Pod was terminated in response to imminent node shutdown."
UNSUPPORTED = "UnsupportedByFakeKubelet"

# SIGKILL follows SIGTERM after min(the pod's grace period, this) seconds.
MAX_KILL_GRACE = 5.0
# On stop(), running containers get this long between SIGTERM and SIGKILL.
SHUTDOWN_GRACE = 1.0
# How long ErrImagePull shows before ImagePullBackOff.
PULL_BACKOFF_SECONDS = 1.0
# A pod waiting for a missing ConfigMap/Secret is retried this often.
RETRY_SECONDS = 0.5
POLL_SECONDS = 0.02
TERMINAL = ("Succeeded", "Failed")


class KubeError(Exception):
    """The API server answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: {status} {body[:500]}")
        self.status = status
        self.body = body


class _Unsupported(Exception):
    """The pod needs something the fake kubelet does not do: the pod fails."""


class _NotYet(Exception):
    """A reference (ConfigMap, Secret, key) is missing: retry, as a kubelet does."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------- helpers


def rfc3339(nanos: int) -> str:
    """A metav1.Time: RFC 3339 with whole seconds, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(nanos // 10**9))


def rfc3339nano(nanos: int) -> str:
    """The kubelet's log timestamp: RFC 3339 with exactly nine fraction digits, UTC."""
    seconds, fraction = divmod(nanos, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)\Z"
)


def parse_rfc3339(text: str) -> int:
    """RFC 3339 (any fraction, any offset) -> nanoseconds since the epoch."""
    match = _RFC3339.match(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, offset = match.group(7) or "0", match.group(8).upper()
    zone = datetime.UTC
    if offset != "Z":
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        zone = datetime.timezone(sign * datetime.timedelta(hours=hours, minutes=minutes))
    moment = datetime.datetime(year, month, day, hour, minute, second, tzinfo=zone)
    return int(moment.timestamp()) * 10**9 + int(fraction.ljust(9, "0")[:9])


def repository_of(image: str) -> str:
    """``host:5000/a/b:tag`` or ``a/b@sha256:...`` -> ``a/b`` (``library/`` dropped)."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    if name.rfind(":") > last_slash:
        name = name[: name.rfind(":")]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        name = rest
    return name.removeprefix("library/")


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, variables: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` escapes, unknown references stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return variables.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("true", "1")  # type: ignore[index]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """SIGTERM the container's group; SIGKILL ends it whole, detached processes included."""
    if sig == signal.SIGKILL:
        kill_tree(pgid)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _safe_relative(path: str) -> Path:
    relative = Path(path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise _Unsupported(f"invalid volume item path {path!r}")
    return relative


# --------------------------------------------------------------------------- state


@dataclass
class _Run:
    """One pod the kubelet has taken on, and what became of it."""

    namespace: str
    name: str
    uid: str
    pod: dict[str, Any]
    directory: Path
    container: str
    image: str
    lines: list[tuple[int, str]] = field(default_factory=list)
    output_closed: bool = False
    started: bool = False
    start_nanos: int = 0
    started_at: str | None = None
    container_id: str | None = None
    image_id: str = ""
    argv: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    mounts: list[tuple[str, Path]] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    oom: bool = False
    killed: bool = False
    kill_reason: str | None = None
    # Set when the pod gets a deletionTimestamp: the grace before SIGKILL.
    delete_grace: float | None = None
    # The pod is gone from the API (force-deleted): nothing more to report.
    gone: bool = False
    conditions: dict[str, tuple[str, str]] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)
    wake: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    final_deleted: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


# --------------------------------------------------------------------------- logs over HTTPS


class _LogServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, kubelet: FakeKubelet, context: ssl.SSLContext) -> None:
        self.kubelet = kubelet
        self.context = context
        super().__init__((NODE_IP, 0), _LogHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS per connection in the handler's thread, so a slow handshake
        # does not hold up the accept loop.
        request.settimeout(10)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            tls.settimeout(None)
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                tls.close()


class _LogHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _LogServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("kubelet https: " + format, *args)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = url.path.split("/")
        if url.path == "/healthz":
            self.reply(200, "ok")
        elif len(parts) == 5 and parts[1] == "containerLogs":
            self.server.kubelet._serve_logs(
                self, parts[2], parts[3], parts[4], parse_qs(url.query, keep_blank_values=True)
            )
        else:
            self.reply(404, "404 page not found\n")

    def reply(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _LogWriter:
    """Lines out, with limitBytes applied; chunked when following."""

    def __init__(self, handler: _LogHandler, chunked: bool, limit: int | None) -> None:
        self.handler = handler
        self.chunked = chunked
        self.limit = limit
        self.buffer: list[bytes] = []

    @property
    def full(self) -> bool:
        return self.limit is not None and self.limit <= 0

    def write(self, data: bytes) -> None:
        if self.limit is not None:
            data = data[: self.limit]
            self.limit -= len(data)
        if not data:
            return
        if self.chunked:
            self.handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.handler.wfile.flush()
        else:
            self.buffer.append(data)


# --------------------------------------------------------------------------- the kubelet


class FakeKubelet:
    """Plays kube-scheduler and the kubelet of one node against a real API server.

    Use as a context manager (or `start()` / `stop()`).
    """

    def __init__(
        self,
        kubeconfig: Path,
        namespaces: Collection[str] | None = None,
        images: dict[str, list[str]] | None = None,
        node_name: str = "fake-node",
        *,
        heartbeat_interval: float = 10.0,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.namespaces = None if namespaces is None else sorted(set(namespaces))
        self.images = {key: list(value) for key, value in (images or {}).items()}
        self._repositories = {repository_of(key): value for key, value in self.images.items()}
        self.node_name = node_name
        self.heartbeat_interval = heartbeat_interval
        self.port = 0
        self.version = ""

        self._lock = threading.RLock()
        self._runs: dict[str, _Run] = {}  # by pod uid
        self._by_key: dict[tuple[str, str], _Run] = {}  # the latest run of a name
        self._order: list[tuple[str, str]] = []
        self._bound: set[str] = set()
        self._held: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name)
        self._hold: tuple[str, str] | None = None
        self._oom_next = 0
        self._errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: set[Any] = set()
        self._server: _LogServer | None = None
        self._root: Path | None = None
        self._api: client.ApiClient | None = None
        self._registered_at = ""
        self._started = False

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> FakeKubelet:
        try:
            configuration = client.Configuration()
            config.load_kube_config(
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
                    lambda namespace=namespace: self._watch_loop(namespace),
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
                _signal_group(run.process.pid, signal.SIGKILL)
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
                self._api.close()
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

    # -- hooks ----------------------------------------------------------------

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

    # -- what tests ask -------------------------------------------------------

    def pods(self) -> list[tuple[str, str]]:
        """(namespace, name) of every pod bound to this node that it took on, in order."""
        with self._lock:
            return list(self._order)

    def output(self, namespace: str, name: str) -> list[str]:
        """Every line the container wrote (stdout and stderr), without newlines."""
        run = self._run_of(namespace, name)
        with run.changed:
            return [text for _, text in run.lines]

    def timestamped_output(self, namespace: str, name: str) -> list[tuple[str, str]]:
        """(RFC3339Nano timestamp, line) for every output line."""
        run = self._run_of(namespace, name)
        with run.changed:
            return [(rfc3339nano(at), text) for at, text in run.lines]

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
        """Why it was killed: "Deleted", "DeadlineExceeded", "OOMKilled" or "Shutdown"."""
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

    def _run_of(self, namespace: str, name: str) -> _Run:
        with self._lock:
            run = self._by_key.get((namespace, name))
        if run is None:
            raise KeyError(f"the fake kubelet has not run {namespace}/{name}")
        return run

    # -- the API server -------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float | None] = 30.0,
        stream: bool = False,
    ) -> Any:
        """One call through the kubernetes client's ApiClient; JSON in, JSON (or a stream) out."""
        api = self._api
        if api is None:
            raise RuntimeError("the fake kubelet is not started")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()) or None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        timeouts: Any = timeout if isinstance(timeout, float | int) else tuple(timeout)
        answer = api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=timeouts
        )
        raw = answer.response
        if answer.status >= 400 or not stream:
            data = raw.data
            raw.release_conn()
            if answer.status >= 400:
                raise KubeError(method, path, answer.status, data.decode(errors="replace"))
            return json.loads(data) if data else {}
        return raw

    def _patch(self, path: str, patch: dict[str, Any], kind: str = "strategic") -> Any:
        return self._request(
            "PATCH",
            path,
            body=patch,
            content_type="application/strategic-merge-patch+json"
            if kind == "strategic"
            else "application/merge-patch+json",
        )

    def _event(
        self,
        pod: dict[str, Any],
        reason: str,
        message: str,
        kind: str = "Normal",
        component: str = "kubelet",
        container: str | None = None,
    ) -> None:
        """A core/v1 Event about the pod, as the scheduler or a kubelet records it."""
        metadata = pod["metadata"]
        now = rfc3339(time.time_ns())
        involved = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": metadata["namespace"],
            "name": metadata["name"],
            "uid": metadata["uid"],
            "resourceVersion": metadata.get("resourceVersion"),
        }
        if container is not None:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": metadata["namespace"],
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": component}
            | ({"host": self.node_name} if component == "kubelet" else {}),
            "reportingComponent": component,
            "reportingInstance": self.node_name if component == "kubelet" else component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._request("POST", f"/api/v1/namespaces/{metadata['namespace']}/events", body=event)
        except Exception as error:  # events are best effort, as in Kubernetes
            logger.debug("event %s for %s not recorded: %s", reason, metadata["name"], error)

    # -- threads ---------------------------------------------------------------

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        def guarded() -> None:
            try:
                target()
            except BaseException as error:
                if not self._stopping.is_set():
                    logger.exception("fake kubelet thread %s failed", name)
                    self._errors.append(error)

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    # -- the node --------------------------------------------------------------

    def _start_server(self) -> None:
        assert self._root is not None
        certs = self._root / "pki"
        certs.mkdir()
        key, cert = certs / "kubelet.key", certs / "kubelet.crt"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-subj",
                f"/CN={self.node_name}",
                "-addext",
                f"subjectAltName=IP:{NODE_IP},DNS:{self.node_name}",
            ],
            check=True,
            capture_output=True,
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        # No client certificates: the API server has no --kubelet-client-certificate.
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["http/1.1"])
        self._server = _LogServer(self, context)
        self.port = int(self._server.server_address[1])
        self._spawn(lambda: self._serve(0.05), "fake-kubelet-https")

    def _serve(self, poll_interval: float) -> None:
        server = self._server
        if server is not None:
            server.serve_forever(poll_interval=poll_interval)

    def _node_info(self) -> dict[str, str]:
        def read(path: str, default: str) -> str:
            try:
                return Path(path).read_text().strip() or default
            except OSError:
                return default

        os_image = "Linux"
        for line in read("/etc/os-release", "").splitlines():
            if line.startswith("PRETTY_NAME="):
                os_image = line.partition("=")[2].strip('"')
        machine = platform.machine()
        return {
            "machineID": read("/etc/machine-id", uuid.uuid4().hex),
            "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.node_name)),
            "bootID": read("/proc/sys/kernel/random/boot_id", str(uuid.uuid4())),
            "kernelVersion": platform.release(),
            "osImage": os_image,
            "containerRuntimeVersion": "containerd://2.1.4",
            "kubeletVersion": self.version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine),
        }

    def _node_status(self) -> dict[str, Any]:
        now = rfc3339(time.time_ns())
        since = self._registered_at or now

        def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": since,
            }

        return {
            "capacity": dict(CAPACITY),
            "allocatable": dict(CAPACITY),
            "conditions": [
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": NODE_IP},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": self._node_info(),
        }

    def _register_node(self) -> None:
        self._registered_at = rfc3339(time.time_ns())
        arch = self._node_info()["architecture"]
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch,
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": arch,
                },
                "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            },
            "spec": {},
        }
        try:
            self._request("POST", "/api/v1/nodes", body=node)
        except KubeError as error:
            if error.status != 409:
                raise
        self._post_node_status()
        # Admission taints every new node not-ready; the node lifecycle
        # controller (not running here) lifts it once the node reports Ready.
        current = self._request("GET", f"/api/v1/nodes/{self.node_name}")
        taints = current.get("spec", {}).get("taints") or []
        kept = [taint for taint in taints if taint.get("key") != NOT_READY_TAINT]
        if len(kept) != len(taints):
            try:
                self._patch(
                    f"/api/v1/nodes/{self.node_name}",
                    {
                        "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                        "spec": {"taints": kept or None},
                    },
                    kind="merge",
                )
            except KubeError as error:
                if error.status != 409:  # changed meanwhile: the next registration retries
                    raise

    def _post_node_status(self) -> None:
        self._patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.heartbeat_interval):
            try:
                self._post_node_status()
            except KubeError as error:
                if error.status == 404:  # deleted behind our back: register again
                    self._register_node()
                else:
                    logger.warning("node heartbeat failed: %s", error)
            except Exception as error:
                logger.warning("node heartbeat failed: %s", error)

    # -- watching pods ----------------------------------------------------------

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

    # -- the scheduler ------------------------------------------------------------

    def _node_labels(self) -> dict[str, str]:
        arch = self._node_info()["architecture"]
        return {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch,
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": arch,
        }

    def _schedule(self, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        uid, namespace, name = metadata["uid"], metadata["namespace"], metadata["name"]
        selector = (pod.get("spec") or {}).get("nodeSelector") or {}
        labels = self._node_labels()
        with self._lock:
            if uid in self._bound:
                return
            hold = self._hold
            if hold is None and any(labels.get(k) != v for k, v in selector.items()):
                hold = ("Unschedulable", SELECTOR_MISMATCH)
            if hold is not None:
                if uid in self._held:
                    return
                self._held[uid] = (namespace, name)
            else:
                self._bound.add(uid)
        if hold is not None:
            self._mark_unschedulable(pod, *hold)
            return
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self._request(
                "POST", f"/api/v1/namespaces/{namespace}/pods/{name}/binding", body=binding
            )
        except KubeError as error:
            if error.status in (404, 409):  # gone, or bound by someone else
                return
            with self._lock:
                self._bound.discard(uid)
            raise
        self._event(
            pod,
            "Scheduled",
            f"Successfully assigned {namespace}/{name} to {self.node_name}",
            component=DEFAULT_SCHEDULER,
        )

    def _mark_unschedulable(self, pod: dict[str, Any], reason: str, message: str) -> None:
        metadata = pod["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        patch = {
            "metadata": {"uid": metadata["uid"]},
            "status": {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": reason,
                        "message": message,
                        "lastProbeTime": None,
                        "lastTransitionTime": rfc3339(time.time_ns()),
                    }
                ]
            },
        }
        try:
            self._patch(f"/api/v1/namespaces/{namespace}/pods/{name}/status", patch)
        except KubeError as error:
            if error.status not in (404, 409):
                raise
            return
        self._event(pod, "FailedScheduling", message, "Warning", DEFAULT_SCHEDULER)

    # -- running pods ---------------------------------------------------------------

    def _adopt(self, pod: dict[str, Any]) -> _Run:
        """Take on a pod bound to this node (called with the lock held)."""
        assert self._root is not None
        metadata = pod["metadata"]
        container = pod["spec"]["containers"][0]
        directory = self._root / "pods" / metadata["uid"]
        directory.mkdir(parents=True)
        run = _Run(
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

    def _play_safely(self, run: _Run) -> None:
        try:
            self._play(run)
        except BaseException as error:
            if not self._stopping.is_set() and not run.gone:
                logger.exception("fake kubelet failed playing pod %s/%s", *run.key)
                self._errors.append(error)
        finally:
            if run.process is not None and run.process.poll() is None:
                _signal_group(run.process.pid, signal.SIGKILL)
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

    def _interruption(self, run: _Run) -> str | None:
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

    def _pause(self, run: _Run, seconds: float | None) -> str | None:
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

    def _play(self, run: _Run) -> None:
        container = run.pod["spec"]["containers"][0]
        run.start_nanos = time.time_ns()
        waiting: dict[str, Any] = {"reason": "ContainerCreating"}
        if not self._report(run, "Pending", {"waiting": waiting}):
            return

        entrypoint = self._entrypoint(run.image)
        if entrypoint is None:
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
            return

        while True:
            try:
                self._prepare(run, container, entrypoint)
                break
            except _Unsupported as error:
                self._fail_to_start(run, str(error), UNSUPPORTED)
                return
            except _NotYet as error:
                if waiting.get("message") != error.message:
                    waiting = {"reason": error.reason, "message": error.message}
                    self._report(run, "Pending", {"waiting": waiting})
                    self._event(run.pod, "Failed", f"Error: {error.message}", "Warning")
                cause = self._pause(run, RETRY_SECONDS)
                if cause is not None:
                    self._end_unstarted(run, cause, waiting)
                    return
        cause = self._interruption(run)
        if cause is not None:
            self._end_unstarted(run, cause, waiting)
            return

        self._event(
            run.pod,
            "Pulled",
            f'Container image "{run.image}" already present on machine',
            container=run.container,
        )
        try:
            process = subprocess.Popen(
                container_command(run.argv, run.environment),
                env=run.environment,
                cwd=run.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            self._fail_to_start(
                run,
                "failed to create containerd task: failed to create shim task: OCI runtime "
                f"create failed: exec: {run.argv[0]!r}: {error.strerror}",
            )
            return
        with self._lock:
            run.process = process
            run.oom = self._oom_next > 0
            self._oom_next = max(0, self._oom_next - 1)
        reader = threading.Thread(
            target=self._read_output, args=(run, process), name=f"fake-kubelet-log-{run.name}"
        )
        reader.daemon = True
        reader.start()
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
        self._supervise(run, process)

        # The container is gone: so is everything else that ran in it.
        _signal_group(process.pid, signal.SIGKILL)
        reader.join(timeout=5)
        with run.changed:
            run.output_closed = True
            run.changed.notify_all()
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
        phase = "Succeeded" if exit_code == 0 else "Failed"
        pod_reason = pod_message = None
        if run.kill_reason == "DeadlineExceeded":
            phase, pod_reason, pod_message = "Failed", "DeadlineExceeded", DEADLINE_MESSAGE
        elif run.kill_reason == "Shutdown":
            phase, pod_reason, pod_message = "Failed", "Terminated", SHUTDOWN_MESSAGE
        self._report(run, phase, {"terminated": terminated}, reason=pod_reason, message=pod_message)

    def _supervise(self, run: _Run, process: subprocess.Popen[bytes]) -> None:
        """Until the process exits: OOM kills, deadlines, deletions, shutdown."""
        kill_at: float | None = None
        if run.oom:
            run.killed, run.kill_reason = True, "OOMKilled"
            _signal_group(process.pid, signal.SIGKILL)
        while process.poll() is None:
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
                    _signal_group(process.pid, signal.SIGTERM)
                    kill_at = time.monotonic() + grace
            elif kill_at is not None and time.monotonic() >= kill_at:
                _signal_group(process.pid, signal.SIGKILL)
                kill_at = None
            run.wake.wait(POLL_SECONDS)
            run.wake.clear()
        process.wait()

    @staticmethod
    def _termination_grace(run: _Run) -> float:
        grace = (run.pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        return min(float(30 if grace is None else grace), MAX_KILL_GRACE)

    def _read_output(self, run: _Run, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        last = 0
        with process.stdout as stream:
            for raw in iter(stream.readline, b""):
                last = max(time.time_ns(), last)
                text = raw.decode("utf-8", errors="replace").removesuffix("\n")
                with run.changed:
                    run.lines.append((last, text))
                    run.changed.notify_all()

    def _end_unstarted(self, run: _Run, cause: str | None, waiting: dict[str, Any]) -> None:
        """The pod ends before its container ever started."""
        reason = message = None
        if cause == "DeadlineExceeded":
            reason, message = "DeadlineExceeded", DEADLINE_MESSAGE
            self._event(run.pod, "DeadlineExceeded", DEADLINE_MESSAGE, "Warning")
        elif cause == "Shutdown":
            reason, message = "Terminated", SHUTDOWN_MESSAGE
        self._report(run, "Failed", {"waiting": waiting}, reason=reason, message=message)

    def _fail_to_start(self, run: _Run, message: str, pod_reason: str | None = None) -> None:
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

    def _final_delete(self, namespace: str, name: str, uid: str, run: _Run | None = None) -> None:
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

    # -- status ---------------------------------------------------------------------

    def _condition(
        self, run: _Run, kind: str, ok: bool, reason: str | None = None, message: str | None = None
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
        run: _Run,
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
        running = "running" in state
        container_status = {
            "name": run.container,
            "image": run.image,
            "imageID": run.image_id if run.started else "",
            "containerID": run.container_id,
            "ready": ready,
            "started": running,
            "restartCount": 0,
            "state": {
                "waiting": state.get("waiting"),
                "running": state.get("running"),
                "terminated": state.get("terminated"),
            },
        }
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

    # -- preparing a container ------------------------------------------------------

    def _entrypoint(self, image: str) -> list[str] | None:
        if image in self.images:
            return list(self.images[image])
        repository = repository_of(image)
        if repository in self._repositories:
            return list(self._repositories[repository])
        if repository.endswith("runner"):
            return list(RUNNER_ENTRYPOINT)
        return None

    def _object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._request(
                "GET", f"/api/v1/namespaces/{namespace}/{kind}/{quote(name)}"
            )
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return found

    def _source_data(
        self, kind: str, namespace: str, name: str, optional: bool
    ) -> dict[str, bytes] | None:
        """A ConfigMap's or Secret's keys as bytes; None if optional and missing."""
        found = self._object("configmaps" if kind == "configMap" else "secrets", namespace, name)
        if found is None:
            if optional:
                return None
            label = "configmap" if kind == "configMap" else "secret"
            raise _NotYet("CreateContainerConfigError", f'{label} "{name}" not found')
        data: dict[str, bytes] = {}
        if kind == "configMap":
            data.update({k: v.encode() for k, v in (found.get("data") or {}).items()})
            data.update(
                {k: base64.b64decode(v) for k, v in (found.get("binaryData") or {}).items()}
            )
        else:
            data.update({k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()})
        return data

    def _project(
        self, kind: str, source: dict[str, Any], namespace: str, target: Path, volume: str
    ) -> None:
        name = source.get("name") if kind == "configMap" else source.get("secretName")
        if kind != "configMap" and name is None:
            name = source.get("name")  # projected secret sources use `name`
        optional = bool(source.get("optional"))
        try:
            data = self._source_data(kind, namespace, str(name), optional)
        except _NotYet as error:
            raise _NotYet(
                "ContainerCreating",
                f'MountVolume.SetUp failed for volume "{volume}" : {error.message}',
            ) from None
        if data is None:
            return
        items = source.get("items")
        pairs = [(item["key"], item["path"]) for item in items] if items else [(k, k) for k in data]
        for key, path in pairs:
            if key not in data:
                if optional:
                    continue
                raise _NotYet(
                    "ContainerCreating",
                    f'MountVolume.SetUp failed for volume "{volume}" : configmap references '
                    f"non-existent config key: {key}",
                )
            destination = target / _safe_relative(path)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data[key])
            destination.chmod(0o444)

    def _volumes(self, run: _Run) -> dict[str, Path]:
        directories: dict[str, Path] = {}
        base = run.directory / "volumes"
        for volume in run.pod["spec"].get("volumes") or []:
            name = volume["name"]
            target = base / name
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            directories[name] = target
            if "emptyDir" in volume:
                continue
            if "configMap" in volume:
                self._project("configMap", volume["configMap"], run.namespace, target, name)
            elif "secret" in volume:
                self._project("secret", volume["secret"], run.namespace, target, name)
            elif "projected" in volume:
                for source in volume["projected"].get("sources") or []:
                    kind = next(iter(source), "")
                    if kind not in ("configMap", "secret"):
                        raise _Unsupported(
                            f'volume "{name}": projected {kind} sources are not supported '
                            "by the fake kubelet"
                        )
                    self._project(kind, source[kind], run.namespace, target, name)
            else:
                kind = next((k for k in volume if k != "name"), "?")
                raise _Unsupported(
                    f'volume "{name}": {kind} volumes are not supported by the fake kubelet'
                )
        return directories

    def _field(self, run: _Run, path: str) -> str:
        metadata = run.pod["metadata"]
        simple = {
            "metadata.name": metadata["name"],
            "metadata.namespace": metadata["namespace"],
            "metadata.uid": metadata["uid"],
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": run.pod["spec"].get("serviceAccountName", "default"),
            "status.hostIP": NODE_IP,
            "status.hostIPs": NODE_IP,
            "status.podIP": NODE_IP,
            "status.podIPs": NODE_IP,
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
        raise _Unsupported(f"env fieldRef {path!r} is not supported by the fake kubelet")

    def _container_env(self, run: _Run, container: dict[str, Any]) -> dict[str, str]:
        values: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, ref in (("configMap", "configMapRef"), ("secret", "secretRef")):
                if ref in source:
                    reference = source[ref]
                    data = self._source_data(
                        kind, run.namespace, reference["name"], bool(reference.get("optional"))
                    )
                    for key, value in (data or {}).items():
                        values[prefix + key] = value.decode(errors="replace")
        for item in container.get("env") or []:
            name = item["name"]
            source = item.get("valueFrom")
            if source is None:
                values[name] = expand(item.get("value", ""), values)
            elif "fieldRef" in source:
                values[name] = self._field(run, source["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in source or "secretKeyRef" in source:
                kind, ref = (
                    ("configMap", source["configMapKeyRef"])
                    if "configMapKeyRef" in source
                    else ("secret", source["secretKeyRef"])
                )
                optional = bool(ref.get("optional"))
                data = self._source_data(kind, run.namespace, ref["name"], optional)
                if data is None:
                    continue
                if ref["key"] not in data:
                    if optional:
                        continue
                    label = "ConfigMap" if kind == "configMap" else "Secret"
                    raise _NotYet(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in {label} {run.namespace}/{ref['name']}",
                    )
                values[name] = data[ref["key"]].decode(errors="replace")
            else:
                kind = next(iter(source), "?")
                raise _Unsupported(
                    f'env "{name}": valueFrom.{kind} is not supported by the fake kubelet'
                )
        return values

    @staticmethod
    def _rewrite(text: str, mounts: list[tuple[str, Path]]) -> str:
        """Every mount path that starts a path in `text` -> its host directory."""
        if not mounts:
            return text
        by_path = {mount: str(host) for mount, host in mounts}
        alternatives = "|".join(re.escape(m) for m in sorted(by_path, key=len, reverse=True))
        pattern = re.compile(rf"(?<![\w.~/-])(?:{alternatives})(?=/|$|[^\w.-])")
        return pattern.sub(lambda match: by_path[match.group(0)], text)

    def _prepare(self, run: _Run, container: dict[str, Any], entrypoint: list[str]) -> None:
        """Volumes, mounts, environment, argv and cwd of the container's process."""
        volumes = self._volumes(run)
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in volumes:
                raise _Unsupported(f'volumeMount "{mount["name"]}" names no volume of the pod')
            host = volumes[mount["name"]]
            if mount.get("subPath"):
                host = host / _safe_relative(mount["subPath"])
                host.mkdir(parents=True, exist_ok=True)
            path = mount["mountPath"].rstrip("/") or "/"
            if path == "/":
                raise _Unsupported("a volume mounted at / is not supported by the fake kubelet")
            mounts.append((path, host))
        run.mounts = mounts

        declared = self._container_env(run, container)
        # The image's entrypoint is already a host command; only what the pod
        # says is in container paths.
        own = [expand(part, declared) for part in container.get("command") or []]
        own += [expand(part, declared) for part in container.get("args") or []]
        own = [self._rewrite(part, mounts) for part in own]
        argv = own if container.get("command") else list(entrypoint) + own
        if not argv:
            raise _Unsupported("no command specified")

        home = run.directory / "home"
        home.mkdir(exist_ok=True)
        scratch = dict(mounts).get("/tmp")
        if scratch is None:
            scratch = run.directory / "tmp"
            scratch.mkdir(exist_ok=True)
        environment = {
            "PATH": f"{Path(sys.executable).parent}:{CONTAINER_PATH}",
            "HOSTNAME": run.name,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "HOME": str(home),
            "TMPDIR": str(scratch),
        }
        environment.update({k: self._rewrite(v, mounts) for k, v in declared.items()})

        rootfs = run.directory / "rootfs"
        rootfs.mkdir(exist_ok=True)
        working = container.get("workingDir")
        if working:
            rewritten = self._rewrite(working, mounts)
            cwd = Path(rewritten) if rewritten != working else rootfs / working.lstrip("/")
        else:
            cwd = rootfs
        cwd.mkdir(parents=True, exist_ok=True)

        run.argv, run.environment, run.cwd = argv, environment, cwd
        run.image_id = (
            f"{repository_of(run.image)}@sha256:"
            + hashlib.sha256(" ".join(entrypoint).encode()).hexdigest()
        )

    # -- /containerLogs ------------------------------------------------------------------

    def _serve_logs(
        self,
        handler: _LogHandler,
        namespace: str,
        name: str,
        container: str,
        query: dict[str, list[str]],
    ) -> None:
        with self._lock:
            run = self._by_key.get((namespace, name))
        if run is None:
            handler.reply(404, f'pod "{name}" does not exist\n')
            return
        if container != run.container:
            handler.reply(404, f'container "{container}" not found in pod "{name}"\n')
            return
        if _truthy(query.get("previous")):
            handler.reply(
                400, f'previous terminated container "{container}" in pod "{name}" not found\n'
            )
            return
        if not run.started:
            handler.reply(400, f'container "{container}" in pod "{name}" is waiting to start\n')
            return
        try:
            tail = int(query.get("tailLines", ["-1"])[-1])
            limit_text = query.get("limitBytes", [""])[-1]
            limit = int(limit_text) if limit_text else None
            since: int | None = None
            if query.get("sinceTime", [""])[-1]:
                since = parse_rfc3339(query["sinceTime"][-1])
            elif query.get("sinceSeconds", [""])[-1]:
                since = time.time_ns() - int(query["sinceSeconds"][-1]) * 10**9
        except ValueError as error:
            handler.reply(400, f"{error}\n")
            return
        timestamps = _truthy(query.get("timestamps"))
        follow = _truthy(query.get("follow"))

        def render(entries: list[tuple[int, str]]) -> Iterator[bytes]:
            for at, text in entries:
                if since is not None and at < since:
                    continue
                line = f"{rfc3339nano(at)} {text}\n" if timestamps else f"{text}\n"
                yield line.encode()

        with run.changed:
            entries = list(run.lines)
        seen = len(entries)
        if tail >= 0:
            entries = entries[len(entries) - tail :] if tail else []

        writer = _LogWriter(handler, chunked=follow, limit=limit)
        try:
            if not follow:
                for data in render(entries):
                    writer.write(data)
                body = b"".join(writer.buffer)
                handler.send_response(200)
                handler.send_header("Content-Type", "text/plain")
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)
                return
            handler.send_response(200)
            handler.send_header("Content-Type", "text/plain")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            for data in render(entries):
                writer.write(data)
            while not writer.full:
                with run.changed:
                    while (
                        len(run.lines) <= seen
                        and not run.output_closed
                        and not self._stopping.is_set()
                    ):
                        run.changed.wait(0.5)
                    fresh = run.lines[seen:]
                    seen = len(run.lines)
                    closed = run.output_closed or self._stopping.is_set()
                for data in render(fresh):
                    writer.write(data)
                if closed and not fresh:
                    break
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
            handler.close_connection = True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            handler.close_connection = True
