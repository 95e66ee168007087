"""Pieces of the objects the operator creates for a test: pure, shared, unit-tested.

Runner Pods, their ConfigMaps and Secrets, and DeploymentPackages all belong to
an AgentTest: the same owner reference (deleting the test garbage-collects
them) and the same labels (`kubectl get pods -l agenttest.dev/test=NAME`).
"""

from __future__ import annotations

import re
from typing import Any

from agenttest.models import API_VERSION, GROUP

MANAGED_BY = {"app.kubernetes.io/managed-by": "agenttest-operator"}
TEST_LABEL = f"{GROUP}/test"
LABEL_VALUE_MAX = 63


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


def label_value(text: str) -> str:
    """``text`` as a valid label value: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends.

    A name cut at 63 characters can end in '.' or '-', which the API server refuses
    (422) for every object carrying the label; those ends are trimmed instead.
    """
    cut = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:LABEL_VALUE_MAX]
    return cut.strip("._-")


def test_label(test_name: str) -> dict[str, str]:
    # A longer name still labels its objects (two such names may share a value).
    return {TEST_LABEL: label_value(test_name)}


def owned_metadata(
    name: str, namespace: str, test_name: str, uid: str, labels: dict[str, str]
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(test_name, uid)],
    }
