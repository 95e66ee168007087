"""The judge: the one process that owns an execution's output and its verdict.

Exit codes: 0 all cases passed, 1 a case or the setup failed, 2 the config is bad,
124 the run outlived timeoutSeconds.

The judge never runs the user's code itself. It installs the agent's requirements
and starts the agent host (agenthost.py) as fenced-in children (confine.py), serves
the model API to the agent host through its gateway (gateway.py), asks each case's
question over a private channel, times the answer, checks it against the case's
expectations and what the gateway observed, and signs every machine line it prints
with the attempt's key (protocol.py). Whatever the agent host prints is relayed into
the log behind a prefix (relay.py). At the end it kills every process the agent host
left behind, however it detached.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from agenttest.runner.channel import Channel, ChannelClosed, ChannelTimeout
from agenttest.runner.config import Case, ConfigError, ModelConfig, RunConfig, parse_config_text
from agenttest.runner.confine import children, kill_descendants, spawn
from agenttest.runner.expectations import check_answer
from agenttest.runner.protocol import (
    CONFIG_ENV,
    CONFIG_S3_ENV,
    ENVIRONMENT_LIMIT,
    EXIT_TIMED_OUT,
    LOG_ANSWER_LIMIT,
    PHASE_BUILDING,
    PHASE_RUNNING,
    RUN_KEY_ENV,
    CaseOutcome,
    Emitter,
    Observation,
    RunResult,
    failed_setup,
    one_line,
    parse_run_key,
    source_digest,
    truncate,
    verdict,
)
from agenttest.runner.relay import Budget, Relay
from agenttest.runner.reports import emit_report, minimal_document
from agenttest.runner.requirements import InstallFailed, environment, install_requirements

if TYPE_CHECKING:
    from agenttest.runner.gateway import ModelGateway, Observed

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
# How long the agent host gets to leave on its own once the channel closes.
HOST_EXIT_GRACE = 2.0


# --------------------------------------------------------------------------- time limits


def format_seconds(seconds: float) -> str:
    """10.0 -> "10", 2.5 -> "2.5": how people write time limits."""
    return f"{seconds:g}"


class Deadline:
    """The run's wall-clock budget, counted from when the judge started."""

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
    """The deadline passed while the judge waited for a step."""


class SetupFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- the agent host


class AgentHost:
    """The child process running the user's agent, and the judge's end of its channel."""

    def __init__(self, workdir: Path, site: Path | None, out: Emitter) -> None:
        judge_end, host_end = socket.socketpair()
        argv = [
            sys.executable, "-m", "agenttest.runner.agenthost",
            "--channel-fd", str(host_end.fileno()),
            "--workdir", str(workdir),
        ]  # fmt: skip
        if site is not None:
            argv += ["--site", str(site)]
        try:
            self.process = spawn(
                argv, workdir, stderr=subprocess.PIPE, pass_fds=(host_end.fileno(),)
            )
        finally:
            host_end.close()
        self.channel = Channel(judge_end)
        budget = Budget()
        self.budget = budget
        assert self.process.stdout is not None and self.process.stderr is not None
        self.relays = [
            Relay(self.process.stdout, out.relay, budget, "stdout").start(),
            Relay(self.process.stderr, out.relay, budget, "stderr").start(),
        ]

    def gone(self) -> str:
        """Why the agent host stopped answering, for the case that was waiting."""
        try:
            code = self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "the agent host broke the channel"
        return f"the agent host exited with code {code}"

    def setup(self, config: RunConfig, model: ModelConfig, deadline: Deadline) -> None:
        self.channel.send(
            {
                "op": "setup",
                "agentSource": config.agent_source,
                "entrypoint": config.entrypoint,
                "model": {
                    "provider": model.provider,
                    "modelId": model.model_id,
                    "endpoint": model.endpoint,
                    "region": model.region,
                    "temperature": model.temperature,
                },
            }
        )
        try:
            reply = self.channel.receive(deadline.remaining())
        except ChannelTimeout:
            raise TimedOut from None
        except ChannelClosed:
            raise SetupFailed(f"{self.gone()} while loading agent.py") from None
        if reply.get("op") == "setup-failed":
            raise SetupFailed(truncate(str(reply.get("reason")), 2000))
        if reply.get("op") != "ready":
            raise SetupFailed("the agent host answered setup with something else")

    def ask(self, query: str, deadline: Deadline) -> tuple[str | None, str | None]:
        """(answer, None) or (None, why it failed); TimedOut at the deadline."""
        self.channel.send({"op": "ask", "query": query})
        try:
            reply = self.channel.receive(deadline.remaining())
        except ChannelTimeout:
            raise TimedOut from None
        except ChannelClosed:
            return None, self.gone()
        if reply.get("op") == "answer" and isinstance(reply.get("text"), str):
            return reply["text"], None
        if reply.get("op") == "error":
            return None, str(reply.get("message"))[:2000]
        return None, "the agent host answered with something other than an answer"

    def flush(self) -> None:
        """Relay what the host printed without a newline yet (a streamed answer)."""
        for relay in self.relays:
            relay.flush()

    def stop(self, spare: frozenset[int]) -> None:
        """Close the channel, give the host a moment, then end it and all it started."""
        self.channel.close()
        try:
            self.process.wait(timeout=HOST_EXIT_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        # Daemons it forked (setsid, double fork) were re-parented to us (subreaper).
        kill_descendants(spare)
        for relay in self.relays:
            relay.join(timeout=5)


# --------------------------------------------------------------------------- the run


def describe_failure(error: str, observed: Observed, model: ModelConfig) -> str:
    """A case failure for an error the agent host reported, using what the gateway saw."""
    unreachable = next((c for c in observed.calls if c.status == 502 and c.error), None)
    if unreachable is None:
        return f"error: {error}"
    text = unreachable.error.lower()
    if "refused" in text:
        why = "connection refused"
    elif "timed out" in text or "timeout" in text:
        why = "connection timed out"
    else:
        why = unreachable.error
    return f"error: model unreachable at {model.describe()}: {why}"


def observation(observed: Observed) -> Observation:
    return Observation(
        model_calls=observed.model_calls,
        input_tokens=observed.input_tokens,
        output_tokens=observed.output_tokens,
        tool_calls=tuple(observed.tool_calls),
    )


def log_case(out: Emitter, outcome: CaseOutcome) -> None:
    timing = f"({outcome.latency_seconds:.2f}s)"
    if outcome.passed:
        out.log(f"case {outcome.name}: PASS {timing}")
    else:
        out.log(f"case {outcome.name}: FAIL {timing} - {'; '.join(outcome.failures)}")
    if outcome.output:
        out.log(f"  answer: {truncate(one_line(outcome.output), LOG_ANSWER_LIMIT)}")
    if outcome.observed is not None and outcome.observed.model_calls:
        seen = outcome.observed
        tools = f", tools: {', '.join(seen.tool_calls)}" if seen.tool_calls else ""
        out.log(
            f"  observed: {seen.model_calls} model calls, "
            f"{seen.input_tokens}+{seen.output_tokens} tokens{tools}"
        )


class Run:
    """One execution of a config."""

    def __init__(self, config: RunConfig, workdir: Path, out: Emitter) -> None:
        self.config = config
        self.workdir = workdir
        self.out = out
        self.deadline = Deadline(config.timeout_seconds)
        self.finished: list[CaseOutcome] = []
        # What the package of a pass is made from: the digest of the agent.py this
        # run hands to the agent host, and what the agent host imports from.
        self.source_sha256 = source_digest(config.agent_source)
        self.environment: tuple[str, ...] = ()

    def timed_out_result(self, current: tuple[str, float] | None = None) -> RunResult:
        cases = list(self.finished)
        if current is not None:
            name, started = current
            limit = format_seconds(self.deadline.seconds)
            cases.append(
                CaseOutcome(
                    name,
                    False,
                    time.perf_counter() - started,
                    "",
                    (f"timeout: still running when the {limit}s limit was reached",),
                )
            )
        return RunResult(
            passed=False,
            reason=self.deadline.reason,
            total_cases=len(self.config.cases),
            cases=tuple(cases),
            timed_out=True,
        )

    def _agent_dir(self) -> Path:
        """The agent host's own working directory (and HOME), apart from the judge's files."""
        agent_dir = Path(tempfile.mkdtemp(prefix="agent-", dir=self.workdir))
        (agent_dir / "tmp").mkdir()
        return agent_dir

    def _install(self, agent_dir: Path) -> Path | None:
        requirements = self.config.requirements
        if not requirements:
            return None
        count = len(requirements)
        self.out.log(
            f"installing {count} requirement{'' if count == 1 else 's'}: " + ", ".join(requirements)
        )
        if self.deadline.expired():
            raise TimedOut
        site = agent_dir / "site"
        try:
            install_requirements(requirements, site, agent_dir, self.deadline.remaining())
        except TimeoutError as error:
            raise TimedOut from error
        except InstallFailed as error:
            raise SetupFailed(error.reason) from None
        self.out.log("requirements installed")
        return site

    def execute(self) -> RunResult:
        # Children we had before the run are not the agent's (the judge may run inside
        # another program); everything else below us is ended when the run is.
        spare = frozenset(children())
        # Stopped from outside (cancel, timeout, deletion): the agent host lives in a
        # session of its own, so no group signal reaches it; end it and all it started.
        with stop_on_term(spare):
            result = self._execute(spare)
        return dataclasses.replace(
            result, source_sha256=self.source_sha256, environment=self.environment
        )

    def _list_environment(self, site: Path | None) -> None:
        """Record the agent host's distributions, before any agent code runs."""
        listed = environment(site)
        if len(listed) > ENVIRONMENT_LIMIT:
            # A partial list would pin a package to less than what was tested.
            self.out.log(
                f"{len(listed)} distributions installed, over the {ENVIRONMENT_LIMIT} "
                "reported: the result lists none, and no package can be pinned from it"
            )
            return
        self.environment = tuple(listed)

    def _execute(self, spare: frozenset[int]) -> RunResult:
        config = self.config
        total = len(config.cases)
        agent_dir = self._agent_dir()
        host: AgentHost | None = None
        gateway: ModelGateway | None = None
        try:
            self.out.phase(PHASE_BUILDING)
            site = self._install(agent_dir)
            if self.deadline.expired():
                raise TimedOut
            host = AgentHost(agent_dir, site, self.out)
            # Imported while the agent host starts: botocore alone takes ~0.15 s.
            from agenttest.runner.gateway import ModelGateway, Upstream

            gateway = ModelGateway(
                Upstream(
                    config.model.provider,
                    config.model.endpoint,
                    config.model.region,
                    models=(config.model.model_id,),
                )
            ).start()
            self.out.log(f"loading agent.py, entrypoint {config.entrypoint!r}")
            agent_model = ModelConfig(
                provider=config.model.provider,
                model_id=config.model.model_id,
                endpoint=gateway.url,
                region=config.model.region,
                temperature=config.model.temperature,
            )
            # Listed while the agent host imports Strands, and before it is sent
            # agent.py: no agent code has run yet.
            self._list_environment(site)
            host.setup(config, agent_model, self.deadline)
            self.out.phase(PHASE_RUNNING)
            self.out.log(
                f"model {config.model.provider}/{config.model.model_id} at "
                f"{config.model.describe()}, through the judge's gateway"
            )
            for case in config.cases:
                self.finished.append(self._run_case(case, host, gateway))
                host.flush()
                log_case(self.out, self.finished[-1])
            return verdict(self.finished, total)
        except SetupFailed as error:
            return failed_setup(error.reason, total)
        except _CaseTimedOut as error:
            return self.timed_out_result((error.case, error.started))
        except TimedOut:
            return self.timed_out_result()
        finally:
            if host is not None:
                host.stop(spare)
                if host.budget.dropped:
                    self.out.log(
                        f"agent output over the log budget was dropped: {host.budget.dropped} bytes"
                    )
            else:
                kill_descendants(spare)
            if gateway is not None:
                gateway.stop()
            shutil.rmtree(agent_dir, ignore_errors=True)

    def _run_case(self, case: Case, host: AgentHost, gateway: ModelGateway) -> CaseOutcome:
        self.out.log(f"case {case.name}: asking {truncate(one_line(case.query), 200)!r}")
        if self.deadline.expired():
            raise TimedOut
        gateway.open_case(case.name)
        started = time.perf_counter()
        try:
            answer, error = host.ask(case.query, self.deadline)
        except TimedOut:
            gateway.close_case()
            raise _CaseTimedOut(case.name, started) from None
        latency = time.perf_counter() - started
        observed = gateway.close_case()
        seen = observation(observed)
        if answer is None:
            failure = describe_failure(error or "no answer", observed, self.config.model)
            return CaseOutcome(case.name, False, latency, "", (failure,), seen)
        failures = tuple(check_answer(answer, latency, case.expect))
        return CaseOutcome(case.name, not failures, latency, answer, failures, seen)


@contextlib.contextmanager
def stop_on_term(spare: frozenset[int]) -> Iterator[None]:
    """While the run lasts, SIGTERM kills everything it started, then exits as SIGTERM would."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def terminate(signum: int, frame: object) -> None:
        kill_descendants(spare)
        os._exit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _CaseTimedOut(Exception):
    def __init__(self, case: str, started: float) -> None:
        super().__init__(case)
        self.case = case
        self.started = started


def run(config: RunConfig, workdir: Path, out: Emitter) -> RunResult:
    """Run every case of ``config``; never raises for the agent's faults."""
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
    parser.add_argument("--workdir", help="where the judge works (default: cwd)")
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


def take_run_key(environ: MutableMapping[str, str]) -> bytes | None:
    """The attempt's key, removed from the environment so no child inherits it."""
    text = environ.pop(RUN_KEY_ENV, None)
    return parse_run_key(text) if text else None


def with_report(out: Emitter, result: RunResult, document: Mapping[str, Any]) -> RunResult:
    """Emit the report's lines; the result to print after them names the report.

    A report that cannot be sent costs the run its report, never its result line.
    """
    try:
        ref = emit_report(out, document)
    except Exception as error:
        out.log(f"no report sent: {type(error).__name__}: {error}")
        return result
    return dataclasses.replace(result, report=ref)


def main(argv: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None) -> int:
    """Run the judge and return the exit code; prints a signed result line in every outcome."""
    environ = os.environ if environ is None else environ
    key = take_run_key(environ)
    out = Emitter(sys.stdout, key or secrets.token_bytes(32))
    if key is None:
        out.log(f"no {RUN_KEY_ENV}: machine lines are signed with a key nobody holds")
    try:
        args = _parse_args(argv)
        config = load_config(args.config, environ)
    except ConfigError as error:
        out.log(f"bad config: {error}")
        failed = failed_setup(f"bad config: {error}", total_cases=0)
        out.result(with_report(out, failed, minimal_document(failed, (), None)))
        return EXIT_BAD_CONFIG

    workdir = Path(args.workdir) if args.workdir else Path.cwd()
    out.log(f"{len(config.cases)} cases, timeout {format_seconds(config.timeout_seconds)}s")
    try:
        result = run(config, workdir, out)
    except Exception as error:
        # A bug in the judge itself: still end with a readable reason and a result line.
        traceback.print_exc(file=sys.stderr)
        reason = f"judge error: {type(error).__name__}: {error}"
        result = failed_setup(reason, len(config.cases))

    out.log(result.summary + ("" if result.passed else f" - {result.reason}"))
    report = minimal_document(result, config.cases, config.model)
    out.result(with_report(out, result, report))
    if result.passed:
        return EXIT_PASSED
    return EXIT_TIMED_OUT if result.timed_out else EXIT_FAILED
