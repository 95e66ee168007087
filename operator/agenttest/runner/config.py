"""The runner's input: a JSON document in the CRD's camelCase shape.

Parsed by hand into frozen dataclasses because the runner runs inside the test
container, where only strands and the standard library are guaranteed. Every error
names the offending key, since the message ends up in the AgentTest's status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROVIDERS = ("ollama", "bedrock")
DEFAULT_TIMEOUT_SECONDS = 300.0


class ConfigError(ValueError):
    """The config is missing, unreadable or has the wrong shape (exit code 2)."""


TOOL_SEQUENCE_MATCHES = ("exact", "inOrder", "anyOrder")
MATRIX_POLICIES = ("all", "any")
DEFAULT_MODEL_NAME = "default"


@dataclass(frozen=True)
class ToolSequence:
    tools: tuple[str, ...]
    match: str = "exact"  # one of TOOL_SEQUENCE_MATCHES


@dataclass(frozen=True)
class JudgeRubric:
    rubric: str
    threshold: float = 0.5
    include_query: bool = True


@dataclass(frozen=True)
class Expectation:
    """Checks on one answer; an empty Expectation checks nothing."""

    contains: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    regex: str | None = None
    case_sensitive: bool = False
    max_latency_seconds: float | None = None
    equals: str | None = None
    starts_with: str | None = None
    json_schema: Mapping[str, Any] | None = None
    tool_called: tuple[str, ...] = ()
    tool_not_called: tuple[str, ...] = ()
    tool_sequence: ToolSequence | None = None
    max_tool_calls: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    judge: JudgeRubric | None = None


@dataclass(frozen=True)
class Case:
    name: str
    query: str
    expect: Expectation = field(default_factory=Expectation)


@dataclass(frozen=True)
class ModelConfig:
    provider: str
    model_id: str
    endpoint: str | None = None
    region: str | None = None
    temperature: float | None = None
    name: str = DEFAULT_MODEL_NAME  # the spec.models entry

    def describe(self) -> str:
        """Where the model lives, for log lines and 'unreachable' messages."""
        if self.endpoint:
            return self.endpoint
        if self.provider == "bedrock":
            return f"bedrock in {self.region or 'the default region'}"
        return self.provider


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input_per_million: float
    output_per_million: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.input_per_million + output_tokens * self.output_per_million
        ) / 1_000_000


@dataclass(frozen=True)
class RunConfig:
    agent_source: str
    models: tuple[ModelConfig, ...]
    cases: tuple[Case, ...]
    entrypoint: str = "agent"
    requirements: tuple[str, ...] = ()
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    trials: int = 1
    pass_threshold: float = 1.0
    matrix_policy: str = "all"  # one of MATRIX_POLICIES
    judge_model: ModelConfig | None = None  # given when a case has a judge rubric
    prices: Mapping[str, Price] = field(default_factory=dict)  # by model id

    @property
    def model(self) -> ModelConfig:
        """The first model: the one of a test without a matrix."""
        return self.models[0]


# --------------------------------------------------------------------------- field readers
# Each reader takes the parent object, the key and a dotted path used only in messages.


def _string(obj: Mapping[str, Any], key: str, where: str, *, default: str | None = None) -> str:
    value = obj.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key} is required")
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string")
    return value


def _optional_string(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string")
    return value


def _optional_number(obj: Mapping[str, Any], key: str, where: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int subclass, but `true` is never a sensible number of seconds.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key} must be a number")
    return float(value)


def _optional_int(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key} must be an integer")
    return value


def _bool(obj: Mapping[str, Any], key: str, where: str, *, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false")
    return value


def _strings(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}.{key} must be a list of strings")
    return tuple(value)


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be an object")
    return value


# --------------------------------------------------------------------------- sections


def parse_tool_sequence(raw: object, where: str) -> ToolSequence | None:
    if raw is None:
        return None
    obj = _object(raw, where)
    tools = _strings(obj, "tools", where)
    if not tools:
        raise ConfigError(f"{where}.tools must name at least one tool")
    match = _string(obj, "match", where, default="exact")
    if match not in TOOL_SEQUENCE_MATCHES:
        raise ConfigError(f"{where}.match must be one of {', '.join(TOOL_SEQUENCE_MATCHES)}")
    return ToolSequence(tools=tools, match=match)


def parse_judge(raw: object, where: str) -> JudgeRubric | None:
    if raw is None:
        return None
    obj = _object(raw, where)
    threshold = _optional_number(obj, "threshold", where)
    return JudgeRubric(
        rubric=_string(obj, "rubric", where),
        threshold=0.5 if threshold is None else threshold,
        include_query=_bool(obj, "includeQuery", where, default=True),
    )


def parse_expectation(raw: object, where: str) -> Expectation:
    obj = _object(raw, where)
    schema = obj.get("jsonSchema")
    if schema is not None and not isinstance(schema, Mapping):
        raise ConfigError(f"{where}.jsonSchema must be an object")
    return Expectation(
        contains=_strings(obj, "contains", where),
        not_contains=_strings(obj, "notContains", where),
        regex=_optional_string(obj, "regex", where),
        case_sensitive=_bool(obj, "caseSensitive", where, default=False),
        max_latency_seconds=_optional_number(obj, "maxLatencySeconds", where),
        equals=_optional_string(obj, "equals", where),
        starts_with=_optional_string(obj, "startsWith", where),
        json_schema=schema,
        tool_called=_strings(obj, "toolCalled", where),
        tool_not_called=_strings(obj, "toolNotCalled", where),
        tool_sequence=parse_tool_sequence(obj.get("toolSequence"), f"{where}.toolSequence"),
        max_tool_calls=_optional_int(obj, "maxToolCalls", where),
        max_tokens=_optional_int(obj, "maxTokens", where),
        max_cost_usd=_optional_number(obj, "maxCostUSD", where),
        judge=parse_judge(obj.get("judge"), f"{where}.judge"),
    )


def parse_case(raw: object, where: str) -> Case:
    obj = _object(raw, where)
    return Case(
        name=_string(obj, "name", where),
        query=_string(obj, "query", where),
        expect=parse_expectation(obj.get("expect") or {}, f"{where}.expect"),
    )


def parse_model(raw: object, where: str = "config.model") -> ModelConfig:
    obj = _object(raw, where)
    provider = _string(obj, "provider", where)
    if provider not in PROVIDERS:
        raise ConfigError(f"{where}.provider must be one of {', '.join(PROVIDERS)}")
    model = ModelConfig(
        provider=provider,
        model_id=_string(obj, "modelId", where),
        endpoint=_optional_string(obj, "endpoint", where),
        region=_optional_string(obj, "region", where),
        temperature=_optional_number(obj, "temperature", where),
        name=_string(obj, "name", where, default=DEFAULT_MODEL_NAME),
    )
    if provider == "ollama" and not model.endpoint:
        raise ConfigError(f"{where}.endpoint is required when provider is ollama")
    return model


def parse_config(raw: object) -> RunConfig:
    """Validate a decoded JSON document. Unknown keys are ignored for forward compatibility."""
    where = "config"
    obj = _object(raw, where)

    models = parse_models(obj)
    raw_cases = obj.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise ConfigError("config.cases must be a non-empty list")
    cases = tuple(parse_case(item, f"config.cases[{i}]") for i, item in enumerate(raw_cases))

    timeout = _optional_number(obj, "timeoutSeconds", where)
    if timeout is not None and timeout <= 0:
        raise ConfigError("config.timeoutSeconds must be greater than 0")

    trials = _optional_int(obj, "trials", where)
    if trials is not None and trials < 1:
        raise ConfigError("config.trials must be at least 1")
    threshold = _optional_number(obj, "passThreshold", where)
    if threshold is not None and not 0 <= threshold <= 1:
        raise ConfigError("config.passThreshold must be between 0 and 1")
    policy = _string(obj, "matrixPolicy", where, default="all")
    if policy not in MATRIX_POLICIES:
        raise ConfigError(f"config.matrixPolicy must be one of {', '.join(MATRIX_POLICIES)}")
    judge_model = None
    if obj.get("judgeModel") is not None:
        judge_model = parse_model(obj["judgeModel"], "config.judgeModel")

    return RunConfig(
        agent_source=_string(obj, "agentSource", where),
        models=models,
        cases=cases,
        entrypoint=_string(obj, "entrypoint", where, default="agent"),
        requirements=_strings(obj, "requirements", where),
        timeout_seconds=DEFAULT_TIMEOUT_SECONDS if timeout is None else timeout,
        trials=1 if trials is None else trials,
        pass_threshold=1.0 if threshold is None else threshold,
        matrix_policy=policy,
        judge_model=judge_model,
        prices=parse_prices(obj.get("prices")),
    )


def parse_models(obj: Mapping[str, Any]) -> tuple[ModelConfig, ...]:
    """config.models (a matrix), or config.model (one model, as before the matrix)."""
    if obj.get("models") is not None:
        raw = obj["models"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError("config.models must be a non-empty list")
        models = tuple(parse_model(item, f"config.models[{i}]") for i, item in enumerate(raw))
        names = [model.name for model in models]
        if len(set(names)) != len(names):
            raise ConfigError("config.models names must be unique")
        return models
    if "model" not in obj:
        raise ConfigError("config.model or config.models is required")
    return (parse_model(obj["model"]),)


def parse_prices(raw: object) -> dict[str, Price]:
    if raw is None:
        return {}
    where = "config.prices"
    prices: dict[str, Price] = {}
    for model_id, entry in _object(raw, where).items():
        obj = _object(entry, f"{where}.{model_id}")
        numbers = [
            _optional_number(obj, key, f"{where}.{model_id}")
            for key in ("inputPerMillion", "outputPerMillion")
        ]
        if any(number is None or number < 0 for number in numbers):
            raise ConfigError(f"{where}.{model_id} needs inputPerMillion and outputPerMillion >= 0")
        prices[str(model_id)] = Price(float(numbers[0] or 0), float(numbers[1] or 0))
    return prices


def parse_config_text(text: str, source: str) -> RunConfig:
    """Decode and validate config text; ``source`` says where it came from, for messages."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source} is not valid JSON: {error}") from None
    return parse_config(raw)
