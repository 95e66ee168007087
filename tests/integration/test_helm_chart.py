"""The Helm chart in manifests/helm, against the kustomize base and the real API server.

The chart is a second way to install the same operator, so the test holds it
to the base: `helm lint` passes; what `helm template` renders (both RBAC
scopes, defaults and overrides) is accepted by a server-side dry run; and
object for object it is what `kubectl kustomize` renders of manifests/ (and of
manifests/namespaced), once the differences the chart means to have are
normalized away, each below with the reason. Values the user sets land where
the operator reads them (settings.Settings.from_env on the container's env);
values it cannot honour are refused by name.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agenttest.models import Backend
from agenttest.settings import Settings
from agenttest_dev import devcluster

from support import MANIFESTS, SERVICE_ACCOUNT, SYSTEM_NAMESPACE

CHART = MANIFESTS / "helm" / "agenttest-operator"
RELEASE = "agenttest"
WATCHED = "agenttests"  # the namespaced component's namespace (manifests/namespaced)
NAMESPACED = ("--set", "rbac.scope=namespaced", "--set", f"rbac.namespaces={{{WATCHED}}}")

Objects = dict[tuple[str, str, str], dict[str, Any]]


@pytest.fixture(scope="module")
def helm() -> Path:
    return devcluster.find_helm()


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # No kubeconfig or repository of the machine's user: render-only commands.
    environment = {**os.environ, "KUBECONFIG": os.devnull, "HELM_CACHE_HOME": os.devnull}
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=60, env=environment
    )


def template(helm: Path, *args: str) -> str:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", SYSTEM_NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


def by_key(rendered: list[dict[str, Any]]) -> Objects:
    keyed = {
        (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in rendered
    }
    assert len(keyed) == len(rendered), "two objects of one kind, namespace and name"
    return keyed


def kustomize_base(cluster: devcluster.Cluster) -> list[dict[str, Any]]:
    return documents(cluster.kubectl("kustomize", str(MANIFESTS)).stdout)


def kustomize_namespaced(cluster: devcluster.Cluster, directory: Path) -> list[dict[str, Any]]:
    """The base with the namespaced component, from an overlay of the user's own (as documented)."""
    directory.mkdir()
    relative = Path(os.path.relpath(MANIFESTS, directory))
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [str(relative)],
        "components": [str(relative / "namespaced")],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    return documents(cluster.kubectl("kustomize", str(directory)).stdout)


def container(objects: Objects) -> dict[str, Any]:
    deployment = objects[("Deployment", SYSTEM_NAMESPACE, "agenttest-operator")]
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    return operator  # type: ignore[no-any-return]


def settings_of(env: list[dict[str, Any]]) -> Settings:
    """What the operator reads from this env: its settings, parsed as it parses them."""
    return Settings.from_env(
        {e["name"]: e["value"] for e in env if e["name"].startswith("AGENTTEST_")}
    )


# The labels each installer stamps on every object to say who manages it:
# kustomize's managed-by (manifests/kustomization.yaml), Helm's standard
# managed-by, instance, version and chart. Not a difference in what is
# installed; part-of (agenttest) and each object's name/component labels stay
# compared.
INSTALLER_LABELS = {
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "helm.sh/chart",
}


def normalized(document: dict[str, Any]) -> dict[str, Any]:
    """One object with the differences the chart intends taken out (each says why)."""
    document = copy.deepcopy(document)
    labels = document["metadata"].get("labels", {})
    for key in INSTALLER_LABELS:
        labels.pop(key, None)
    if document["kind"] == "Deployment":
        (operator,) = document["spec"]["template"]["spec"]["containers"]
        env = operator.pop("env")
        names = [item["name"] for item in env]
        assert len(names) == len(set(names)), f"a variable set twice: {names}"
        # The base spells out settings that equal settings.py's defaults (as
        # documentation); the chart sets only what it must and leaves the rest
        # to settings.py, so there is one list of defaults. What counts is what
        # the operator reads: the parsed settings. The other variables
        # (POD_NAME, HOME) are compared as they are; their order does not
        # matter (none refers to another with $(NAME)).
        operator["settings"] = settings_of(env)
        operator["otherEnv"] = sorted(
            (item for item in env if not item["name"].startswith("AGENTTEST_")),
            key=lambda item: str(item["name"]),
        )
    return document


def assert_same_objects(chart: Objects, base: Objects) -> None:
    # The chart does not make its release namespace: `helm install -n` needs it
    # to exist first (README: apply manifests/namespace.yaml, the base's).
    base = {key: value for key, value in base.items() if key[0] != "Namespace"}
    assert sorted(chart) == sorted(base)
    for key in base:
        ours, theirs = normalized(chart[key]), normalized(base[key])
        if "app.kubernetes.io/part-of" not in theirs["metadata"]["labels"]:
            # kustomize gives a base's labels to the base's own objects only, so
            # the namespaced component's RoleBindings come without part-of; the
            # chart labels every object alike.
            assert key[0] == "RoleBinding" and key[1] != SYSTEM_NAMESPACE, key
            ours["metadata"]["labels"].pop("app.kubernetes.io/part-of")
        assert ours == theirs, key


# --------------------------------------------------------------------------
# Lint, and the same objects as the kustomize base
# --------------------------------------------------------------------------


@pytest.mark.parametrize("values", [(), NAMESPACED], ids=["cluster", "namespaced"])
def test_helm_lint_passes(helm: Path, values: tuple[str, ...]) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_default_values_render_the_kustomize_base(helm: Path, cluster: devcluster.Cluster) -> None:
    chart = by_key(documents(template(helm)))
    base = by_key(kustomize_base(cluster))
    assert_same_objects(chart, base)
    # What the normalization lets through must still hold: the cluster-wide
    # binding of the namespaced rules, and leader election on.
    assert ("ClusterRoleBinding", "", "agenttest-operator") in chart
    assert settings_of(container(chart)["env"]).leader_election is True


def test_namespaced_scope_renders_the_namespaced_component(
    helm: Path, cluster: devcluster.Cluster, tmp_path: Path
) -> None:
    chart = by_key(documents(template(helm, *NAMESPACED)))
    base = by_key(kustomize_namespaced(cluster, tmp_path / "install"))
    assert_same_objects(chart, base)
    assert ("ClusterRoleBinding", "", "agenttest-operator") not in chart
    binding = chart[("RoleBinding", WATCHED, "agenttest-operator")]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "agenttest-operator",
    }
    assert settings_of(container(chart)["env"]).namespaces == (WATCHED,)


# --------------------------------------------------------------------------
# Overrides land where the operator reads them
# --------------------------------------------------------------------------

OVERRIDES = {
    "image": {"repository": "registry.example/agenttest/operator", "tag": "1.2.3"},
    "replicas": 3,
    "settings": {
        "max_running": 25,
        "default_backend": "pod",
        "poll_interval": 0.5,
        # Over a million: a values file holds it as a float, which must not
        # reach the operator as 1.048576e+08.
        "package_max_bytes": 104857600,
        "package_bucket": "packages-bucket",
        "fargate_subnets": ["subnet-a", "subnet-b"],
        "leader_lease": "agenttest-leader",
    },
    "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}],
    "rbac": {"scope": "namespaced", "namespaces": [WATCHED, "default"]},
    "serviceAccount": {
        "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/op"}
    },
    "metrics": {"port": 9090},
    "health": {"port": 9091},
    "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
    "runnerNetworkPolicy": {"enabled": False},
}


def overrides_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_overrides_reach_the_operator(helm: Path, tmp_path: Path) -> None:
    values = OVERRIDES
    chart = by_key(documents(template(helm, "-f", overrides_file(tmp_path, values))))
    deployment = chart[("Deployment", SYSTEM_NAMESPACE, "agenttest-operator")]
    assert deployment["spec"]["replicas"] == 3
    operator = container(chart)
    assert operator["image"] == "registry.example/agenttest/operator:1.2.3"
    assert operator["resources"] == values["resources"]

    settings = settings_of(operator["env"])
    assert settings.max_running == 25
    assert settings.default_backend is Backend.POD
    assert settings.poll_interval == 0.5
    assert settings.package_max_bytes == 104857600
    assert settings.package_bucket == "packages-bucket"
    assert settings.fargate_subnets == ("subnet-a", "subnet-b")
    assert settings.namespaces == (WATCHED, "default")
    assert settings.leader_election is True
    # Not set: settings.py's defaults.
    assert settings.log_tail_bytes == Settings().log_tail_bytes
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in operator["env"]

    # The ports follow metrics.port and health.port everywhere they appear.
    assert (settings.metrics_port, settings.health_port) == (9090, 9091)
    ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
    assert ports == {"http": 9090, "health": 9091}
    service = chart[("Service", SYSTEM_NAMESPACE, "agenttest-operator")]
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 9090, "targetPort": "http", "protocol": "TCP"}
    ]
    # The Role lets the replicas write the Lease they elect through, and no other.
    role = chart[("Role", SYSTEM_NAMESPACE, "agenttest-operator")]
    [lease_rule] = [
        r for r in role["rules"] if r.get("resourceNames") and "leases" in r["resources"]
    ]
    assert lease_rule["resourceNames"] == ["agenttest-leader"]

    account = chart[("ServiceAccount", SYSTEM_NAMESPACE, SERVICE_ACCOUNT)]
    assert account["metadata"]["annotations"] == values["serviceAccount"]["annotations"]
    assert {key for key in chart if key[0] == "RoleBinding" and key[2] == "agenttest-operator"} == {
        ("RoleBinding", SYSTEM_NAMESPACE, "agenttest-operator"),
        ("RoleBinding", WATCHED, "agenttest-operator"),
        ("RoleBinding", "default", "agenttest-operator"),
    }
    assert not [key for key in chart if key[0] == "NetworkPolicy"]


def test_cluster_scope_may_watch_some_namespaces(helm: Path) -> None:
    # As in the base: the cluster-wide binding allows watching a few namespaces too.
    chart = by_key(documents(template(helm, "--set", "settings.namespaces={team-a,team-b}")))
    assert settings_of(container(chart)["env"]).namespaces == ("team-a", "team-b")
    assert ("ClusterRoleBinding", "", "agenttest-operator") in chart


# --------------------------------------------------------------------------
# The API server accepts what the chart renders
# --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cluster", "namespaced", "overrides"])
def test_rendered_chart_applies_to_the_api_server(
    helm: Path, cluster: devcluster.Cluster, tmp_path: Path, variant: str
) -> None:
    # The namespaces the chart installs into exist first, as the README says:
    # the operator's (the session made it from manifests/namespace.yaml) and
    # the watched one (the samples' namespace).
    cluster.kubectl("apply", "-f", str(MANIFESTS / "samples" / "namespace.yaml"))
    if variant == "cluster":
        text = template(helm)
    elif variant == "namespaced":
        text = template(helm, *NAMESPACED)
    else:
        text = template(helm, "-f", overrides_file(tmp_path, OVERRIDES))
    # Server-side: every field validated (strict), admission run, the pod
    # template under the operator namespace's restricted Pod Security profile;
    # no warning (unknown field, Pod Security, deprecated API) may come back.
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input_text=text)
    assert "Warning" not in result.stderr, result.stderr
    assert result.stdout.count("(server dry run)") == len(documents(text))


# --------------------------------------------------------------------------
# Values the chart cannot honour are refused, by name
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "answer"),
    [
        (("--set", "settings.max_runing=3"), "max_runing"),
        (("--set", "settings.max_running=many"), "max_running"),
        (("--set", "settings.default_backend=lambda"), "default_backend"),
        (("--set", "settings.metrics_port=9000"), "set metrics.port"),
        (("--set", "settings.leader_election=false"), "leader election"),
        (
            (*NAMESPACED, "--set", "settings.namespaces={other}"),
            "with rbac.scope namespaced, set rbac.namespaces",
        ),
        (("--set", "rbac.scope=namespaced"), "needs rbac.namespaces"),
        (("--set", "rbac.scope=everywhere"), "scope"),
        (
            ("--set", "settings.max_running=4", "--set", "extraEnv[0].name=AGENTTEST_MAX_RUNNING"),
            "extraEnv AGENTTEST_MAX_RUNNING is also set",
        ),
    ],
    ids=[
        "unknown-setting",
        "wrong-type",
        "unknown-backend",
        "chart-owned-port",
        "chart-owned-leader-election",
        "namespaces-twice",
        "namespaced-without-namespaces",
        "unknown-scope",
        "variable-set-twice",
    ],
)
def test_values_it_cannot_honour_are_refused(
    helm: Path, values: tuple[str, ...], answer: str
) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), "-n", SYSTEM_NAMESPACE, *values)
    assert result.returncode != 0
    assert answer in result.stderr, result.stderr
