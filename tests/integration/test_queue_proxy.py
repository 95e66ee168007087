"""`agenttest queue` through the API server's service proxy, for real.

The path a user's request takes in a cluster: their kubeconfig -> the API
server (authentication, RBAC on services/proxy) -> the Service
agenttest-operator:http -> its Endpoints, made by the real endpoints
controller from the operator's pod -> the operator's HTTP server -> /queue.

Servers here listen on loopback, and the API server does not proxy to
loopback: Endpoints may not hold 127.0.0.0/8 (validation: "may not be in the
loopback range"), and the service proxy only dials an address that is the
IP of the pod its targetRef names. So the operator's pod gets an ordinary pod
IP, and this cluster's API server sends its cluster traffic through an egress
selector, as clusters with konnectivity do, to a stand-in for the pod network
(agenttest_dev.podnetwork) that joins that pod IP to the loopback server. It
needs its own API server (the flag is read at start), so this module starts
one; everything between the command and the server is the real thing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agenttest import httpserver, queueview
from agenttest_dev import devcluster
from agenttest_dev.podnetwork import PodNetwork

from support import MANIFESTS, SYSTEM_NAMESPACE, Kube, service_account_kubeconfig

pytestmark = pytest.mark.integration

POD_IP = "10.244.0.10"
VIEWER = "queue-viewer"
STRANGER = "stranger"
USERS_NAMESPACE = "team-a"
VENV_BIN = Path(sys.executable).parent

ROWS = [
    queueview.QueueRow(USERS_NAMESPACE, "first", 5, 1, "2026-11-29T10:00:00Z", "next to start"),
    queueview.QueueRow(
        "team-b", "second", 0, 2, "2026-11-29T10:01:00Z", queueview.no_free_slot(10, 10), "pod"
    ),
    queueview.QueueRow(
        USERS_NAMESPACE, "third", 0, 3, "2026-11-29T10:02:00Z", queueview.no_free_slot(10, 10)
    ),
]


def view() -> dict[str, Any]:
    return queueview.to_json(ROWS, running=10, limit=10)


class BackgroundServer:
    """The operator's HTTP server on its own event loop, in a thread (the command is sync)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: httpserver.HttpServer | None = None

    def __enter__(self) -> httpserver.HttpServer:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            httpserver.serve(0, view, host="127.0.0.1"), self.loop
        ).result(timeout=30)
        assert started is not None
        self.server = started
        return started

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


class Proxied:
    def __init__(self, cluster: devcluster.Cluster, network: PodNetwork, port: int) -> None:
        self.cluster = cluster
        self.network = network
        self.port = port  # the container port named http, as the Deployment declares it
        self.kube = Kube(cluster, SYSTEM_NAMESPACE)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    directory = tmp_path_factory.mktemp("proxy-cluster")
    with PodNetwork() as network:
        egress = directory / "egress.yaml"
        egress.write_text(network.egress_config())
        cluster = devcluster.Cluster(
            devcluster.find_binaries(),
            apiserver_args=(f"--egress-selector-config-file={egress}",),
            # The endpoints controller fills the Service's Endpoints from the pod.
            controllers=("endpoints-controller", "serviceaccount-controller"),
        )
        with cluster:
            # The base as a user installs it: namespace, RBAC, Deployment, Service.
            cluster.kubectl("apply", "-k", str(MANIFESTS))
            rendered = [
                d
                for d in yaml.safe_load_all(cluster.kubectl("kustomize", str(MANIFESTS)).stdout)
                if d
            ]
            [deployment] = [d for d in rendered if d["kind"] == "Deployment"]
            template = deployment["spec"]["template"]
            [container] = template["spec"]["containers"]
            port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
            # No scheduler, no kubelet, no Deployment controller: the operator's pod
            # is made from the Deployment's template and reported running at a
            # pod IP, as a kubelet would.
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "agenttest-operator-0", **template["metadata"]},
                "spec": {**template["spec"], "nodeName": "node-a"},
            }
            cluster.kubectl("apply", "-n", SYSTEM_NAMESPACE, "-f", "-", input_text=json.dumps(pod))
            status = {
                "status": {
                    "phase": "Running",
                    "podIP": POD_IP,
                    "podIPs": [{"ip": POD_IP}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            }
            cluster.kubectl(
                "patch", "pod", "agenttest-operator-0", "-n", SYSTEM_NAMESPACE,
                "--subresource=status", "--type=merge", "-p", json.dumps(status),
            )  # fmt: skip
            proxied = Proxied(cluster, network, port)

            def endpoint_ready() -> bool:
                endpoints = json.loads(
                    cluster.kubectl(
                        "get", "endpoints", "agenttest-operator", "-n", SYSTEM_NAMESPACE,
                        "-o", "json", check=False,
                    ).stdout or "{}"
                )  # fmt: skip
                return any(
                    address.get("ip") == POD_IP
                    and {"name": "http", "port": port, "protocol": "TCP"} in subset["ports"]
                    for subset in endpoints.get("subsets") or []
                    for address in subset.get("addresses") or []
                )

            proxied.kube.wait_for(
                "the Service's Endpoints to name the operator pod", endpoint_ready
            )

            # Two users: one bound to the viewer role in the operator's namespace
            # (as the role's comment says to), one bound to nothing.
            cluster.kubectl("create", "namespace", USERS_NAMESPACE)
            for account in (VIEWER, STRANGER):
                cluster.kubectl("create", "serviceaccount", account, "-n", USERS_NAMESPACE)
            cluster.kubectl(
                "create", "rolebinding", "viewer-queue", "-n", SYSTEM_NAMESPACE,
                "--clusterrole=agenttest-queue-viewer",
                f"--serviceaccount={USERS_NAMESPACE}:{VIEWER}",
            )  # fmt: skip
            yield proxied


def kubeconfig_for(proxied: Proxied, account: str, directory: Path) -> Path:
    return service_account_kubeconfig(
        proxied.cluster,
        directory / f"{account}.kubeconfig",
        USERS_NAMESPACE,
        account=account,
        account_namespace=USERS_NAMESPACE,
    )


def agenttest_queue(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed command, as a user runs it, with only that user's kubeconfig."""
    environment = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    environment.pop("AGENTTEST_QUEUE_URL", None)
    return subprocess.run(
        [str(VENV_BIN / "agenttest"), "queue", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def test_a_viewer_reads_the_queue_through_the_api_server(proxied: Proxied, tmp_path: Path) -> None:
    kubeconfig = kubeconfig_for(proxied, VIEWER, tmp_path)
    with BackgroundServer() as server:
        proxied.network.route(POD_IP, proxied.port, ("127.0.0.1", server.port))
        try:
            # The context's namespace (team-a) by default, like kubectl.
            result = agenttest_queue(kubeconfig)
            assert result.returncode == 0, result.stderr
            lines = result.stdout.splitlines()
            assert lines[0].split() == list(queueview.COLUMNS)
            assert [line.split()[:3] for line in lines[1:]] == [
                ["1", USERS_NAMESPACE, "first"],
                ["3", USERS_NAMESPACE, "third"],
            ]
            assert lines[2].endswith("no free slot (10/10 running)")

            everything = agenttest_queue(kubeconfig, "-A", "-o", "json")
            assert everything.returncode == 0, everything.stderr
            document = json.loads(everything.stdout)
            assert document["queued"] == view()["queued"]
            assert (document["running"], document["limit"]) == (10, 10)

            # The same through kubectl, which runs kubectl-agenttest from PATH.
            plugin = subprocess.run(
                [str(proxied.cluster.binaries.kubectl), "agenttest", "queue", "-n", "team-b"],
                capture_output=True,
                text=True,
                env={
                    **os.environ,
                    "KUBECONFIG": str(kubeconfig),
                    "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                },
                timeout=60,
                check=False,
            )
            assert plugin.returncode == 0, plugin.stderr
            assert [line.split()[:3] for line in plugin.stdout.splitlines()[1:]] == [
                ["2", "team-b", "second"]
            ]
        finally:
            proxied.network.unroute(POD_IP, proxied.port)
    # The requests really went to the pod's IP and port, through the pod network.
    assert f"{POD_IP}:{proxied.port}" in proxied.network.connects


def test_without_the_role_the_api_server_refuses_and_the_command_says_what_to_grant(
    proxied: Proxied, tmp_path: Path
) -> None:
    kubeconfig = kubeconfig_for(proxied, STRANGER, tmp_path)
    before = len(proxied.network.connects)
    result = agenttest_queue(kubeconfig, "-A")
    assert result.returncode == 2
    assert "403" in result.stderr, result.stderr
    assert "services/proxy" in result.stderr and "agenttest-queue-viewer" in result.stderr
    assert len(proxied.network.connects) == before  # refused before any dial


def test_without_the_service_the_command_says_to_install_the_operator(proxied: Proxied) -> None:
    # A user who may proxy anywhere (the admin), pointed at a namespace without it.
    result = agenttest_queue(proxied.cluster.kubeconfig, "-A", "--operator-namespace", "default")
    assert result.returncode == 2
    assert 'services "agenttest-operator" not found' in result.stderr, result.stderr
    assert "is the operator installed" in result.stderr


def test_with_the_operator_down_the_command_says_so(proxied: Proxied, tmp_path: Path) -> None:
    # The Service and its Endpoints are there, nothing answers at the pod.
    kubeconfig = kubeconfig_for(proxied, VIEWER, tmp_path)
    result = agenttest_queue(kubeconfig, "-A")
    assert result.returncode == 2
    assert "did not answer" in result.stderr and "Is it running" in result.stderr, result.stderr
    assert result.stdout == ""


def test_the_viewer_may_proxy_to_nothing_else(proxied: Proxied) -> None:
    user = f"--as=system:serviceaccount:{USERS_NAMESPACE}:{VIEWER}"

    def may(*args: str) -> str:
        result = proxied.cluster.kubectl("auth", "can-i", user, *args, check=False)
        return result.stdout.strip()

    proxy = ("--subresource=proxy", "-n", SYSTEM_NAMESPACE)
    assert may("get", "services/agenttest-operator:http", *proxy) == "yes"
    assert may("create", "services/agenttest-operator:http", *proxy) == "no"
    assert may("get", "services/agenttest-operator", *proxy) == "no"
    assert may("get", "services/kubernetes:https", "--subresource=proxy", "-n", "default") == "no"
    assert may("get", "services", "-n", SYSTEM_NAMESPACE) == "no"
    assert (
        may("get", "pods/agenttest-operator-0", "--subresource=proxy", "-n", SYSTEM_NAMESPACE)
        == "no"
    )


def test_the_api_server_keeps_loopback_out_of_endpoints(proxied: Proxied) -> None:
    # Why the pod network stand-in: the direct way, a selector-less Service whose
    # Endpoints name the loopback server, is refused by validation, 127.0.0.2 too.
    for address in ("127.0.0.1", "127.0.0.2"):
        endpoints = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "loopback", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": address}], "ports": [{"name": "http", "port": 80}]}],
        }
        refused = proxied.cluster.kubectl(
            "create", "-f", "-", input_text=json.dumps(endpoints), check=False
        )
        assert refused.returncode != 0
        assert "may not be in the loopback range" in refused.stderr, refused.stderr
