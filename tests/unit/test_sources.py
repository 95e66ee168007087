"""Which S3 objects an AgentTest may name as its source, and how a snapshot is hashed."""

from __future__ import annotations

import asyncio
import datetime
import hashlib

import pytest

from agenttest import lifecycle, sources
from agenttest.models import AgentTest, AgentTestSpec, AgentTestStatus, Phase, SourceSnapshot
from agenttest.publishing import Publisher
from agenttest.runner.protocol import source_digest
from agenttest.settings import Settings
from agenttest.sources import S3Grant, Snapshot, SourceUnavailable, check_s3_allowed, s3_grants

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
SPEC = AgentTestSpec.model_validate(
    {
        "agent": {"source": {"inline": "agent = 1\n"}},
        "model": {"provider": "ollama", "modelId": "m", "endpoint": "http://m:11434"},
        "cases": [{"name": "a", "query": "hi"}],
    }
)
ALLOW = (
    "s3://shared-agents/released/",
    "team-a=s3://team-a-agents",
    "team-b=s3://shared-agents/team-b/",
)


def test_the_setting_is_read_as_a_list_of_grants() -> None:
    settings = Settings.from_env({"AGENTTEST_S3_SOURCE_ALLOW": " , ".join(ALLOW)})
    assert s3_grants(settings.s3_source_allow) == (
        S3Grant("shared-agents", "released/"),
        S3Grant("team-a-agents", "", "team-a"),
        S3Grant("shared-agents", "team-b/", "team-b"),
    )


def test_by_default_no_s3_object_is_read() -> None:
    with pytest.raises(SourceUnavailable, match="AGENTTEST_S3_SOURCE_ALLOW"):
        check_s3_allowed(
            "s3://any-bucket/agent.py", "default", s3_grants(Settings().s3_source_allow)
        )


@pytest.mark.parametrize(
    ("uri", "namespace"),
    [
        ("s3://shared-agents/released/agent.py", "anyone"),
        ("s3://team-a-agents/deep/down/agent.py", "team-a"),
        ("s3://shared-agents/team-b/agent.py", "team-b"),
    ],
)
def test_granted_objects_are_allowed(uri: str, namespace: str) -> None:
    check_s3_allowed(uri, namespace, s3_grants(ALLOW))


@pytest.mark.parametrize(
    ("uri", "namespace"),
    [
        ("s3://team-a-agents/agent.py", "team-b"),  # another namespace's grant
        ("s3://shared-agents/team-b/agent.py", "team-a"),
        ("s3://shared-agents/released-candidates/agent.py", "anyone"),  # a look-alike prefix
        ("s3://shared-agents/agent.py", "anyone"),
        ("s3://shared-agents-copy/released/agent.py", "anyone"),  # a look-alike bucket
    ],
)
def test_everything_else_is_refused_naming_the_setting(uri: str, namespace: str) -> None:
    with pytest.raises(SourceUnavailable) as refused:
        check_s3_allowed(uri, namespace, s3_grants(ALLOW))
    assert uri in str(refused.value) and sources.S3_ALLOW_SETTING in str(refused.value)


@pytest.mark.parametrize(
    "entry", ["shared-agents/released/", "s3://", "Team=s3://bucket", "=s3://b"]
)
def test_a_malformed_entry_is_named(entry: str) -> None:
    with pytest.raises(ValueError, match=f"AGENTTEST_S3_SOURCE_ALLOW entry {entry!r}"):
        s3_grants((entry,))


def test_the_snapshot_is_hashed_as_the_judge_hashes_what_it_runs() -> None:
    text = "# é, 日本\nfrom strands import Agent\n"
    snapshot = Snapshot(text, "inline")
    assert snapshot.sha256 == source_digest(text) == hashlib.sha256(text.encode()).hexdigest()
    assert snapshot.status().size_bytes == len(text.encode())


def finished_with(source: SourceSnapshot | None, reported: str | None) -> AgentTestStatus:
    """A passing test's status after the judge reported ``reported`` as what it ran."""
    result = lifecycle.RunnerResult(
        passed=True,
        summary="1/1 cases passed",
        source_sha256=reported,
        environment=["strands-agents==1.2.3"],
    )
    running = AgentTestStatus(phase=Phase.RUNNING, attempt=1, source=source)
    return lifecycle.finish(running, Phase.SUCCEEDED, "ok", NOW, result)


def test_the_judges_digest_and_environment_are_recorded_beside_the_snapshot() -> None:
    snapshot = Snapshot("agent = 1\n", "inline").status()
    status = finished_with(snapshot, snapshot.sha256)
    assert status.source is not None and status.source.tested_sha256 == snapshot.sha256
    assert status.environment == ["strands-agents==1.2.3"]


@pytest.mark.parametrize("reported", [None, "0" * 64])
def test_no_package_unless_the_judge_ran_the_snapshot(reported: str | None) -> None:
    # Refused before any S3 request: the bucket here does not exist.
    snapshot = Snapshot("agent = 1\n", "inline").status()
    test = AgentTest("u", "ns", "t", 1, SPEC, finished_with(snapshot, reported))
    with pytest.raises(SourceUnavailable, match="not the snapshot's"):
        asyncio.run(Publisher("no-such-bucket").tested_source(test))


def test_no_package_for_an_attempt_without_a_snapshot() -> None:
    test = AgentTest("u", "ns", "t", 1, SPEC, finished_with(None, "0" * 64))
    with pytest.raises(SourceUnavailable, match="no snapshot"):
        asyncio.run(Publisher("no-such-bucket").tested_source(test))
