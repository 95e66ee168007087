"""The report: its JUnit XML (read back with a real JUnit parser) and its transport."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

import junitparser
import pytest

from agenttest.runner import reports
from agenttest.runner.config import Case, ModelConfig, RunConfig
from agenttest.runner.judge import summarise_case, summarise_model
from agenttest.runner.protocol import (
    CaseOutcome,
    Emitter,
    Observation,
    ReportRef,
    ResultEvent,
    TrialRecord,
    failed_setup,
    verdict,
    verify_line,
)
from agenttest.runner.trials import wilson_interval

KEY = b"k" * 32


def run(trial: int, passed: bool, reason: str = "", latency: float = 1.0) -> dict[str, Any]:
    return {
        "trial": trial,
        "passed": passed,
        "answer": "hello there" if passed else "goodbye",
        "error": None,
        "latencySeconds": latency,
        "modelCalls": 2,
        "tokens": {"input": 10, "output": 5},
        "toolCalls": ["lookup"],
        "costUSD": None,
        "evaluators": [
            {"name": "contains", "passed": passed, "score": float(passed), "reason": reason}
        ],
    }


def case(name: str, model: str, outcomes: list[bool], failures: list[str]) -> dict[str, Any]:
    passes = sum(outcomes)
    low, high = wilson_interval(passes, len(outcomes))
    return {
        "name": name,
        "model": model,
        "query": f"ask {name}",
        "passed": not failures,
        "passes": passes,
        "trials": len(outcomes),
        "passRate": passes / len(outcomes),
        "interval": {"low": low, "high": high},
        "flaky": 0 < passes < len(outcomes),
        "failures": failures,
        "runs": [
            run(i, ok, "" if ok else "hello not found", latency=float(i))
            for i, ok in enumerate(outcomes, start=1)
        ],
    }


def model(name: str, passed: bool) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "ollama",
        "modelId": f"{name}:8b",
        "passed": passed,
        "passRate": 0.5,
        "cases": 2,
        "casesPassed": 1,
        "latencySeconds": {"mean": 2.0, "p95": 3.0},
        "tokens": {"input": 60, "output": 30},
        "costUSD": None,
    }


def matrix() -> dict[str, Any]:
    """Two models, two cases each, three trials; one case fails on the second model."""
    return {
        "kind": "AgentTestReport",
        "version": 1,
        "passed": False,
        "reason": "1 of 4 cases failed",
        "summary": "3/4 cases passed",
        "trials": 3,
        "passThreshold": 0.66,
        "matrixPolicy": "all",
        "models": [model("llama", True), model("qwen", False)],
        "cases": [
            case("greets", "llama", [True, True, True], []),
            case("counts", "llama", [True, False, True], []),
            case("greets", "qwen", [True, True, True], []),
            case("counts", "qwen", [False, False, True], ["pass rate 0.33 below 0.66"]),
        ],
    }


def properties(element: junitparser.TestCase) -> dict[str, str]:
    found = element.child(junitparser.Properties)
    return {prop.name: prop.value for prop in found} if found is not None else {}


# --------------------------------------------------------------------------- JUnit


def test_junit_has_a_suite_per_model_and_a_testcase_per_case_and_model() -> None:
    xml = junitparser.JUnitXml.fromstring(reports.render_junit(matrix()))
    assert isinstance(xml, junitparser.JUnitXml)
    assert (xml.tests, xml.failures, xml.errors) == (4, 1, 0)
    suites = {suite.name: suite for suite in xml}
    assert list(suites) == ["llama", "qwen"]
    cases = {(c.classname, c.name): c for suite in xml for c in suite}
    assert sorted(cases) == [
        ("llama", "counts"),
        ("llama", "greets"),
        ("qwen", "counts"),
        ("qwen", "greets"),
    ]
    failed = cases[("qwen", "counts")]
    assert not failed.is_passed and failed.is_failure
    [failure] = failed.result
    assert failure.message == "pass rate 0.33 below 0.66"
    assert failed.time == pytest.approx(2.0)  # the mean of trials taking 1, 2 and 3 s
    assert all(cases[key].is_passed for key in cases if key != ("qwen", "counts"))
    assert suites["qwen"].failures == 1 and suites["llama"].failures == 0
    assert (
        dict((p.name, p.value) for p in suites["qwen"].properties()).items()
        >= {"provider": "ollama", "modelId": "qwen:8b"}.items()
    )


def test_junit_properties_carry_trials_interval_and_each_trial() -> None:
    xml = junitparser.JUnitXml.fromstring(reports.render_junit(matrix()))
    cases = {(c.classname, c.name): c for suite in xml for c in suite}
    flaky = properties(cases[("llama", "counts")])
    assert flaky["trials"] == "3" and flaky["passes"] == "2" and flaky["flaky"] == "true"
    low, high = wilson_interval(2, 3)
    assert (float(flaky["interval.low"]), float(flaky["interval.high"])) == (low, high)
    assert float(flaky["passRate"]) == pytest.approx(2 / 3)
    assert flaky["trial.1"] == "pass"
    assert flaky["trial.2"] == "fail: hello not found"
    assert flaky["trial.3"] == "pass"


def test_a_setup_failure_is_one_errored_testcase() -> None:
    result = failed_setup("pip could not install nosuchpackage", total_cases=2)
    document = reports.document(result, None)
    xml = junitparser.JUnitXml.fromstring(reports.render_junit(document))
    [suite] = list(xml)
    [setup] = list(suite)
    assert (setup.classname, setup.name) == ("agenttest", "setup")
    [error] = setup.result
    assert isinstance(error, junitparser.Error)
    assert "nosuchpackage" in error.message
    assert (xml.tests, xml.errors) == (1, 1)


def test_what_xml_cannot_hold_is_replaced_not_fatal() -> None:
    document = matrix()
    document["cases"][3]["failures"] = ["bad \x00\x1b[31m byte"]
    document["cases"][3]["name"] = "counts\x07"
    xml = junitparser.JUnitXml.fromstring(reports.render_junit(document))
    names = [c.name for suite in xml for c in suite]
    assert "counts\ufffd" in names


def test_write_files_writes_both(tmp_path: Path) -> None:
    json_path, junit_path = reports.write_files(matrix(), tmp_path / "out")
    assert json.loads(json_path.read_text())["kind"] == "AgentTestReport"
    assert junitparser.JUnitXml.fromfile(str(junit_path)).tests == 4


# --------------------------------------------------------------------------- transport


def emitted(document: dict[str, Any]) -> tuple[list[str], ReportRef]:
    stream = io.StringIO()
    ref = reports.emit_report(Emitter(stream, KEY), document)
    return stream.getvalue().splitlines(), ref


def events(lines: list[str], key: bytes = KEY) -> list[dict[str, Any]]:
    found, seq = [], 0
    for line in lines:
        seq, event = verify_line(key, line, seq)
        found.append(event)
    return found


def test_round_trip() -> None:
    document = matrix()
    lines, ref = emitted(document)
    assembler = reports.ReportAssembler()
    for event in events(lines):
        assembler.add(event)
    assert assembler.assemble(ref) == document
    assert ref.sha256 == reports.digest(reports.encode(document))


def test_parts_are_bounded_and_numbered() -> None:
    # Incompressible answers, so that the report needs several parts.
    document = matrix()
    for entry in document["cases"]:
        for trial in entry["runs"]:
            trial["answer"] = base64.b64encode(os.urandom(60_000)).decode()
    lines, ref = emitted(document)
    found = events(lines)
    assert ref.parts == len(found) > 1
    assert [event["part"] for event in found] == list(range(1, ref.parts + 1))
    assert all(len(line) < 80 * 1024 for line in lines)  # far below CloudWatch's 256 KiB
    assert reports.assemble([reports.ReportPart.parse(e) for e in found], ref) == document


def test_a_missing_part_is_named() -> None:
    document = matrix()
    for entry in document["cases"]:
        entry["runs"][0]["answer"] = base64.b64encode(os.urandom(100_000)).decode()
    lines, ref = emitted(document)
    parts = [reports.ReportPart.parse(e) for e in events(lines)]
    assert len(parts) >= 3
    with pytest.raises(ValueError, match=f"report part 2 of {ref.parts} missing"):
        reports.assemble(parts[:1] + parts[2:], ref)


def test_a_wrong_digest_is_rejected() -> None:
    lines, _ = emitted(matrix())
    other = dict(matrix(), summary="something else")
    claimed = reports.digest(reports.encode(other))
    # The parts of one report presented under the digest of another.
    parts = [reports.ReportPart.parse({**event, "sha256": claimed}) for event in events(lines)]
    with pytest.raises(ValueError, match=f"the result names {claimed}"):
        reports.assemble(parts, ReportRef(claimed, len(parts)))


def test_parts_of_another_report_are_not_taken() -> None:
    _, ref = emitted(matrix())
    other_lines, other_ref = emitted(dict(matrix(), summary="other"))
    parts = [reports.ReportPart.parse(e) for e in events(other_lines)]
    with pytest.raises(ValueError, match="missing"):
        reports.assemble(parts, ref)
    assert reports.assemble(parts, other_ref)["summary"] == "other"


def test_a_forged_part_does_not_verify() -> None:
    stream = io.StringIO()
    reports.emit_report(Emitter(stream, b"not the key" * 3), matrix())
    forged_lines = stream.getvalue().splitlines()
    with pytest.raises(ValueError, match="bad signature"):
        verify_line(KEY, forged_lines[0], 0)


def test_malformed_parts_are_refused() -> None:
    good = {"event": "report", "part": 1, "parts": 1, "sha256": "a" * 64, "data": "AAAA"}
    reports.ReportPart.parse(good)
    for bad, field in (
        ({"part": 2}, "part"),
        ({"parts": reports.MAX_PARTS + 1}, "parts"),
        ({"sha256": "xyz"}, "sha256"),
        ({"data": "not base64!"}, "data"),
        ({"data": "A" * (reports.PART_BYTES + 4)}, "data"),
    ):
        with pytest.raises(ValueError, match=field):
            reports.ReportPart.parse({**good, **bad})


def test_a_report_that_inflates_too_far_is_refused() -> None:
    raw = b" " * (reports.MAX_DOCUMENT_BYTES + 10)
    data = base64.b64encode(gzip.compress(raw)).decode()
    ref = ReportRef(reports.digest(raw), 1)
    part = reports.ReportPart(1, 1, ref.sha256, data)
    with pytest.raises(ValueError, match="inflates past"):
        reports.assemble([part], ref)


def test_the_cap_shrinks_answers_and_says_so() -> None:
    document = matrix()
    document["cases"] = [
        case(f"c{i}", "llama", [True, True, True], []) for i in range(50)
    ]  # 150 runs
    for entry in document["cases"]:
        for trial in entry["runs"]:
            trial["answer"] = base64.b64encode(os.urandom(40_000)).decode()  # ~8 MiB in all
    lines, ref = emitted(document)
    assert ref.parts <= reports.MAX_PARTS
    assert sum(len(event["data"]) for event in events(lines)) <= reports.MAX_ENCODED_BYTES
    parts = [reports.ReportPart.parse(e) for e in events(lines)]
    received = reports.assemble(parts, ref)
    assert "answers cut to" in received["truncated"]
    assert len(received["cases"]) == 50
    longest = max(len(r["answer"]) for c in received["cases"] for r in c["runs"])
    assert longest <= 4000
    assert "truncated" not in document  # the caller's document is left alone


def test_non_finite_numbers_travel_as_null() -> None:
    document = matrix()
    document["cases"][0]["runs"][0]["evaluators"][0]["score"] = float("nan")
    lines, ref = emitted(document)
    received = reports.assemble([reports.ReportPart.parse(e) for e in events(lines)], ref)
    assert received["cases"][0]["runs"][0]["evaluators"][0]["score"] is None


# --------------------------------------------------------------------------- the first report


def test_the_document_holds_every_trial_of_every_model() -> None:
    seen = Observation(model_calls=2, input_tokens=7, output_tokens=3, tool_calls=("add",))
    good = ModelConfig(provider="ollama", model_id="m", name="good")
    bad = ModelConfig(provider="ollama", model_id="n", name="bad")
    config = RunConfig(
        agent_source="",
        models=(good, bad),
        cases=(Case("counts", "Count to 4"),),
        trials=2,
        matrix_policy="any",
        judge_model=good,
    )
    verdicts = ({"name": 'contains "4"', "passed": False, "score": 0.0, "reason": "no 4"},)

    def trial(n: int, passed: bool) -> TrialRecord:
        failures = () if passed else ('contains "4": not found in answer',)
        return TrialRecord(n, passed, "1 2 3", None, 0.5, seen, 0.25, verdicts, failures)

    counts_good = summarise_case(config.cases[0], good, [trial(1, True), trial(2, True)], 1.0)
    counts_bad = summarise_case(config.cases[0], bad, [trial(1, False), trial(2, True)], 1.0)
    by_model = [summarise_model(good, [counts_good]), summarise_model(bad, [counts_bad])]
    result = verdict([counts_good, counts_bad], 2, by_model, "any", trials=2)
    document = reports.document(result, config, judge_tokens=(11, 4))

    assert document["kind"] == "AgentTestReport" and document["passed"] is True
    assert (document["trials"], document["matrixPolicy"]) == (2, "any")
    assert [(m["name"], m["passed"], m["costUSD"]) for m in document["models"]] == [
        ("good", True, 0.5),
        ("bad", False, 0.5),
    ]
    assert document["judgeModel"]["tokens"] == {"input": 11, "output": 4}
    first, second = document["cases"]
    assert (first["model"], second["model"], second["query"]) == ("good", "bad", "Count to 4")
    assert (second["passes"], second["trials"], second["flaky"]) == (1, 2, True)
    assert second["failures"] == ['contains "4": not found in answer (1 of 2 trials)']
    run = second["runs"][0]
    assert run["toolCalls"] == ["add"] and run["tokens"] == {"input": 7, "output": 3}
    assert run["evaluators"][0]["reason"] == "no 4" and run["costUSD"] == 0.25
    xml = junitparser.JUnitXml.fromstring(reports.render_junit(document))
    assert (xml.tests, xml.failures) == (2, 1)


def test_the_result_line_names_the_report() -> None:
    stream = io.StringIO()
    out = Emitter(stream, KEY)
    result = verdict([CaseOutcome("greets", True, 0.5, "hello")], 1)
    document = reports.document(result, None)
    ref = reports.emit_report(out, document)
    out.result(dataclasses.replace(result, report=ref))
    *parts, last = events(stream.getvalue().splitlines())
    read = ResultEvent.parse(last)
    assert read.report == ref
    assert reports.assemble([reports.ReportPart.parse(p) for p in parts], ref) == document
    with pytest.raises(ValueError, match=r"report\.sha256"):
        ResultEvent.parse({**last, "report": {"sha256": "no", "parts": 1}})
