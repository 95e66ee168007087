"""The kustomize base in manifests/, on the real API server.

It renders and applies; its Deployment passes the restricted Pod Security
profile; and its RBAC is enough for the operator — run with nothing but the
ServiceAccount's token, it drives AgentTests to the end without one refusal —
and no more than that. The namespaced install (the manifests/namespaced
component) is enough in the namespaces it names and gives nothing elsewhere.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agenttest_dev import devcluster
from agenttest_dev.modelserver import ScriptedModelServer

from support import (
    MANIFESTS,
    SERVICE_ACCOUNT,
    SIMPLE_AGENT,
    SYSTEM_NAMESPACE,
    Kube,
    Operator,
    agent_test,
    kustomize_with_component,
    service_account_kubeconfig,
)

StartOperator = Callable[..., Operator]

AS_OPERATOR = f"--as=system:serviceaccount:{SYSTEM_NAMESPACE}:{SERVICE_ACCOUNT}"


def render(cluster: devcluster.Cluster) -> list[dict[str, Any]]:
    text = cluster.kubectl("kustomize", str(MANIFESTS)).stdout
    return [document for document in yaml.safe_load_all(text) if document]


def find(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in documents if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def installed(cluster: devcluster.Cluster) -> list[dict[str, Any]]:
    """The base applied for real (the test cluster is throwaway); its rendered objects."""
    cluster.kubectl("apply", "-k", str(MANIFESTS))
    return render(cluster)


# --------------------------------------------------------------------------
# The base renders and applies
# --------------------------------------------------------------------------


def test_base_renders_the_operator_and_its_guard_rails(cluster: devcluster.Cluster) -> None:
    documents = render(cluster)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in documents) == [
        ("ClusterRole", "agenttest-model-credentials"),
        ("ClusterRole", "agenttest-operator"),
        ("ClusterRole", "agenttest-operator-cluster"),
        ("ClusterRole", "agenttest-queue-viewer"),
        ("ClusterRole", "agenttest-tester"),
        ("ClusterRoleBinding", "agenttest-operator"),
        ("ClusterRoleBinding", "agenttest-operator-cluster"),
        ("Deployment", "agenttest-operator"),
        ("Namespace", SYSTEM_NAMESPACE),
        ("NetworkPolicy", "agenttest-runner"),
        ("Role", "agenttest-operator"),
        ("RoleBinding", "agenttest-operator"),
        ("Service", "agenttest-operator"),
        ("ServiceAccount", SERVICE_ACCOUNT),
    ]
    for document in documents:
        if document["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert document["metadata"]["namespace"] == SYSTEM_NAMESPACE, document["kind"]

    deployment = find(documents, "Deployment")
    # Two replicas, one active through the Lease; replaced one at a time, so
    # one is always there to hold it.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["AGENTTEST_ENABLE_LOCAL_BACKEND"] == "false"
    assert env["AGENTTEST_LEADER_ELECTION"] == "true"
    assert env["AGENTTEST_LEADER_LEASE"] == "agenttest-operator"
    # The settings the operator checks at start: renew at most half the duration.
    assert 2 * float(env["AGENTTEST_LEASE_RENEW_SECONDS"]) <= int(
        env["AGENTTEST_LEASE_DURATION_SECONDS"]
    )
    [pod_name] = [item for item in container["env"] if item["name"] == "POD_NAME"]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {
        "http": int(env["AGENTTEST_METRICS_PORT"]),
        "health": int(env["AGENTTEST_HEALTH_PORT"]),
    }
    for probe in (container["livenessProbe"], container["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]

    service = find(documents, "Service")
    assert service["spec"]["selector"].items() <= pod_labels(deployment).items()
    # One named port, /metrics and /queue: the queue viewer's role names it.
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", "http")]
    viewer = find(documents, "ClusterRole", "agenttest-queue-viewer")["rules"]
    assert viewer == [
        {
            "apiGroups": [""],
            "resources": ["services/proxy"],
            "resourceNames": [f"{service['metadata']['name']}:http"],
            "verbs": ["get"],
        }
    ]

    for name in ("agenttest-operator", "agenttest-operator-cluster"):
        binding = find(documents, "ClusterRoleBinding", name)
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": SYSTEM_NAMESPACE}
        ]

    # The namespace-wide backstop: runner pods denied everything that the
    # operator's per-execution policies do not allow.
    policy = find(documents, "NetworkPolicy")["spec"]
    assert policy == {
        "podSelector": {"matchLabels": {"agenttest.dev/role": "runner"}},
        "policyTypes": ["Ingress", "Egress"],
    }


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def test_cluster_role_has_no_wildcards_secrets_or_escalation(cluster: devcluster.Cluster) -> None:
    documents = render(cluster)
    rules = [
        rule
        for name in ("agenttest-operator", "agenttest-operator-cluster")
        for rule in find(documents, "ClusterRole", name)["rules"]
    ]
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
        if "secrets" in rule["resources"]:
            # Runner pods' key Secrets: made and removed, never read back anywhere.
            assert rule["resources"] == ["secrets"] and rule["verbs"] == ["create", "delete"]
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        if "update" in rule["verbs"]:
            assert rule["resources"] == ["agenttests/finalizers"], "patch, never update"


def test_base_applies_cleanly_to_the_api_server(
    cluster: devcluster.Cluster, installed: list[dict[str, Any]]
) -> None:
    # Server-side dry run of the whole base over what is installed: the API
    # server validates every field (strict) and admission runs; no warnings
    # (Pod Security, deprecated APIs, unknown fields) may come back.
    result = cluster.kubectl("apply", "--dry-run=server", "-k", str(MANIFESTS))
    assert "Warning" not in result.stderr, result.stderr
    for document in installed:
        scope = (
            ["-n", document["metadata"]["namespace"]] if "namespace" in document["metadata"] else []
        )
        cluster.kubectl("get", *scope, document["kind"].lower(), document["metadata"]["name"])


def test_operator_pod_is_admitted_under_restricted_pod_security(
    cluster: devcluster.Cluster, installed: list[dict[str, Any]]
) -> None:
    template = find(installed, "Deployment")["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator-pod-check", **template["metadata"]},
        "spec": template["spec"],
    }
    # agenttest-system enforces `restricted`: the operator's pod is admitted ...
    dry_run = ("apply", "--dry-run=server", "-n", SYSTEM_NAMESPACE, "-f", "-")
    cluster.kubectl(*dry_run, input_text=json.dumps(pod))
    # ... and the enforcement is real: the same pod without its security
    # settings is refused.
    bare = json.loads(json.dumps(pod))
    bare["spec"].pop("securityContext")
    bare["spec"]["containers"][0].pop("securityContext")
    refused = cluster.kubectl(*dry_run, input_text=json.dumps(bare), check=False)
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr, refused.stderr


def test_sample_namespace_takes_the_runner_network_policy(
    cluster: devcluster.Cluster, installed: list[dict[str, Any]]
) -> None:
    # The way networkpolicy.yaml and samples/namespace.yaml say to use them.
    cluster.kubectl("apply", "-f", str(MANIFESTS / "samples" / "namespace.yaml"))
    namespace = json.loads(cluster.kubectl("get", "namespace", "agenttests", "-o", "json").stdout)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    cluster.kubectl("apply", "-n", "agenttests", "-f", str(MANIFESTS / "networkpolicy.yaml"))
    cluster.kubectl("get", "-n", "agenttests", "networkpolicy", "agenttest-runner")


# --------------------------------------------------------------------------
# The RBAC is enough: the operator runs as its ServiceAccount
# --------------------------------------------------------------------------


def kubectl_with(
    kubeconfig: Path, cluster: devcluster.Cluster, *args: str
) -> subprocess.CompletedProcess[str]:
    """kubectl with another kubeconfig (cluster.kubectl always uses the admin's)."""
    return subprocess.run(
        [str(cluster.binaries.kubectl), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def event_reasons(kube: Kube, name: str) -> set[str]:
    return {event["reason"] for event in kube.events(name)}


def test_operator_runs_with_only_its_service_account(
    cluster: devcluster.Cluster,
    installed: list[dict[str, Any]],
    kube: Kube,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    kubeconfig = service_account_kubeconfig(
        cluster, tmp_path / "operator.kubeconfig", kube.namespace
    )
    # The token really is the ServiceAccount's, and it is refused what RBAC withholds.
    whoami = kubectl_with(kubeconfig, cluster, "auth", "whoami", "-o", "json")
    username = json.loads(whoami.stdout)["status"]["userInfo"]["username"]
    assert username == f"system:serviceaccount:{SYSTEM_NAMESPACE}:{SERVICE_ACCOUNT}"
    denied = kubectl_with(kubeconfig, cluster, "get", "secrets", "-n", kube.namespace)
    assert denied.returncode != 0 and "forbidden" in denied.stderr, denied.stderr

    operator = start_operator(kubeconfig=kubeconfig, operator_namespace=SYSTEM_NAMESPACE)

    # An inline agent: watch, finalizer and annotation patches, status
    # patches and Events, all the way to Succeeded.
    kube.apply(agent_test("inline", SIMPLE_AGENT, model_server.url))
    # agent.py from a ConfigMap (get configmaps), deleted as soon as it is
    # done (ttlSecondsAfterFinished: 0 — delete agenttests, then the
    # finalizer's removal).
    kube.run("create", "configmap", "agent-source", f"--from-literal=agent.py={SIMPLE_AGENT}")
    from_config_map = agent_test(
        "from-config-map", SIMPLE_AGENT, model_server.url, ttlSecondsAfterFinished=0
    )
    from_config_map["spec"]["agent"]["source"] = {"configMapRef": {"name": "agent-source"}}
    kube.apply(from_config_map)

    test = kube.wait_for_phase("inline", "Succeeded", "Failed", "Error", "TimedOut")
    assert test["status"]["phase"] == "Succeeded", test["status"].get("message")
    assert {"Queued", "Succeeded"} <= event_reasons(kube, "inline")

    def deleted() -> bool:
        result = kube.run("get", "agenttest", "from-config-map", check=False)
        return result.returncode != 0 and "NotFound" in result.stderr

    kube.wait_for("from-config-map to be deleted after its TTL", deleted, timeout=90)
    reasons = event_reasons(kube, "from-config-map")
    assert "Succeeded" in reasons and "Error" not in reasons, reasons

    log = operator.log()
    assert "forbidden" not in log.lower(), log
    assert "Not enough permissions" not in log, log
    assert "Failed to post an event" not in log, log


# --------------------------------------------------------------------------
# ... and no more than enough
# --------------------------------------------------------------------------

# (verb, resource, subresource), asked in an ordinary namespace.
ALLOWED = [
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("list", "namespaces", None),
    ("watch", "namespaces", None),
    ("list", "agenttests.agenttest.dev", None),
    ("watch", "agenttests.agenttest.dev", None),
    # The sweeper gets the test an execution was launched for.
    ("get", "agenttests.agenttest.dev", None),
    ("patch", "agenttests.agenttest.dev", None),
    ("delete", "agenttests.agenttest.dev", None),
    ("patch", "agenttests.agenttest.dev", "status"),
    ("create", "deploymentpackages.agenttest.dev", None),
    ("get", "deploymentpackages.agenttest.dev", None),
    ("patch", "deploymentpackages.agenttest.dev", "status"),
    ("create", "events", None),
    ("get", "configmaps", None),
    ("get", "pods", None),
    ("create", "pods", None),
    ("delete", "pods", None),
    ("get", "pods", "log"),
    ("create", "secrets", None),
    ("delete", "secrets", None),
    ("create", "networkpolicies.networking.k8s.io", None),
    ("delete", "networkpolicies.networking.k8s.io", None),
]

DENIED = [
    ("get", "secrets", None),
    ("list", "secrets", None),
    ("watch", "secrets", None),
    ("update", "secrets", None),
    ("get", "namespaces", None),
    ("create", "namespaces", None),
    ("delete", "namespaces", None),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ("create", "rolebindings.rbac.authorization.k8s.io", None),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
    ("bind", "clusterroles.rbac.authorization.k8s.io", None),
    ("impersonate", "users", None),
    ("impersonate", "serviceaccounts", None),
    ("create", "serviceaccounts", "token"),
    ("get", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("create", "agenttests.agenttest.dev", None),
    ("update", "agenttests.agenttest.dev", None),
    ("delete", "deploymentpackages.agenttest.dev", None),
    # The operator reads what it made by name: no list or watch beyond AgentTests.
    ("list", "deploymentpackages.agenttest.dev", None),
    ("watch", "deploymentpackages.agenttest.dev", None),
    ("patch", "deploymentpackages.agenttest.dev", None),
    ("update", "deploymentpackages.agenttest.dev", None),
    ("list", "pods", None),
    ("watch", "pods", None),
    ("list", "configmaps", None),
    ("watch", "configmaps", None),
    ("create", "configmaps", None),
    ("delete", "configmaps", None),
    ("get", "networkpolicies.networking.k8s.io", None),
    ("list", "networkpolicies.networking.k8s.io", None),
    ("patch", "networkpolicies.networking.k8s.io", None),
    ("deletecollection", "agenttests.agenttest.dev", None),
    ("patch", "events", None),
    ("delete", "events", None),
    ("update", "configmaps", None),
    ("patch", "pods", None),
    ("create", "pods", "exec"),
    ("get", "pods", "exec"),
    ("create", "pods", "attach"),
    ("create", "pods", "portforward"),
    ("create", "deployments.apps", None),
    ("get", "nodes", None),
    ("patch", "nodes", None),
    # Leases only in the operator's own namespace (the Role), never here.
    ("get", "leases.coordination.k8s.io", None),
    ("create", "leases.coordination.k8s.io", None),
    ("update", "leases.coordination.k8s.io", None),
]


def can_i(cluster: devcluster.Cluster, verb: str, resource: str, subresource: str | None) -> str:
    extra = [f"--subresource={subresource}"] if subresource else []
    result = cluster.kubectl(
        "auth", "can-i", AS_OPERATOR, "-n", "default", verb, resource, *extra, check=False
    )
    return result.stdout.strip()


def label(check: tuple[str, str, str | None]) -> str:
    verb, resource, subresource = check
    return f"{verb} {resource}{'/' + subresource if subresource else ''}"


@pytest.mark.parametrize("check", ALLOWED, ids=label)
def test_service_account_may(
    cluster: devcluster.Cluster, installed: list[dict[str, Any]], check: tuple[str, str, str | None]
) -> None:
    assert can_i(cluster, *check) == "yes"


@pytest.mark.parametrize("check", DENIED, ids=label)
def test_service_account_may_not(
    cluster: devcluster.Cluster, installed: list[dict[str, Any]], check: tuple[str, str, str | None]
) -> None:
    assert can_i(cluster, *check) == "no"


def test_only_the_signing_secret_is_readable_and_only_in_the_operators_namespace(
    cluster: devcluster.Cluster, installed: list[dict[str, Any]]
) -> None:
    def may(*args: str) -> str:
        result = cluster.kubectl("auth", "can-i", AS_OPERATOR, *args, check=False)
        return result.stdout.strip()

    assert may("-n", SYSTEM_NAMESPACE, "get", "secrets/agenttest-signing-key") == "yes"
    assert may("-n", SYSTEM_NAMESPACE, "create", "secrets") == "yes"
    assert may("-n", SYSTEM_NAMESPACE, "get", "secrets/another") == "no"
    assert may("-n", SYSTEM_NAMESPACE, "list", "secrets") == "no"
    assert may("-n", "default", "get", "secrets/agenttest-signing-key") == "no"


def test_only_the_operators_lease_is_writable_and_only_in_its_namespace(
    cluster: devcluster.Cluster, installed: list[dict[str, Any]]
) -> None:
    def may(*args: str) -> str:
        result = cluster.kubectl("auth", "can-i", AS_OPERATOR, *args, check=False)
        return result.stdout.strip()

    lease = "leases.coordination.k8s.io/agenttest-operator"
    leases = "leases.coordination.k8s.io"
    for verb in ("get", "update"):
        assert may("-n", SYSTEM_NAMESPACE, verb, lease) == "yes", verb
        assert may("-n", SYSTEM_NAMESPACE, verb, f"{leases}/another") == "no", verb
        assert may("-n", "default", verb, lease) == "no", verb
    assert may("-n", SYSTEM_NAMESPACE, "create", leases) == "yes"
    assert may("-n", "default", "create", leases) == "no"
    for verb in ("list", "watch", "patch", "delete"):
        assert may("-n", SYSTEM_NAMESPACE, verb, lease) == "no", verb


# --------------------------------------------------------------------------
# The namespaced install
# --------------------------------------------------------------------------


def namespaced_install(cluster: devcluster.Cluster, directory: Path) -> list[dict[str, Any]]:
    """The base with the namespaced component."""
    return kustomize_with_component(cluster, directory, "namespaced")


def test_namespaced_install_binds_the_operator_only_where_it_watches(
    cluster: devcluster.Cluster, tmp_path: Path
) -> None:
    documents = namespaced_install(cluster, tmp_path / "install")
    bindings = [d for d in documents if d["kind"] == "ClusterRoleBinding"]
    assert [b["roleRef"]["name"] for b in bindings] == ["agenttest-operator-cluster"]
    [binding] = [
        d for d in documents if d["kind"] == "RoleBinding" and d["roleRef"]["kind"] == "ClusterRole"
    ]
    assert binding["roleRef"]["name"] == "agenttest-operator"
    container = find(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["AGENTTEST_NAMESPACES"] == binding["metadata"]["namespace"] == "agenttests"
    cluster_rules = find(documents, "ClusterRole", "agenttest-operator-cluster")["rules"]
    assert {r for rule in cluster_rules for r in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
    }


def test_an_operator_installed_namespaced_runs_tests_there_and_can_do_nothing_elsewhere(
    cluster: devcluster.Cluster,
    kube: Kube,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    # The namespaced install's RBAC, for a ServiceAccount of its own (this
    # cluster's operator account is bound cluster-wide) and this test's namespace.
    account = f"ns-{kube.namespace}"
    documents = [
        d
        for d in namespaced_install(cluster, tmp_path / "install")
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
    ]
    for document in documents:
        document["metadata"]["name"] = account
        document["subjects"][0]["name"] = account
        if document["kind"] == "RoleBinding" and document["roleRef"]["kind"] == "ClusterRole":
            document["metadata"]["namespace"] = kube.namespace
    cluster.kubectl("create", "serviceaccount", account, "-n", SYSTEM_NAMESPACE)
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(documents))

    kubeconfig = service_account_kubeconfig(
        cluster, tmp_path / "ns.kubeconfig", kube.namespace, account=account
    )
    operator = start_operator(kubeconfig=kubeconfig, operator_namespace=SYSTEM_NAMESPACE)
    kube.apply(agent_test("confined", SIMPLE_AGENT, model_server.url))
    status = kube.wait_for_phase("confined", "Succeeded", "Failed", "Error", "TimedOut")["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert "forbidden" not in operator.log().lower()

    user = f"--as=system:serviceaccount:{SYSTEM_NAMESPACE}:{account}"

    def may(namespace: str, verb: str, resource: str) -> str:
        result = cluster.kubectl(
            "auth", "can-i", user, "-n", namespace, verb, resource, check=False
        )
        return result.stdout.strip()

    for verb, resource in (
        ("create", "pods"),
        ("patch", "agenttests.agenttest.dev"),
        ("create", "networkpolicies.networking.k8s.io"),
    ):
        assert may(kube.namespace, verb, resource) == "yes", (verb, resource)
        assert may("default", verb, resource) == "no", (verb, resource)
    assert may("default", "list", "customresourcedefinitions.apiextensions.k8s.io") == "yes"
