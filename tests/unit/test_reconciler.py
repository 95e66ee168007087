"""Which watch events ask for a step: the decision that keeps queued tests free (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from agenttest.reconciler import FINALIZER, queue_entry, wants_step


def body(status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    metadata = {
        "uid": "u1",
        "namespace": "ns",
        "name": "t",
        "generation": 1,
        "creationTimestamp": "2026-01-01T00:00:00Z",
        **meta,
    }
    return {"metadata": metadata, "spec": {"priority": 3}, "status": status or {}}


QUEUED = {"phase": "Queued", "observedGeneration": 1, "attempt": 1, "queuePosition": 7}


@pytest.mark.parametrize(
    ("status", "meta", "wanted"),
    [
        ({}, {}, True),  # new, not defaulted yet
        ({"phase": "Pending", "attempt": 0}, {}, True),  # new, as the API server defaults it
        (QUEUED, {}, False),  # our own write coming back
        (QUEUED, {"generation": 2}, True),  # a spec change, a cancel, a priority
        (QUEUED, {"annotations": {"agenttest.dev/retry": "x"}}, True),
        ({**QUEUED, "observedRetry": "x"}, {"annotations": {"agenttest.dev/retry": "x"}}, False),
        ({**QUEUED, "phase": "Running"}, {}, False),  # looked at on its poll
        ({**QUEUED, "phase": "Failed"}, {}, False),  # finished, nothing left to do
        ({**QUEUED, "phase": "Succeeded"}, {}, True),  # passed: to report and package
        (QUEUED, {"deletionTimestamp": "2026-01-01T00:00:09Z", "finalizers": [FINALIZER]}, True),
        (QUEUED, {"deletionTimestamp": "2026-01-01T00:00:09Z"}, False),  # ours to let go: none
        ({"phase": "Bogus"}, {}, True),  # the step says what is wrong
    ],
)
def test_which_events_ask_for_a_step(
    status: dict[str, Any], meta: dict[str, Any], wanted: bool
) -> None:
    made = body(status, **meta)
    assert wants_step(made, made["status"]) is wanted


def test_the_queue_entry_reads_what_the_queue_needs() -> None:
    entry = queue_entry(body({**QUEUED, "retryAfter": "2026-01-01T00:01:00Z"}))
    assert (entry.uid, entry.namespace, entry.name, entry.priority) == ("u1", "ns", "t", 3)
    assert entry.position == 7
    assert entry.not_before is not None and entry.not_before.minute == 1
