"""The NetworkPolicy that fences one runner pod in (pure: built here, created by `pod`).

A runner pod runs a stranger's code in the test's own namespace, so a policy
in the operator's namespace does nothing for it. Before it creates a runner
pod the pod backend creates this policy next to it:

* **One per execution, named after the execution key and owned by the test.**
  The allowed destination is the test's own model endpoint, which differs
  from test to test in one namespace; NetworkPolicies only ever add
  allowances, so one shared per-namespace policy would have to hold the union
  of every test's endpoints and could never shrink safely. A policy per
  execution selects exactly its pod (the execution label), is created before
  the pod (so no instant exists in which the pod runs unfenced), is deleted
  with it on stop and clean-up, and is garbage-collected with the test (owner
  reference) and with the namespace. A create repeated after a restart meets
  AlreadyExists and adopts it, like the pod and its ConfigMap.
* **Deny by default.** Both policy types are listed and there are no ingress
  rules: nothing may connect to the pod, and it may connect only where the
  egress rules say.
* **DNS**: UDP and TCP 53 to the cluster resolver (pods labelled
  ``k8s-app: kube-dns`` in ``kube-system``, where kubeadm, EKS and GKE all run
  it).
* **The model, and only the model**: the judge's gateway inside the pod is
  the only thing that calls out, to the test's model endpoint. An endpoint
  whose host is an IP address is allowed as exactly that address and port.
  A host name cannot be said in a NetworkPolicy (it selects addresses, not
  names), so a named endpoint is allowed on its port to any address *except*
  the link-local ranges (169.254.0.0/16, which holds the cloud instance
  metadata service, and fe80::/10) and the AWS IPv6 metadata address. That is
  wider than the model: other services listening on that port stay
  reachable; name an IP address (or put the model behind one) to narrow it.
  Bedrock without an endpoint is reached on 443 the same way.
* **Link-local is always denied**: an endpoint that is a link-local address
  is refused outright (the launch ends Error), and every wider range excepts
  those ranges.
* **Extra egress** (the ``pod_egress_allow`` setting, ``CIDR:PORT`` entries)
  for what a cluster needs besides the model, typically the package mirror
  that ``spec.agent.requirements`` are installed from during Building.

It takes a CNI plugin that enforces NetworkPolicy (Calico, Cilium, the VPC
CNI with network policies on); elsewhere the policy is stored and does
nothing.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from agenttest.objects import MANAGED_BY

POLICY_API_VERSION = "networking.k8s.io/v1"
# What every runner pod carries and every runner policy selects on.
ROLE_LABEL = "agenttest.dev/role"
RUNNER_ROLE = "runner"
EXECUTION_LABEL = "agenttest.dev/execution"

# Never reachable from a runner: the instance metadata services live here.
LINK_LOCAL = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    # AWS's IPv6 instance metadata address is a unique-local one, not link-local.
    ipaddress.ip_network("fd00:ec2::254/128"),
)
ANYWHERE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
DNS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
BEDROCK_PORT = 443

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRefused(ValueError):
    """The requested egress would reach what a runner must never reach."""


def ip_block(network: Network) -> dict[str, Any]:
    """An ipBlock for `network`, with every link-local range inside it excepted.

    A network that lies inside a link-local range is refused.
    """
    for forbidden in LINK_LOCAL:
        if network.version == forbidden.version and network.subnet_of(forbidden):  # type: ignore[arg-type]
            raise EgressRefused(f"{network} is link-local ({forbidden}): runners never reach it")
    excepted = [
        str(forbidden)
        for forbidden in LINK_LOCAL
        if forbidden.version == network.version and forbidden.subnet_of(network)  # type: ignore[arg-type]
    ]
    block: dict[str, Any] = {"cidr": str(network)}
    if excepted:
        block["except"] = excepted
    return {"ipBlock": block}


def parse_extra(entries: tuple[str, ...]) -> list[tuple[Network, int]]:
    """``CIDR:PORT`` entries (the pod_egress_allow setting); ValueError names a bad one."""
    parsed = []
    for entry in entries:
        cidr, _, port = entry.rpartition(":")
        try:
            network = ipaddress.ip_network(cidr, strict=False)
            number = int(port)
        except ValueError as error:
            raise ValueError(f"pod_egress_allow entry {entry!r} is not CIDR:PORT") from error
        if not 1 <= number <= 65535:
            raise ValueError(f"pod_egress_allow entry {entry!r} has no valid port")
        ip_block(network)  # refuses link-local now, at start, not at the first launch
        parsed.append((network, number))
    return parsed


def model_rule(model: dict[str, Any]) -> dict[str, Any]:
    """The egress rule to one model the test names (an entry of ``runner_config["models"]``)."""
    endpoint = str(model.get("endpoint") or "")
    if not endpoint:
        if model.get("provider") == "bedrock":
            peers = [ip_block(network) for network in ANYWHERE]
            return {"to": peers, "ports": [{"protocol": "TCP", "port": BEDROCK_PORT}]}
        raise EgressRefused("the model has no endpoint to allow")
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise EgressRefused(f"the model endpoint {endpoint!r} has no valid port") from error
    host = parts.hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # A name: NetworkPolicy cannot select it, so the port, anywhere but link-local.
        peers = [ip_block(network) for network in ANYWHERE]
    else:
        try:
            peers = [ip_block(ipaddress.ip_network(address))]
        except EgressRefused as error:
            raise EgressRefused(f"the model endpoint {endpoint} is link-local") from error
    return {"to": peers, "ports": [{"protocol": "TCP", "port": port}]}


def network_policy(
    metadata: dict[str, Any],
    models: list[dict[str, Any]],
    extra: list[tuple[Network, int]] | None = None,
) -> dict[str, Any]:
    """The policy for one execution; `metadata` is the execution's (name, labels, owner).

    ``models`` are every model the judge calls (the matrix and the judge model).
    """
    labels = metadata["labels"]
    egress: list[dict[str, Any]] = [{"to": [DNS_PEER], "ports": DNS_PORTS}]
    for model in models:
        rule = model_rule(model)
        if rule not in egress:
            egress.append(rule)
    egress += [
        {"to": [ip_block(network)], "ports": [{"protocol": "TCP", "port": port}]}
        for network, port in extra or []
    ]
    return {
        "apiVersion": POLICY_API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {
                "matchLabels": {
                    **MANAGED_BY,
                    ROLE_LABEL: RUNNER_ROLE,
                    EXECUTION_LABEL: labels[EXECUTION_LABEL],
                }
            },
            "policyTypes": ["Ingress", "Egress"],
            "egress": egress,
        },
    }
