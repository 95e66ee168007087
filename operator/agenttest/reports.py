"""The judge's report as the operator stores it: where, in what shape, from what parts.

Pure functions, no I/O. The judge sends its report as signed parts before its
result (runner/reports.py); `assemble` folds the verified parts back into the
document the result names. `stored` turns that document into report.json as the
operator keeps it: the test it belongs to added, every string through redaction;
`files` gives report.json and the junit.xml rendered from it. reporting.py puts
them in S3 under `keys`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agenttest import redaction
from agenttest.runner import reports as runner_reports
from agenttest.runner.protocol import ReportRef
from agenttest.runner.reports import ReportPart

PREFIX = "reports/"
JSON_CONTENT_TYPE = "application/json"
JUNIT_CONTENT_TYPE = "application/xml"


@dataclass(frozen=True)
class Assembled:
    """What became of the report a result named: the document, or why there is none."""

    document: dict[str, Any] | None = None
    problem: str | None = None


def assemble(
    ref: ReportRef | None, parts: tuple[ReportPart, ...], problem: str | None
) -> Assembled | None:
    """The report the result names from the parts read before it; None if it names none."""
    if ref is None:
        return None
    if problem is not None:
        return Assembled(problem=problem)
    try:
        return Assembled(document=runner_reports.assemble(parts, ref))
    except ValueError as error:
        return Assembled(problem=str(error))


def keys(namespace: str, name: str, uid: str, attempt: int) -> tuple[str, str]:
    """The S3 keys of report.json and junit.xml of a test's attempt."""
    base = f"{PREFIX}{namespace}/{name}/{uid}/{attempt}/"
    return base + runner_reports.REPORT_FILE, base + runner_reports.JUNIT_FILE


@dataclass(frozen=True)
class TestIdentity:
    """The test a report belongs to, added to report.json as ``test``."""

    namespace: str
    name: str
    uid: str
    attempt: int
    phase: str
    source_sha256: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "attempt": self.attempt,
            "phase": self.phase,
            "sourceSha256": self.source_sha256,
        }


def stored(document: Mapping[str, Any], test: TestIdentity) -> dict[str, Any]:
    """report.json's content: the judge's document with ``test``, every string redacted."""
    cleaned: dict[str, Any] = redaction.document({**document, "test": test.to_json()})
    return cleaned


def files(document: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """(report.json, junit.xml) of a stored document, as they are written to S3."""
    data = runner_reports.report_json(document).encode("utf-8")
    return data, runner_reports.render_junit(json.loads(data)).encode("utf-8")


# ------------------------------------------------------------------ the table people read
# `agenttest report` renders a stored report's cases with it, `agenttest results`
# the cases of a test's status (followview.report_cases puts them in this shape).


def cut(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters (an ellipsis marks a cut)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rate(value: object) -> str:
    return f"{value:.0%}" if isinstance(value, int | float) else "-"


def table(document: Mapping[str, Any], failure_width: int = 60, verdict: bool = False) -> str:
    """One line per case and model, in columns, under a header.

    ``verdict`` adds RESULT (PASS or FAIL, the case's own verdict): with a
    passThreshold under 1, PASSES alone does not say it.
    """
    header = ["CASE", "MODEL", "PASSES", "RATE", "INTERVAL", "FLAKY", "FIRST FAILURE"]
    if verdict:
        header.insert(2, "RESULT")
    rows = [header]
    for case in document.get("cases") or []:
        interval = case.get("interval") or {}
        low, high = interval.get("low"), interval.get("high")
        failures = case.get("failures") or []
        row = [
            str(case.get("name", "")),
            str(case.get("model", "")),
            f"{case.get('passes', 0)}/{case.get('trials', 0)}",
            rate(case.get("passRate")),
            f"{rate(low)}-{rate(high)}" if low is not None and high is not None else "-",
            "yes" if case.get("flaky") else "no",
            cut(str(failures[0]), failure_width) if failures else "",
        ]
        if verdict:
            row.insert(2, "PASS" if case.get("passed") else "FAIL")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
