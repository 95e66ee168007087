from __future__ import annotations

import datetime

import pytest

from agenttest import queueview
from agenttest.queueview import QueueRow

NOW = datetime.datetime(2026, 11, 29, 12, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    "seconds,shown",
    [
        (-5, "<invalid>"),
        (-0.5, "0s"),
        (5, "5s"),
        (119, "119s"),
        (120, "2m"),
        (185, "3m5s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 60 * 7, "3h7m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (48 * 3600, "2d"),
        (3 * 86400 + 5 * 3600, "3d5h"),
        (30 * 86400, "30d"),
        (3 * 365 * 86400, "3y"),
        (10 * 365 * 86400, "10y"),
    ],
)
def test_ages_read_as_kubectl_prints_them(seconds: float, shown: str) -> None:
    assert queueview.human_duration(seconds) == shown


def test_document_orders_rows_by_position_in_camel_case() -> None:
    rows = [
        QueueRow("b", "two", 0, 2, "2026-11-29T11:00:00Z", "no free slot (3/3 running)", "pod"),
        QueueRow("a", "one", 9, 1, "2026-11-29T11:30:00Z", queueview.NEXT_TO_START),
    ]
    document = queueview.to_json(rows, running=3, limit=3, now=NOW)
    assert document == {
        "running": 3,
        "limit": 3,
        "generatedAt": "2026-11-29T12:00:00Z",
        "queued": [
            {
                "namespace": "a",
                "name": "one",
                "priority": 9,
                "position": 1,
                "waitingSince": "2026-11-29T11:30:00Z",
                "reason": "next to start",
            },
            {
                "namespace": "b",
                "name": "two",
                "priority": 0,
                "position": 2,
                "waitingSince": "2026-11-29T11:00:00Z",
                "reason": "no free slot (3/3 running)",
                "backend": "pod",
            },
        ],
    }


def test_reasons_are_worded_once() -> None:
    assert queueview.no_free_slot(10, 10) == "no free slot (10/10 running)"
    assert queueview.namespace_cap(3, 3) == "namespace cap (3/3 running in namespace)"
    until = datetime.datetime(2026, 11, 29, 12, 5, tzinfo=datetime.UTC)
    assert queueview.retry_backoff(until) == "retry backoff until 2026-11-29T12:05:00Z"


def test_table_ages_count_to_the_operators_clock() -> None:
    rows = [
        QueueRow("team-a", "first", 5, 1, "2026-11-29T11:59:55Z", "next to start"),
        QueueRow("team-a", "a-longer-name", 0, 2, "2026-11-29T09:45:00Z", "no free slot (1/1)"),
    ]
    document = queueview.to_json(rows, running=1, limit=1, now=NOW)
    assert queueview.render_table(document).splitlines() == [
        "POSITION   NAMESPACE   NAME            PRIORITY   WAITING   REASON",
        "1          team-a      first           5          5s        next to start",
        "2          team-a      a-longer-name   0          135m      no free slot (1/1)",
    ]


def test_filtering_keeps_positions_and_names_the_namespace_when_empty() -> None:
    rows = [
        QueueRow("a", "one", 0, 1, "2026-11-29T11:00:00Z", "next to start"),
        QueueRow("b", "two", 0, 2, "2026-11-29T11:00:00Z", "no free slot (3/3 running)"),
    ]
    document = queueview.to_json(rows, running=3, limit=3, now=NOW)
    only_b = queueview.only_namespace(document, "b")
    assert [row["position"] for row in only_b["queued"]] == [2]
    assert queueview.only_namespace(document, None) == document
    empty = queueview.only_namespace(document, "c")
    assert queueview.render_table(empty) == "No tests waiting in namespace c (3/3 running)."
    none = queueview.to_json([], running=0, limit=10, now=NOW)
    assert queueview.render_table(none) == "No tests waiting (0/10 running)."


def test_a_reason_with_line_breaks_stays_on_its_row() -> None:
    rows = [QueueRow("a", "one", 0, 1, "not a time", "waits\nfor\tthis")]
    [_, line] = queueview.render_table(queueview.to_json(rows, 0, 1, now=NOW)).splitlines()
    assert line.split()[-4:] == ["<unknown>", "waits", "for", "this"]
