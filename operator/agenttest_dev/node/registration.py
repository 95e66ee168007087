"""The Node and the scheduler: register, report Ready, heartbeat; bind pods or say why not."""

from __future__ import annotations

import platform
import time
import uuid
from pathlib import Path
from typing import Any

from agenttest_dev.node.state import (
    CAPACITY,
    DEFAULT_SCHEDULER,
    NODE_IP,
    NOT_READY_TAINT,
    SELECTOR_MISMATCH,
    KubeError,
    NodeState,
    logger,
    rfc3339,
)


class NodeRegistration(NodeState):
    """Plays the node's registration and kube-scheduler for it."""

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
