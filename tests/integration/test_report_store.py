"""Reports against S3 (moto over HTTP, behind the operator role's policy): store, retry, read."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import junitparser
import pytest

from agenttest import conditions, controller, lifecycle
from agenttest.models import AgentTest, ConditionType
from agenttest.reporting import ReportStore, ReportUnavailable
from agenttest.runner import reports as runner_reports
from agenttest.runner.protocol import CaseOutcome, verdict
from agenttest.s3objects import PublishDeferred
from agenttest.scheduling import Scheduler
from agenttest.settings import Settings
from agenttest_dev.fargate import AwsEnvironment

from s3policy import S3PolicyProxy

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
UID = "0123456789abcdef-uid-0123456789ab"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsEnvironment]:
    with AwsEnvironment() as environment:
        for name, value in environment.env().items():
            monkeypatch.setenv(name, value)
        yield environment


def police(monkeypatch: pytest.MonkeyPatch, aws: AwsEnvironment, **policy: Any) -> S3PolicyProxy:
    proxy = S3PolicyProxy(aws.endpoint, aws.bucket, **policy).__enter__()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
    return proxy


def finished_test(**status: Any) -> AgentTest:
    return AgentTest.from_body(
        {
            "metadata": {"uid": UID, "namespace": "ns", "name": "rep", "generation": 1},
            "spec": {
                "agent": {"source": {"inline": "agent = None"}},
                "model": {"provider": "ollama", "modelId": "m", "endpoint": "http://m:1"},
                "cases": [{"name": "greets", "query": "Say hello"}],
            },
            "status": {
                "phase": "Failed",
                "attempt": 1,
                "observedGeneration": 1,
                "conditions": [{"type": "Reported", "status": "Unknown", "reason": "Pending"}],
                **status,
            },
        }
    )


def document() -> dict[str, Any]:
    result = verdict([CaseOutcome("greets", False, 0.4, "bye token=abc123", ("no hello",))], 1)
    return runner_reports.document(result, None)


def test_stored_once_redacted_and_read_back(aws: AwsEnvironment) -> None:
    store = ReportStore(aws.bucket)
    test = finished_test()
    stored = asyncio.run(store.store(test, document(), T0))
    prefix = f"s3://{aws.bucket}/reports/ns/rep/{UID}/1/"
    assert (stored.json_, stored.junit) == (prefix + "report.json", prefix + "junit.xml")
    s3 = aws.client("s3")
    data = s3.get_object(Bucket=aws.bucket, Key=stored.json_.split("/", 3)[3])["Body"].read()
    assert hashlib.sha256(data).hexdigest() == stored.sha256
    kept = json.loads(data)
    assert "abc123" not in data.decode() and kept["test"]["phase"] == "Failed"
    junit = s3.get_object(Bucket=aws.bucket, Key=stored.junit.split("/", 3)[3])["Body"].read()
    assert junitparser.JUnitXml.fromstring(junit.decode()).failures == 1

    # A step repeated after a restart stores the same bytes, and puts nothing.
    again = asyncio.run(store.store(test, document(), T0))
    assert again == stored

    recorded = finished_test(reports=stored.wire())
    assert asyncio.run(store.read(recorded)) == data
    s3.put_object(Bucket=aws.bucket, Key=stored.json_.split("/", 3)[3], Body=b"{}")
    with pytest.raises(ReportUnavailable, match="not the recorded"):
        asyncio.run(store.read(recorded))


def test_throttled_puts_back_off_then_land(
    aws: AwsEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = police(monkeypatch, aws)
    try:
        store = ReportStore(aws.bucket)
        test = finished_test()
        # More SlowDowns than one boto3 call retries by itself.
        proxy.fail_next("PUT", 10, 503, "SlowDown")
        with pytest.raises(PublishDeferred) as deferred:
            asyncio.run(store.store(test, document(), T0))
        assert deferred.value.retry_at == T0 + datetime.timedelta(seconds=2)
        asked = proxy.count("PUT")
        with pytest.raises(PublishDeferred):
            asyncio.run(store.store(test, document(), T0 + datetime.timedelta(seconds=1)))
        assert proxy.count("PUT") == asked  # S3 does not hear of it during the backoff
        at, delays = deferred.value.retry_at, []
        for _ in range(5):
            try:
                stored = asyncio.run(store.store(test, document(), at))
                break
            except PublishDeferred as later:
                delays.append((later.retry_at - at).total_seconds())
                at = later.retry_at
        else:
            pytest.fail(f"never stored; backoffs {delays}")
        assert delays == sorted(delays) and all(d >= 4 for d in delays)
        assert stored.sha256 and proxy.count("PUT", 503) == 10 and proxy.count("PUT", 200) == 2
    finally:
        proxy.__exit__(None, None, None)


def test_a_refusal_is_final_and_recorded_once(
    aws: AwsEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = police(monkeypatch, aws, objects_also=())  # a role without the reports grant
    try:
        rt = controller.Runtime(
            settings=Settings(),
            executors={},
            scheduler=Scheduler(limit=1),
            clock=lambda: T0,
            report_store=ReportStore(aws.bucket),
        )
        test = finished_test()
        rt.pending_reports[(UID, 1)] = document()
        status = asyncio.run(controller.report(rt, test))
        reported = conditions.get(status.conditions, ConditionType.REPORTED)
        assert reported is not None
        assert (reported.status, reported.reason) == ("False", "UploadRefused")
        assert "AccessDenied" in reported.message
        assert not lifecycle.needs_report(status) and status.reports is None
        assert (UID, 1) not in rt.pending_reports
        assert proxy.count("PUT") == 1
    finally:
        proxy.__exit__(None, None, None)


def test_a_report_lost_to_a_restart_or_without_a_bucket_is_said() -> None:
    rt = controller.Runtime(
        settings=Settings(), executors={}, scheduler=Scheduler(limit=1), clock=lambda: T0
    )
    unconfigured = asyncio.run(controller.report(rt, finished_test()))
    reported = conditions.get(unconfigured.conditions, ConditionType.REPORTED)
    assert reported is not None and reported.reason == "NotConfigured"
    rt.report_store = ReportStore("some-bucket")
    lost = asyncio.run(controller.report(rt, finished_test()))
    reported = conditions.get(lost.conditions, ConditionType.REPORTED)
    assert reported is not None and (reported.status, reported.reason) == ("False", "ReportLost")
