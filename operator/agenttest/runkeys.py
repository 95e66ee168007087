"""Per-execution signing keys: what lets the operator believe a verdict.

Each execution's judge signs its machine lines with a key of its own, derived here
from one operator secret and the execution's identity (the test's uid, attempt and
infrastructure retry). Deriving rather than storing means nothing per run is kept
anywhere: a restarted operator derives the same key again, and a key that leaks
from one execution is worthless for every other.

The operator secret lives in a Secret in the operator's own namespace, made on
first start. Whoever can read it can forge verdicts: give no tester `get` on
Secrets in that namespace (README, RBAC).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from pathlib import Path

from agenttest import kubeapi
from agenttest.executions import ExecutionKey

logger = logging.getLogger(__name__)

SECRET_KEY = "key"  # the data key inside the Secret
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
FALLBACK_NAMESPACE = "agenttest-system"


def derive(master: bytes, key: ExecutionKey) -> str:
    """The hex key of one execution (what the judge gets as AGENTTEST_RUN_KEY)."""
    label = f"agenttest.dev/run-key/v1/{key.uid}/{key.attempt}/{key.retry}"
    return hmac.new(master, label.encode(), hashlib.sha256).hexdigest()


def operator_namespace(configured: str) -> str:
    """The setting, else the namespace of our ServiceAccount, else agenttest-system."""
    if configured:
        return configured
    try:
        return IN_CLUSTER_NAMESPACE.read_text().strip() or FALLBACK_NAMESPACE
    except OSError:
        return FALLBACK_NAMESPACE


async def load_master(namespace: str, name: str) -> bytes:
    """Read the operator secret, making it (32 random bytes) if it does not exist yet.

    Two operators starting at once may both try to make it; the loser reads the
    winner's, so both sign and verify alike.
    """
    for _ in range(3):
        try:
            data = await kubeapi.read_secret(namespace, name)
        except kubeapi.Gone:
            pass
        else:
            if SECRET_KEY not in data:
                raise RuntimeError(f"Secret {namespace}/{name} has no {SECRET_KEY!r} key")
            return base64.b64decode(data[SECRET_KEY])
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "agenttest-operator"},
            },
            "type": "Opaque",
            "data": {SECRET_KEY: base64.b64encode(secrets.token_bytes(32)).decode()},
        }
        try:
            await kubeapi.create_secret(namespace, body)
            logger.info("created the signing secret %s/%s", namespace, name)
        except kubeapi.Conflict:
            continue
        except kubeapi.Gone as error:
            raise RuntimeError(
                f"cannot keep the signing secret in namespace {namespace!r}: it does not exist; "
                "create it or set AGENTTEST_OPERATOR_NAMESPACE"
            ) from error
    raise RuntimeError(f"cannot read or create the signing secret {namespace}/{name}")
