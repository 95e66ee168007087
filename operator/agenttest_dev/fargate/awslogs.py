"""The awslogs driver for one container: lines in, PutLogEvents batches out.

Empty lines are dropped, lines over 256 KiB split (not inside a UTF-8
sequence), timestamps never go backwards within the stream, and a batch goes
when it is full or `flush_interval` old, as the driver does.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from moto.backends import get_backend

from agenttest_dev.containers import capture
from agenttest_dev.fargate.aws import ACCOUNT_ID, REGION

# CloudWatch Logs: one event holds at most 256 KiB including 26 bytes of overhead;
# one PutLogEvents call at most 10,000 events and 1 MiB (messages + 26 bytes each).
MAX_EVENT_BYTES = 262144 - 26
MAX_BATCH_EVENTS = 10000
MAX_BATCH_BYTES = 1048576
EVENT_OVERHEAD = 26


class LogShipper:
    """Ships one container's output to ``group``/``stream`` (if awslogs is configured).

    `delivered` gets the messages of every batch sent: what a reader of the
    stream would see, in order.
    """

    def __init__(
        self,
        name: str,
        group: str | None,
        stream: str | None,
        flush_interval: float,
        delivered: Callable[[list[str]], None],
    ) -> None:
        self.name = name
        self.group = group
        self.stream = stream
        self.flush_interval = flush_interval
        self.delivered = delivered
        self.lines: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.pending: list[dict[str, Any]] = []
        self.pending_bytes = 0
        self.oldest = 0.0
        self.last_timestamp = 0

    def reader(self, stream: IO[bytes]) -> threading.Thread:
        """Read a pipe of the container: each line timestamped (ms) as it arrives."""

        def arrived(raw: bytes) -> None:
            self.lines.put((int(time.time() * 1000), raw))

        return capture(stream, arrived, f"awslogs-{self.name}")

    def _events(self, raw: bytes) -> Iterator[str]:
        """The events of one line: no newline; empty lines dropped; long ones split."""
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        while raw:
            chunk = raw[:MAX_EVENT_BYTES]
            # Do not cut a UTF-8 sequence in two.
            while len(chunk) < len(raw) and chunk and (raw[len(chunk)] & 0xC0) == 0x80:
                chunk = chunk[:-1]
            raw = raw[len(chunk) :]
            yield chunk.decode("utf-8", errors="replace")

    def pump(self, final: bool = False) -> None:
        """Move read lines into the batch; send it when due (or when `final`)."""
        while True:
            try:
                timestamp, raw = self.lines.get_nowait()
            except queue.Empty:
                break
            for message in self._events(raw):
                size = len(message.encode()) + EVENT_OVERHEAD
                if (
                    len(self.pending) >= MAX_BATCH_EVENTS
                    or self.pending_bytes + size > MAX_BATCH_BYTES
                ):
                    self.flush()
                # One stream's events must be in chronological order.
                self.last_timestamp = max(self.last_timestamp, timestamp)
                if not self.pending:
                    self.oldest = time.monotonic()
                self.pending.append({"timestamp": self.last_timestamp, "message": message})
                self.pending_bytes += size
        if self.pending and (final or time.monotonic() - self.oldest >= self.flush_interval):
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        if self.group is not None and self.stream is not None:
            logs = get_backend("logs")[ACCOUNT_ID][REGION]
            logs.put_log_events(self.group, self.stream, batch)
        self.delivered([event["message"] for event in batch])
