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
