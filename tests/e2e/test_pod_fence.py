"""Runner pods are fenced in where they run: on the real API server, with the stand-in kubelet.

* The operator creates the execution's NetworkPolicy in the test's namespace
  before the pod, and its rules are the ones named in backends/egress.py:
  deny by default, DNS, and the model endpoint only.
* An operator that may not create that policy refuses the launch: the test
  ends Error saying why, and no pod ever exists.
* A pod that fills its own disk is evicted by the kubelet (the stand-in one
  measures its emptyDirs against their sizeLimit, as a kubelet's eviction
  manager does) and the test ends Failed saying so, not retried.

No CNI enforces the policy here (there is no pod network); what is proved is
what the API server holds, which is what any enforcing CNI acts on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from kubernetes import client, config, watch

from agenttest.backends import egress
from agenttest_dev import devcluster
from agenttest_dev.modelserver import ScriptedModelServer
from agenttest_dev.node import FakeKubelet

from support import (
    SIMPLE_AGENT,
    SYSTEM_NAMESPACE,
    Kube,
    Operator,
    on_pod,
    service_account_kubeconfig,
)

StartOperator = Callable[..., Operator]

DISK_FILLER = """
import os, time
from strands import Agent

# 24 MiB into the agent's working directory (the pod's "work" emptyDir).
with open("fill", "wb") as out:
    for _ in range(24):
        out.write(os.urandom(1 << 20))
        out.flush()
print("disk filled", flush=True)
time.sleep(300)

def agent(model):
    return Agent(model=model)
"""


def labelled(kube: Kube, kind: str, test: str) -> list[dict[str, Any]]:
    return [
        item
        for item in kube.get_all(kind)
        if item["metadata"].get("labels", {}).get("agenttest.dev/test") == test
    ]


class FirstPod:
    """Watches the namespace's pods from now on; at the first one, looks up the policies.

    The watch starts at the list's resourceVersion, so the ADDED event carries
    the pod as created: its resourceVersion is the revision of its creation.
    """

    def __init__(self, cluster: devcluster.Cluster, namespace: str) -> None:
        api_client = config.new_client_from_config(str(cluster.kubeconfig))
        self.core = client.CoreV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.namespace = namespace
        self.pod: Any = None
        self.policies_then: list[Any] = []
        self.seen = threading.Event()
        self._watch = watch.Watch()
        start = self.core.list_namespaced_pod(namespace).metadata.resource_version
        self._thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self._thread.start()

    def _run(self, start: str) -> None:
        for event in self._watch.stream(
            self.core.list_namespaced_pod,
            self.namespace,
            resource_version=start,
            timeout_seconds=120,
        ):
            if event["type"] == "ADDED":
                self.pod = event["object"]
                items = self.networking.list_namespaced_network_policy(self.namespace).items
                self.policies_then = list(items)
                self.seen.set()
                self._watch.stop()
                return

    def wait(self) -> None:
        assert self.seen.wait(90), "no pod was created"


def test_the_policy_fences_the_runner_in_before_the_pod_exists(
    cluster: devcluster.Cluster,
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
) -> None:
    kube = restricted
    first = FirstPod(cluster, kube.namespace)
    start_operator()
    kube.apply(on_pod("fenced", SIMPLE_AGENT, model_server.url))
    status = kube.wait_for_phase("fenced", "Succeeded", "Failed", "Error", "TimedOut")["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    first.wait()

    [pod] = labelled(kube, "pods", "fenced")
    [policy] = labelled(kube, "networkpolicies", "fenced")
    name = pod["metadata"]["name"]
    assert policy["metadata"]["name"] == name
    # It existed when the pod was first seen, and was written to etcd before it
    # (this control plane's resourceVersions are etcd revisions, one counter).
    assert [p.metadata.name for p in first.policies_then] == [name]
    assert int(policy["metadata"]["resourceVersion"]) < int(first.pod.metadata.resource_version)

    # Owned by the test (gone with it, and with the namespace), selecting its pod.
    [owner] = policy["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("AgentTest", "fenced")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert selector["agenttest.dev/role"] == "runner"
    # The rules: nothing in; out only DNS and the model (an IP: exactly it).
    model = urlsplit(model_server.url)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"]
    assert policy["spec"]["egress"] == [
        {"to": [egress.DNS_PEER], "ports": egress.DNS_PORTS},
        {
            "to": [{"ipBlock": {"cidr": f"{model.hostname}/32"}}],
            "ports": [{"protocol": "TCP", "port": model.port}],
        },
    ]

    # And the storage fence on the pod itself.
    [container] = pod["spec"]["containers"]
    assert container["resources"]["limits"]["ephemeral-storage"] == "2Gi"
    assert all(
        volume["emptyDir"].get("sizeLimit")
        for volume in pod["spec"]["volumes"]
        if "emptyDir" in volume
    )

    kube.run("delete", "agenttest", "fenced", "--timeout=60s")
    kube.wait_for(
        "the policy to go with the test", lambda: not labelled(kube, "networkpolicies", "fenced")
    )


def unfenced_operator_account(cluster: devcluster.Cluster) -> str:
    """A ServiceAccount with the operator's RBAC minus NetworkPolicies."""
    account = "operator-without-networkpolicies"
    role = yaml.safe_load(
        cluster.kubectl("get", "clusterrole", "agenttest-operator", "-o", "yaml").stdout
    )
    rules = [r for r in role["rules"] if "networkpolicies" not in r["resources"]]
    documents = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": SYSTEM_NAMESPACE},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": account},
            "rules": rules,
        },
    ]
    for kind, role_kind, role_name, namespace in (
        ("ClusterRoleBinding", "ClusterRole", account, None),
        ("ClusterRoleBinding", "ClusterRole", "agenttest-operator-cluster", None),
        ("RoleBinding", "Role", "agenttest-operator", SYSTEM_NAMESPACE),
    ):
        metadata: dict[str, Any] = {"name": f"{account}-{role_name}"}
        if namespace:
            metadata["namespace"] = namespace
        documents.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": kind,
                "metadata": metadata,
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": role_kind,
                    "name": role_name,
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": account, "namespace": SYSTEM_NAMESPACE}
                ],
            }
        )
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(documents))
    return account


def test_an_operator_that_cannot_fence_the_runner_in_launches_nothing(
    cluster: devcluster.Cluster,
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    kube = restricted
    account = unfenced_operator_account(cluster)
    kubeconfig = service_account_kubeconfig(
        cluster, tmp_path / "unfenced.kubeconfig", kube.namespace, account=account
    )
    start_operator(kubeconfig=kubeconfig, operator_namespace=SYSTEM_NAMESPACE)
    kube.apply(on_pod("unfenced", SIMPLE_AGENT, model_server.url))
    status = kube.wait_for_phase("unfenced", "Succeeded", "Failed", "Error", "TimedOut")["status"]
    assert status["phase"] == "Error"
    assert "cannot fence the runner in" in status["message"]
    assert "networkpolicies" in status["message"], status["message"]
    assert not labelled(kube, "pods", "unfenced")
    assert kubelet.pods() == []


def test_a_pod_that_fills_its_own_disk_is_evicted_and_the_test_fails(
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
) -> None:
    kube = restricted
    start_operator(pod_ephemeral_storage="8Mi", infra_backoff_seconds=0.5)
    kube.apply(on_pod("filler", DISK_FILLER, model_server.url))
    test = kube.wait_for_phase("filler", "Succeeded", "Failed", "Error", "TimedOut")
    status = test["status"]
    assert status["phase"] == "Failed", status.get("message")
    assert 'evicted: Usage of EmptyDir volume "work" exceeds the limit "8Mi".' in status["message"]
    assert not status.get("infraRetries"), "its own disk use is not the infrastructure's"
    [(namespace, name)] = kubelet.pods()
    assert kubelet.kill_reason(namespace, name) == "Evicted"
    assert kube.events(name, "Evicted")
