"""`agenttest report NAME`: a finished AgentTest's report, as a table and as files.

Reads the AgentTest with the current kubeconfig; its status (which only the
operator writes) names the stored report.json and its sha256 (status.reports).
Then reads the object from S3 with boto3's default credentials (the user's own,
not the operator's), checks the digest, prints one line per case and model, and
writes the files asked for. Made for CI jobs that gate on the exit code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agenttest import package_cli, reports
from agenttest.models import AGENTTEST_PLURAL, FINISHED_PHASES, GROUP, VERSION, ConditionType
from agenttest.runner.reports import render_junit

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_NO_REPORT = 2

DESCRIPTION = """\
Print the report of a finished AgentTest: one line per case and model with its
passes out of trials, pass rate, 95% interval, whether it is flaky and its first
failure. The report is the one the operator stored in S3 and recorded in the
test's status (status.reports); it is read with your own AWS credentials and
checked against the recorded sha256 before anything is printed or written."""

EPILOG = """\
exit status:
  0  the test passed
  1  the test failed (it ended Failed, TimedOut or Error)
  2  no report: the test has not finished, it stored none (the message says
     why), or the stored one is missing or not the one recorded

examples:
  agenttest report my-agent
  kubectl agenttest report my-agent -n team-a --junit junit.xml --json report.json"""


class NoReport(Exception):
    """There is no report to show; the message says why."""


@dataclass(frozen=True)
class Located:
    """Where a test's report is, as its status records it."""

    bucket: str
    key: str
    sha256: str
    phase: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def locate(test: Mapping[str, Any]) -> Located:
    """Where the report of ``test`` (an AgentTest as read) is; NoReport if it has none.

    The key must be the one the operator derives from the test's namespace, name,
    uid and attempt: status.reports pointing elsewhere is not this test's report.
    """
    meta = test.get("metadata") or {}
    name = meta.get("name", "")
    status = test.get("status") or {}
    phase = str(status.get("phase") or "")
    if phase not in {p.value for p in FINISHED_PHASES}:
        raise NoReport(f"{name} has not finished (phase {phase or 'none yet'}): no report yet")
    recorded = status.get("reports") or {}
    if not recorded.get("json"):
        condition = next(
            (
                c
                for c in status.get("conditions") or []
                if c.get("type") == ConditionType.REPORTED.value
            ),
            None,
        )
        if condition is None:
            why = "its run sent no report (it ended before the judge reported a result)"
        elif condition.get("status") == "Unknown":
            why = "the operator is still storing it"
        else:
            why = f"{condition.get('reason')}: {condition.get('message')}"
        raise NoReport(f"{name} ({phase}) has no stored report: {why}")
    uri = str(recorded["json"])
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    expected, _ = reports.keys(
        str(meta.get("namespace", "")), name, str(meta.get("uid", "")), status.get("attempt", 0)
    )
    if not uri.startswith("s3://") or key != expected:
        raise NoReport(f"{name} records its report at {uri}, not at its own key {expected}")
    return Located(bucket, key, str(recorded.get("sha256") or ""), phase)


def verify(data: bytes, located: Located) -> dict[str, Any]:
    """The report, if ``data`` hashes to the recorded sha256 and is a report."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != located.sha256:
        raise NoReport(
            f"{located.uri} has sha256 {actual}, the test records {located.sha256}: "
            "not the stored report"
        )
    try:
        document = json.loads(data)
    except ValueError as error:
        raise NoReport(f"{located.uri} is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise NoReport(f"{located.uri} is not a report")
    return document


def summary(name: str, phase: str, document: Mapping[str, Any]) -> list[str]:
    lines = [f"{name}: {phase} - {document.get('summary') or ''}".rstrip(" -")]
    if not document.get("passed") and document.get("reason"):
        lines.append(f"reason: {reports.cut(str(document['reason']), 300)}")
    for model in document.get("models") or []:
        lines.append(
            f"model {model.get('name')}: {model.get('provider')}/{model.get('modelId')}, "
            f"{model.get('casesPassed')}/{model.get('cases')} cases passed"
        )
    if document.get("truncated"):
        lines.append(f"note: {document['truncated']}")
    return lines


def _read_test(name: str, namespace: str | None) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    api, namespace = package_cli.custom_objects(namespace)
    try:
        found: Any = api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, AGENTTEST_PLURAL, name
        )
    except ApiException as error:
        if error.status == 404:
            raise NoReport(f"no AgentTest {name} in namespace {namespace}") from None
        raise
    return dict(found)


def _download(located: Located) -> bytes:
    import boto3

    try:
        body = boto3.client("s3").get_object(Bucket=located.bucket, Key=located.key)["Body"]
    except Exception as error:
        code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
        raise NoReport(f"cannot read {located.uri}: {code or type(error).__name__}") from None
    return bytes(body.read())


def report(
    name: str, namespace: str | None, json_file: Path | None, junit_file: Path | None
) -> int:
    try:
        test = _read_test(name, namespace)
        located = locate(test)
        data = _download(located)
        document = verify(data, located)
    except NoReport as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NO_REPORT
    print("\n".join(summary(name, located.phase, document)))
    print()
    print(reports.table(document))
    if json_file is not None:
        json_file.write_bytes(data)  # as stored, byte for byte: its sha256 is the recorded one
        print(f"wrote {json_file} (sha256 {located.sha256} verified)")
    if junit_file is not None:
        # The stored junit.xml is rendered from the stored report.json in the same way,
        # so this is its content, from bytes whose digest was checked.
        junit_file.write_text(render_junit(document), encoding="utf-8")
        print(f"wrote {junit_file}")
    passed = located.phase == "Succeeded" and document.get("passed") is True
    return EXIT_PASSED if passed else EXIT_FAILED


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "report",
        help="print a finished test's report; write it as JSON or JUnit XML",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="the AgentTest")
    parser.add_argument("-n", "--namespace", help="its namespace (default: the context's)")
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="write report.json, as stored, to FILE"
    )
    parser.add_argument(
        "--junit", type=Path, metavar="FILE", help="write the report as JUnit XML to FILE"
    )


def run(args: argparse.Namespace) -> int:
    return report(args.name, args.namespace, args.json, args.junit)
