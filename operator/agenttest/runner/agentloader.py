"""Turning the user's agent.py into Agents that talk to the configured model.

Everything here can fail because of the user's code or requirements; such failures are
raised as SetupError with a one-line reason fit for the AgentTest status.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from strands import Agent
from strands.handlers.callback_handler import null_callback_handler
from strands.models import Model

from agenttest.runner.config import ModelConfig

MODULE_NAME = "agent_under_test"
AGENT_FILE = "agent.py"
PIP_ERROR_LINES = 3  # how much of pip's output makes it into the reason


class SetupError(Exception):
    """The agent could not be prepared; ``reason`` is the readable one-liner."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- requirements


def _project_name(requirement: str) -> str:
    # "Foo-Bar[x]>=1 ; python_version>'3'" -> "foo-bar": enough to spot it in pip's output.
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return match.group(1).lower() if match else requirement.strip().lower()


def blamed_requirements(requirements: Sequence[str], pip_output: str) -> list[str]:
    """The requirements pip's output mentions; all of them when it names none."""
    lowered = pip_output.lower()
    named = [r for r in requirements if _project_name(r) in lowered]
    return named or list(requirements)


def pip_error_summary(output: str, count: int = PIP_ERROR_LINES) -> str:
    """pip's last few ERROR lines (or last lines), joined to fit on one line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return " | ".join((errors or lines)[-count:])


def install_requirements(requirements: Sequence[str], site_dir: Path, timeout: float) -> None:
    """pip-install into ``site_dir`` and put it first on sys.path.

    --target keeps the image's own site-packages untouched, so a bad requirement
    cannot break strands itself for the rest of the run.
    """
    options = [r for r in requirements if r.lstrip().startswith("-")]
    if options:
        # Requirements come from the CRD; pip options there could redirect indexes.
        raise SetupError(
            f"requirement install failed: {options[0]!r} is a pip option, not a requirement"
        )

    command = [
        sys.executable, "-m", "pip", "install",
        "--disable-pip-version-check", "--no-input", "--quiet",
        "--target", str(site_dir),
        *requirements,
    ]  # fmt: skip
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        # The builtin type lets callers handle it without knowing pip runs in a subprocess.
        raise TimeoutError(f"pip install did not finish within {timeout:.0f}s") from error
    if completed.returncode != 0:
        output = completed.stderr.strip() or completed.stdout.strip()
        blamed = ", ".join(blamed_requirements(requirements, output))
        details = pip_error_summary(output) or f"pip exited with {completed.returncode}"
        raise SetupError(f"requirement install failed: {blamed}: {details}")

    sys.path.insert(0, str(site_dir))
    importlib.invalidate_caches()


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
    """The strands model provider for the configured model.

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
        from strands.models.bedrock import BedrockModel

        return BedrockModel(region_name=config.region, endpoint_url=config.endpoint, **options)
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


def _quiet(agent: Agent) -> Agent:
    # The default handler streams the answer to stdout, which would garble the log;
    # the harness prints each answer itself.
    agent.callback_handler = null_callback_handler
    return agent


class AgentSupplier:
    """Hands out an Agent with an empty conversation for every case.

    agent.py's entrypoint is either an Agent object, which is reused with its messages
    cleared, or a factory, which is called again for each case.
    """

    def __init__(self, module: ModuleType, entrypoint: str, model: Model) -> None:
        self._entrypoint = entrypoint
        self._model = model
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
            self._spare = self._from_factory(target)
        else:
            raise SetupError(f"entrypoint {entrypoint!r} is not an Agent or a factory")

    def _from_factory(self, factory: Callable[..., object]) -> Agent:
        pass_model = _takes_one_positional(factory)
        try:
            made = factory(self._model) if pass_model else factory()
        except Exception as error:
            raise SetupError(
                f"entrypoint {self._entrypoint!r} raised {type(error).__name__}: {error}"
            ) from error
        if not isinstance(made, Agent):
            raise SetupError(
                f"entrypoint {self._entrypoint!r} returned {type(made).__name__}, not an Agent"
            )
        if not pass_model:
            made.model = self._model
        return _quiet(made)

    def fresh(self) -> Agent:
        """An agent with no conversation history, wired to the configured model."""
        if self._agent is not None:
            # Agent.model and Agent.messages are plain attributes, read on every call.
            self._agent.model = self._model
            self._agent.messages = []
            return _quiet(self._agent)
        if self._spare is not None:
            spare, self._spare = self._spare, None
            return spare
        assert self._factory is not None
        return self._from_factory(self._factory)
