"""The operator's side of reports: folding parts, deciding, shaping what is stored."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from typing import Any

import junitparser
import pytest
from test_following import POLICY
from test_packaging import sample_input

from agenttest import conditions, lifecycle, logtail, packaging, report_cli, reports
from agenttest.executions import ExecutionState, Observation
from agenttest.lifecycle import Act
from agenttest.logtail import Progress
from agenttest.models import AgentTestStatus, ConditionType, Phase, Reports
from agenttest.runner import reports as runner_reports
from agenttest.runner.protocol import CaseOutcome, Emitter, signed_line, verdict

from test_lifecycle import at, spec, started

KEY = b"k" * 32
EXITED = Observation(ExecutionState.EXITED, exit_code=0)


def judge_output(key: bytes = KEY, answer: str = "hello") -> list[str]:
    """What a judge prints for one passing case "a": report lines, then the result."""
    stream = io.StringIO()
    out = Emitter(stream, key)
    out.log("1 cases")
    result = verdict([CaseOutcome("a", True, 0.5, answer)], 1)
    document = runner_reports.document(result, None)
    ref = runner_reports.emit_report(out, document)
    out.result(dataclasses.replace(result, report=ref))
    return stream.getvalue().splitlines()


def read(lines: list[str], key: bytes = KEY) -> Progress:
    return logtail.follow(Progress("exec-1"), lines, 8192, None, key)


def ended(progress: Progress) -> lifecycle.Followed:
    return lifecycle.follow(started(), spec(), EXITED, progress, at(5), 0, POLICY)


def reported_condition(status: AgentTestStatus) -> Any:
    return conditions.get(status.conditions, ConditionType.REPORTED)


def test_report_parts_are_kept_and_never_shown_in_the_tail() -> None:
    lines = judge_output()
    progress = read(lines)
    assert len(progress.report_parts) == 1 and progress.result is not None
    assert progress.tail == "[agenttest] 1 cases"
    assert "report" not in progress.last_line


def test_a_result_with_its_report_leaves_it_pending_for_the_controller() -> None:
    followed = ended(read(judge_output()))
    assert followed.act == Act.DONE and followed.status.phase == Phase.SUCCEEDED
    assert followed.report is not None and followed.report["cases"][0]["name"] == "a"
    condition = reported_condition(followed.status)
    assert (condition.status, condition.reason) == ("Unknown", "Pending")
    assert lifecycle.needs_report(followed.status)
    # The package waits for the report: it holds it.
    assert not lifecycle.needs_package(followed.status, True)
    assert lifecycle.wants_step(followed.status, True, 1, None)


def test_a_missing_part_is_said_once_and_nothing_is_stored() -> None:
    lines = [line for line in judge_output() if '"event":"report"' not in line]
    followed = ended(read(lines))
    assert followed.status.phase == Phase.SUCCEEDED  # the verdict stands
    assert followed.report is None
    condition = reported_condition(followed.status)
    assert (condition.status, condition.reason) == ("False", "ReportUnreadable")
    assert "report part 1 of 1 missing" in (followed.status.message or "")
    assert not lifecycle.needs_report(followed.status)
    assert lifecycle.needs_package(followed.status, True)


def test_a_forged_part_is_counted_and_not_taken() -> None:
    genuine = judge_output()
    forged = judge_output(key=b"another key" * 3, answer="forged")
    # The forged report line stands where the genuine one was.
    lines = [forged[i] if '"event":"report"' in line else line for i, line in enumerate(genuine)]
    progress = read(lines)
    assert progress.forged == 1 and progress.report_parts == ()
    followed = ended(progress)
    assert followed.report is None
    assert reported_condition(followed.status).reason == "ReportUnreadable"


def test_a_malformed_signed_part_is_a_problem_not_a_crash() -> None:
    stream = io.StringIO()
    out = Emitter(stream, KEY)
    out.machine({"event": "report", "part": 9, "parts": 1, "sha256": "0" * 64, "data": ""})
    result = verdict([CaseOutcome("a", True, 0.5, "hello")], 1)
    document = runner_reports.document(result, None)
    ref = runner_reports.emit_report(out, document)
    out.result(dataclasses.replace(result, report=ref))
    progress = read(stream.getvalue().splitlines())
    assert progress.report_problem is not None and "part" in progress.report_problem
    followed = ended(progress)
    assert followed.report is None
    assert "report part is not a number" in (followed.status.message or "")


def test_a_result_without_a_report_asks_for_none() -> None:
    lines = [line for line in judge_output() if '"event":"report"' not in line]
    result = json.loads(lines[-1].split(" ", 3)[3])
    del result["report"]
    seq = int(lines[-1].split(" ")[1])
    lines[-1] = signed_line(KEY, seq, result)
    followed = ended(read(lines))
    assert followed.report is None and reported_condition(followed.status) is None
    assert not lifecycle.needs_report(followed.status)


def test_storing_settles_the_condition_and_a_new_attempt_forgets_it() -> None:
    pending = ended(read(judge_output())).status
    stored = Reports.model_validate(
        {"json": "s3://b/reports/x/report.json", "junit": "s3://b/j", "sha256": "a" * 64}
    )
    done = lifecycle.reported(pending, True, "Stored", "s3://b/reports/x", 1, at(6), stored)
    assert done.reports == stored and reported_condition(done).status == "True"
    assert not lifecycle.needs_report(done) and lifecycle.needs_package(done, True)
    assert done.wire()["reports"]["json"] == "s3://b/reports/x/report.json"
    again = lifecycle.start_attempt(done, spec(), 2, None, "spec changed")
    assert again.reports is None and reported_condition(again) is None


def test_keys_and_the_stored_document() -> None:
    assert reports.keys("ns", "t", "u-1", 3) == (
        "reports/ns/t/u-1/3/report.json",
        "reports/ns/t/u-1/3/junit.xml",
    )
    result = verdict([CaseOutcome("a", False, 0.5, "my password=hunter2", ("nope",))], 1)
    document = runner_reports.document(result, None)
    document["cases"][0]["runs"][0]["error"] = "token: sk-live-123 \x1b[31mred"
    identity = reports.TestIdentity("ns", "t", "u-1", 3, "Failed", "b" * 64)
    kept = reports.stored(document, identity)
    text = json.dumps(kept)
    assert "hunter2" not in text and "sk-live-123" not in text and "\x1b" not in text
    assert kept["test"] == {
        "namespace": "ns",
        "name": "t",
        "uid": "u-1",
        "attempt": 3,
        "phase": "Failed",
        "sourceSha256": "b" * 64,
    }
    data, junit = reports.files(kept)
    assert json.loads(data) == kept
    parsed = junitparser.JUnitXml.fromstring(junit.decode())
    assert parsed.failures == 1 and parsed.name == "agenttest ns/t"


def test_a_package_holds_the_stored_report_and_its_junit() -> None:
    result = verdict([CaseOutcome("greets", True, 0.5, "hello")], 1)
    kept = reports.stored(
        runner_reports.document(result, None),
        reports.TestIdentity("team-a", "hello-agent", "u", 2, "Succeeded", None),
    )
    data, junit = reports.files(kept)
    files = packaging.render(sample_input(report=data))
    assert files["report.json"] == data and files["junit.xml"] == junit
    listed = {f["path"] for f in json.loads(files["manifest.json"])["files"]}
    assert {"report.json", "junit.xml"} <= listed
    archive = zipfile.ZipFile(io.BytesIO(packaging.build_zip(files)))
    assert archive.read("junit.xml") == junit
    assert "report.json" not in packaging.render(sample_input())


# --------------------------------------------------------------------------- agenttest report


def finished_test(**status: Any) -> dict[str, Any]:
    json_key, _ = reports.keys("ns", "t", "u-1", 2)
    return {
        "metadata": {"namespace": "ns", "name": "t", "uid": "u-1"},
        "status": {
            "phase": "Failed",
            "attempt": 2,
            "reports": {"json": f"s3://b/{json_key}", "junit": "s3://b/j", "sha256": "c" * 64},
            **status,
        },
    }


def test_the_cli_finds_the_report_only_at_the_tests_own_key() -> None:
    located = report_cli.locate(finished_test())
    assert (located.bucket, located.key) == ("b", "reports/ns/t/u-1/2/report.json")
    moved = finished_test(reports={"json": "s3://b/elsewhere.json", "sha256": "c" * 64})
    with pytest.raises(report_cli.NoReport, match="not at its own key"):
        report_cli.locate(moved)


def test_the_cli_says_why_there_is_no_report() -> None:
    with pytest.raises(report_cli.NoReport, match="has not finished"):
        report_cli.locate(finished_test(phase="Running"))
    refused = {"type": "Reported", "status": "False", "reason": "NotConfigured", "message": "m"}
    with pytest.raises(report_cli.NoReport, match="NotConfigured: m"):
        report_cli.locate(finished_test(reports=None, conditions=[refused]))
    with pytest.raises(report_cli.NoReport, match="sent no report"):
        report_cli.locate(finished_test(reports=None, phase="Cancelled"))


def test_the_cli_checks_the_digest_and_prints_a_row_per_case_and_model() -> None:
    result = verdict(
        [
            CaseOutcome("greets", True, 0.5, "hello"),
            CaseOutcome("counts", False, 0.7, "three", ("contains '4': not found",)),
        ],
        2,
    )
    data, _ = reports.files(runner_reports.document(result, None))
    located = report_cli.Located("b", "k", hashlib.sha256(data).hexdigest(), "Failed")
    document = report_cli.verify(data, located)
    with pytest.raises(report_cli.NoReport, match="not the stored report"):
        report_cli.verify(data + b" ", located)
    header, *rows = reports.table(document).splitlines()
    assert header.split() == [
        "CASE",
        "MODEL",
        "PASSES",
        "RATE",
        "INTERVAL",
        "FLAKY",
        "FIRST",
        "FAILURE",
    ]
    assert rows[0].split()[:6] == ["greets", "default", "1/1", "100%", "21%-100%", "no"]
    assert rows[1].split()[:3] == ["counts", "default", "0/1"]
    assert rows[1].endswith("contains '4': not found")
