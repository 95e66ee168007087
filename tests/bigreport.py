"""A report too large for one log line, for every backend's transport.

The agent appends 3,000 random hex characters to every answer, so 25 cases x 4
trials make a report whose gzip alone spans several 64 KiB parts: the operator
must read them all, in order, through CloudWatch Logs or pods/log, verify and
store them.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from agenttest_dev.fargate import AwsEnvironment

from support import agent_test

NOISY_AGENT = """
import os
from strands import Agent


class Noisy(Agent):
    def __call__(self, prompt, **kwargs):
        return f"{super().__call__(prompt, **kwargs)} {os.urandom(1500).hex()}"


def agent(model):
    return Noisy(model=model)
"""

CASES = 25
TRIALS = 4
PART_BYTES = 64 * 1024  # runner.reports.PART_BYTES


def large_report_test(name: str, endpoint: str, backend: str) -> dict[str, Any]:
    cases = [
        {"name": f"greets-{n}", "query": "Say hello", "expect": {"contains": ["hello"]}}
        for n in range(CASES)
    ]
    return agent_test(
        name, NOISY_AGENT, endpoint, cases=cases, backend=backend, trials=TRIALS, timeoutSeconds=300
    )


def assert_stored_whole(status: dict[str, Any], aws: AwsEnvironment) -> dict[str, Any]:
    """The report arrived in several parts and was stored whole."""
    assert status["phase"] == "Succeeded", status.get("message")
    reported = next(c for c in status["conditions"] if c["type"] == "Reported")
    assert reported["status"] == "True", reported
    bucket, _, key = status["reports"]["json"].removeprefix("s3://").partition("/")
    data = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    document: dict[str, Any] = json.loads(data)
    runs = [run for case in document["cases"] for run in case["runs"]]
    assert len(runs) == CASES * TRIALS
    assert all(len(run["answer"]) > 3000 for run in runs)
    # More than one part's worth even compressed: the transport really split it.
    assert len(gzip.compress(json.dumps(document).encode())) > 2 * PART_BYTES
    return document
