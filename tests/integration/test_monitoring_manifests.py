"""The monitoring component (manifests/monitoring): a ServiceMonitor and the Grafana dashboard.

The base leaves it out; an overlay that names it gets a ServiceMonitor that finds the
operator's Service and port, and the dashboard as a ConfigMap for Grafana's sidecar.

The test cluster has no Prometheus Operator, so the ServiceMonitor CRD is installed
here in a trimmed form: the upstream fields this manifest uses, with their upstream
types, and nothing else. With strict field validation the API server then refuses a
misspelled or misplaced field by name, which a client-side shape check written next
to the manifest would only repeat; and the dry run shows the object the way it
would be admitted (namespace, labels) after kustomize rendered it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from agenttest_dev import devcluster

from support import MANIFESTS, SYSTEM_NAMESPACE, kustomize_with_component

MONITORING = MANIFESTS / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"

# monitoring.coreos.com/v1 ServiceMonitor, trimmed to what manifests/monitoring uses.
_STRINGS = {"type": "array", "items": {"type": "string"}}
SERVICE_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {
                                "type": "object",
                                "required": ["selector"],
                                "properties": {
                                    "jobLabel": {"type": "string"},
                                    "selector": {
                                        "type": "object",
                                        "properties": {
                                            "matchLabels": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            }
                                        },
                                    },
                                    "namespaceSelector": {
                                        "type": "object",
                                        "properties": {
                                            "any": {"type": "boolean"},
                                            "matchNames": _STRINGS,
                                        },
                                    },
                                    "endpoints": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "port": {"type": "string"},
                                                "path": {"type": "string"},
                                                "scheme": {"type": "string"},
                                                "interval": {
                                                    "type": "string",
                                                    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?"
                                                    "(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                                    "(([0-9]+)s)?(([0-9]+)ms)?)$",
                                                },
                                                "scrapeTimeout": {
                                                    "type": "string",
                                                    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?"
                                                    "(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                                    "(([0-9]+)s)?(([0-9]+)ms)?)$",
                                                },
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def with_monitoring(cluster: devcluster.Cluster, directory: Path) -> list[dict[str, Any]]:
    """The base with the monitoring component."""
    return kustomize_with_component(cluster, directory, "monitoring")


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [d for d in documents if d["kind"] == kind]
    return found


def test_the_base_has_no_monitoring_objects(cluster: devcluster.Cluster) -> None:
    text = cluster.kubectl("kustomize", str(MANIFESTS)).stdout
    kinds = {document["kind"] for document in yaml.safe_load_all(text) if document}
    assert "ServiceMonitor" not in kinds
    assert "ConfigMap" not in kinds


def test_the_service_monitor_finds_the_operators_service_and_port(
    cluster: devcluster.Cluster, tmp_path: Path
) -> None:
    documents = with_monitoring(cluster, tmp_path / "install")
    monitor = one(documents, "ServiceMonitor")
    service = one(documents, "Service")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"] == SYSTEM_NAMESPACE
    # Its selector picks the Service by labels the Service has ...
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    # ... and scrapes a port the Service names, where the operator serves /metrics.
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    deployment = one(documents, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    metrics_port = {env["name"]: env.get("value") for env in container["env"]}
    [http] = [port for port in container["ports"] if port["name"] == "http"]
    assert str(http["containerPort"]) == metrics_port["AGENTTEST_METRICS_PORT"]


def test_the_dashboard_ships_as_a_configmap_for_grafanas_sidecar(
    cluster: devcluster.Cluster, tmp_path: Path
) -> None:
    documents = with_monitoring(cluster, tmp_path / "install")
    config_map = one(documents, "ConfigMap")
    assert config_map["metadata"]["namespace"] == SYSTEM_NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    [(name, text)] = config_map["data"].items()
    assert name.endswith(".json")
    assert json.loads(text) == json.loads(DASHBOARD.read_text())


def test_the_component_is_admitted_by_the_api_server_with_strict_field_validation(
    cluster: devcluster.Cluster, tmp_path: Path
) -> None:
    documents = with_monitoring(cluster, tmp_path / "install")
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(SERVICE_MONITOR_CRD))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
    )
    # The namespace for real (the test cluster is throwaway), the rest dry run.
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(one(documents, "Namespace")))
    added = [one(documents, "ServiceMonitor"), one(documents, "ConfigMap")]
    listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": added})
    answer = cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", input_text=listed
    )
    assert "servicemonitor.monitoring.coreos.com/agenttest-operator" in answer.stdout
    # The same check refuses a field the ServiceMonitor does not have, naming it.
    wrong = json.loads(json.dumps(added[0]))
    wrong["spec"]["endpoints"][0]["intervall"] = "30s"
    refused = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input_text=json.dumps(wrong),
        check=False,
    )
    assert refused.returncode != 0
    assert "intervall" in refused.stderr
