"""Turning the user's agent.py into Agents that talk to the judge's model gateway.

Runs in the agent host only. Everything here can fail because of the user's code;
such failures are raised as SetupError with a one-line reason fit for the status.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from strands import Agent
from strands.models import Model

from agenttest.runner.config import ModelConfig

MODULE_NAME = "agent_under_test"
AGENT_FILE = "agent.py"
# The agent host signs its model calls with these for the gateway, which drops them and
# signs again with the judge's own credentials: the agent never holds a real one.
THROWAWAY_ACCESS_KEY = "AKIDAGENTTESTGATEWAY"
THROWAWAY_SECRET_KEY = "the-gateway-re-signs-every-request"


class SetupError(Exception):
    """The agent could not be prepared; ``reason`` is the readable one-liner."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- agent.py


def load_agent_module(source: str, workdir: Path) -> ModuleType:
    """Write agent.py into ``workdir`` and import it as ``agent_under_test``."""
    path = workdir / AGENT_FILE
    path.write_text(source, encoding="utf-8")

    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise SetupError(f"{AGENT_FILE} cannot be imported from {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before executing: dataclasses, pickling and pydantic look the module up.
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        del sys.modules[MODULE_NAME]
        raise SetupError(
            f"{AGENT_FILE} has a syntax error at line {error.lineno}: {error.msg}"
        ) from error
    except Exception as error:
        del sys.modules[MODULE_NAME]
        raise SetupError(
            f"{AGENT_FILE} raised {type(error).__name__} at import: {error}"
        ) from error
    return module


# --------------------------------------------------------------------------- model


def build_model(config: ModelConfig) -> Model:
    """The strands model provider for the configured model, at the gateway's address.

    Providers are imported lazily: each needs its own optional client library, and an
    image built for one provider need not carry the other's.
    """
    options: dict[str, Any] = {"model_id": config.model_id}
    if config.temperature is not None:
        options["temperature"] = config.temperature

    try:
        if config.provider == "ollama":
            from strands.models.ollama import OllamaModel

            return OllamaModel(host=config.endpoint, **options)
        import boto3
        from strands.models.bedrock import BedrockModel

        # Explicit throwaway credentials: boto3's default chain is never consulted, and
        # the agent's environment holds no AWS variable at all.
        session = boto3.Session(
            aws_access_key_id=THROWAWAY_ACCESS_KEY,
            aws_secret_access_key=THROWAWAY_SECRET_KEY,
            region_name=config.region or "us-east-1",
        )
        return BedrockModel(boto_session=session, endpoint_url=config.endpoint, **options)
    except ImportError as error:
        raise SetupError(
            f"model provider {config.provider} is not installed in the test image: {error}"
        ) from error
    except Exception as error:
        # e.g. botocore rejecting the region: a config problem the user can fix.
        raise SetupError(
            f"cannot create the {config.provider} model: {type(error).__name__}: {error}"
        ) from error


# --------------------------------------------------------------------------- entrypoint


def _takes_one_positional(factory: Callable[..., object]) -> bool:
    """Whether the factory can be called with the model as its only argument."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return False  # builtins without a signature: safest to pass nothing
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    return any(p.kind in positional for p in params)


class AgentSupplier:
    """Hands out an Agent with an empty conversation for every case and trial.

    agent.py's entrypoint is either an Agent object, which is reused with its messages
    cleared and its model set to the one asked for, or a factory, which is called
    again each time (with that model when it takes one).
    """

    def __init__(self, module: ModuleType, entrypoint: str, models: Mapping[str, Model]) -> None:
        self._entrypoint = entrypoint
        self._models = dict(models)
        self.first = next(iter(self._models))
        self._agent: Agent | None = None
        self._factory: Callable[..., object] | None = None
        self._spare: Agent | None = None

        target = getattr(module, entrypoint, None)
        if target is None:
            raise SetupError(f"entrypoint {entrypoint!r} not found in {AGENT_FILE}")
        if isinstance(target, Agent):
            self._agent = target
        elif callable(target):
            self._factory = target
            # Build the first agent now, so a broken factory is one setup error
            # rather than the same error repeated in every case.
            self._spare = self._from_factory(target, self.first)
        else:
            raise SetupError(f"entrypoint {entrypoint!r} is not an Agent or a factory")

    def _model(self, name: str) -> Model:
        if name not in self._models:
            raise SetupError(f"no model named {name!r}")
        return self._models[name]

    def _from_factory(self, factory: Callable[..., object], name: str) -> Agent:
        model = self._model(name)
        pass_model = _takes_one_positional(factory)
        try:
            made = factory(model) if pass_model else factory()
        except Exception as error:
            raise SetupError(
                f"entrypoint {self._entrypoint!r} raised {type(error).__name__}: {error}"
            ) from error
        if not isinstance(made, Agent):
            raise SetupError(
                f"entrypoint {self._entrypoint!r} returned {type(made).__name__}, not an Agent"
            )
        if not pass_model:
            made.model = model
        return made

    def fresh(self, name: str) -> Agent:
        """An agent with no conversation history, wired to the model called ``name``."""
        if self._agent is not None:
            # Agent.model and Agent.messages are plain attributes, read on every call.
            self._agent.model = self._model(name)
            self._agent.messages = []
            return self._agent
        if self._spare is not None and name == self.first:
            spare, self._spare = self._spare, None
            return spare
        assert self._factory is not None
        return self._from_factory(self._factory, name)
