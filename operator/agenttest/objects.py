"""Pieces of the objects the operator creates for a test: pure, shared, unit-tested.

Runner Pods, their ConfigMaps and Secrets, and DeploymentPackages all belong to
an AgentTest: the same owner reference (deleting the test garbage-collects
them) and the same labels (`kubectl get pods -l agenttest.dev/test=NAME`).
"""

from __future__ import annotations

from typing import Any

from agenttest.models import API_VERSION, GROUP

MANAGED_BY = {"app.kubernetes.io/managed-by": "agenttest-operator"}
TEST_LABEL = f"{GROUP}/test"


def owner_reference(test_name: str, uid: str) -> dict[str, Any]:
    """The AgentTest as controller owner: deleting it deletes what it owns."""
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentTest",
        "name": test_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_label(test_name: str) -> dict[str, str]:
    # Label values are at most 63 characters; a longer name still labels its objects.
    return {TEST_LABEL: test_name[:63]}


def owned_metadata(
    name: str, namespace: str, test_name: str, uid: str, labels: dict[str, str]
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(test_name, uid)],
    }
