"""Which errors of a step are the infrastructure's for now, and which will repeat.

A step that raises is tried again at the next poll. That is right when the API
server, AWS or the network failed for a moment; it is wrong when the step
raises because of what one execution wrote or what its status says, since it
would then raise at every poll and hold its slot forever. The controller
counts the second kind per execution and ends the test after a few
(`controller.STEP_ERROR_LIMIT`); the first kind it never counts, so an API
server that is down for a minute ends no test.

Classified by shape rather than by import, so this stays free of the client
libraries: an HTTP status on the error (the Kubernetes client's ApiException
has `.status`, botocore's ClientError a response), or an OS-level error.
"""

from __future__ import annotations

# HTTP answers that mean "not now": throttled, or the server side failed.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
THROTTLING_CODES = frozenset(
    {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded"}
)
# Libraries whose errors are all about reaching a server (connection refused,
# reset, timed out, TLS), not about what was sent.
TRANSPORT_MODULES = ("urllib3.", "aiohttp.", "botocore.exceptions", "http.client", "ssl")


def _http_status(error: BaseException) -> int | None:
    status = getattr(error, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata") or {}
        code = (response.get("Error") or {}).get("Code")
        if code in THROTTLING_CODES:
            return 429
        answered = meta.get("HTTPStatusCode")
        return answered if isinstance(answered, int) else None
    return None


def transient(error: BaseException) -> bool:
    """True when trying the same thing again later may well succeed."""
    status = _http_status(error)
    if status is not None:
        return status == 0 or status in TRANSIENT_STATUS
    if isinstance(error, (ConnectionError, TimeoutError, OSError)):
        return True
    module = type(error).__module__ + "."
    if module.startswith(TRANSPORT_MODULES):
        # botocore's ClientError was handled above (it has a response); the
        # rest of botocore.exceptions are connection and endpoint failures.
        return True
    # `raise X from cause` (kubeapi.Gone and friends): judged by what caused it.
    cause = error.__cause__
    return cause is not None and cause is not error and transient(cause)


def describe(error: BaseException, limit: int = 512) -> str:
    """One line naming the error, bounded: it ends up in status and an Event."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
