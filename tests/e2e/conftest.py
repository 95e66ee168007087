"""The pod backend's stand-ins, shared by every e2e file that runs pods.

No kubelet can run here; FakeKubelet registers a Node, binds and runs the
pods, reports their status through the API server and serves their logs at
the node's address, so `pods/log` and `kubectl logs` go through the real API
server. The namespace enforces the restricted Pod Security profile, as a
cluster that runs strangers' code should.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agenttest_dev import devcluster
from agenttest_dev.node import FakeKubelet

from support import Kube


@pytest.fixture
def restricted(kube: Kube) -> Kube:
    kube.cluster.kubectl(
        "label", "namespace", kube.namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    return kube


@pytest.fixture
def kubelet(cluster: devcluster.Cluster, restricted: Kube) -> Iterator[FakeKubelet]:
    with FakeKubelet(cluster.kubeconfig, namespaces=[restricted.namespace]) as node:
        yield node
