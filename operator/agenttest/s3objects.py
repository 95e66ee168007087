"""Objects the operator writes to S3: which failures end for good, the backoff, one put.

Shared by what the operator stores after a test (publishing: the package;
reporting: the report), so both decide alike. A failure is one of two kinds.
`PublishRefused`: S3 or the API server said no in a way a retry cannot change
(a 4xx other than throttling); the caller records it once, in a condition. Anything
else (throttling, 5xx, a lost connection) is retried, each attempt's retries spaced
by a growing backoff (`PublishDeferred` while it waits); a step never sleeps on it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
from collections.abc import Hashable
from typing import Any

from agenttest import conditions

logger = logging.getLogger(__name__)

# Seconds before the first retry of a failed store, doubled per failure up to the cap.
RETRY_FIRST_SECONDS = 2.0
RETRY_MAX_SECONDS = 300.0

# S3 codes that mean "not now" although their status is a 4xx.
S3_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ExpiredToken",
        "OperationAborted",
    }
)
# What S3 answers for a key that is not there: 403 too, since without s3:ListBucket on
# the whole bucket (the infrastructure grants it only under a prefix) a missing key is
# answered 403, not 404.
S3_ABSENT_CODES = frozenset({"404", "NoSuchKey", "403", "AccessDenied"})


class PublishRefused(Exception):
    """Storing cannot succeed on retry: ``reason`` and ``message`` go into a condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PublishDeferred(Exception):
    """A transient failure: the next try waits until ``retry_at``."""

    def __init__(self, retry_at: datetime.datetime, cause: str) -> None:
        super().__init__(f"next try at {conditions.stamp(retry_at)}: {cause}")
        self.retry_at = retry_at
        self.cause = cause


def retry_delay(failures: int) -> float:
    """Seconds to wait after the ``failures``-th transient failure in a row."""
    return float(min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** max(0, failures - 1)))


def s3_error(error: BaseException) -> tuple[int, str, str]:
    """(HTTP status, code, message) of a botocore ClientError; (0, "", "") otherwise."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return 0, "", ""
    details = response.get("Error") or {}
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    code = str(details.get("Code") or "")
    if not status and code.isdigit():
        status = int(code)
    return status, code, str(details.get("Message") or "")


def s3_refusal(error: BaseException, action: str) -> PublishRefused | None:
    """A PublishRefused for an S3 answer no retry can change; None for a transient one."""
    status, code, message = s3_error(error)
    if not 400 <= status < 500 or status == 429 or code in S3_TRANSIENT_CODES:
        return None
    return PublishRefused("UploadRefused", f"S3 refused to {action}: {code or status} {message}")


def put_once(s3: Any, bucket: str, key: str, data: bytes, digest: str, content_type: str) -> None:
    """Put ``data`` unless the object is there with this digest already (a repeated step).

    The digest goes into the object's metadata; S3 checks the body's own checksum.
    PublishRefused for a refusal no retry changes; anything else is the caller's to retry.
    """
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except Exception as error:
        if s3_error(error)[1] not in S3_ABSENT_CODES:
            raise
    else:
        if head.get("Metadata", {}).get("sha256") == digest:
            return  # stored before (this operator restarted after the put)
    try:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            ServerSideEncryption="AES256",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
            Metadata={"sha256": digest},
        )
    except Exception as error:
        refusal = s3_refusal(error, f"store s3://{bucket}/{key}")
        if refusal is not None:
            raise refusal from error
        raise


class Backoff:
    """Transient failures in a row per key (a test's attempt), and when to try again."""

    def __init__(self, what: str) -> None:
        self.what = what  # "publishing", "storing the report of": for the log
        self._failures: dict[Hashable, tuple[int, datetime.datetime]] = {}

    def wait(self, key: Hashable, now: datetime.datetime) -> None:
        """PublishDeferred while the key's backoff lasts."""
        _, not_before = self._failures.get(key, (0, now))
        if now < not_before:
            raise PublishDeferred(not_before, "waiting after an earlier failure")

    def failed(
        self, key: Hashable, now: datetime.datetime, error: BaseException, label: str = ""
    ) -> PublishDeferred:
        """Count a transient failure; the PublishDeferred to raise says when to try again.

        ``label`` names the key in the log (a test's namespace/name).
        """
        failures = self._failures.get(key, (0, now))[0] + 1
        retry_at = now + datetime.timedelta(seconds=retry_delay(failures))
        self._failures[key] = (failures, retry_at)
        logger.warning(
            "%s %s failed (%d in a row), next try at %s: %s",
            self.what,
            label or key,
            failures,
            conditions.stamp(retry_at),
            error,
        )
        return PublishDeferred(retry_at, str(error))

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)
