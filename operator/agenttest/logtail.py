"""The bounded log tail kept in status.logTail, and the judge's verified events.

Pure functions, no I/O. Lines go in as the backend reads them; what comes out
is the last lines that fit the byte budget, without ANSI escapes, without
machine lines, and with anything that looks like a credential masked; and the
judge's phase, report and result events, taken only from machine lines whose
signature verifies under the execution's key (report parts are kept for the
report, runner/reports.py, and never shown in the tail). A machine line that
does not verify is counted as forged and otherwise ignored.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from typing import Any

from agenttest import redaction
from agenttest.runner.protocol import MACHINE_PREFIX, ForgedLine, verify_line
from agenttest.runner.reports import EVENT as REPORT_EVENT
from agenttest.runner.reports import MAX_PARTS, ReportPart


def clean_line(line: str) -> str:
    """One log line as it may be shown: no escapes, no control bytes, no secrets, bounded."""
    return redaction.shown(line.rstrip("\r\n"), redaction.LOG_LINE_BYTES)


def is_machine_line(line: str) -> bool:
    return line.startswith(MACHINE_PREFIX)


def append(tail: str, lines: list[str], limit: int = 8192) -> str:
    """The tail after `lines` arrived: the newest whole lines within `limit` bytes."""
    shown = [clean_line(line) for line in lines if not is_machine_line(line)]
    if not shown:
        return tail
    text = "\n".join([tail, *shown]) if tail else "\n".join(shown)
    return bound(text, limit)


def bound(text: str, limit: int) -> str:
    """Drop the oldest lines until the UTF-8 size fits; cut one overlong line."""
    return redaction.newest(text, limit)


@dataclass(frozen=True)
class Progress:
    """What has been read of one execution's output so far."""

    execution_id: str
    cursor: str | None = None
    tail: str = ""
    runner_phase: str | None = None  # "Building" / "Running" from the judge
    result: dict[str, Any] | None = None  # the judge's verified result event
    last_line: str = ""
    exited_at: datetime.datetime | None = None  # first seen exited without a result
    throttled: bool = False  # the last read was refused; the end is not known yet
    last_seq: int = 0  # the newest verified machine line
    forged: int = 0  # machine lines that did not verify
    forged_reported: bool = False  # the ForgedOutput Event went out
    # Verified parts of the judge's report, assembled when the result names it.
    report_parts: tuple[ReportPart, ...] = ()
    # Why a verified report event could not be kept (the first such reason).
    report_problem: str | None = None


def follow(
    progress: Progress, lines: list[str], limit: int, cursor: str | None, key: bytes
) -> Progress:
    """Fold newly read lines into the progress of an execution."""
    phase, result, last = progress.runner_phase, progress.result, progress.last_line
    last_seq, forged = progress.last_seq, progress.forged
    parts, problem = list(progress.report_parts), progress.report_problem
    for line in lines:
        if not is_machine_line(line):
            if line.strip():
                last = clean_line(line)
            continue
        try:
            last_seq, event = verify_line(key, line, last_seq)
        except ForgedLine:
            forged += 1
            continue
        if event.get("event") == "phase":
            phase = str(event.get("phase"))
        elif event.get("event") == "result":
            result = event
        elif event.get("event") == REPORT_EVENT:
            try:
                if len(parts) >= MAX_PARTS:
                    raise ValueError(f"more than {MAX_PARTS} report parts")
                parts.append(ReportPart.parse(event))
            except ValueError as error:
                problem = problem or str(error)
    return replace(
        progress,
        cursor=cursor,
        tail=append(progress.tail, lines, limit),
        runner_phase=phase,
        result=result,
        last_line=last,
        last_seq=last_seq,
        forged=forged,
        report_parts=tuple(parts),
        report_problem=problem,
    )
