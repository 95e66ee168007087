"""The run's report: its JUnit XML, its files, and how it travels to the operator.

The judge builds a report document (a JSON object, ``"kind": "AgentTestReport"``:
every case on every model, every trial with its answer, what the gateway observed
and each evaluator's verdict) and hands it here. From it come

* ``render_junit``: a JUnit XML with one testsuite per model and one testcase per
  case and model, for CI systems;
* ``write_files``: report.json and junit.xml in a directory;
* ``emit_report``: the document as signed machine lines, before the result line,
  so that the operator gets it over the one channel it trusts (protocol.py)::

      {"event": "report", "part": 1, "parts": 3, "sha256": "<hex>", "data": "<base64>"}

  ``data`` is a slice of the base64 of the gzip of the document's UTF-8 JSON, at most
  PART_BYTES long; ``part`` counts from 1; ``sha256`` is that of the uncompressed
  JSON, the same in every part, and the result line names it again (ReportRef), so
  the operator takes only the parts of the report the result vouches for.
  ``assemble`` (and ``ReportAssembler``) fold them back and check the digest.

Standard library only: this runs inside the execution (runner/__init__.py).
"""

from __future__ import annotations

import base64
import binascii
import copy
import gzip
import hashlib
import json
import math
import re
import statistics
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agenttest.runner.config import ModelConfig, RunConfig
from agenttest.runner.protocol import (
    CaseOutcome,
    Emitter,
    Observation,
    ReportRef,
    RunResult,
    TrialRecord,
)
from agenttest.runner.trials import wilson_interval

KIND = "AgentTestReport"
VERSION = 1
REPORT_FILE = "report.json"
JUNIT_FILE = "junit.xml"
EVENT = "report"

# Characters of base64 in one report line. With its envelope a line stays far below
# the 256 KiB CloudWatch Logs keeps as one event (a longer line is split into events,
# and a split machine line no longer verifies).
PART_BYTES = 64 * 1024
# Characters of base64 the whole report may put in the log (3 MiB of gzip). A pod's
# log is rotated at 10 MiB (the kubelet's containerLogMaxSize default) and the
# operator reads only the current file: this, plus the agent output the relay lets
# through (relay.BUDGET_BYTES, 1 MiB) and the judge's own lines, stays below it.
MAX_ENCODED_BYTES = 4 * 1024 * 1024
MAX_PARTS = MAX_ENCODED_BYTES // PART_BYTES
# The uncompressed JSON, bounded on both sides: the judge shrinks a report over it,
# the operator refuses to inflate past it (gzip expands a thousandfold at most).
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
# Characters kept of each answer while a report is shrunk to fit, in turn.
ANSWER_STEPS = (4000, 1000, 250, 60, 0)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
# What XML 1.0 cannot hold at all (most C0 controls, lone surrogates, U+FFFE/F).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# --------------------------------------------------------------------------- encoding


def _finite(value: Any) -> Any:
    """The value with NaN and infinities as null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def encode(document: Mapping[str, Any]) -> bytes:
    """The document's canonical UTF-8 JSON: what ``sha256`` in the report lines hashes."""
    text = json.dumps(
        document, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return text.encode("utf-8")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pack(raw: bytes) -> str:
    # mtime=0: the same document always travels as the same lines.
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


def _cut_answers(document: dict[str, Any], limit: int) -> None:
    for case in document.get("cases", []):
        for run in case.get("runs", []):
            answer = run.get("answer")
            if isinstance(answer, str) and len(answer) > limit:
                run["answer"] = answer[: max(0, limit - 1)] + "…" if limit else ""


def fit(document: Mapping[str, Any]) -> tuple[dict[str, Any], bytes, str]:
    """(document, its JSON, the base64 of its gzip) within MAX_ENCODED_BYTES.

    A report over the bounds is shrunk, and says so in ``"truncated"``: answers are
    cut shorter in steps; if even empty answers do not fit, the runs go, then the
    cases (the summary, the models and the verdict always stay).
    """
    shaped: dict[str, Any] = _finite(copy.deepcopy(dict(document)))

    def attempt() -> tuple[bytes, str] | None:
        raw = encode(shaped)
        if len(raw) > MAX_DOCUMENT_BYTES:
            return None
        packed = _pack(raw)
        return (raw, packed) if len(packed) <= MAX_ENCODED_BYTES else None

    done = attempt()
    if done is not None:
        return shaped, *done
    budget = f"the {MAX_ENCODED_BYTES // (1024 * 1024)} MiB the log carries"
    for limit in ANSWER_STEPS:
        _cut_answers(shaped, limit)
        shaped["truncated"] = f"answers cut to {limit} characters to fit {budget}"
        done = attempt()
        if done is not None:
            return shaped, *done
    for case in shaped.get("cases", []):
        case["runs"] = []
    shaped["truncated"] = f"runs left out to fit {budget}"
    done = attempt()
    if done is not None:
        return shaped, *done
    shaped["cases"] = []
    shaped["truncated"] = f"cases left out to fit {budget}"
    done = attempt()
    if done is None:  # the models and the reason alone: only a broken document
        raise ValueError(f"the report does not fit {budget} even without its cases")
    return shaped, *done


def emit_report(out: Emitter, document: Mapping[str, Any]) -> ReportRef:
    """Write the document as signed report lines; the result line must then name the ref.

    Call it just before ``out.result``: the operator assembles the report when the
    result arrives, from the parts that came before it.
    """
    _, raw, packed = fit(document)
    sha256 = digest(raw)
    chunks = [packed[i : i + PART_BYTES] for i in range(0, len(packed), PART_BYTES)]
    for number, chunk in enumerate(chunks, start=1):
        out.machine(
            {"event": EVENT, "part": number, "parts": len(chunks), "sha256": sha256, "data": chunk}
        )
    return ReportRef(sha256=sha256, parts=len(chunks))


# --------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class ReportPart:
    """One verified report line."""

    part: int
    parts: int
    sha256: str
    data: str

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> ReportPart:
        """Raises ValueError, naming the field, for anything emit_report never writes."""
        if event.get("event") != EVENT:
            raise ValueError("not a report event")
        part, parts = event.get("part"), event.get("parts")
        sha256, data = event.get("sha256"), event.get("data")
        if not isinstance(parts, int) or isinstance(parts, bool) or not 1 <= parts <= MAX_PARTS:
            raise ValueError(f"report parts is not a count from 1 to {MAX_PARTS}")
        if not isinstance(part, int) or isinstance(part, bool) or not 1 <= part <= parts:
            raise ValueError(f"report part is not a number from 1 to {parts}")
        if not (isinstance(sha256, str) and _SHA256.match(sha256)):
            raise ValueError("report sha256 is not a SHA-256 in hex")
        if not isinstance(data, str) or len(data) > PART_BYTES or not _BASE64.match(data):
            raise ValueError(f"report data is not base64 of at most {PART_BYTES} characters")
        return cls(part, parts, sha256, data)


def _inflate(packed: bytes) -> bytes:
    """gunzip, refusing to produce more than MAX_DOCUMENT_BYTES."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(packed, MAX_DOCUMENT_BYTES + 1)
    except zlib.error as error:
        raise ValueError(f"the report is not gzip: {error}") from None
    if len(raw) > MAX_DOCUMENT_BYTES or inflater.unconsumed_tail:
        raise ValueError(f"the report inflates past {MAX_DOCUMENT_BYTES} bytes")
    if not inflater.eof:
        raise ValueError("the report's gzip stream ends early")
    return raw


def assemble(parts: Iterable[ReportPart], ref: ReportRef) -> dict[str, Any]:
    """The document the result line vouches for, from its verified parts.

    Parts of any other report (another digest or count) are ignored. Raises
    ValueError naming what is wrong: a part missing or given twice with different
    data, data that is not base64 or gzip, or a document whose sha256 is not the ref's.
    """
    found: dict[int, str] = {}
    for part in parts:
        if part.sha256 != ref.sha256 or part.parts != ref.parts:
            continue
        if found.get(part.part, part.data) != part.data:
            raise ValueError(f"report part {part.part} came twice with different data")
        found[part.part] = part.data
    missing = [number for number in range(1, ref.parts + 1) if number not in found]
    if missing:
        shown = ", ".join(str(number) for number in missing[:10])
        more = ", …" if len(missing) > 10 else ""
        noun = "part" if len(missing) == 1 else "parts"
        raise ValueError(f"report {noun} {shown}{more} of {ref.parts} missing")
    text = "".join(found[number] for number in range(1, ref.parts + 1))
    try:
        packed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the report's parts do not join into base64") from None
    raw = _inflate(packed)
    actual = digest(raw)
    if actual != ref.sha256:
        raise ValueError(f"the report has sha256 {actual}, the result names {ref.sha256}")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the report is not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("kind") != KIND:
        raise ValueError(f"the report is not an {KIND} object")
    return document


class ReportAssembler:
    """Collects report events as they are verified; ``assemble`` when the result comes."""

    def __init__(self) -> None:
        self.parts: list[ReportPart] = []

    def add(self, event: Mapping[str, Any]) -> None:
        """Keep one report event; ValueError for a malformed one or one too many."""
        if len(self.parts) >= MAX_PARTS:
            raise ValueError(f"more than {MAX_PARTS} report parts")
        self.parts.append(ReportPart.parse(event))

    def assemble(self, ref: ReportRef) -> dict[str, Any]:
        return assemble(self.parts, ref)


# --------------------------------------------------------------------------- JUnit


def _xml(value: object) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _runs(case: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    runs = case.get("runs")
    return [run for run in runs if isinstance(run, Mapping)] if isinstance(runs, list) else []


def _case_seconds(case: Mapping[str, Any]) -> float:
    """The mean latency of a case's trials (0 without any)."""
    latencies = [_number(run.get("latencySeconds")) for run in _runs(case)]
    return statistics.fmean(latencies) if latencies else 0.0


def _strings(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def _trial_verdict(run: Mapping[str, Any]) -> str:
    if run.get("passed"):
        return "pass"
    reasons = [
        str(e.get("reason") or e.get("name"))
        for e in run.get("evaluators") or []
        if isinstance(e, Mapping) and not e.get("passed")
    ]
    if run.get("error"):
        reasons.insert(0, f"error: {run['error']}")
    return "fail: " + ("; ".join(reasons) if reasons else "failed")


def _property(parent: ET.Element, name: str, value: object) -> None:
    if isinstance(value, bool):
        value = "true" if value else "false"
    ET.SubElement(parent, "property", name=_xml(name), value=_xml(value))


def _testcase(suite: ET.Element, model: str, case: Mapping[str, Any]) -> tuple[bool, float]:
    seconds = _case_seconds(case)
    element = ET.SubElement(
        suite,
        "testcase",
        classname=_xml(model),
        name=_xml(case.get("name", "")),
        time=_seconds(seconds),
    )
    properties = ET.SubElement(element, "properties")
    interval = _mapping(case.get("interval"))
    for name, value in (
        ("trials", case.get("trials")),
        ("passes", case.get("passes")),
        ("passRate", case.get("passRate")),
        ("interval.low", interval.get("low")),
        ("interval.high", interval.get("high")),
        ("flaky", bool(case.get("flaky"))),
    ):
        _property(properties, name, "" if value is None else value)
    for index, run in enumerate(_runs(case), start=1):
        _property(properties, f"trial.{run.get('trial', index)}", _trial_verdict(run))
    failed = not case.get("passed")
    if failed:
        failures = _strings(case.get("failures")) or ["failed"]
        failure = ET.SubElement(
            element, "failure", message=_xml(failures[0]), type="AgentTestFailure"
        )
        failure.text = _xml("\n".join(failures))
    query = case.get("query")
    if query:
        ET.SubElement(element, "system-out").text = _xml(f"query: {query}")
    return failed, seconds


def render_junit(document: Mapping[str, Any]) -> str:
    """The report as JUnit XML: a testsuite per model, a testcase per case and model.

    Each testcase's time is the mean latency of its trials; its properties are the
    trial count, passes, pass rate, Wilson interval, flakiness and one
    ``trial.N`` per trial ("pass", or "fail: " and the reasons); a failed case has a
    ``<failure>`` with its reasons. A run that failed before any case (cases is
    empty) is one testcase "setup" with an ``<error>``.
    """
    test = document.get("test") if isinstance(document.get("test"), Mapping) else None
    title = f"agenttest {test.get('namespace')}/{test.get('name')}" if test else "agenttest"
    root = ET.Element("testsuites", name=_xml(title))
    cases = [case for case in document.get("cases") or [] if isinstance(case, Mapping)]
    models = [m for m in document.get("models") or [] if isinstance(m, Mapping)]
    names = [str(m.get("name", "")) for m in models]
    names += [n for n in dict.fromkeys(str(c.get("model", "")) for c in cases) if n not in names]
    totals = {"tests": 0, "failures": 0, "errors": 0, "time": 0.0}

    if not cases and not document.get("passed"):
        suite = ET.SubElement(root, "testsuite", name="setup", tests="1", failures="0")
        suite.set("errors", "1")
        suite.set("skipped", "0")
        suite.set("time", _seconds(0))
        setup = ET.SubElement(suite, "testcase", classname="agenttest", name="setup", time="0.000")
        reason = str(document.get("reason") or "the run failed before its cases")
        ET.SubElement(setup, "error", message=_xml(reason), type="SetupFailed").text = _xml(reason)
        totals["tests"], totals["errors"] = 1, 1
        names = []  # the models never ran a case: no empty suites beside it
    for model in names:
        info = next((m for m in models if str(m.get("name", "")) == model), {})
        suite = ET.SubElement(root, "testsuite", name=_xml(model))
        properties = ET.SubElement(suite, "properties")
        tokens = _mapping(info.get("tokens"))
        for name, value in (
            ("provider", info.get("provider")),
            ("modelId", info.get("modelId")),
            ("passed", info.get("passed")),
            ("passRate", info.get("passRate")),
            ("tokens.input", tokens.get("input")),
            ("tokens.output", tokens.get("output")),
            ("costUSD", info.get("costUSD")),
        ):
            if value is not None:
                _property(properties, name, value)
        tests = failures = 0
        seconds = 0.0
        for entry in (c for c in cases if str(c.get("model", "")) == model):
            failed, took = _testcase(suite, model, entry)
            tests, failures, seconds = tests + 1, failures + failed, seconds + took
        for name, value in (
            ("tests", tests),
            ("failures", failures),
            ("errors", 0),
            ("skipped", 0),
        ):
            suite.set(name, str(value))
        suite.set("time", _seconds(seconds))
        totals["tests"] += tests
        totals["failures"] += failures
        totals["time"] += seconds
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", str(totals["errors"]))
    root.set("time", _seconds(float(totals["time"])))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


# --------------------------------------------------------------------------- files


def report_json(document: Mapping[str, Any]) -> str:
    """report.json as written to files: indented, keys sorted, one newline at the end."""
    return json.dumps(_finite(dict(document)), ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def write_files(document: Mapping[str, Any], directory: Path | str) -> tuple[Path, Path]:
    """Write report.json and junit.xml into ``directory`` (made if missing)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    json_path, junit_path = target / REPORT_FILE, target / JUNIT_FILE
    json_path.write_text(report_json(document), encoding="utf-8")
    junit_path.write_text(render_junit(document), encoding="utf-8")
    return json_path, junit_path


# --------------------------------------------------------------------------- the document


def _model_entry(model: ModelConfig, outcome: Mapping[str, Any] | None) -> dict[str, Any]:
    """A model's summary: the judge's (ModelOutcome.to_json), or an empty one."""
    if outcome is not None:
        return {"costUSD": None, **outcome}
    return {
        "name": model.name,
        "provider": model.provider,
        "modelId": model.model_id,
        "passed": False,
        "passRate": 0.0,
        "cases": 0,
        "casesPassed": 0,
        "latencySeconds": {"mean": 0.0, "p95": 0.0},
        "tokens": {"input": 0, "output": 0},
        "costUSD": None,
    }


def _run_entry(run: TrialRecord) -> dict[str, Any]:
    return {
        "trial": run.trial,
        "passed": run.passed,
        "answer": run.answer,
        "error": run.error,
        "latencySeconds": round(run.latency_seconds, 4),
        "evaluationSeconds": round(run.evaluation_seconds, 5),
        "modelCalls": run.observed.model_calls,
        "tokens": {"input": run.observed.input_tokens, "output": run.observed.output_tokens},
        "toolCalls": list(run.observed.tool_calls),
        "costUSD": None if run.cost_usd is None else round(run.cost_usd, 8),
        "evaluators": [dict(verdict) for verdict in run.evaluators],
        "failures": list(run.failures),
    }


def _only_run(case: CaseOutcome) -> TrialRecord:
    """A case the judge recorded no trials of (cut by the timeout): what it knows of it."""
    return TrialRecord(
        trial=1,
        passed=case.passed,
        answer=case.output,
        error=None if case.passed or not case.failures else case.failures[0],
        latency_seconds=case.latency_seconds,
        observed=case.observed or Observation(),
        failures=case.failures,
    )


def document(
    result: RunResult, config: RunConfig | None, judge_tokens: tuple[int, int] = (0, 0)
) -> dict[str, Any]:
    """The report of a run: every case on every model, every trial, every evaluator.

    ``config`` is None when it could not be read (the report then says only why).
    """
    models = list(config.models) if config is not None else []
    queries = {case.name: case.query for case in config.cases} if config is not None else {}
    first = models[0].name if models else "default"
    outcomes = {str(entry.get("name")): entry for entry in (m.to_json() for m in result.models)}
    cases: list[dict[str, Any]] = []
    for case in result.cases:
        low, high = case.interval or wilson_interval(case.pass_count, case.trials)
        entry: dict[str, Any] = {
            "name": case.name,
            "model": case.model or first,
            "query": queries.get(case.name, ""),
            "passed": case.passed,
            "passes": case.pass_count,
            "trials": case.trials,
            "passRate": round(case.pass_count / case.trials, 4) if case.trials else 0.0,
            "interval": {"low": round(low, 4), "high": round(high, 4)},
            "flaky": 0 < case.pass_count < case.trials,
            "failures": list(case.failures),
            "runs": [_run_entry(run) for run in case.runs or (_only_run(case),)],
        }
        if case.judge_score is not None:
            entry["judge"] = {"score": round(case.judge_score, 4), "reason": case.judge_reason}
        cases.append(entry)
    report: dict[str, Any] = {
        "kind": KIND,
        "version": VERSION,
        "passed": result.passed,
        "reason": result.reason,
        "summary": result.summary,
        "trials": config.trials if config is not None else 1,
        "passThreshold": config.pass_threshold if config is not None else 1.0,
        "matrixPolicy": config.matrix_policy if config is not None else "all",
        "models": [_model_entry(model, outcomes.get(model.name)) for model in models],
        "cases": cases,
    }
    if config is not None and config.judge_model is not None:
        report["judgeModel"] = {
            "provider": config.judge_model.provider,
            "modelId": config.judge_model.model_id,
            "tokens": {"input": judge_tokens[0], "output": judge_tokens[1]},
        }
    return report
