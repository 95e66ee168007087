"""Kubernetes Events about AgentTests, posted under the operator's own name.

`kubectl describe agenttest` shows them with `From agenttest-operator` (kopf's
poster said `kopf`). They are posted in the background, a few at a time,
through the same bounded client as every other call: kopf's poster opened a
TLS connection per concurrent post (a quarter of a megabyte of buffers each),
which with thousands of admissions was the largest part of the operator's
memory.

Events are best effort, as in client-go: one that cannot be posted is logged
and dropped, and a full backlog drops the newest rather than growing without
bound. The lifecycle is in the status; Events only tell its story.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from agenttest import kubeapi, redaction
from agenttest.models import AGENTTEST_KIND, API_VERSION

logger = logging.getLogger(__name__)

COMPONENT = "agenttest-operator"
# The reasons this operator posts, CamelCase as Kubernetes' own. The phase
# reasons are the phases' names (`Phase`); the README lists them all.
FORGED_OUTPUT = "ForgedOutput"
FLAKY_CASES = "FlakyCases"


@dataclass(frozen=True)
class Event:
    """One Event about one AgentTest."""

    namespace: str
    name: str
    uid: str
    type: str  # Normal or Warning
    reason: str
    message: str


def event_body(event: Event, now: datetime.datetime, instance: str) -> dict[str, Any]:
    """The core/v1 Event the API server stores (pure)."""
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            # client-go's form: the object's name and something unique.
            "name": f"{event.name}.{uuid.uuid4().hex[:16]}",
            "namespace": event.namespace,
        },
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": AGENTTEST_KIND,
            "name": event.name,
            "namespace": event.namespace,
            "uid": event.uid,
        },
        "type": event.type,
        "reason": event.reason,
        "message": redaction.shown(event.message, redaction.EVENT_BYTES),
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def instance_name() -> str:
    """This replica: its pod's name in a cluster (the hostname), else the host's."""
    return os.environ.get("POD_NAME") or socket.gethostname()


class EventPoster:
    """A bounded backlog of Events and the tasks that post them."""

    def __init__(self, capacity: int = 5000, posters: int = 2) -> None:
        self._backlog: asyncio.Queue[Event] = asyncio.Queue(maxsize=capacity)
        self._posters = posters
        self._tasks: list[asyncio.Task[None]] = []
        self._instance = instance_name()
        self.dropped = 0

    def post(self, event: Event) -> None:
        """Queue ``event``; never waits (a step must not wait for its story)."""
        try:
            self._backlog.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "%d Event(s) dropped: the API server is not keeping up", self.dropped
                )

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._post_forever(), name=f"events-{i}")
                for i in range(self._posters)
            ]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def drain(self) -> None:
        """Wait until every queued Event was posted or dropped (tests, shutdown)."""
        await self._backlog.join()

    async def _post_forever(self) -> None:
        while True:
            event = await self._backlog.get()
            try:
                body = event_body(event, datetime.datetime.now(datetime.UTC), self._instance)
                await kubeapi.create_event(event.namespace, body)
            except Exception as error:
                # The namespace is going, RBAC, the API server away: the story loses a line.
                logger.warning(
                    "posting %s Event for %s/%s failed: %s",
                    event.reason,
                    event.namespace,
                    event.name,
                    error,
                )
            finally:
                self._backlog.task_done()
