"""Every finished test's report lands in S3 and in status; `agenttest report` reads it back."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import junitparser
import pytest

from agenttest_dev.fargate import AwsEnvironment
from agenttest_dev.modelserver import ScriptedModelServer

from s3policy import S3PolicyProxy
from support import SIMPLE_AGENT, Kube, Operator, agent_test

RESULTS_BUCKET = "agenttest-results"


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsEnvironment]:
    with AwsEnvironment() as environment:
        environment.client("s3").create_bucket(Bucket=RESULTS_BUCKET)
        yield environment


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def s3_object(aws: AwsEnvironment, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bytes(aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def report_command(
    kube: Kube, aws: AwsEnvironment, *args: str, plugin: bool = False
) -> subprocess.CompletedProcess[str]:
    """`agenttest report` (or `kubectl agenttest report`) as a user runs it."""
    command = (
        [str(Path(sys.executable).parent / "kubectl-agenttest")]
        if plugin
        else [sys.executable, "-m", "agenttest.cli"]
    )
    return subprocess.run(
        [*command, "report", *args, "-n", kube.namespace],
        env={**os.environ, **aws.env(), "KUBECONFIG": str(kube.cluster.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_passing_failing_and_broken_tests_all_store_their_reports(
    kube: Kube,
    start_operator: Callable[..., Operator],
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
    tmp_path: Path,
) -> None:
    start_operator(extra_env=aws.env(), package_bucket=aws.bucket, results_bucket=RESULTS_BUCKET)
    cases = [
        {"name": "greets", "query": "Say hello", "expect": {"contains": ["hello"]}},
        {"name": "departs", "query": "Say hello", "expect": {"contains": ["goodbye"]}},
    ]
    kube.apply(
        agent_test("passes", SIMPLE_AGENT, model_server.url),
        agent_test("fails", SIMPLE_AGENT, model_server.url, cases=cases),
        agent_test("broken", "raise RuntimeError('no agent here')\n", model_server.url),
    )

    def reported(name: str) -> dict[str, Any] | None:
        status: dict[str, Any] = kube.get(name).get("status", {})
        settled = (condition(status, "Reported") or {}).get("status") in ("True", "False")
        return status if settled else None

    statuses = {}
    for name in ("passes", "fails", "broken"):
        statuses[name] = kube.wait_for(f"{name} to be reported", lambda n=name: reported(n), 120)
    assert statuses["passes"]["phase"] == "Succeeded"
    assert statuses["fails"]["phase"] == "Failed"
    assert statuses["broken"]["phase"] == "Failed"

    for name, status in statuses.items():
        stored = condition(status, "Reported")
        assert stored is not None and stored["status"] == "True", (name, stored)
        links = status["reports"]
        assert sorted(links) == ["json", "junit", "sha256"]
        uid = kube.get(name)["metadata"]["uid"]
        base = f"s3://{RESULTS_BUCKET}/reports/{kube.namespace}/{name}/{uid}/1/"
        assert (links["json"], links["junit"]) == (base + "report.json", base + "junit.xml")
        data = s3_object(aws, links["json"])
        assert hashlib.sha256(data).hexdigest() == links["sha256"]
        document = json.loads(data)
        assert document["kind"] == "AgentTestReport"
        assert document["test"]["name"] == name and document["test"]["uid"] == uid
        assert document["test"]["phase"] == status["phase"]
        # Report parts are for the operator, never for the tail people read.
        assert '"event":"report"' not in (status.get("logTail") or "")

    passing = json.loads(s3_object(aws, statuses["passes"]["reports"]["json"]))
    assert passing["passed"] is True
    assert passing["test"]["sourceSha256"] == hashlib.sha256(SIMPLE_AGENT.encode()).hexdigest()
    [run] = passing["cases"][0]["runs"]
    assert "hello" in run["answer"].lower() and run["modelCalls"] >= 1

    junit = junitparser.JUnitXml.fromstring(
        s3_object(aws, statuses["fails"]["reports"]["junit"]).decode()
    )
    assert isinstance(junit, junitparser.JUnitXml)
    testcases = {(c.classname, c.name): c for suite in junit for c in suite}
    assert sorted(testcases) == [("default", "departs"), ("default", "greets")]
    assert testcases[("default", "greets")].is_passed
    [failure] = testcases[("default", "departs")].result
    assert "goodbye" in failure.message
    broken = junitparser.JUnitXml.fromstring(
        s3_object(aws, statuses["broken"]["reports"]["junit"]).decode()
    )
    [setup] = [c for suite in broken for c in suite]
    assert setup.name == "setup" and isinstance(setup.result[0], junitparser.Error)

    # The passing test's package holds the stored report, byte for byte.
    packaged = kube.wait_for(
        "passes to be packaged", lambda: condition(kube.get("passes")["status"], "Packaged")
    )
    assert packaged["status"] == "True", packaged
    package = kube.get("passes-a1", "deploymentpackage")["spec"]
    archive = zipfile.ZipFile(io.BytesIO(s3_object(aws, package["s3Uri"])))
    assert archive.read("report.json") == s3_object(aws, statuses["passes"]["reports"]["json"])
    assert archive.read("junit.xml") == s3_object(aws, statuses["passes"]["reports"]["junit"])

    # What a CI job does: gate on the exit code, keep the files.
    junit_file, json_file = tmp_path / "junit.xml", tmp_path / "report.json"
    failed = report_command(
        kube, aws, "fails", "--junit", str(junit_file), "--json", str(json_file)
    )
    assert failed.returncode == 1, failed.stderr
    header = next(line for line in failed.stdout.splitlines() if line.startswith("CASE"))
    assert header.split()[:3] == ["CASE", "MODEL", "PASSES"]
    row = next(line for line in failed.stdout.splitlines() if line.startswith("departs"))
    assert "0/1" in row and "goodbye" in row
    assert (
        hashlib.sha256(json_file.read_bytes()).hexdigest() == statuses["fails"]["reports"]["sha256"]
    )
    assert junit_file.read_bytes() == s3_object(aws, statuses["fails"]["reports"]["junit"])
    assert junitparser.JUnitXml.fromfile(str(junit_file)).failures == 1

    passed = report_command(kube, aws, "passes", plugin=True)
    assert passed.returncode == 0, passed.stderr
    assert "greets" in passed.stdout

    missing = report_command(kube, aws, "no-such-test")
    assert missing.returncode == 2 and "no AgentTest no-such-test" in missing.stderr


def test_a_restarted_operator_stores_the_report_from_the_executions_output(
    kube: Kube,
    start_operator: Callable[..., Operator],
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
) -> None:
    # The first operator sees the test end but S3 answers every put with 503.
    with S3PolicyProxy(aws.endpoint, RESULTS_BUCKET, prefix="reports/") as down:
        down.fail_next("PUT", 100_000, 503, "SlowDown")
        first = start_operator(
            extra_env={**aws.env(), "AWS_ENDPOINT_URL_S3": down.endpoint},
            results_bucket=RESULTS_BUCKET,
        )
        kube.apply(agent_test("later", SIMPLE_AGENT, model_server.url, package={"enabled": False}))
        kube.wait_for("the store to be tried", lambda: down.count("PUT", 503) > 0, 120)
        status = kube.get("later")["status"]
        assert status["phase"] == "Succeeded"
        pending = condition(status, "Reported")
        assert pending is not None and pending["status"] == "Unknown", pending
        # It dies with the report only in its memory.
        first.kill()

    start_operator(extra_env=aws.env(), results_bucket=RESULTS_BUCKET)

    def settled() -> dict[str, Any] | None:
        status: dict[str, Any] = kube.get("later")["status"]
        done = (condition(status, "Reported") or {}).get("status") in ("True", "False")
        return status if done else None

    status = kube.wait_for("the report to be stored", settled, 60)
    stored = condition(status, "Reported")
    assert stored is not None and stored["status"] == "True", stored
    data = s3_object(aws, status["reports"]["json"])
    assert hashlib.sha256(data).hexdigest() == status["reports"]["sha256"]
    assert json.loads(data)["cases"][0]["name"] == "greets"


MATRIX_SCRIPT = [
    {
        "match": r"<Rubric>",
        "structuredOutput": {"score": 0.8, "test_pass": True, "reason": "Names the capital."},
    },
    {
        "match": r"capital of italy",
        "models": ["steady"],
        "reply": "Rome",
    },
    {
        "match": r"capital of italy",
        "correct": {"k": 2, "n": 3, "seed": 5},
        "reply": "Rome",
        "wrongReply": "Milan",
    },
]


def test_the_report_of_a_matrix_with_trials_holds_every_trial_and_evaluator(
    kube: Kube,
    start_operator: Callable[..., Operator],
    aws: AwsEnvironment,
    tmp_path: Path,
) -> None:
    start_operator(extra_env=aws.env(), package_bucket=aws.bucket)
    case = {
        "name": "italy",
        "query": "The capital of Italy?",
        "expect": {"contains": ["Rome"], "judge": {"rubric": "Names the capital."}},
    }
    with ScriptedModelServer.from_script(MATRIX_SCRIPT) as model:
        manifest = agent_test("matrix", SIMPLE_AGENT, model.url, cases=[case], trials=3)
        del manifest["spec"]["model"]
        manifest["spec"]["models"] = [
            {"name": name, "provider": "ollama", "modelId": name, "endpoint": model.url}
            for name in ("steady", "shaky")
        ]
        kube.apply(manifest)
        status = kube.wait_for(
            "the matrix's report",
            lambda: (s := kube.get("matrix").get("status", {})).get("reports") and s,
            120,
        )
    assert status["phase"] == "Failed"  # matrixPolicy all, and shaky passed 2 of 3
    document = json.loads(s3_object(aws, status["reports"]["json"]))
    assert [(m["name"], m["passed"]) for m in document["models"]] == [
        ("steady", True),
        ("shaky", False),
    ]
    steady, shaky = document["cases"]
    assert (shaky["model"], shaky["passes"], shaky["trials"], shaky["flaky"]) == (
        "shaky", 2, 3, True,
    )  # fmt: skip
    assert [run["passed"] for run in shaky["runs"]].count(True) == 2
    for run in steady["runs"] + shaky["runs"]:
        names = [evaluator["name"] for evaluator in run["evaluators"]]
        assert names == ['contains "Rome"', "judge"]
        judged = run["evaluators"][1]
        assert (judged["score"], judged["reason"]) == (0.8, "Names the capital.")
        assert run["evaluationSeconds"] >= 0 and run["tokens"]["output"] > 0
    assert document["judgeModel"]["modelId"] == "steady"
    assert document["judgeModel"]["tokens"]["input"] > 0

    junit = junitparser.JUnitXml.fromstring(s3_object(aws, status["reports"]["junit"]).decode())
    testcases = {(c.classname, c.name): c for suite in junit for c in suite}
    assert sorted(testcases) == [("shaky", "italy"), ("steady", "italy")]
    found = testcases[("shaky", "italy")].child(junitparser.Properties)
    props = {prop.name: prop.value for prop in found}
    assert (props["trials"], props["passes"], props["flaky"]) == ("3", "2", "true")
    assert sum(props[f"trial.{n}"] == "pass" for n in (1, 2, 3)) == 2

    table = report_command(kube, aws, "matrix")
    assert table.returncode == 1, table.stderr
    row = next(line for line in table.stdout.splitlines() if " shaky " in f" {line} ")
    assert "2/3" in row
