"""Helpers for the tests that use the real control plane: kubectl, the operator process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agenttest_dev import devcluster

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"
MANIFESTS = ROOT / "manifests"
SYSTEM_NAMESPACE = "agenttest-system"
SERVICE_ACCOUNT = "agenttest-operator"


class Kube:
    """kubectl against the test cluster, in one namespace."""

    def __init__(self, cluster: devcluster.Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def run(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.namespace, *args, check=check, input_text=input_text)

    def apply(
        self, *documents: dict[str, Any], check: bool = True, server_side: bool = False
    ) -> subprocess.CompletedProcess[str]:
        text = yaml.safe_dump_all(documents)
        flags = ["--server-side"] if server_side else []
        return self.run("apply", *flags, "-f", "-", check=check, input_text=text)

    def get(self, name: str, kind: str = "agenttest") -> dict[str, Any]:
        return dict(json.loads(self.run("get", kind, name, "-o", "json").stdout))

    def get_all(self, kind: str = "agenttests") -> list[dict[str, Any]]:
        return list(json.loads(self.run("get", kind, "-o", "json").stdout)["items"])

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        """The Events about the object ``name`` in this namespace (with ``reason`` only)."""
        listed = self.run(
            "get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json"
        ).stdout
        items = json.loads(listed)["items"]
        return [event for event in items if reason is None or event["reason"] == reason]

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.run("patch", "agenttest", name, "--type=merge", "-p", json.dumps(patch))

    def wait_for(
        self,
        description: str,
        condition: Callable[[], Any],
        timeout: float = 60.0,
    ) -> Any:
        """Poll until `condition()` is truthy; fail with what was last seen."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = condition()
            except (subprocess.CalledProcessError, devcluster.ClusterError) as error:
                last = error
            else:
                if last:
                    return last
            time.sleep(0.2)
        pytest.fail(f"timed out after {timeout}s waiting for {description}; last: {last!r}")

    def wait_for_phase(self, name: str, *phases: str, timeout: float = 90.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            test = self.get(name)
            return test if test.get("status", {}).get("phase") in phases else None

        result: dict[str, Any] = self.wait_for(f"{name} to reach {phases}", reached, timeout)
        return result


class Operator:
    """`agenttest run` as a subprocess, the way a user starts it."""

    def __init__(
        self,
        cluster: devcluster.Cluster,
        namespace: str,
        state_dir: Path,
        log_path: Path,
        kubeconfig: Path | None = None,
        extra_env: dict[str, str] | None = None,
        **settings: Any,
    ) -> None:
        """`kubeconfig` defaults to the cluster admin's; pass another to run as someone else."""
        self.env = {
            **os.environ,
            **(extra_env or {}),
            "KUBECONFIG": str(kubeconfig or cluster.kubeconfig),
            "AGENTTEST_NAMESPACES": namespace,
            # Each test's operator keeps its signing secret in the test's namespace.
            "AGENTTEST_OPERATOR_NAMESPACE": namespace,
            "AGENTTEST_ENABLE_LOCAL_BACKEND": "true",
            "AGENTTEST_DEFAULT_BACKEND": "local",
            "AGENTTEST_LOCAL_STATE_DIR": str(state_dir),
            "AGENTTEST_METRICS_PORT": "0",
            "AGENTTEST_HEALTH_PORT": "0",
            **{f"AGENTTEST_{key.upper()}": str(value) for key, value in settings.items()},
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agenttest.cli", "run"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def kill(self) -> None:
        """SIGKILL: the operator gets no chance to clean up, as in a node crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def agent_test(
    name: str,
    source: str,
    endpoint: str,
    cases: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """An AgentTest manifest with the scripted model and the local backend."""
    return {
        "apiVersion": "agenttest.dev/v1alpha1",
        "kind": "AgentTest",
        "metadata": {"name": name},
        "spec": {
            "agent": {"source": {"inline": source}},
            "model": {"provider": "ollama", "modelId": "scripted", "endpoint": endpoint},
            "cases": cases
            or [{"name": "greets", "query": "Say hello", "expect": {"contains": ["hello"]}}],
            "backend": "local",
            "timeoutSeconds": 120,
            **spec,
        },
    }


def on_pod(name: str, source: str, endpoint: str, **spec: Any) -> dict[str, Any]:
    """The same, on the pod backend."""
    return agent_test(name, source, endpoint, backend="pod", **spec)


SIMPLE_AGENT = """
from strands import Agent

def agent(model):
    return Agent(model=model, system_prompt="Be brief.")
"""


def ticking_agent(lines: int, every: float, line: str = "tick {n}") -> str:
    """An agent that prints ``lines`` lines, ``every`` seconds apart, before it answers.

    ``line`` is the body of an f-string in the agent, with ``n`` the line's number
    (and ``time`` imported): ``"tick {n:03d}"``, ``"tick {n} {time.time():.6f}"``.
    """
    return f"""
import time
for n in range({lines}):
    print(f"{line}", flush=True)
    time.sleep({every})
{SIMPLE_AGENT}"""


def kustomize_with_component(
    cluster: devcluster.Cluster, directory: Path, component: str
) -> list[dict[str, Any]]:
    """The base with one of its components, from an overlay of the user's own (as documented)."""
    directory.mkdir()
    relative = Path(os.path.relpath(MANIFESTS, directory))
    (directory / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(relative)],
                "components": [str(relative / component)],
            }
        )
    )
    text = cluster.kubectl("kustomize", str(directory)).stdout
    return [document for document in yaml.safe_load_all(text) if document]


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def install_operator_identity(cluster: devcluster.Cluster) -> None:
    """The operator's namespace, ServiceAccount and RBAC from manifests/, as a user installs them.

    Only those: the base's Deployment would be a pod no node here runs.
    """
    cluster.kubectl("apply", "-f", str(MANIFESTS / "namespace.yaml"))
    for name in ("serviceaccount.yaml", "rbac.yaml"):
        cluster.kubectl("apply", "-n", SYSTEM_NAMESPACE, "-f", str(MANIFESTS / name))


def service_account_kubeconfig(
    cluster: devcluster.Cluster,
    path: Path,
    namespace: str,
    account: str = SERVICE_ACCOUNT,
    account_namespace: str = SYSTEM_NAMESPACE,
) -> Path:
    """A kubeconfig that authenticates with a fresh token for a ServiceAccount (the operator's)."""
    # Long enough for the slowest flow: nothing here renews it.
    token = cluster.kubectl(
        "create", "token", account, "-n", account_namespace, "--duration=2h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    ca = admin["clusters"][0]["cluster"]["certificate-authority-data"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "agenttest",
                "cluster": {"server": cluster.url, "certificate-authority-data": ca},
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {
                "name": account,
                "context": {
                    "cluster": "agenttest",
                    "user": account,
                    "namespace": namespace,
                },
            }
        ],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
