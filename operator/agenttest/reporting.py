"""Storing a finished test's report in S3, and reading it back for its package.

`reports` shapes the files (pure); this module does the I/O. The operator
stores them, passing test or not, under ``reports/<namespace>/<name>/<uid>/<attempt>/``
in the results bucket (AGENTTEST_RESULTS_BUCKET, else the package bucket). A put
repeated after a restart stores nothing twice (s3objects.put_once). A refusal no
retry changes raises PublishRefused (the test gets Reported=False, once);
anything else is retried under a per-attempt backoff (PublishDeferred meanwhile),
so a step never waits on S3 and no failure holds a slot: the test is finished.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
from typing import Any

from agenttest import awsclients, faults, reports
from agenttest.models import AgentTest, Reports
from agenttest.s3objects import (
    S3_ABSENT_CODES,
    Backoff,
    PublishRefused,
    put_once,
    s3_error,
)


class ReportUnavailable(Exception):
    """The stored report is gone or not what was stored: no retry brings it back."""


class ReportStore:
    def __init__(self, bucket: str, client: Any = None) -> None:
        self.bucket = bucket
        self._s3 = client
        self.backoff = Backoff("storing the report of")

    def _client(self) -> Any:
        if self._s3 is None:
            self._s3 = awsclients.client("s3")
        return self._s3

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _keys(self, test: AgentTest) -> tuple[str, str]:
        return reports.keys(test.namespace, test.name, test.uid, test.status.attempt)

    def identity(self, test: AgentTest) -> reports.TestIdentity:
        status = test.status
        return reports.TestIdentity(
            namespace=test.namespace,
            name=test.name,
            uid=test.uid,
            attempt=status.attempt,
            phase=status.phase.value if status.phase else "",
            source_sha256=status.source.tested_sha256 if status.source else None,
        )

    def _put(self, test: AgentTest, document: dict[str, Any]) -> Reports:
        data, junit = reports.files(reports.stored(document, self.identity(test)))
        json_key, junit_key = self._keys(test)
        digest = hashlib.sha256(data).hexdigest()
        s3 = self._client()
        # junit.xml first: once report.json is there, the report is complete.
        junit_digest = hashlib.sha256(junit).hexdigest()
        put_once(s3, self.bucket, junit_key, junit, junit_digest, reports.JUNIT_CONTENT_TYPE)
        put_once(s3, self.bucket, json_key, data, digest, reports.JSON_CONTENT_TYPE)
        return Reports.model_validate(
            {"json": self.uri(json_key), "junit": self.uri(junit_key), "sha256": digest}
        )

    async def store(
        self, test: AgentTest, document: dict[str, Any], now: datetime.datetime
    ) -> Reports:
        """Store report.json and junit.xml; PublishRefused for good, PublishDeferred for now."""
        attempt = (test.uid, test.status.attempt)
        self.backoff.wait(attempt, now)
        try:
            stored = await asyncio.to_thread(self._put, test, document)
        except PublishRefused:
            self.backoff.forget(attempt)
            raise
        except Exception as error:
            if not faults.transient(error):
                # Another answer no retry changes, or the files cannot be made.
                self.backoff.forget(attempt)
                raise PublishRefused("ReportFailed", faults.describe(error)) from error
            raise self.backoff.failed(
                attempt, now, error, f"{test.namespace}/{test.name}"
            ) from error
        self.backoff.forget(attempt)
        return stored

    def _get(self, key: str) -> bytes:
        try:
            found = self._client().get_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            if s3_error(error)[1] in S3_ABSENT_CODES:
                raise ReportUnavailable(f"the stored report {self.uri(key)} is missing") from None
            raise
        return bytes(found["Body"].read())

    async def read(self, test: AgentTest) -> bytes:
        """The attempt's report.json, only if it hashes to status.reports.sha256.

        Its key derives from the test (never the URI in status, which whoever may
        write status could point elsewhere). ReportUnavailable if it is not there.
        """
        recorded = test.status.reports
        if recorded is None:
            raise ReportUnavailable("the test recorded no report")
        key, _ = self._keys(test)
        data = await asyncio.to_thread(self._get, key)
        actual = hashlib.sha256(data).hexdigest()
        if actual != recorded.sha256:
            raise ReportUnavailable(
                f"the stored report {self.uri(key)} has sha256 {actual}, not the recorded "
                f"{recorded.sha256}"
            )
        return data
