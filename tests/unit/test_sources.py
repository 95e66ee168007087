"""Which S3 objects an AgentTest may name as its source, and how a snapshot is hashed."""

from __future__ import annotations

import hashlib

import pytest

from agenttest import sources
from agenttest.runner.protocol import source_digest
from agenttest.settings import Settings
from agenttest.sources import S3Grant, Snapshot, SourceUnavailable, check_s3_allowed, s3_grants

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
