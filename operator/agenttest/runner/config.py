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


@dataclass(frozen=True)
class Expectation:
    """Checks on one answer; an empty Expectation checks nothing."""

    contains: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    regex: str | None = None
    case_sensitive: bool = False
    max_latency_seconds: float | None = None


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

    def describe(self) -> str:
        """Where the model lives, for log lines and 'unreachable' messages."""
        if self.endpoint:
            return self.endpoint
        if self.provider == "bedrock":
            return f"bedrock in {self.region or 'the default region'}"
        return self.provider


@dataclass(frozen=True)
class RunConfig:
    agent_source: str
    model: ModelConfig
    cases: tuple[Case, ...]
    entrypoint: str = "agent"
    requirements: tuple[str, ...] = ()
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS


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


def parse_expectation(raw: object, where: str) -> Expectation:
    obj = _object(raw, where)
    return Expectation(
        contains=_strings(obj, "contains", where),
        not_contains=_strings(obj, "notContains", where),
        regex=_optional_string(obj, "regex", where),
        case_sensitive=_bool(obj, "caseSensitive", where, default=False),
        max_latency_seconds=_optional_number(obj, "maxLatencySeconds", where),
    )


def parse_case(raw: object, where: str) -> Case:
    obj = _object(raw, where)
    return Case(
        name=_string(obj, "name", where),
        query=_string(obj, "query", where),
        expect=parse_expectation(obj.get("expect") or {}, f"{where}.expect"),
    )


def parse_model(raw: object) -> ModelConfig:
    where = "config.model"
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
    )
    if provider == "ollama" and not model.endpoint:
        raise ConfigError(f"{where}.endpoint is required when provider is ollama")
    return model


def parse_config(raw: object) -> RunConfig:
    """Validate a decoded JSON document. Unknown keys are ignored for forward compatibility."""
    where = "config"
    obj = _object(raw, where)

    if "model" not in obj:
        raise ConfigError("config.model is required")
    raw_cases = obj.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise ConfigError("config.cases must be a non-empty list")
    cases = tuple(parse_case(item, f"config.cases[{i}]") for i, item in enumerate(raw_cases))

    timeout = _optional_number(obj, "timeoutSeconds", where)
    if timeout is not None and timeout <= 0:
        raise ConfigError("config.timeoutSeconds must be greater than 0")

    return RunConfig(
        agent_source=_string(obj, "agentSource", where),
        model=parse_model(obj["model"]),
        cases=cases,
        entrypoint=_string(obj, "entrypoint", where, default="agent"),
        requirements=_strings(obj, "requirements", where),
        timeout_seconds=DEFAULT_TIMEOUT_SECONDS if timeout is None else timeout,
    )


def parse_config_text(text: str, source: str) -> RunConfig:
    """Decode and validate config text; ``source`` says where it came from, for messages."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source} is not valid JSON: {error}") from None
    return parse_config(raw)
