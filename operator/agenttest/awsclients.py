"""The operator's AWS clients: made one at a time, with timeouts that end a hung call.

botocore's defaults wait 60 s to connect and 60 s per read, retried, so one
unanswered call could hold a test's step for minutes; here a call gives up
after seconds and the step's own retry (or the publisher's backoff) takes
over. boto3's default session is not safe to build clients from in several
threads at once, and the operator does so from its thread pools: the lock
makes them in turn.
"""

from __future__ import annotations

import threading
from typing import Any

CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 30

_lock = threading.Lock()


def client(service: str, retries: dict[str, Any] | None = None) -> Any:
    """A boto3 client from the default credential chain (AWS_ENDPOINT_URL redirects it)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        # Standard mode backs off on throttling and 5xx by itself.
        retries=retries or {"mode": "standard", "max_attempts": 3},
    )
    with _lock:
        return boto3.client(service, config=config)
