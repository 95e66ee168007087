"""The queue as people see it: who waits, in which order, and why (pure).

The scheduler knows the order and the reason of every waiting test; this
module gives that a shape (`QueueRow`), the JSON document the operator's HTTP
server answers `GET /queue` with (`to_json`), and the table `agenttest queue`
and `GET /queue?format=table` print (`render_table`). It imports nothing of the
operator, so both the scheduler and the command line can use it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The reasons a test waits, worded once here so the scheduler and the
# documentation say the same thing. `position` 1 with a free slot is "next".
NEXT_TO_START = "next to start"


def no_free_slot(running: int, limit: int) -> str:
    return f"no free slot ({running}/{limit} running)"


def namespace_cap(running: int, cap: int) -> str:
    return f"namespace cap ({running}/{cap} running in namespace)"


def retry_backoff(until: datetime.datetime | str) -> str:
    when = until if isinstance(until, str) else rfc3339(until)
    return f"retry backoff until {when}"


@dataclass(frozen=True)
class QueueRow:
    """One waiting test."""

    namespace: str
    name: str
    priority: int
    position: int  # 1-based: the order waiting tests will start in, over all namespaces
    waiting_since: str  # RFC 3339: creation time, or when it was requeued
    reason: str  # why it waits, in words (see the helpers above)
    backend: str | None = None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "namespace": self.namespace,
            "name": self.name,
            "priority": self.priority,
            "position": self.position,
            "waitingSince": self.waiting_since,
            "reason": self.reason,
        }
        if self.backend is not None:
            document["backend"] = self.backend
        return document


def rfc3339(moment: datetime.datetime) -> str:
    """UTC, whole seconds, `Z`: how the API server writes timestamps."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def to_json(
    rows: Iterable[QueueRow],
    running: int,
    limit: int,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The document of `GET /queue`: the running count, the limit, the waiting tests in order.

    `generatedAt` is the operator's clock when the view was taken, so a table
    rendered elsewhere shows ages as the operator saw them.
    """
    return {
        "running": running,
        "limit": limit,
        "generatedAt": rfc3339(now or _now()),
        "queued": [row.to_json() for row in sorted(rows, key=lambda row: row.position)],
    }


def only_namespace(document: Mapping[str, Any], namespace: str | None) -> dict[str, Any]:
    """The document with only one namespace's tests (positions stay those of the whole queue).

    A filter for reading, not access control: whoever may read /queue sees every namespace.
    """
    filtered = dict(document)
    if namespace:
        filtered["namespace"] = namespace
        filtered["queued"] = [
            row for row in document.get("queued") or [] if row.get("namespace") == namespace
        ]
    return filtered


def parse_time(text: str) -> datetime.datetime | None:
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def human_duration(seconds: float) -> str:
    """An age as `kubectl get` prints one (k8s.io/apimachinery duration.HumanDuration)."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    total = int(seconds)
    if total < 60 * 2:
        return f"{total}s"
    minutes = total // 60
    if minutes < 10:
        rest = total % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


COLUMNS = ("POSITION", "NAMESPACE", "NAME", "PRIORITY", "WAITING", "REASON")


def render_table(document: Mapping[str, Any], now: datetime.datetime | None = None) -> str:
    """The waiting tests in kubectl's column style; a sentence when none waits.

    Ages are counted to `now`, else to the document's `generatedAt`, else to
    this machine's clock.
    """
    if now is None:
        now = parse_time(str(document.get("generatedAt") or "")) or _now()
    queued = list(document.get("queued") or [])
    if not queued:
        where = f" in namespace {document['namespace']}" if document.get("namespace") else ""
        running = f"{document.get('running', 0)}/{document.get('limit', 0)} running"
        return f"No tests waiting{where} ({running})."
    rows = [COLUMNS]
    for row in queued:
        since = parse_time(str(row.get("waitingSince") or ""))
        rows.append(
            (
                str(row.get("position", "")),
                str(row.get("namespace", "")),
                str(row.get("name", "")),
                str(row.get("priority", "")),
                human_duration((now - since).total_seconds()) if since else "<unknown>",
                " ".join(str(row.get("reason", "")).split()),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    # Three spaces between columns, like kubectl's tabwriter; no trailing blanks.
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
