"""The pod backend: the runner as a Pod in the test's own namespace.

Per execution: a NetworkPolicy (egress.py), a Secret (the signing key and the
runner configuration) and the Pod, all named from the ExecutionKey and owned
by the AgentTest, so a create repeated after a restart meets AlreadyExists and
adopts, and deleting the test garbage-collects whatever is left. The policy is
created first: a pod never runs unfenced, and an operator that may not create
the policy refuses the launch (the test ends Error saying so) instead of
starting the pod anyway.

The configuration holds agent.py, so it goes in the Secret, never a ConfigMap:
agent.py may come from an S3 object the operator read with its own credentials
(sources.py), which nobody in the namespace could read, and ConfigMaps are
readable by everyone who may view the namespace (the built-in `view` role)
while Secrets are not. A Secret rather than handing the judge a presigned URL:
the runner's egress is fenced to the model (the NetworkPolicy), the judge would
need S3 reachable from every pod, and the operator has already read and hashed
the bytes it must run (the snapshot), which a second fetch could not promise.

The pod is built for running a stranger's code: the restricted Pod Security
profile, a read-only root, no service account token, no service links, CPU,
memory and ephemeral-storage limits, a ``sizeLimit`` on every emptyDir, and a
deadline. A pod the kubelet evicts for exceeding its own storage limits ends
the test Failed (the agent filled the disk, a retry would do the same); any
other eviction (node pressure) is the infrastructure's and is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import math
import time
from typing import Any

from agenttest import kubeapi
from agenttest.backends import egress
from agenttest.backends.base import LaunchRefused
from agenttest.executions import (
    ExecutionKey,
    ExecutionState,
    Launched,
    LaunchRequest,
    LogChunk,
    Observation,
)
from agenttest.models import Backend
from agenttest.objects import MANAGED_BY, owned_metadata, test_label
from agenttest.runner.protocol import MODEL_CREDENTIALS_ENV, RUN_KEY_ENV
from agenttest.sources import config_models

logger = logging.getLogger(__name__)

CONFIG_KEY = "config.json"
RUN_KEY_KEY = "runKey"  # the data key of the execution's Secret
MODEL_CREDENTIALS_KEY = "modelCredentials"  # ... and of the models' credentials
CONFIG_MOUNT = "/etc/agenttest"
WORK_DIR = "/tmp/work"
RUNNER_UID = 10001
# The pod's own deadline is the test's timeout plus this margin: the operator
# stops it first; the kubelet's deadline is the backstop if the operator is down.
DEADLINE_MARGIN_SECONDS = 30
CONTAINER = "runner"
# The default ephemeral-storage request and limit of the runner container, and
# the sizeLimit of each of its emptyDirs (AGENTTEST_POD_EPHEMERAL_STORAGE).
EPHEMERAL_STORAGE = "2Gi"
# A pod the kubelet kills on eviction reports the container killed (SIGKILL).
EXIT_KILLED = 137
# The kubelet's eviction messages for a pod over its own storage limits
# (pkg/kubelet/eviction/helpers.go): emptyDir sizeLimit, the pod's total, one
# container's limit. Node pressure says "The node was low on resource" instead.
OWN_STORAGE_EVICTIONS = (
    "Usage of EmptyDir volume",
    "Pod ephemeral local storage usage exceeds the total limit of containers",
    "exceeded its local ephemeral storage limit",
)
WAITING_PROBLEMS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
)


def labels(request: LaunchRequest) -> dict[str, str]:
    return {
        **MANAGED_BY,
        egress.ROLE_LABEL: egress.RUNNER_ROLE,
        egress.EXECUTION_LABEL: request.key.name,
        **test_label(request.test_name),
        "agenttest.dev/uid": request.key.uid,
        "agenttest.dev/attempt": str(request.key.attempt),
    }


def metadata(request: LaunchRequest) -> dict[str, Any]:
    """Every object of an execution: named after its key, labelled, owned by the test."""
    return owned_metadata(
        request.key.name, request.namespace, request.test_name, request.key.uid, labels(request)
    )


def execution_secret_manifest(request: LaunchRequest) -> dict[str, Any]:
    """The execution's signing key and runner configuration.

    The key is for the judge's environment only: a Secret rather than a literal in
    the pod spec, which everyone who may read pods in the namespace could see;
    never mounted as a file, which the agent host (same user, same container) could
    read. The configuration (agent.py included) is mounted as the one file
    config.json; see the module docstring for why it is not in a ConfigMap.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(request),
        "type": "Opaque",
        "stringData": {
            RUN_KEY_KEY: request.run_key,
            CONFIG_KEY: json.dumps(request.runner_config),
            # Like the key, for the judge's environment only (and the same reasons).
            **(
                {MODEL_CREDENTIALS_KEY: json.dumps(request.model_credentials)}
                if request.model_credentials
                else {}
            ),
        },
    }


def network_policy_manifest(
    request: LaunchRequest, extra: list[tuple[egress.Network, int]] | None = None
) -> dict[str, Any]:
    """The execution's NetworkPolicy; `egress.EgressRefused` if its model may not be reached."""
    return egress.network_policy(metadata(request), config_models(request.runner_config), extra)


def pod_manifest(
    request: LaunchRequest,
    image: str,
    runtime_class: str = "",
    ephemeral_storage: str = EPHEMERAL_STORAGE,
) -> dict[str, Any]:
    """The Pod for one execution (pure: unit-tested, and what the fixture runs)."""
    resources = {
        "cpu": request.cpu,
        "memory": request.memory,
        # Requirements, the agent's files and /tmp all live in the emptyDirs
        # below (the root is read-only); the kubelet evicts past this.
        "ephemeral-storage": ephemeral_storage,
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "activeDeadlineSeconds": request.timeout_seconds + DEADLINE_MARGIN_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "fsGroup": RUNNER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": image,
                "args": ["--config", f"{CONFIG_MOUNT}/{CONFIG_KEY}", "--workdir", WORK_DIR],
                "workingDir": WORK_DIR,
                "env": [
                    {"name": "PYTHONUNBUFFERED", "value": "1"},
                    {"name": "HOME", "value": "/tmp"},
                    {
                        "name": RUN_KEY_ENV,
                        "valueFrom": {
                            "secretKeyRef": {"name": request.key.name, "key": RUN_KEY_KEY}
                        },
                    },
                    *(
                        [
                            {
                                "name": MODEL_CREDENTIALS_ENV,
                                "valueFrom": {
                                    "secretKeyRef": {
                                        "name": request.key.name,
                                        "key": MODEL_CREDENTIALS_KEY,
                                    }
                                },
                            }
                        ]
                        if request.model_credentials
                        else []
                    ),
                ],
                "resources": {"requests": resources, "limits": resources},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [
                    {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "work", "mountPath": WORK_DIR},
                ],
            }
        ],
        "volumes": [
            {
                "name": "config",
                # Only config.json: the signing key and the models' credentials in the
                # same Secret never become files.
                "secret": {
                    "secretName": request.key.name,
                    "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
                },
            },
            # Each bounded on its own too, so a full /tmp names itself in the eviction.
            {"name": "tmp", "emptyDir": {"sizeLimit": ephemeral_storage}},
            {"name": "work", "emptyDir": {"sizeLimit": ephemeral_storage}},
        ],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(request),
        "spec": spec,
    }


def pod_observation(pod: dict[str, Any]) -> Observation:
    """What a pod's status means for the test (pure)."""
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    containers = status.get("containerStatuses") or [{}]
    state = containers[0].get("state") or {}
    if status.get("reason") == "Evicted":
        message = str(status.get("message") or "").strip()
        if any(marker in message for marker in OWN_STORAGE_EVICTIONS):
            # The agent filled its own disk: the test's doing, so it ends Failed
            # (the exit code the kubelet's kill left, else SIGKILL's).
            terminated = state.get("terminated") or {}
            code = terminated.get("exitCode")
            return Observation(
                ExecutionState.EXITED,
                exit_code=code if code else EXIT_KILLED,
                reason=f"evicted: {message}",
            )
        return Observation(
            ExecutionState.MISSING,
            reason=f"pod evicted: {status.get('message')}",
            infra_failure=True,
        )
    if phase == "Pending":
        waiting = state.get("waiting") or {}
        if waiting.get("reason"):
            return Observation(
                ExecutionState.STARTING,
                reason=f"{waiting['reason']}: {waiting.get('message', '')}".strip(),
            )
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return Observation(
                    ExecutionState.STARTING,
                    reason=f"{condition.get('reason')}: {condition.get('message')}",
                )
        return Observation(ExecutionState.STARTING, reason="pod Pending")
    if phase in ("Succeeded", "Failed"):
        terminated = state.get("terminated") or {}
        if status.get("reason") == "DeadlineExceeded":
            return Observation(
                ExecutionState.EXITED,
                exit_code=terminated.get("exitCode"),
                reason="DeadlineExceeded: " + str(status.get("message", "")),
                timed_out=True,
            )
        reason = str(terminated.get("reason") or "")
        return Observation(
            ExecutionState.EXITED,
            exit_code=terminated.get("exitCode"),
            reason=reason if reason not in ("Completed", "Error") else "",
        )
    return Observation(ExecutionState.RUNNING)


def _nanos(stamp: str) -> int:
    """RFC3339(Nano) -> integer nanoseconds; kubelets trim trailing zeros, so no string compare."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    whole = datetime.datetime.fromisoformat(seconds).replace(tzinfo=datetime.UTC)
    return int(whole.timestamp()) * 10**9 + int((fraction or "0").ljust(9, "0")[:9])


def split_timestamped(text: str, cursor: str | None) -> tuple[list[str], str | None]:
    """Lines after the cursor from a `timestamps=true` log, and the new cursor.

    The cursor is `<nanoseconds>:<lines read with that timestamp>`, so a read
    that starts early (sinceSeconds is coarse) repeats nothing, and a burst of
    lines sharing one timestamp loses nothing.
    """
    last, count = (int(part) for part in cursor.split(":")) if cursor else (-1, 0)
    skip = count
    lines = []
    for raw in text.split("\n"):  # newlines only: a stray \r or \f splits nothing
        stamp, _, line = raw.partition(" ")
        try:
            at = _nanos(stamp)
        except ValueError:
            continue
        if at < last:
            continue
        if at == last and skip > 0:
            skip -= 1
            continue
        lines.append(line)
        if at == last:
            count += 1
        else:
            last, count, skip = at, 1, 0
    return lines, (f"{last}:{count}" if last >= 0 else cursor)


class PodExecutor:
    kind = Backend.POD
    # A terminated container's log is complete: nothing arrives late.
    log_grace_seconds = 0.0

    def __init__(
        self,
        image: str,
        runtime_class: str = "",
        stop_grace: float = 5.0,
        stop_timeout: float = 60.0,
        ephemeral_storage: str = EPHEMERAL_STORAGE,
        egress_allow: tuple[str, ...] = (),
    ) -> None:
        self.image = image
        self.runtime_class = runtime_class
        self.ephemeral_storage = ephemeral_storage
        # Parsed now: a bad entry stops the operator at start, not a launch later.
        self.egress_allow = egress.parse_extra(egress_allow)
        self.stop_grace = stop_grace
        self.stop_timeout = stop_timeout

    @staticmethod
    def _api() -> Any:
        from kubernetes import client

        return client.CoreV1Api()

    @staticmethod
    def _split(execution_id: str) -> tuple[str, str]:
        namespace, _, name = execution_id.partition("/")
        return namespace, name

    async def _read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        api = self._api()
        try:
            pod = await kubeapi.call(api.read_namespaced_pod, name, namespace)
        except kubeapi.Gone:
            return None
        return dict(api.api_client.sanitize_for_serialization(pod))

    async def locate(self, namespace: str, key: ExecutionKey) -> str | None:
        return f"{namespace}/{key.name}"

    async def _fence(self, request: LaunchRequest) -> None:
        """Create (or adopt) the execution's NetworkPolicy; LaunchRefused if it cannot be."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            body = network_policy_manifest(request, self.egress_allow)
        except egress.EgressRefused as error:
            raise LaunchRefused(f"runner egress refused: {error}") from error
        api = client.NetworkingV1Api()
        try:
            with contextlib.suppress(kubeapi.Conflict):  # created before a restart: adopt
                await kubeapi.create(api.create_namespaced_network_policy, request.namespace, body)
        except ApiException as error:
            if error.status != 403:
                raise
            raise LaunchRefused(
                f"cannot fence the runner in: creating NetworkPolicy "
                f"{request.namespace}/{request.key.name} is forbidden to the operator "
                "(it needs create on networkpolicies.networking.k8s.io in this namespace); "
                "no pod was started"
            ) from error

    async def launch(self, request: LaunchRequest) -> str:
        api = self._api()
        execution_id = f"{request.namespace}/{request.key.name}"
        await self._fence(request)
        pod = pod_manifest(request, self.image, self.runtime_class, self.ephemeral_storage)
        for create, body in (
            (api.create_namespaced_secret, execution_secret_manifest(request)),
            (api.create_namespaced_pod, pod),
        ):
            with contextlib.suppress(kubeapi.Conflict):  # created before a restart: adopt
                await kubeapi.create(create, request.namespace, body)
        return execution_id

    async def observe(self, execution_id: str) -> Observation:
        pod = await self._read_pod(*self._split(execution_id))
        if pod is None:
            return Observation(
                ExecutionState.MISSING, reason="the pod was deleted", infra_failure=True
            )
        return pod_observation(pod)

    async def read_logs(self, execution_id: str, cursor: str | None) -> LogChunk:
        namespace, name = self._split(execution_id)
        arguments: dict[str, Any] = {"container": CONTAINER, "timestamps": True}
        if cursor:
            # sinceTime is not in the client; sinceSeconds with a margin starts a
            # little early and the cursor drops what was already read.
            age = time.time() - int(cursor.split(":")[0]) / 1e9
            arguments["since_seconds"] = max(1, math.ceil(age) + 5)
        api = self._api()
        try:
            # Raw bytes, decoded with replacement: a kubelet serves whatever the
            # container wrote, and the client's strict decoding would fail on it.
            response = await kubeapi.call(
                lambda: api.read_namespaced_pod_log(
                    name, namespace, _preload_content=False, **arguments
                )
            )
            text = bytes(response.data).decode("utf-8", errors="replace")
        except kubeapi.Gone:
            return LogChunk([], cursor)
        except Exception as error:
            # 400 while the container is still being created: nothing to read yet.
            if getattr(error, "status", None) == 400:
                return LogChunk([], cursor)
            raise
        lines, new_cursor = split_timestamped(str(text), cursor)
        # The cursor starts with the newest line's kubelet timestamp, in nanoseconds.
        newest = int(new_cursor.split(":")[0]) / 1e9 if lines and new_cursor else None
        return LogChunk(lines, new_cursor, newest_at=newest)

    async def stop(self, execution_id: str, reason: str) -> None:
        namespace, name = self._split(execution_id)
        api = self._api()
        grace = max(0, round(self.stop_grace))
        for delete in (api.delete_namespaced_pod, api.delete_namespaced_secret):
            with contextlib.suppress(kubeapi.Gone):
                await kubeapi.call(lambda d=delete: d(name, namespace, grace_period_seconds=grace))
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            if await self._read_pod(namespace, name) is None:
                # The fence goes last, once nothing it fences is left running.
                await self._unfence(namespace, name)
                return
            await asyncio.sleep(0.2)
        logger.warning("pod %s still exists %.0fs after deletion", execution_id, self.stop_timeout)

    @staticmethod
    async def _unfence(namespace: str, name: str) -> None:
        from kubernetes import client

        api = client.NetworkingV1Api()
        with contextlib.suppress(kubeapi.Gone):
            await kubeapi.call(api.delete_namespaced_network_policy, name, namespace)

    async def cleanup(self, execution_id: str) -> None:
        await self.stop(execution_id, "AgentTest deleted")

    async def launched(self) -> list[Launched]:
        # Every object of an execution is owned by its AgentTest: once the test
        # is gone, however it went, the garbage collector deletes them.
        return []
