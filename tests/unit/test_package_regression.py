"""The package's regression suite checks answers the way the operator's judge does.

tests/regression.py ships inside every package and runs with the standard library
only, so it cannot import the judge's evaluation (strands_evals). These tests render
it, import it, and hold it to the judge's ``check_answer`` over the expectations it
covers: the same answers pass, and the same failures are said the same way.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agenttest import packaging
from agenttest.runner.config import parse_expectation
from agenttest.runner.evaluation import check_answer

TEMPLATE = packaging.REPO_TEMPLATES_DIR / "tests" / "regression.py"


@pytest.fixture(scope="module")
def regression() -> Iterator[ModuleType]:
    name = "package_regression"
    spec = importlib.util.spec_from_file_location(name, TEMPLATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before executing: dataclasses look their module up.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


SCHEMA = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}

# (expectation as spec.cases has it, answer, latency in seconds)
EXAMPLES: list[tuple[dict[str, Any], str, float]] = [
    ({"contains": ["Paris"]}, "The capital is paris.", 1.0),
    ({"contains": ["Paris"], "caseSensitive": True}, "The capital is paris.", 1.0),
    ({"contains": ["Paris", "France"]}, "Paris.", 1.0),
    ({"notContains": ["London"]}, "Not london, Paris.", 1.0),
    ({"notContains": ["London"]}, "Paris.", 1.0),
    ({"regex": r"\bParis\b"}, "  Paris!  ", 1.0),
    ({"regex": r"^\d+$"}, "forty-two", 1.0),
    ({"regex": "("}, "anything", 1.0),
    ({"equals": "Paris"}, "  paris\n", 1.0),
    ({"equals": "Paris", "caseSensitive": True}, "paris", 1.0),
    ({"equals": "x" * 200}, "y" * 200, 1.0),
    ({"startsWith": "The capital"}, "\n the capital is Paris", 1.0),
    ({"startsWith": "Paris"}, "The capital is Paris, a long answer that goes on.", 1.0),
    ({"jsonSchema": SCHEMA}, '```json\n{"city": "Paris"}\n```', 1.0),
    ({"jsonSchema": SCHEMA}, '{"town": 1, "city": 2}', 1.0),
    ({"jsonSchema": SCHEMA}, "Paris", 1.0),
    ({"jsonSchema": {"type": "nonsense"}}, "{}", 1.0),
    ({"maxLatencySeconds": 2}, "Paris", 1.5),
    ({"maxLatencySeconds": 2}, "Paris", 2.5),
    (
        {"contains": ["hello"], "notContains": ["bye"], "regex": "!$", "maxLatencySeconds": 1},
        "Bye, no greeting here",
        3.0,
    ),
]


@pytest.mark.parametrize(("expect", "answer", "latency"), EXAMPLES)
def test_the_same_failures_as_the_judge(
    regression: ModuleType, expect: dict[str, Any], answer: str, latency: float
) -> None:
    judged = check_answer(answer, latency, parse_expectation(expect, "expect"))
    assert regression.check(answer, latency, expect) == judged


def test_what_it_cannot_see_is_listed_as_not_checked(regression: ModuleType) -> None:
    expect = {
        "contains": ["Paris"],
        "toolCalled": ["capital"],
        "maxTokens": 100,
        "judge": {"rubric": "names the capital"},
        "toolNotCalled": [],
    }
    assert regression.not_checked(expect) == ["toolCalled", "maxTokens", "judge"]
    assert regression.check("Paris", 1.0, expect) == []


def test_a_package_without_cases_fails_rather_than_passing_nothing(
    regression: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({"agentTest": "team-a/x", "cases": []}))
    assert regression.main(["--url", "http://127.0.0.1:9", "--cases", str(cases)]) == 1
    assert "no cases" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:s3:::a-bucket",
        "arn:aws:bedrock-agentcore:eu-west-1:123:runtime/x",
        "arn:aws:bedrock-agentcore:eu-west-1:123456789012:memory/x",
    ],
)
def test_anything_but_a_runtime_arn_is_a_usage_error(
    regression: ModuleType, arn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        regression.main(["--runtime-arn", arn])
    assert exited.value.code == 2
    assert "is not an AgentCore runtime ARN" in capsys.readouterr().err
