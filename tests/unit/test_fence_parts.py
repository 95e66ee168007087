"""The fence around a runner pod, as built: its NetworkPolicy, its storage limits, evictions.

Pure parts (no I/O); tests/e2e/test_pod_fence.py shows them on the control plane.
"""

from __future__ import annotations

from typing import Any

import pytest

from agenttest import lifecycle
from agenttest.backends import egress
from agenttest.backends.pod import network_policy_manifest, pod_manifest, pod_observation
from agenttest.executions import ExecutionKey, ExecutionState, LaunchRequest
from agenttest.models import Phase
from agenttest_dev.node import storage


def request(**model: Any) -> LaunchRequest:
    return LaunchRequest(
        key=ExecutionKey("0123abcd-0000-0000-0000-00000000beef", 1),
        namespace="team",
        test_name="hello",
        runner_config={"models": [model], "cases": []},
        timeout_seconds=60,
    )


DNS = {"to": [egress.DNS_PEER], "ports": egress.DNS_PORTS}
ANYWHERE_BUT_LINK_LOCAL = [
    {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}},
    {"ipBlock": {"cidr": "::/0", "except": ["fe80::/10", "fd00:ec2::254/128"]}},
]


def test_policy_selects_only_its_runner_pod_and_denies_all_but_dns_and_the_model() -> None:
    launch = request(provider="ollama", endpoint="http://10.1.2.3:11434")
    policy = network_policy_manifest(launch)
    pod = pod_manifest(launch, "agenttest/runner:1")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert selector["agenttest.dev/role"] == "runner"
    assert selector["agenttest.dev/execution"] == launch.key.name
    assert selector["app.kubernetes.io/managed-by"] == "agenttest-operator"
    assert policy["metadata"]["name"] == launch.key.name
    assert policy["metadata"]["ownerReferences"][0]["uid"] == launch.key.uid
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"]
    assert policy["spec"]["egress"] == [
        DNS,
        {
            "to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}],
            "ports": [{"protocol": "TCP", "port": 11434}],
        },
    ]


@pytest.mark.parametrize(
    ("model", "port"),
    [
        ({"provider": "ollama", "endpoint": "http://ollama.ollama:11434"}, 11434),
        ({"provider": "ollama", "endpoint": "https://models.example.com"}, 443),
        ({"provider": "bedrock", "region": "us-east-1"}, 443),
    ],
)
def test_a_named_endpoint_or_bedrock_gets_its_port_anywhere_but_link_local(
    model: dict[str, Any], port: int
) -> None:
    rule = network_policy_manifest(request(**model))["spec"]["egress"][1]
    assert rule == {"to": ANYWHERE_BUT_LINK_LOCAL, "ports": [{"protocol": "TCP", "port": port}]}


@pytest.mark.parametrize(
    "endpoint", ["http://169.254.169.254:80", "http://[fe80::1]:11434", "http://[fd00:ec2::254]"]
)
def test_a_link_local_model_endpoint_is_refused(endpoint: str) -> None:
    with pytest.raises(egress.EgressRefused, match="link-local"):
        network_policy_manifest(request(provider="ollama", endpoint=endpoint))


def test_extra_egress_excepts_link_local_and_refuses_it() -> None:
    extra = egress.parse_extra(("10.0.0.0/16:443", "0.0.0.0/0:3128"))
    rules = network_policy_manifest(request(provider="bedrock"), extra)["spec"]["egress"][2:]
    assert rules == [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 443}]},
        {
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}}],
            "ports": [{"protocol": "TCP", "port": 3128}],
        },
    ]
    with pytest.raises(ValueError, match="link-local"):
        egress.parse_extra(("169.254.169.254/32:80",))
    with pytest.raises(ValueError, match="CIDR:PORT"):
        egress.parse_extra(("mirror.internal:443",))


def test_the_pod_has_an_ephemeral_storage_limit_and_every_empty_dir_a_size_limit() -> None:
    pod = pod_manifest(request(provider="bedrock"), "agenttest/runner:1", ephemeral_storage="3Gi")
    [container] = pod["spec"]["containers"]
    assert container["resources"]["limits"]["ephemeral-storage"] == "3Gi"
    assert container["resources"]["requests"]["ephemeral-storage"] == "3Gi"
    empty_dirs = [v["emptyDir"] for v in pod["spec"]["volumes"] if "emptyDir" in v]
    assert empty_dirs and all(d["sizeLimit"] == "3Gi" for d in empty_dirs)
    assert storage.limited(pod)


# The kubelet's own messages (pkg/kubelet/eviction/helpers.go).
OWN_DISK = [
    'Usage of EmptyDir volume "work" exceeds the limit "2Gi". ',
    "Pod ephemeral local storage usage exceeds the total limit of containers 2Gi. ",
    'Container runner exceeded its local ephemeral storage limit "2Gi". ',
]


def evicted(message: str) -> dict[str, Any]:
    return {
        "status": {
            "phase": "Failed",
            "reason": "Evicted",
            "message": message,
            "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "reason": "Error"}}}],
        }
    }


@pytest.mark.parametrize("message", OWN_DISK)
def test_eviction_for_its_own_disk_use_ends_the_test_failed_saying_so(message: str) -> None:
    observation = pod_observation(evicted(message))
    assert observation.state == ExecutionState.EXITED
    assert not observation.infra_failure
    phase, text = lifecycle.outcome(None, observation.exit_code, "", observation.reason)
    assert phase == Phase.FAILED
    assert "evicted: " + message.strip() in text


def test_eviction_for_node_pressure_is_the_infrastructures() -> None:
    observation = pod_observation(
        evicted("The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi. ")
    )
    assert observation.state == ExecutionState.MISSING and observation.infra_failure


def test_the_stand_in_kubelet_evicts_with_the_kubelets_words() -> None:
    pod = pod_manifest(request(provider="bedrock"), "agenttest/runner:1", ephemeral_storage="1Mi")
    assert storage.eviction_message(pod, {"tmp": 0, "work": 2**20}, 0) is None
    assert storage.eviction_message(pod, {"tmp": 0, "work": 2**20 + 1}, 0) == OWN_DISK[0].replace(
        "2Gi", "1Mi"
    )
    # Neither volume over its own limit, together over the pod's.
    assert storage.eviction_message(pod, {"tmp": 600_000, "work": 600_000}, 0) == OWN_DISK[
        1
    ].replace("2Gi", "1Mi")
    assert [storage.quantity_bytes(q) for q in ("16Mi", "1G", "1e3", "1500m", "2")] == [
        16 * 2**20,
        10**9,
        1000,
        2,
        2,
    ]
