"""Replay the AgentTest's cases against a deployed agent service and check the answers.

    python -m tests.regression --url http://my-load-balancer.example.com
    python -m tests.regression --url http://127.0.0.1:8080 --cases tests/cases.json
    python -m tests.regression --runtime-arn arn:aws:bedrock-agentcore:...:runtime/...

Each case of tests/cases.json (written by agenttest-operator from the AgentTest's
spec.cases) is sent once as ``{"prompt": <query>}``: with --url, to
``POST <url>/invocations``, the endpoint this package's app.py serves wherever it
runs; with --runtime-arn, through AgentCore's InvokeAgentRuntime (boto3, the usual
AWS credentials, SigV4; a new session per case), which hands the same body to the
same endpoint. Its answer is checked the way the operator's judge checks it. Exit
status: 0 when every case passes, 1 when any fails (or cannot be asked), 2 on bad
arguments.

Checked here (the answer's leading and trailing whitespace aside, as the judge does):
contains, notContains, equals, startsWith (all case-insensitive unless caseSensitive),
regex, jsonSchema (needs the jsonschema package; without it the check fails, saying so)
and maxLatencySeconds (measured here, so the network and any cold start count).

Not checked, and listed as such for every case that has them: toolCalled,
toolNotCalled, toolSequence, maxToolCalls, maxTokens, maxCostUSD (the service's answer
carries no tool calls or token counts; the judge observed those inside the test) and
judge (a rubric needs the judge model). A case runs once, whatever its trials were.

Standard library only for --url; --runtime-arn needs boto3 (strands-agents brings it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CASES_FILE = Path(__file__).resolve().parent / "cases.json"
RUNTIME_ARN = re.compile(r"^arn:[a-z-]+:bedrock-agentcore:([a-z0-9-]+):\d{12}:runtime/\S+$")
INVOCATIONS_PATH = "/invocations"
DEFAULT_TIMEOUT_SECONDS = 300.0
QUOTE_LIMIT = 120
# Expectations this suite cannot check from the answer alone (see the docstring).
NOT_CHECKED = (
    "toolCalled",
    "toolNotCalled",
    "toolSequence",
    "maxToolCalls",
    "maxTokens",
    "maxCostUSD",
    "judge",
)


@dataclass
class Outcome:
    """One case's result: what failed, and which expectations were not checked."""

    name: str
    failures: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    latency_seconds: float | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


# Failures are worded as the operator's judge words them, so a regression reads
# like the AgentTest's status did.


def quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote_regex(pattern: str) -> str:
    """Backslashes are the regex's own syntax; JSON-escaping them would double every one."""
    return '"' + pattern.replace("\n", "\\n") + '"'


def parse_json_answer(answer: str) -> Any:
    """The answer as JSON; a Markdown ```json fence around it is allowed."""
    fenced = re.fullmatch(r"```(?:json)?\s*\n?(.*?)\n?```", answer, re.DOTALL)
    return json.loads(fenced.group(1) if fenced else answer)


def schema_failure(schema: Any, answer: str) -> str | None:
    try:
        import jsonschema
    except ImportError:
        return "jsonSchema: not checked, the jsonschema package is not installed"
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as error:
        where = "/".join(str(part) for part in error.path)
        return f"jsonSchema: invalid schema{f' at {where}' if where else ''}: {error.message}"
    try:
        document = parse_json_answer(answer)
    except json.JSONDecodeError as error:
        return f"jsonSchema: answer is not JSON: {error.msg} at line {error.lineno}"
    errors = sorted(validator_class(schema).iter_errors(document), key=lambda e: list(e.path))
    if not errors:
        return None
    where = "/".join(str(part) for part in errors[0].absolute_path) or "(root)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"jsonSchema: {where}: {errors[0].message}{more}"


def check(answer: str, latency_seconds: float, expect: dict[str, Any]) -> list[str]:
    """The failures of one answer against the answer-side checks of ``expect``."""
    answer = answer.strip()
    sensitive = bool(expect.get("caseSensitive", False))

    def fold(text: str) -> str:
        return text if sensitive else text.casefold()

    failures = []
    for needle in expect.get("contains", []):
        if fold(needle) not in fold(answer):
            failures.append(f"contains {quote(needle)}: not found in answer")
    for needle in expect.get("notContains", []):
        if fold(needle) in fold(answer):
            failures.append(f"notContains {quote(needle)}: found in answer")
    pattern = expect.get("regex")
    if pattern is not None:
        try:
            if re.search(pattern, answer) is None:
                failures.append(f"regex {quote_regex(pattern)}: no match in answer")
        except re.error as error:
            failures.append(f"regex {quote_regex(pattern)}: invalid regex: {error}")
    equals = expect.get("equals")
    if equals is not None and fold(answer) != fold(equals.strip()):
        failures.append(f"equals {quote(cut(equals))}: the answer is {quote(cut(answer))}")
    prefix = expect.get("startsWith")
    if prefix is not None and not fold(answer).startswith(fold(prefix)):
        failures.append(
            f"startsWith {quote(cut(prefix))}: the answer starts {quote(cut(answer, 40))}"
        )
    if expect.get("jsonSchema") is not None:
        failure = schema_failure(expect["jsonSchema"], answer)
        if failure:
            failures.append(failure)
    limit = expect.get("maxLatencySeconds")
    if limit is not None and latency_seconds > limit:
        failures.append(f"maxLatencySeconds {float(limit)}: took {latency_seconds:.2f}s")
    return failures


def not_checked(expect: dict[str, Any]) -> list[str]:
    """The expectations of ``expect`` this suite leaves to the operator's judge."""
    return [key for key in NOT_CHECKED if expect.get(key) not in (None, [], {})]


# Asks one prompt, returns the answer; raises RuntimeError when there is none.
Ask = Callable[[str], str]


def answer_of(raw: bytes) -> str:
    """The "answer" of app.py's JSON response."""
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as error:
        raise RuntimeError("the service's answer is not JSON") from error
    answer = body.get("answer") if isinstance(body, dict) else None
    if not isinstance(answer, str):
        raise RuntimeError('the service\'s answer has no "answer" string')
    return answer


def url_asker(url: str, timeout: float) -> Ask:
    """Asks ``POST <url>/invocations`` directly."""

    def ask(prompt: str) -> str:
        request = urllib.request.Request(
            url.rstrip("/") + INVOCATIONS_PATH,
            data=json.dumps({"prompt": prompt}).encode("utf-8"),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"the service answered HTTP {error.code}") from error
        except (urllib.error.URLError, OSError) as error:
            raise RuntimeError(f"the service could not be reached: {error}") from error
        return answer_of(raw)

    return ask


def runtime_asker(arn: str, qualifier: str, endpoint_url: str | None, timeout: float) -> Ask:
    """Asks an AgentCore runtime through InvokeAgentRuntime, in the ARN's region."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    match = RUNTIME_ARN.match(arn)
    assert match is not None  # checked with the arguments
    client = boto3.client(
        "bedrock-agentcore",
        region_name=match.group(1),
        endpoint_url=endpoint_url,
        # A retried invocation would be a second conversation, timed as one.
        config=Config(read_timeout=timeout, retries={"total_max_attempts": 1}),
    )

    def ask(prompt: str) -> str:
        try:
            response = client.invoke_agent_runtime(
                agentRuntimeArn=arn,
                qualifier=qualifier,
                # A session per case (at least 33 characters): no case sees another.
                runtimeSessionId=f"agenttest-regression-{uuid.uuid4()}",
                contentType="application/json",
                accept="application/json",
                payload=json.dumps({"prompt": prompt}).encode("utf-8"),
            )
            raw = response["response"].read()
        except ClientError as error:
            raise RuntimeError(f"InvokeAgentRuntime failed: {error}") from error
        except BotoCoreError as error:
            raise RuntimeError(f"the runtime could not be reached: {error}") from error
        return answer_of(raw)

    return ask


def run_case(ask: Ask, case: dict[str, Any]) -> Outcome:
    expect = case.get("expect") or {}
    outcome = Outcome(case["name"], not_checked=not_checked(expect))
    started = time.monotonic()
    try:
        answer = ask(case["query"])
    except RuntimeError as error:
        outcome.failures.append(str(error))
        return outcome
    outcome.latency_seconds = time.monotonic() - started
    outcome.failures = check(answer, outcome.latency_seconds, expect)
    return outcome


def load_cases(path: Path) -> list[dict[str, Any]]:
    cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
    return [case for case in cases if isinstance(case, dict)]


def report(outcome: Outcome) -> str:
    took = f" ({outcome.latency_seconds:.2f}s)" if outcome.latency_seconds is not None else ""
    lines = [f"{'PASS' if outcome.passed else 'FAIL'} {outcome.name}{took}"]
    lines += [f"    {failure}" for failure in outcome.failures]
    if outcome.not_checked:
        lines.append(f"    not checked here: {', '.join(outcome.not_checked)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.regression", description=__doc__.split("\n\n")[0]
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the service's base URL (load balancer, local container)")
    where.add_argument("--runtime-arn", help="an AgentCore runtime's ARN (the RuntimeArn output)")
    parser.add_argument(
        "--qualifier", default="DEFAULT", help="the runtime's endpoint (default: DEFAULT)"
    )
    parser.add_argument(
        "--endpoint-url", help="AgentCore's data plane URL, when not the region's default"
    )
    parser.add_argument("--cases", type=Path, default=CASES_FILE, help="cases.json to replay")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help="seconds to wait for each answer",
    )
    args = parser.parse_args(argv)
    if args.runtime_arn is not None and not RUNTIME_ARN.match(args.runtime_arn):
        parser.error(f"--runtime-arn {args.runtime_arn!r} is not an AgentCore runtime ARN")
    if args.runtime_arn is not None:
        try:
            import boto3  # noqa: F401  # only checked here; runtime_asker uses it
        except ImportError:
            parser.error("--runtime-arn needs boto3 (pip install boto3)")
        ask = runtime_asker(args.runtime_arn, args.qualifier, args.endpoint_url, args.timeout)
    else:
        ask = url_asker(args.url, args.timeout)
    cases = load_cases(args.cases)
    if not cases:
        print(f"no cases in {args.cases}", file=sys.stderr)
        return 1
    outcomes = [run_case(ask, case) for case in cases]
    for outcome in outcomes:
        print(report(outcome))
    passed = sum(outcome.passed for outcome in outcomes)
    print(f"{passed}/{len(outcomes)} cases passed")
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
