"""`agenttest queue`: the waiting tests, in the order they will start, and why they wait.

The operator knows the queue (it decides it); this asks it. By default the
request goes through the API server's service proxy with the current
kubeconfig, GET /api/v1/namespaces/<operator ns>/services/agenttest-operator:http
/proxy/queue, so the API server authenticates the user and RBAC decides
(`get` on services/proxy, ClusterRole agenttest-queue-viewer). `--url` (or
AGENTTEST_QUEUE_URL) talks to the operator's HTTP port directly instead, e.g.
through `kubectl port-forward`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from agenttest import clientconfig, queueview

EXIT_OK = 0
EXIT_UNREACHABLE = 2

OPERATOR_NAMESPACE = "agenttest-system"
SERVICE = "agenttest-operator"
PORT_NAME = "http"
URL_VARIABLE = "AGENTTEST_QUEUE_URL"

DESCRIPTION = """\
List the AgentTests waiting to start, in the order the operator will start
them: POSITION in the whole queue (1 starts next), PRIORITY, how long each has
been WAITING (since it was created or requeued) and the REASON it waits (no
free slot, its namespace's cap, a retry backoff). Asked of the operator itself,
through the API server's service proxy."""

EPILOG = f"""\
how it connects:
  through the API server (default): GET on the service proxy of
  {SERVICE}:{PORT_NAME} in the operator's namespace, with your kubeconfig. You need
  `get` on services/proxy there: the ClusterRole agenttest-queue-viewer, e.g.
    kubectl create rolebinding alice-queue -n {OPERATOR_NAMESPACE} \\
      --clusterrole=agenttest-queue-viewer --user=alice
  directly: --url http://HOST:PORT (or {URL_VARIABLE}), e.g. after
    kubectl port-forward -n {OPERATOR_NAMESPACE} svc/{SERVICE} 8080:{PORT_NAME}

exit status:
  0  the queue was printed
  2  the operator could not be reached (the message says why and what to do)

examples:
  agenttest queue                 # the current namespace's waiting tests
  agenttest queue -A              # all of them
  kubectl agenttest queue -n team-a -o json"""


class Unreachable(Exception):
    """The operator's queue could not be read; the message says why and what to do."""


def via_api_server(operator_namespace: str, service: str, port_name: str) -> dict[str, Any]:
    """GET /queue through the API server's service proxy, as the kubeconfig's user."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        api: Any = client.CoreV1Api(clientconfig.load())
    except Exception as error:
        raise Unreachable(
            f"no usable kubeconfig ({error}); or give the operator's URL with --url"
        ) from None
    target = f"{service}:{port_name}"
    where = f"service {target} in namespace {operator_namespace}"
    try:
        response = api.connect_get_namespaced_service_proxy_with_path(
            target, operator_namespace, "queue", _preload_content=False, _request_timeout=30
        )
        data = response.data
    except ApiException as error:
        detail = clientconfig.status_message(error.body) or str(error.reason)
        if error.status in (401, 403):
            raise Unreachable(
                f"the API server refused the proxy to {where} ({error.status}: {detail}). "
                f"You need `get` on services/proxy {target} there: bind the ClusterRole "
                f"agenttest-queue-viewer, e.g. `kubectl create rolebinding NAME "
                f"-n {operator_namespace} --clusterrole=agenttest-queue-viewer --user=YOU`"
            ) from None
        if error.status == 404 and "services" in detail:
            raise Unreachable(
                f"no {where} ({detail}): is the operator installed (kubectl apply -k "
                "manifests/)? If it runs in another namespace, name it with --operator-namespace"
            ) from None
        raise Unreachable(
            f"the operator did not answer through {where} ({error.status}: {detail}). Is it "
            f"running (kubectl get pods -n {operator_namespace} -l "
            "app.kubernetes.io/name=agenttest-operator), with its HTTP port on "
            "(AGENTTEST_METRICS_PORT not 0)?"
        ) from None
    except Exception as error:  # the API server itself is not reachable
        raise Unreachable(f"cannot reach the API server: {error}") from None
    return _document(data, where)


def via_url(url: str) -> dict[str, Any]:
    """GET /queue from the operator's HTTP port directly."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Unreachable(f"--url must be http(s)://HOST:PORT, not {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/queue"):
        path += "/queue"
    target = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    request = urllib.request.Request(target, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read()
    except urllib.error.HTTPError as error:
        detail = clientconfig.status_message(error.read())
        raise Unreachable(f"the operator at {target} answered {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise Unreachable(
            f"cannot reach the operator at {target} ({reason}): is it running, with its "
            "HTTP port on, and is that the port (a port-forward still open)?"
        ) from None
    return _document(data, target)


def _document(data: bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("queued"), list):
        raise Unreachable(
            f"{where} did not answer with a queue: {clientconfig.status_message(data)!r}"
        )
    return document


def queue(
    namespace: str | None,
    all_namespaces: bool,
    output: str,
    url: str | None,
    operator_namespace: str,
    service: str,
    port_name: str,
) -> int:
    try:
        # Directly when a URL is given, else through the API server, as RBAC allows.
        document = via_url(url) if url else via_api_server(operator_namespace, service, port_name)
    except Unreachable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not all_namespaces and namespace is None:
        namespace = clientconfig.context_namespace()
    document = queueview.only_namespace(document, None if all_namespaces else namespace)
    if output == "json":
        print(json.dumps(document, indent=2))
    else:
        print(queueview.render_table(document))
    return EXIT_OK


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "queue",
        help="list the tests waiting to start, in order, and why they wait",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", help="only this namespace's tests (default: the context's)"
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="the tests of every namespace"
    )
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_VARIABLE) or None,
        help=f"the operator's HTTP port, http://HOST:PORT, instead of the API server "
        f"(default: ${URL_VARIABLE})",
    )
    parser.add_argument(
        "--operator-namespace",
        default=OPERATOR_NAMESPACE,
        help=f"where the operator's Service is (default: {OPERATOR_NAMESPACE})",
    )
    parser.add_argument("--service", default=SERVICE, help=f"its Service (default: {SERVICE})")
    parser.add_argument(
        "--port-name", default=PORT_NAME, help=f"the Service's port (default: {PORT_NAME})"
    )


def run(args: argparse.Namespace) -> int:
    return queue(
        args.namespace,
        args.all_namespaces,
        args.output,
        args.url,
        args.operator_namespace,
        args.service,
        args.port_name,
    )
