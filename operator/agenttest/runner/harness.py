"""The run itself: config in, cases run against the agent, one result line out.

Exit codes: 0 all cases passed, 1 a case or the setup failed, 2 the config is bad,
124 the watchdog ended a step that outlived timeoutSeconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from agenttest.runner.agentloader import (
    AgentSupplier,
    SetupError,
    build_model,
    install_requirements,
    load_agent_module,
)
from agenttest.runner.config import Case, ConfigError, ModelConfig, RunConfig, parse_config_text
from agenttest.runner.expectations import check_answer
from agenttest.runner.protocol import (
    CONFIG_ENV,
    CONFIG_S3_ENV,
    EXIT_TIMED_OUT,
    LOG_ANSWER_LIMIT,
    PHASE_BUILDING,
    PHASE_RUNNING,
    CaseOutcome,
    Emitter,
    RunResult,
    failed_setup,
    judge,
    one_line,
    truncate,
)

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2

# Exception types, by name, that mean "could not reach the model" in the clients strands
# uses (httpx for Ollama, botocore for Bedrock); matched by name to avoid importing them.
_UNREACHABLE_TYPE_NAMES = {"ConnectError", "ConnectTimeout", "EndpointConnectionError"}


# --------------------------------------------------------------------------- time limits


def format_seconds(seconds: float) -> str:
    """10.0 -> "10", 2.5 -> "2.5": how people write time limits."""
    return f"{seconds:g}"


class Deadline:
    """The run's wall-clock budget, counted from when the harness started."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends_at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._ends_at - time.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0

    @property
    def reason(self) -> str:
        return f"timed out after {format_seconds(self.seconds)}s"


class TimedOut(Exception):
    """Raised between steps once the deadline has passed."""


@contextmanager
def watchdog(deadline: Deadline, on_expiry: Callable[[], NoReturn]) -> Iterator[None]:
    """Run the block, calling ``on_expiry`` from a thread if it outlives the deadline.

    A hung model call cannot be interrupted from Python, so ``on_expiry`` must end the
    process. Checking before arming keeps the watchdog from firing for a deadline that
    had already passed; that case is reported normally via TimedOut instead.
    """
    if deadline.expired():
        raise TimedOut
    done = threading.Event()

    def wait_then_fire() -> None:
        if not done.wait(deadline.remaining()):
            on_expiry()

    thread = threading.Thread(target=wait_then_fire, name="agenttest-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


# --------------------------------------------------------------------------- cases


def _exception_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe_error(error: BaseException, model: ModelConfig) -> str:
    """A case failure for an exception, spelling out the common "model is down" case."""
    chain = list(_exception_chain(error))
    unreachable = any(
        isinstance(e, ConnectionError) or type(e).__name__ in _UNREACHABLE_TYPE_NAMES for e in chain
    )
    if not unreachable:
        return f"error: {type(error).__name__}: {error}"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        why = "connection refused"
    elif any(isinstance(e, TimeoutError) or "Timeout" in type(e).__name__ for e in chain):
        why = "connection timed out"
    else:
        why = str(error)
    return f"error: {type(error).__name__}: model unreachable at {model.describe()}: {why}"


def run_case(case: Case, supplier: AgentSupplier, model: ModelConfig) -> CaseOutcome:
    """Ask the agent one question in a fresh conversation and check the answer."""
    started = time.perf_counter()
    try:
        agent = supplier.fresh()
        answer = str(agent(case.query)).strip()
    except SetupError as error:
        # A factory that worked for earlier cases failed now; its reason says it all.
        return CaseOutcome(case.name, False, time.perf_counter() - started, "", (error.reason,))
    except Exception as error:
        failure = describe_error(error, model)
        return CaseOutcome(case.name, False, time.perf_counter() - started, "", (failure,))
    latency = time.perf_counter() - started
    failures = tuple(check_answer(answer, latency, case.expect))
    return CaseOutcome(case.name, not failures, latency, answer, failures)


def log_case(out: Emitter, outcome: CaseOutcome) -> None:
    timing = f"({outcome.latency_seconds:.2f}s)"
    if outcome.passed:
        out.log(f"case {outcome.name}: PASS {timing}")
    else:
        out.log(f"case {outcome.name}: FAIL {timing} - {'; '.join(outcome.failures)}")
    if outcome.output:
        out.log(f"  answer: {truncate(one_line(outcome.output), LOG_ANSWER_LIMIT)}")


# --------------------------------------------------------------------------- the run


class Run:
    """One execution of a config; keeps enough state for the watchdog to report."""

    def __init__(self, config: RunConfig, workdir: Path, out: Emitter) -> None:
        self.config = config
        self.workdir = workdir
        self.out = out
        self.deadline = Deadline(config.timeout_seconds)
        self.finished: list[CaseOutcome] = []
        self.current_case: str | None = None
        self.current_case_started = 0.0

    def timed_out_result(self) -> RunResult:
        cases = list(self.finished)
        if self.current_case is not None:
            limit = format_seconds(self.deadline.seconds)
            cases.append(
                CaseOutcome(
                    self.current_case,
                    False,
                    time.perf_counter() - self.current_case_started,
                    "",
                    (f"timeout: still running when the {limit}s limit was reached",),
                )
            )
        return RunResult(
            passed=False,
            reason=self.deadline.reason,
            total_cases=len(self.config.cases),
            cases=tuple(cases),
        )

    def _hung(self) -> NoReturn:
        # Holding the emitter's lock until the process is gone keeps the result line last.
        with self.out.lock:
            self.out.log(f"{self.deadline.reason}; stopping")
            self.out.result(self.timed_out_result())
            os._exit(EXIT_TIMED_OUT)

    def _build(self) -> AgentSupplier:
        config = self.config
        self.out.phase(PHASE_BUILDING)
        if config.requirements:
            count = len(config.requirements)
            self.out.log(
                f"installing {count} requirement{'' if count == 1 else 's'}: "
                + ", ".join(config.requirements)
            )
            if self.deadline.expired():
                raise TimedOut
            try:
                install_requirements(
                    config.requirements, self.workdir / "site", self.deadline.remaining()
                )
            except TimeoutError as error:
                raise TimedOut from error
            self.out.log("requirements installed")
        self.out.log(f"loading agent.py, entrypoint {config.entrypoint!r}")
        with watchdog(self.deadline, self._hung):
            module = load_agent_module(config.agent_source, self.workdir)

        self.out.phase(PHASE_RUNNING)
        model = build_model(config.model)
        self.out.log(
            f"model {config.model.provider}/{config.model.model_id} at {config.model.describe()}"
        )
        with watchdog(self.deadline, self._hung):
            return AgentSupplier(module, config.entrypoint, model)

    def execute(self) -> RunResult:
        total = len(self.config.cases)
        try:
            supplier = self._build()
        except SetupError as error:
            return failed_setup(error.reason, total)
        except TimedOut:
            return self.timed_out_result()

        for case in self.config.cases:
            self.out.log(f"case {case.name}: asking {truncate(one_line(case.query), 200)!r}")
            try:
                with watchdog(self.deadline, self._hung):
                    self.current_case = case.name
                    self.current_case_started = time.perf_counter()
                    outcome = run_case(case, supplier, self.config.model)
            except TimedOut:
                return self.timed_out_result()  # raised before the case started
            self.current_case = None
            self.finished.append(outcome)
            log_case(self.out, outcome)
        return judge(self.finished, total)


def run(config: RunConfig, workdir: Path, out: Emitter) -> RunResult:
    """Run every case of ``config`` in ``workdir``; never raises for the agent's faults."""
    return Run(config, workdir, out).execute()


# --------------------------------------------------------------------------- entry point


class _ArgumentParser(argparse.ArgumentParser):
    # argparse normally exits on bad arguments; raising lets main() still print a result.
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"bad arguments: {message}")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _ArgumentParser(
        prog="python -m agenttest.runner",
        description="Run an AgentTest's cases against a Strands agent and report the result.",
    )
    parser.add_argument("--config", help=f"JSON config file (default: ${CONFIG_ENV} text)")
    parser.add_argument("--workdir", help="where agent.py and requirements go (default: cwd)")
    return parser.parse_args(argv)


def load_config(config_path: str | None, environ: Mapping[str, str]) -> RunConfig:
    """Read the config from the --config file, else from the environment."""
    if config_path is not None:
        try:
            text = Path(config_path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read config {config_path}: {error.strerror}") from None
        return parse_config_text(text, f"config {config_path}")
    env_text = environ.get(CONFIG_ENV)
    if not env_text and environ.get(CONFIG_S3_ENV):
        return parse_config_text(read_s3_text(environ[CONFIG_S3_ENV]), environ[CONFIG_S3_ENV])
    if not env_text:
        raise ConfigError(f"no config: pass --config PATH or set {CONFIG_ENV}")
    return parse_config_text(env_text, f"${CONFIG_ENV}")


def read_s3_text(uri: str) -> str:
    """A config too large for the task's environment, put in S3 by the operator."""
    import boto3  # strands-agents depends on boto3 (Bedrock), so it is always there

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as error:
        raise ConfigError(f"cannot read config {uri}: {error}") from None
    return bytes(body).decode("utf-8")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the harness and return the exit code; prints the result line in every outcome."""
    out = Emitter(sys.stdout)
    try:
        args = _parse_args(argv)
        config = load_config(args.config, os.environ if environ is None else environ)
    except ConfigError as error:
        out.log(f"bad config: {error}")
        out.result(failed_setup(f"bad config: {error}", total_cases=0))
        return EXIT_BAD_CONFIG

    workdir = Path(args.workdir) if args.workdir else Path.cwd()
    out.log(f"{len(config.cases)} cases, timeout {format_seconds(config.timeout_seconds)}s")
    try:
        result = run(config, workdir, out)
    except Exception as error:
        # A bug in the harness itself: still end with a readable reason and a result line.
        traceback.print_exc(file=sys.stderr)
        reason = f"harness error: {type(error).__name__}: {error}"
        result = failed_setup(reason, len(config.cases))

    out.log(result.summary + ("" if result.passed else f" - {result.reason}"))
    out.result(result)
    return EXIT_PASSED if result.passed else EXIT_FAILED
