"""The Events the operator posts: their shape, under the operator's name (pure)."""

from __future__ import annotations

import asyncio
import datetime

from agenttest import redaction
from agenttest.events import COMPONENT, Event, EventPoster, event_body

NOW = datetime.datetime(2026, 11, 29, 12, 0, 5, tzinfo=datetime.UTC)


def test_an_event_names_the_test_and_the_operator() -> None:
    body = event_body(
        Event("team-a", "hello", "u-1", "Normal", "Queued", "position 3"), NOW, "pod-1"
    )
    assert body["involvedObject"] == {
        "apiVersion": "agenttest.dev/v1alpha1",
        "kind": "AgentTest",
        "name": "hello",
        "namespace": "team-a",
        "uid": "u-1",
    }
    assert (body["type"], body["reason"], body["message"]) == ("Normal", "Queued", "position 3")
    # `kubectl describe` shows source.component as From.
    assert body["source"] == {"component": COMPONENT} == {"component": "agenttest-operator"}
    assert (body["reportingComponent"], body["reportingInstance"]) == (COMPONENT, "pod-1")
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-11-29T12:00:05Z"
    assert body["metadata"]["namespace"] == "team-a"
    assert body["metadata"]["name"].startswith("hello.")


def test_each_event_has_its_own_name() -> None:
    event = Event("ns", "t", "u", "Normal", "Running", "")
    assert (
        event_body(event, NOW, "x")["metadata"]["name"]
        != event_body(event, NOW, "x")["metadata"]["name"]
    )


def test_a_long_message_is_cut_to_what_the_api_server_takes() -> None:
    body = event_body(Event("ns", "t", "u", "Warning", "Failed", "x" * 5000), NOW, "x")
    assert len(body["message"].encode()) <= redaction.EVENT_BYTES


def test_a_full_backlog_drops_the_newest_and_counts_it() -> None:
    async def said() -> EventPoster:
        poster = EventPoster(capacity=2)  # not started: nothing is posted
        for reason in ("Queued", "Building", "Running"):
            poster.post(Event("ns", "t", "u", "Normal", reason, ""))
        return poster

    poster = asyncio.run(said())
    assert poster.dropped == 1
