"""What the stand-in node keeps, and how it talks to the API server.

The constants the kubelet and scheduler report, the errors, the time formats,
one pod's run (`Run`), and `NodeState`: the node's whole state, its one lock,
the API calls (through the kubernetes client's ApiClient) and Events.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client

logger = logging.getLogger("agenttest_dev.node")

NODE_IP = "127.0.0.1"
DEFAULT_SCHEDULER = "default-scheduler"
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
# How often a running pod's disk use is measured against its storage limits (a
# kubelet's housekeeping period is 10 s; shorter here so tests end sooner).
STORAGE_CHECK_SECONDS = 0.5
TERMINAL = ("Succeeded", "Failed")


class KubeError(Exception):
    """The API server answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: {status} {body[:500]}")
        self.status = status
        self.body = body


class Unsupported(Exception):
    """The pod needs something the fake kubelet does not do: the pod fails."""


class NotYet(Exception):
    """A reference (ConfigMap, Secret, key) is missing: retry, as a kubelet does."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


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


@dataclass
class Run:
    """One pod the kubelet has taken on, and what became of it."""

    namespace: str
    name: str
    uid: str
    pod: dict[str, Any]
    directory: Path
    container: str
    image: str
    lines: list[tuple[int, bytes]] = field(default_factory=list)  # as the container wrote them
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
    # Why the eviction manager evicted it (kill_reason "Evicted").
    eviction: str | None = None
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


class NodeState:
    """The state every part of the node shares, under one lock; the API server's calls."""

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
        self.node_name = node_name
        self.heartbeat_interval = heartbeat_interval
        self.port = 0
        self.version = ""

        self._lock = threading.RLock()
        self._runs: dict[str, Run] = {}  # by pod uid
        self._by_key: dict[tuple[str, str], Run] = {}  # the latest run of a name
        self._order: list[tuple[str, str]] = []
        self._bound: set[str] = set()
        self._held: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name)
        self._hold: tuple[str, str] | None = None
        self._oom_next = 0
        self._errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: set[Any] = set()
        self._server: ThreadingHTTPServer | None = None
        self._root: Path | None = None
        self._api: client.ApiClient | None = None
        self._registered_at = ""
        self._started = False

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

    def _run_of(self, namespace: str, name: str) -> Run:
        with self._lock:
            run = self._by_key.get((namespace, name))
        if run is None:
            raise KeyError(f"the fake kubelet has not run {namespace}/{name}")
        return run
