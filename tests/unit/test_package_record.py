"""`agenttest package download` trusts a package only as far as the operator's record of it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agenttest.package_cli import Unvouched, check_recorded

UID = "9f1c0000-0000-0000-0000-000000000001"
PACKAGE: dict[str, Any] = {
    "metadata": {
        "name": "hello-a2",
        "ownerReferences": [{"kind": "AgentTest", "name": "hello", "uid": UID, "controller": True}],
    },
    "spec": {
        "agentTestRef": {"name": "hello", "uid": UID, "attempt": 2},
        "s3Uri": "s3://packages/hello.zip",
        "sizeBytes": 1234,
        "sha256": "a" * 64,
    },
}
TEST: dict[str, Any] = {
    "metadata": {"name": "hello", "uid": UID},
    "status": {
        "phase": "Succeeded",
        "attempt": 2,
        "packageRef": {"name": "hello-a2", "s3Uri": "s3://packages/hello.zip", "sha256": "a" * 64},
        "conditions": [
            {
                "type": "Packaged",
                "status": "True",
                "reason": "Uploaded",
                "message": "s3://packages/hello.zip (1234 bytes)",
            }
        ],
    },
}


def changed(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    copied = copy.deepcopy(document)
    *parents, last = path.split(".")
    node = copied
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value
    return copied


def test_the_recorded_package_is_vouched_for() -> None:
    check_recorded(PACKAGE, TEST)


@pytest.mark.parametrize(
    ("package", "test", "why"),
    [
        (PACKAGE, None, "no longer exists"),
        (PACKAGE, changed(TEST, "metadata.uid", "other"), "no longer exists"),
        (changed(PACKAGE, "metadata.ownerReferences", []), TEST, "not owned"),
        (changed(PACKAGE, "metadata.name", "hello-a2-x"), TEST, "records package hello-a2"),
        (PACKAGE, changed(TEST, "status.attempt", 3), "the test is at attempt 3"),
        (changed(PACKAGE, "spec.s3Uri", "s3://elsewhere/x.zip"), TEST, "points at s3://elsewhere"),
        (changed(PACKAGE, "spec.sha256", "b" * 64), TEST, "sha256 bbbb"),
        (PACKAGE, changed(TEST, "status.packageRef.s3Uri", None), "records no upload"),
    ],
)
def test_anything_else_is_refused_saying_how_it_differs(
    package: dict[str, Any], test: dict[str, Any] | None, why: str
) -> None:
    with pytest.raises(Unvouched, match=why.replace("(", r"\(").replace(")", r"\)")):
        check_recorded(package, test)
