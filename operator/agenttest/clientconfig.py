"""How the commands reach the API server: the user's kubeconfig, as kubectl reads it.

One place for every command that talks to the API server as the user
(`package`, `report`, `queue`, `logs`, `wait`, ...): the kubeconfig is
$KUBECONFIG or ~/.kube/config, its current context names the server, the
credentials and the namespace used when none is given. And what a failed call
means, in words: the server's own message, or that the server is not there.
"""

from __future__ import annotations

import json
from typing import Any

DEFAULT_NAMESPACE = "default"


class NotConfigured(Exception):
    """No usable kubeconfig; the message says what is wrong with it."""


def load() -> Any:
    """A kubernetes ApiClient for the kubeconfig's current context."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except Exception as error:  # ConfigException, or a file that is not YAML
        raise NotConfigured(f"no usable kubeconfig: {error}") from None
    return client.ApiClient(configuration)


def context_namespace() -> str | None:
    """The current context's namespace, as kubectl would use; None without a kubeconfig."""
    from kubernetes import config

    try:
        _, context = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
    except Exception:
        return None
    return str(context.get("context", {}).get("namespace") or DEFAULT_NAMESPACE)


def connect(namespace: str | None) -> tuple[Any, str]:
    """(ApiClient, namespace): ``namespace`` if given, else the context's, like kubectl -n."""
    api = load()
    return api, namespace or context_namespace() or DEFAULT_NAMESPACE


def server(api: Any) -> str:
    """The API server's URL an ApiClient talks to."""
    return str(getattr(getattr(api, "configuration", None), "host", "") or "the API server")


def status_message(body: object) -> str:
    """The API server's Status message (or the body's text) on one line."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("message"):
        text = str(parsed["message"])
    return " ".join(text.split())[:300]


def unreachable(error: BaseException) -> bool:
    """True when ``error`` says the API server did not answer at all (no HTTP status)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(error, ApiException):
        return not error.status  # the client's own errors carry status 0 or None
    return isinstance(error, HTTPError | OSError)


def failure(error: BaseException) -> str:
    """Why the API server did not answer, in a few words: the socket's own error
    ("[Errno 111] Connection refused") rather than urllib3's retry wrapping."""
    from urllib3.exceptions import HTTPError

    first: BaseException = getattr(error, "reason", None) or error
    cause: BaseException | None = first
    while cause is not None:
        if isinstance(cause, OSError) and not isinstance(cause, HTTPError):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    return str(first)
