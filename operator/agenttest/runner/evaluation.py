"""A case's expectations mapped onto Strands Evals evaluators, and each trial checked.

The field's library does the evaluating: ``Contains``, ``Equals``, ``StartsWith`` and
``ToolCalled`` from ``strands_evals.evaluators``, its trajectory scorers for tool
sequences, and ``OutputEvaluator`` for judge rubrics. What it lacks for a gate is added
here as evaluators of the same kind (negation, regex, JSON Schema, budgets), so every
check of a trial yields one ``Verdict``: the evaluator's score and reason, and, when it
failed, a sentence naming the expectation, which the AgentTest status shows as-is.

Every input comes from what the judge itself observed: the answer the agent host sent
back over the judge's channel, and the tool calls, tokens and latency the judge's
gateway and clock recorded. Nothing the agent prints is read.

Importing this module imports strands_evals (~0.9 s, Strands included): the judge does
it while the agent host starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from strands_evals.evaluators import Contains, Equals, Evaluator, OutputEvaluator, StartsWith
from strands_evals.evaluators import ToolCalled as _ToolCalled
from strands_evals.tools.evaluation_tools import (
    any_order_match_scorer,
    exact_match_scorer,
    in_order_match_scorer,
)
from strands_evals.types.evaluation import EvaluationData, EvaluationOutput

from agenttest.runner.config import Expectation, JudgeRubric, Price, ToolSequence

QUOTE_LIMIT = 120  # characters of an answer quoted in a failure


@dataclass(frozen=True)
class Observed:
    """What the judge saw of one trial (never the agent's word)."""

    query: str
    answer: str
    latency_seconds: float
    tool_calls: tuple[str, ...] = ()
    input_tokens: int = 0
    output_tokens: int = 0
    model_id: str = ""
    price: Price | None = None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost_usd(self) -> float | None:
        if self.price is None:
            return None
        return self.price.cost(self.input_tokens, self.output_tokens)


@dataclass(frozen=True)
class Verdict:
    """One evaluator's word on one trial."""

    name: str  # the expectation, e.g. contains "Paris"
    passed: bool
    score: float
    reason: str  # the evaluator's reason
    failure: str = ""  # the sentence for the status, when it failed

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "score": self.score,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Check:
    """An evaluator, the data it reads, and how its failure is said."""

    name: str
    evaluator: Any  # a strands_evals Evaluator
    failure: Callable[[Observed, EvaluationOutput], str]
    # Compare on a case-folded answer (case-insensitive checks).
    folded: bool = False
    # Called with the score: the verdict, when it is not the evaluator's test_pass.
    passes: Callable[[float, bool], bool] | None = None
    judged: bool = False  # an LLM judge (needs the model; errors are the judge's)


@dataclass
class Checks:
    """All checks of a case, in the order their failures are reported."""

    checks: list[Check] = field(default_factory=list)

    @property
    def judged(self) -> bool:
        return any(check.judged for check in self.checks)


# ------------------------------------------------------------ what strands_evals lacks


class Not(Evaluator):  # type: ignore[misc]  # strands_evals ships no type information
    """Passes when the wrapped evaluator fails (notContains, toolNotCalled)."""

    def __init__(self, inner: Any, name: str) -> None:
        super().__init__(name=name)
        self.inner = inner

    def evaluate(self, evaluation_case: EvaluationData[Any, Any]) -> list[EvaluationOutput]:
        score, passed, reason = self.inner.aggregator(self.inner.evaluate(evaluation_case))
        return [EvaluationOutput(score=1.0 - score, test_pass=not passed, reason=f"not: {reason}")]


class Matches(Evaluator):  # type: ignore[misc]
    """The answer matches a Python regular expression somewhere."""

    def __init__(self, pattern: str, name: str) -> None:
        super().__init__(name=name)
        self.pattern = pattern

    def evaluate(self, evaluation_case: EvaluationData[Any, Any]) -> list[EvaluationOutput]:
        try:
            found = re.search(self.pattern, str(evaluation_case.actual_output)) is not None
        except re.error as error:
            return [EvaluationOutput(score=0.0, test_pass=False, reason=f"invalid regex: {error}")]
        reason = "a match in the answer" if found else "no match in answer"
        return [EvaluationOutput(score=float(found), test_pass=found, reason=reason)]


def parse_json_answer(answer: str) -> Any:
    """The answer as JSON; a Markdown ```json fence around it is allowed."""
    text = answer.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*\n?(.*?)\n?```", text, re.DOTALL)
    return json.loads(fenced.group(1) if fenced else text)


class MatchesJsonSchema(Evaluator):  # type: ignore[misc]
    """The answer parses as JSON and validates against a JSON Schema."""

    def __init__(self, schema: Any, name: str) -> None:
        super().__init__(name=name)
        self.schema = schema

    def evaluate(self, evaluation_case: EvaluationData[Any, Any]) -> list[EvaluationOutput]:
        import jsonschema

        def fail(reason: str) -> list[EvaluationOutput]:
            return [EvaluationOutput(score=0.0, test_pass=False, reason=reason)]

        try:
            validator_class = jsonschema.validators.validator_for(self.schema)
            validator_class.check_schema(self.schema)
        except jsonschema.SchemaError as error:
            where = "/".join(str(part) for part in error.path)
            return fail(f"invalid schema{f' at {where}' if where else ''}: {error.message}")
        try:
            document = parse_json_answer(str(evaluation_case.actual_output))
        except json.JSONDecodeError as error:
            return fail(f"answer is not JSON: {error.msg} at line {error.lineno}")
        errors = sorted(
            validator_class(self.schema).iter_errors(document), key=lambda e: list(e.path)
        )
        if errors:
            first = errors[0]
            where = "/".join(str(part) for part in first.absolute_path) or "(root)"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            return fail(f"{where}: {first.message}{more}")
        return [EvaluationOutput(score=1.0, test_pass=True, reason="valid")]


_SCORERS = {
    "exact": exact_match_scorer,
    "inOrder": in_order_match_scorer,
    "anyOrder": any_order_match_scorer,
}


class ToolSequenceMatch(Evaluator):  # type: ignore[misc]
    """The observed tool calls against an expected sequence, scored by Strands Evals' scorers.

    Their exact scorer compares position by position and ignores calls past the
    expected ones, so an exact match also needs the lengths to agree; their any-order
    scorer compares sets, as anyOrder means.
    """

    def __init__(self, sequence: ToolSequence, name: str) -> None:
        super().__init__(name=name)
        self.sequence = sequence

    def evaluate(self, evaluation_case: EvaluationData[Any, Any]) -> list[EvaluationOutput]:
        actual = list(evaluation_case.actual_trajectory or [])
        expected = list(self.sequence.tools)
        score = float(_SCORERS[self.sequence.match](actual, expected))
        passed = score >= 1.0 and (self.sequence.match != "exact" or len(actual) == len(expected))
        if not passed and score >= 1.0:
            score = len(expected) / max(len(actual), 1)
        reason = f"{self.sequence.match} match score {score:.2f}"
        return [EvaluationOutput(score=score, test_pass=passed, reason=reason)]


class AtMost(Evaluator):  # type: ignore[misc]
    """A budget: an observed number (from the evaluation's metadata) at most a limit."""

    def __init__(self, key: str, limit: float, name: str) -> None:
        super().__init__(name=name)
        self.key = key
        self.limit = limit

    def evaluate(self, evaluation_case: EvaluationData[Any, Any]) -> list[EvaluationOutput]:
        value = (evaluation_case.metadata or {}).get(self.key)
        if value is None:
            return [EvaluationOutput(score=0.0, test_pass=False, reason=f"no {self.key} observed")]
        passed = value <= self.limit
        return [
            EvaluationOutput(
                score=1.0 if passed else 0.0,
                test_pass=passed,
                reason=f"{self.key} {value:g} {'<=' if passed else '>'} {self.limit:g}",
            )
        ]


# --------------------------------------------------------------------------- the mapping


def quote(text: str) -> str:
    """JSON quoting keeps quotes and newlines inside a needle unambiguous on one line."""
    return json.dumps(text, ensure_ascii=False)


def quote_regex(pattern: str) -> str:
    """Backslashes are the regex's own syntax; JSON-escaping them would double every one."""
    return '"' + pattern.replace("\n", "\\n") + '"'


def _cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tools_seen(seen: Observed) -> str:
    return ", ".join(seen.tool_calls) if seen.tool_calls else "no tool calls"


# How each check's failure is said: (label, ..., what was seen, the evaluator's output).


def _fixed(text: str) -> Callable[[Observed, EvaluationOutput], str]:
    return lambda seen, output: text


def _with_reason(label: str) -> Callable[[Observed, EvaluationOutput], str]:
    return lambda seen, output: f"{label}: {output.reason}"


def _answer_is(label: str, seen: Observed, output: EvaluationOutput) -> str:
    return f"{label}: the answer is {quote(_cut(seen.answer.strip()))}"


def _answer_starts(label: str, seen: Observed, output: EvaluationOutput) -> str:
    return f"{label}: the answer starts {quote(_cut(seen.answer.strip(), 40))}"


def _not_called(label: str, seen: Observed, output: EvaluationOutput) -> str:
    return f"{label}: not called ({_tools_seen(seen)})"


def _called(label: str, tool: str, seen: Observed, output: EvaluationOutput) -> str:
    return f"{label}: called {seen.tool_calls.count(tool)} time(s)"


def _observed_sequence(label: str, seen: Observed, output: EvaluationOutput) -> str:
    return f"{label}: observed [{', '.join(seen.tool_calls)}]"


def _observed_calls(label: str, seen: Observed, output: EvaluationOutput) -> str:
    return f"{label}: observed {len(seen.tool_calls)}"


def _observed_tokens(label: str, seen: Observed, output: EvaluationOutput) -> str:
    return (
        f"{label}: observed {seen.tokens} ({seen.input_tokens} input + {seen.output_tokens} output)"
    )


def _cost(label: str, seen: Observed, output: EvaluationOutput) -> str:
    if seen.price is None:
        return (
            f"{label}: model {quote(seen.model_id)} has no price in the operator's "
            "price table (AGENTTEST_MODEL_PRICES)"
        )
    return f"{label}: observed ${seen.cost_usd:.6f} for {seen.tokens} tokens"


def _limit(field_name: str, limit: float) -> str:
    """A limit as the failure names it: 0.01 for a cost, 1.0 for seconds, 3 for counts."""
    return f"{limit:g}" if field_name == "maxCostUSD" else str(limit)


def _took(label: str, seen: Observed, output: EvaluationOutput) -> str:
    return f"{label}: took {seen.latency_seconds:.2f}s"


def checks_for(
    expect: Expectation, judge_model: Any | None = None, judge_model_id: str = ""
) -> Checks:
    """The checks of one case; ``judge_model`` is a strands Model for judge rubrics."""
    folded = not expect.case_sensitive
    checks = Checks()
    add = checks.checks.append

    def fold(text: str) -> str:
        return text.casefold() if folded else text

    for needle in expect.contains:
        label = f"contains {quote(needle)}"
        add(
            Check(
                label,
                Contains(fold(needle), case_sensitive=True, name=label),
                _fixed(f"{label}: not found in answer"),
                folded=folded,
            )
        )
    for needle in expect.not_contains:
        label = f"notContains {quote(needle)}"
        inner = Contains(fold(needle), case_sensitive=True)
        add(Check(label, Not(inner, label), _fixed(f"{label}: found in answer"), folded=folded))
    if expect.regex is not None:
        label = f"regex {quote_regex(expect.regex)}"
        add(Check(label, Matches(expect.regex, label), _with_reason(label)))
    if expect.equals is not None:
        label = f"equals {quote(_cut(expect.equals))}"
        add(
            Check(
                label,
                Equals(fold(expect.equals.strip()), name=label),
                partial(_answer_is, label),
                folded=folded,
            )
        )
    if expect.starts_with is not None:
        label = f"startsWith {quote(_cut(expect.starts_with))}"
        add(
            Check(
                label,
                StartsWith(fold(expect.starts_with), case_sensitive=True, name=label),
                partial(_answer_starts, label),
                folded=folded,
            )
        )
    if expect.json_schema is not None:
        label = "jsonSchema"
        add(Check(label, MatchesJsonSchema(dict(expect.json_schema), label), _with_reason(label)))
    for tool in expect.tool_called:
        label = f"toolCalled {quote(tool)}"
        add(
            Check(
                label,
                _ToolCalled(tool, name=label),
                partial(_not_called, label),
            )
        )
    for tool in expect.tool_not_called:
        label = f"toolNotCalled {quote(tool)}"
        add(
            Check(
                label,
                Not(_ToolCalled(tool), label),
                partial(_called, label, tool),
            )
        )
    if expect.tool_sequence is not None:
        sequence = expect.tool_sequence
        label = f"toolSequence {sequence.match} [{', '.join(sequence.tools)}]"
        add(
            Check(
                label,
                ToolSequenceMatch(sequence, label),
                partial(_observed_sequence, label),
            )
        )
    # Budgets: (expectation, its limit, the observed figure it bounds, how a failure is said).
    budgets = (
        ("maxToolCalls", expect.max_tool_calls, "toolCalls", _observed_calls),
        ("maxTokens", expect.max_tokens, "tokens", _observed_tokens),
        ("maxCostUSD", expect.max_cost_usd, "costUSD", _cost),
        ("maxLatencySeconds", expect.max_latency_seconds, "latencySeconds", _took),
    )
    for field_name, limit, observed, said in budgets:
        if limit is not None:
            label = f"{field_name} {_limit(field_name, limit)}"
            add(Check(label, AtMost(observed, limit, label), partial(said, label)))
    if expect.judge is not None:
        add(judge_check(expect.judge, judge_model, judge_model_id))
    return checks


def judge_check(rubric: JudgeRubric, model: Any | None, model_id: str) -> Check:
    """A rubric scored by OutputEvaluator; the score, not the judge's own pass, decides."""
    label = "judge"
    threshold = rubric.threshold

    def failure(seen: Observed, output: EvaluationOutput) -> str:
        return f"judge: score {output.score:.2f} below {threshold:g}: {output.reason}"

    evaluator = OutputEvaluator(
        rubric=rubric.rubric, model=model, include_inputs=rubric.include_query, name=label
    )
    return Check(
        label,
        evaluator,
        failure,
        passes=lambda score, judged_pass: score >= threshold,
        judged=True,
    )


def evaluate(seen: Observed, checks: Checks, case_name: str = "") -> list[Verdict]:
    """Every check of ``checks`` on one trial's answer."""
    data: dict[bool, EvaluationData[Any, Any]] = {}

    def data_for(folded: bool) -> EvaluationData[Any, Any]:
        if folded not in data:
            # Leading and trailing whitespace is never part of what equals/startsWith mean.
            answer = seen.answer.strip()
            data[folded] = EvaluationData(
                input=seen.query,
                actual_output=answer.casefold() if folded else answer,
                actual_trajectory=list(seen.tool_calls),
                name=case_name or None,
                metadata={
                    "toolCalls": len(seen.tool_calls),
                    "tokens": seen.tokens,
                    "costUSD": seen.cost_usd,
                    "latencySeconds": seen.latency_seconds,
                },
            )
        return data[folded]

    verdicts = []
    for check in checks.checks:
        verdicts.append(_run(check, data_for(check.folded), seen))
    return verdicts


def _run(check: Check, data: EvaluationData[Any, Any], seen: Observed) -> Verdict:
    try:
        outputs = check.evaluator.evaluate(data)
        score, passed, reason = check.evaluator.aggregator(outputs)
    except Exception as error:
        # An evaluator that cannot decide (the judge model unreachable, an answer it
        # cannot parse) fails the check: a gate never passes on a missing verdict.
        reason = f"{'the judge model failed' if check.judged else 'error'}: "
        reason += f"{type(error).__name__}: {error}"
        return Verdict(check.name, False, 0.0, reason, f"{check.name}: {reason}"[:1000])
    if check.passes is not None:
        passed = check.passes(float(score), bool(passed))
    output = EvaluationOutput(score=float(score), test_pass=bool(passed), reason=str(reason))
    failure = "" if passed else check.failure(seen, output)
    return Verdict(check.name, bool(passed), float(score), str(reason), failure)


def failures(verdicts: Sequence[Verdict]) -> list[str]:
    return [verdict.failure for verdict in verdicts if not verdict.passed]


def check_answer(answer: str, latency_seconds: float, expect: Expectation) -> list[str]:
    """The failures of one answer against the deterministic checks of ``expect``.

    What the agent host's tool calls and tokens were is not known here: use
    ``evaluate`` with an ``Observed`` for those.
    """
    seen = Observed(query="", answer=answer, latency_seconds=latency_seconds)
    return failures(evaluate(seen, checks_for(expect)))
