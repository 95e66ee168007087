"""Fixtures that stand up the real parts: control plane, scripted model, operator.

The control plane is one per session (it takes seconds to start); each test
gets its own namespace and its own operator process that watches only that
namespace, so tests cannot see each other's AgentTests.

The operator runs as its ServiceAccount with the RBAC of manifests/ (installed
once per session), as it does in a cluster, so every flow the tests drive also
proves the RBAC is enough; a test that needs the operator to run as the
cluster admin says so with ``start_operator(as_admin=True)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agenttest_dev import devcluster
from agenttest_dev.modelserver import ScriptedModelServer

from support import (
    CRDS,
    SYSTEM_NAMESPACE,
    Kube,
    Operator,
    install_operator_identity,
    service_account_kubeconfig,
)


@pytest.fixture(scope="session")
def cluster() -> Iterator[devcluster.Cluster]:
    binaries = devcluster.find_binaries()
    with devcluster.Cluster(binaries) as running:
        running.install_crds(CRDS)
        install_operator_identity(running)
        yield running


@pytest.fixture(scope="session")
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture
def kube(cluster: devcluster.Cluster) -> Iterator[Kube]:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    yield Kube(cluster, namespace)


@pytest.fixture
def start_operator(
    cluster: devcluster.Cluster, kube: Kube, tmp_path: Path
) -> Iterator[Callable[..., Operator]]:
    operators: list[Operator] = []

    def start(
        kubeconfig: Path | None = None,
        extra_env: dict[str, str] | None = None,
        as_admin: bool = False,
        **settings: Any,
    ) -> Operator:
        if kubeconfig is None and not as_admin:
            kubeconfig = service_account_kubeconfig(
                cluster, tmp_path / "operator.kubeconfig", kube.namespace
            )
            # Its RBAC reads only the signing secret in the operator's namespace.
            settings.setdefault("operator_namespace", SYSTEM_NAMESPACE)
        operator = Operator(
            cluster,
            kube.namespace,
            tmp_path / "runs",
            tmp_path / "operator.log",
            kubeconfig=kubeconfig,
            extra_env=extra_env,
            **settings,
        )
        operators.append(operator.start())
        return operator

    yield start
    # Delete the tests while an operator still runs, so finalizers are honoured
    # and no harness process outlives the test.
    if operators and operators[-1].process and operators[-1].process.poll() is None:
        kube.run("delete", "agenttests", "--all", "--timeout=60s", check=False)
    for operator in operators:
        operator.stop()
