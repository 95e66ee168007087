"""The answer checks, mapped onto Strands Evals: each failure names the expectation."""

from __future__ import annotations

import pytest

from agenttest.runner.config import Expectation, Price, ToolSequence
from agenttest.runner.evaluation import Observed, check_answer, checks_for, evaluate, failures

ANSWER = "The capital of France is Paris."


def failed(expect: Expectation, seen: Observed) -> list[str]:
    return failures(evaluate(seen, checks_for(expect)))


def seen(answer: str = ANSWER, tools: tuple[str, ...] = (), **kwargs: object) -> Observed:
    return Observed(query="q", answer=answer, latency_seconds=0.1, tool_calls=tools, **kwargs)  # type: ignore[arg-type]


def test_empty_expectation_checks_nothing() -> None:
    assert check_answer("", 99.0, Expectation()) == []


def test_contains_ignores_case_by_default() -> None:
    assert check_answer(ANSWER, 0.1, Expectation(contains=("paris", "FRANCE"))) == []


def test_contains_names_each_missing_needle() -> None:
    assert check_answer(ANSWER, 0.1, Expectation(contains=("Paris", "Berlin", "Rome"))) == [
        'contains "Berlin": not found in answer',
        'contains "Rome": not found in answer',
    ]


def test_case_sensitive_contains() -> None:
    expect = Expectation(contains=("paris",), case_sensitive=True)
    assert check_answer(ANSWER, 0.1, expect) == ['contains "paris": not found in answer']


def test_case_folding_is_unicode_aware() -> None:
    # casefold, not lower: "STRASSE" matches "Straße".
    assert check_answer("Die Straße", 0.1, Expectation(contains=("STRASSE",))) == []


def test_not_contains() -> None:
    assert check_answer(ANSWER, 0.1, Expectation(not_contains=("berlin",))) == []
    assert check_answer(ANSWER, 0.1, Expectation(not_contains=("PARIS",))) == [
        'notContains "PARIS": found in answer'
    ]
    assert (
        check_answer(ANSWER, 0.1, Expectation(not_contains=("PARIS",), case_sensitive=True)) == []
    )


def test_needles_with_quotes_stay_on_one_unambiguous_line() -> None:
    assert check_answer("x", 0.1, Expectation(contains=('say "hi"\nnow',))) == [
        'contains "say \\"hi\\"\\nnow": not found in answer'
    ]


def test_regex_searches_anywhere_as_written() -> None:
    assert check_answer(ANSWER, 0.1, Expectation(regex=r"capital of \w+")) == []
    assert check_answer(ANSWER, 0.1, Expectation(regex=r"^Paris")) == [
        'regex "^Paris": no match in answer'
    ]
    # Case-sensitive unless the pattern says otherwise.
    assert check_answer(ANSWER, 0.1, Expectation(regex="PARIS")) == [
        'regex "PARIS": no match in answer'
    ]
    assert check_answer(ANSWER, 0.1, Expectation(regex="(?i)PARIS")) == []


def test_invalid_regex_is_a_failure_naming_the_error() -> None:
    assert check_answer(ANSWER, 0.1, Expectation(regex=r"Par(is")) == [
        'regex "Par(is": invalid regex: missing ), unterminated subpattern at position 3'
    ]


def test_latency() -> None:
    assert check_answer(ANSWER, 1.0, Expectation(max_latency_seconds=1.0)) == []
    assert check_answer(ANSWER, 2.314, Expectation(max_latency_seconds=1.0)) == [
        "maxLatencySeconds 1.0: took 2.31s"
    ]


def test_check_answer_reports_every_failure_in_a_stable_order() -> None:
    expect = Expectation(
        contains=("Berlin",),
        not_contains=("Paris",),
        regex=r"\d+",
        case_sensitive=False,
        max_latency_seconds=0.1,
    )
    assert check_answer(ANSWER, 0.25, expect) == [
        'contains "Berlin": not found in answer',
        'notContains "Paris": found in answer',
        'regex "\\d+": no match in answer',
        "maxLatencySeconds 0.1: took 0.25s",
    ]


def test_equals_compares_the_whole_answer_whitespace_aside() -> None:
    assert check_answer("  Paris\n", 0.1, Expectation(equals="paris")) == []
    assert check_answer("Paris", 0.1, Expectation(equals="paris", case_sensitive=True)) == [
        'equals "paris": the answer is "Paris"'
    ]
    assert check_answer(ANSWER, 0.1, Expectation(equals="Paris")) == [
        f'equals "Paris": the answer is "{ANSWER}"'
    ]


def test_starts_with() -> None:
    assert check_answer(ANSWER, 0.1, Expectation(starts_with="the capital")) == []
    assert check_answer(ANSWER, 0.1, Expectation(starts_with="Paris")) == [
        'startsWith "Paris": the answer starts "The capital of France is Paris."'
    ]


SCHEMA = {
    "type": "object",
    "required": ["city", "population"],
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
}


def test_json_schema_validates_the_answer() -> None:
    assert (
        check_answer(
            '{"city": "Paris", "population": 2100000}', 0.1, Expectation(json_schema=SCHEMA)
        )
        == []
    )
    # A Markdown fence, as models like to add, is allowed.
    fenced = '```json\n{"city": "Paris", "population": 2100000}\n```'
    assert check_answer(fenced, 0.1, Expectation(json_schema=SCHEMA)) == []


@pytest.mark.parametrize(
    ("answer", "failure"),
    [
        ("Paris", "jsonSchema: answer is not JSON: Expecting value at line 1"),
        ('{"city": "Paris"}', "jsonSchema: (root): 'population' is a required property"),
        (
            '{"city": "Paris", "population": "many"}',
            "jsonSchema: population: 'many' is not of type 'integer'",
        ),
    ],
)
def test_json_schema_failures_say_what_is_wrong(answer: str, failure: str) -> None:
    assert check_answer(answer, 0.1, Expectation(json_schema=SCHEMA)) == [failure]


def test_an_invalid_schema_fails_the_case_naming_the_keyword() -> None:
    expect = Expectation(json_schema={"type": "object", "minProperties": "two"})
    assert check_answer("{}", 0.1, expect) == [
        "jsonSchema: invalid schema at minProperties: 'two' is not of type 'integer'"
    ]


def test_tool_called_and_not_called_read_the_observed_calls() -> None:
    expect = Expectation(tool_called=("get_weather",), tool_not_called=("delete_account",))
    assert failed(expect, seen(tools=("get_weather",))) == []
    assert failed(expect, seen(tools=("delete_account", "delete_account"))) == [
        'toolCalled "get_weather": not called (delete_account, delete_account)',
        'toolNotCalled "delete_account": called 2 time(s)',
    ]
    assert failed(Expectation(tool_called=("x",)), seen()) == [
        'toolCalled "x": not called (no tool calls)'
    ]


@pytest.mark.parametrize(
    ("match", "observed", "passes"),
    [
        ("exact", ("a", "b"), True),
        ("exact", ("a", "b", "c"), False),
        ("exact", ("b", "a"), False),
        ("inOrder", ("a", "x", "b"), True),
        ("inOrder", ("b", "a"), False),
        ("anyOrder", ("b", "x", "a"), True),
        ("anyOrder", ("a", "x"), False),
    ],
)
def test_tool_sequence(match: str, observed: tuple[str, ...], passes: bool) -> None:
    expect = Expectation(tool_sequence=ToolSequence(("a", "b"), match))
    result = failed(expect, seen(tools=observed))
    assert result == (
        [] if passes else [f"toolSequence {match} [a, b]: observed [{', '.join(observed)}]"]
    )


def test_budgets_on_tool_calls_and_tokens() -> None:
    expect = Expectation(max_tool_calls=1, max_tokens=100)
    assert failed(expect, seen(tools=("a",), input_tokens=60, output_tokens=40)) == []
    assert failed(expect, seen(tools=("a", "a"), input_tokens=90, output_tokens=11)) == [
        "maxToolCalls 1: observed 2",
        "maxTokens 100: observed 101 (90 input + 11 output)",
    ]


def test_cost_uses_the_price_and_an_unpriced_model_fails() -> None:
    expect = Expectation(max_cost_usd=0.001)
    price = Price(input_per_million=3.0, output_per_million=15.0)
    cheap = seen(input_tokens=100, output_tokens=20, model_id="m", price=price)
    assert failed(expect, cheap) == []
    dear = seen(input_tokens=1000, output_tokens=100, model_id="m", price=price)
    assert failed(expect, dear) == ["maxCostUSD 0.001: observed $0.004500 for 1100 tokens"]
    unpriced = seen(input_tokens=1, output_tokens=1, model_id="m")
    assert failed(expect, unpriced) == [
        'maxCostUSD 0.001: model "m" has no price in the operator\'s price table '
        "(AGENTTEST_MODEL_PRICES)"
    ]


def test_each_verdict_keeps_the_evaluators_score_and_reason() -> None:
    verdicts = evaluate(seen(), checks_for(Expectation(contains=("paris", "rome"))))
    assert [(v.name, v.passed, v.score) for v in verdicts] == [
        ('contains "paris"', True, 1.0),
        ('contains "rome"', False, 0.0),
    ]
    # Strands Evals' own reason, kept for the report.
    assert "does not contain" in verdicts[1].reason


def test_an_unreachable_judge_model_fails_the_check_never_passes_it() -> None:
    from strands.models.ollama import OllamaModel

    from agenttest.runner.config import JudgeRubric

    judge = OllamaModel(host="http://127.0.0.1:1", model_id="judge")
    checks = checks_for(Expectation(judge=JudgeRubric("Polite.")), judge, "judge")
    assert failed(Expectation(), seen()) == []
    [failure] = failures(evaluate(seen(), checks))
    assert failure.startswith("judge: the judge model failed: ConnectError")
