"""Each attempt's agent.py kept in the package bucket (a moto server over HTTP)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from agenttest.models import AgentTest
from agenttest.sources import SnapshotStore, SourceUnavailable, attempt_snapshot, s3_grants
from agenttest_dev.fargate import AwsEnvironment

FIRST = "from strands import Agent\nagent = Agent()  # first\n"
EDITED = "from strands import Agent\nagent = Agent()  # edited\n"


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsEnvironment]:
    with AwsEnvironment() as environment:
        yield environment


@pytest.fixture
def store(aws: AwsEnvironment) -> SnapshotStore:
    return SnapshotStore(aws.bucket, "packages/", client=aws.client("s3"))


def an_attempt(source: str | dict[str, Any], attempt: int = 1, uid: str = "u-1") -> AgentTest:
    """An AgentTest of team-a in its ``attempt``; a str ``source`` is inline."""
    body: dict[str, Any] = {
        "metadata": {"uid": uid, "namespace": "team-a", "name": "kept"},
        "spec": {
            "agent": {"source": {"inline": source} if isinstance(source, str) else source},
            "model": {"provider": "ollama", "modelId": "m", "endpoint": "http://m:11434"},
            "cases": [{"name": "a", "query": "hi"}],
        },
        "status": {"attempt": attempt},
    }
    return AgentTest.from_body(body)


def snapshot_text(store: SnapshotStore, source: str, attempt: int = 1, uid: str = "u-1") -> str:
    return asyncio.run(attempt_snapshot(an_attempt(source, attempt, uid), (), store)).text


def test_a_later_launch_of_the_attempt_runs_what_the_first_one_ran(store: SnapshotStore) -> None:
    assert snapshot_text(store, FIRST) == FIRST
    # An infrastructure retry or a restart launches again after the source changed.
    assert snapshot_text(store, EDITED) == FIRST
    # A new attempt reads the source anew.
    assert snapshot_text(store, EDITED, attempt=2) == EDITED


def test_the_publisher_gets_the_kept_bytes_only_under_their_digest(store: SnapshotStore) -> None:
    snapshot_text(store, FIRST, uid="u-2")
    digest = hashlib.sha256(FIRST.encode()).hexdigest()
    assert asyncio.run(store.read("team-a", "kept", "u-2", 1, digest)) == FIRST
    with pytest.raises(SourceUnavailable, match="not the tested"):
        asyncio.run(store.read("team-a", "kept", "u-2", 1, "0" * 64))
    with pytest.raises(SourceUnavailable, match="missing"):
        asyncio.run(store.read("team-a", "kept", "u-3", 1, digest))


def test_a_snapshot_changed_in_the_bucket_is_not_read_back(
    store: SnapshotStore, aws: AwsEnvironment
) -> None:
    snapshot_text(store, FIRST, uid="u-4")
    key = store.key("team-a", "kept", "u-4", 1)
    aws.client("s3").put_object(Bucket=aws.bucket, Key=key, Body=b"import os\n")
    # Its bytes no longer match the digest written with them: read the source again.
    assert snapshot_text(store, EDITED, uid="u-4") == EDITED


def test_an_s3_source_outside_the_allowlist_is_refused_before_any_read_back(
    store: SnapshotStore,
) -> None:
    refused = an_attempt({"s3": {"uri": "s3://elsewhere/agent.py"}})
    grants = s3_grants(("s3://agents/team-a/",))
    with pytest.raises(SourceUnavailable, match="AGENTTEST_S3_SOURCE_ALLOW"):
        asyncio.run(attempt_snapshot(refused, grants, store))
