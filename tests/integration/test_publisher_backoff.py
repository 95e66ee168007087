"""The publisher against S3 (moto over HTTP, behind the operator role's policy): its backoff."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator

import pytest

from agenttest.models import AgentTest
from agenttest.publishing import Publisher
from agenttest.s3objects import PublishDeferred
from agenttest.sources import Snapshot
from agenttest_dev.fargate import AwsEnvironment

from s3policy import S3PolicyProxy
from support import SIMPLE_AGENT

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture
def policed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AwsEnvironment, S3PolicyProxy]]:
    with AwsEnvironment() as aws, S3PolicyProxy(aws.endpoint, aws.bucket) as proxy:
        for name, value in {**aws.env(), "AWS_ENDPOINT_URL_S3": proxy.endpoint}.items():
            monkeypatch.setenv(name, value)
        yield aws, proxy


TESTED = Snapshot(SIMPLE_AGENT, "inline")


def passed_test() -> AgentTest:
    """A test that passed, whose agent.py snapshot and environment the run recorded."""
    return AgentTest.from_body(
        {
            "metadata": {"uid": "0123456789abcdef-uid-0123456789ab", "namespace": "ns"}
            | {"name": "ships", "generation": 1},
            "spec": {
                "agent": {"source": {"inline": SIMPLE_AGENT}},
                "model": {"provider": "ollama", "modelId": "m", "endpoint": "http://m:1"},
                "cases": [{"name": "greets", "query": "Say hello"}],
            },
            "status": {
                "phase": "Succeeded",
                "attempt": 1,
                "cases": [{"name": "greets", "passed": True}],
                "summary": "1/1 cases passed",
                "source": {"origin": "inline", "sha256": TESTED.sha256}
                | {"sizeBytes": len(TESTED.data), "testedSha256": TESTED.sha256},
                "environment": ["strands-agents==1.0.0"],
            },
        }
    )


def test_a_failed_upload_waits_out_its_backoff_before_s3_hears_of_it_again(
    policed: tuple[AwsEnvironment, S3PolicyProxy],
) -> None:
    _, proxy = policed
    publisher = Publisher(AwsEnvironment.bucket)
    test = passed_test()
    # Kept at launch, as the controller does; only the package's upload fails.
    asyncio.run(publisher.snapshots.keep("ns", "ships", test.uid, 1, TESTED))
    proxy.fail_next("PUT", 1000, 503, "SlowDown")

    def publish(at: datetime.datetime) -> PublishDeferred:
        with pytest.raises(PublishDeferred) as deferred:
            asyncio.run(publisher.publish(test, at))
        return deferred.value

    first = publish(T0)
    assert first.retry_at == T0 + datetime.timedelta(seconds=2)
    assert "SlowDown" in first.cause
    asked = proxy.count("PUT")
    assert asked >= 1

    # Steps come every second; until the backoff ends they do not reach S3.
    assert publish(T0 + datetime.timedelta(seconds=1)).retry_at == first.retry_at
    assert proxy.count("PUT") == asked

    second = publish(first.retry_at)
    assert proxy.count("PUT") > asked
    assert second.retry_at == first.retry_at + datetime.timedelta(seconds=4)
