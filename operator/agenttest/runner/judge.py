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
import importlib
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
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

from agenttest.runner import modelauth
from agenttest.runner.channel import Channel, ChannelClosed, ChannelTimeout
from agenttest.runner.config import Case, ConfigError, ModelConfig, RunConfig, parse_config_text
from agenttest.runner.confine import children, kill_descendants, spawn
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
    ModelOutcome,
    Observation,
    RunResult,
    TrialRecord,
    case_label,
    failed_setup,
    one_line,
    parse_run_key,
    source_digest,
    truncate,
    verdict,
)
from agenttest.runner.relay import Budget, Relay
from agenttest.runner.reports import document, emit_report, write_files
from agenttest.runner.requirements import InstallFailed, environment, install_requirements
from agenttest.runner.trials import Tally, failure_counts, percentile

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
        redactor = out.redactor
        redact, hold = (redactor.raw, redactor.longest) if redactor else (None, 0)
        self.relays = [
            Relay(self.process.stdout, out.relay, budget, "stdout", redact, hold).start(),
            Relay(self.process.stderr, out.relay, budget, "stderr", redact, hold).start(),
        ]

    def gone(self) -> str:
        """Why the agent host stopped answering, for the case that was waiting."""
        try:
            code = self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "the agent host broke the channel"
        return f"the agent host exited with code {code}"

    def setup(self, config: RunConfig, models: Sequence[ModelConfig], deadline: Deadline) -> None:
        """Load agent.py with ``models`` (each at its gateway) to choose from per question."""
        self.channel.send(
            {
                "op": "setup",
                "agentSource": config.agent_source,
                "entrypoint": config.entrypoint,
                "models": {
                    model.name: {
                        "provider": model.provider,
                        "modelId": model.model_id,
                        "endpoint": model.endpoint,
                        "region": model.region,
                        "temperature": model.temperature,
                    }
                    for model in models
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

    def ask(self, query: str, model: str, deadline: Deadline) -> tuple[str | None, str | None]:
        """(answer, None) or (None, why it failed); TimedOut at the deadline.

        Each question gets a fresh conversation with the model named ``model``.
        """
        self.channel.send({"op": "ask", "query": query, "model": model})
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


def log_case(out: Emitter, outcome: CaseOutcome, detailed: bool) -> None:
    """The case's line; ``detailed`` (trials or a matrix) gives the pass rate too."""
    timing = f"({outcome.latency_seconds:.2f}s)"
    label = case_label(outcome)
    verdict_word = "PASS" if outcome.passed else "FAIL"
    if detailed and outcome.interval is not None:
        low, high = outcome.interval
        flaky = ", flaky" if 0 < outcome.pass_count < outcome.trials else ""
        timing = (
            f"{outcome.pass_count}/{outcome.trials} trials "
            f"(95% interval {100 * low:.0f}-{100 * high:.0f}%{flaky}), "
            f"mean {outcome.latency_seconds:.2f}s"
        )
    if outcome.passed:
        out.log(f"case {label}: {verdict_word} {timing}")
    else:
        out.log(f"case {label}: {verdict_word} {timing} - {'; '.join(outcome.failures)}")
    if outcome.output:
        out.log(f"  answer: {truncate(one_line(outcome.output), LOG_ANSWER_LIMIT)}")
    if outcome.observed is not None and outcome.observed.model_calls:
        seen = outcome.observed
        tools = f", tools: {', '.join(seen.tool_calls)}" if seen.tool_calls else ""
        out.log(
            f"  observed: {seen.model_calls} model calls, "
            f"{seen.input_tokens}+{seen.output_tokens} tokens{tools}"
        )
    if outcome.judge_score is not None:
        out.log(
            f"  judge: score {outcome.judge_score:.2f}: "
            + truncate(one_line(outcome.judge_reason), 300)
        )


def log_trial(
    out: Emitter, case: Case, model: ModelConfig | None, record: TrialRecord, of: int
) -> None:
    label = f"{case.name} [{model.name}]" if model is not None else case.name
    word = "PASS" if record.passed else "FAIL"
    why = f" - {'; '.join(record.failures)}" if record.failures else ""
    out.log(f"case {label} trial {record.trial}/{of}: {word} ({record.latency_seconds:.2f}s){why}")


class Evaluators:
    """strands_evals, imported on a thread while the agent host starts (~0.9 s)."""

    def __init__(self) -> None:
        self._module: ModuleType | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._load, name="import-evaluators", daemon=True)

    def start(self) -> Evaluators:
        self._thread.start()
        return self

    def _load(self) -> None:
        try:
            self._module = importlib.import_module("agenttest.runner.evaluation")
        except BaseException as error:  # reported where it is needed
            self._error = error

    def module(self) -> ModuleType:
        self._thread.join()
        if self._module is None:
            raise SetupFailed(f"cannot load the evaluators (strands-agents-evals): {self._error}")
        return self._module


def summarise_case(
    case: Case, model: ModelConfig | None, runs: Sequence[TrialRecord], threshold: float
) -> CaseOutcome:
    """A case over its trials: the pass rate against the threshold decides."""
    tally = Tally(sum(1 for run in runs if run.passed), len(runs), threshold)
    shown = next((run for run in runs if not run.passed), runs[-1])
    judged = [run.judge_score for run in runs if run.judge_score is not None]
    judge_reason = next(
        (run.judge_reason for run in runs if not run.passed and run.judge_score is not None),
        shown.judge_reason,
    )
    return CaseOutcome(
        name=case.name,
        passed=tally.passed,
        latency_seconds=sum(run.latency_seconds for run in runs) / len(runs),
        output=shown.answer,
        failures=tuple(failure_counts([run.failures for run in runs])),
        observed=shown.observed,
        model=model.name if model is not None else None,
        trials=tally.trials,
        passes=tally.passes,
        interval=tally.interval,
        judge_score=sum(judged) / len(judged) if judged else None,
        judge_reason=judge_reason,
        runs=tuple(runs),
    )


def summarise_model(model: ModelConfig, cases: Sequence[CaseOutcome]) -> ModelOutcome:
    runs = [run for case in cases for run in case.runs]
    latencies = [run.latency_seconds for run in runs]
    costs = [run.cost_usd for run in runs]
    return ModelOutcome(
        name=model.name,
        provider=model.provider,
        model_id=model.model_id,
        passed=bool(cases) and all(case.passed for case in cases),
        cases=len(cases),
        cases_passed=sum(1 for case in cases if case.passed),
        trials_run=len(runs),
        trials_passed=sum(1 for run in runs if run.passed),
        latency_mean=sum(latencies) / len(latencies) if latencies else 0.0,
        latency_p95=percentile(latencies, 0.95),
        input_tokens=sum(run.observed.input_tokens for run in runs),
        output_tokens=sum(run.observed.output_tokens for run in runs),
        cost_usd=None if not costs or None in costs else sum(c or 0.0 for c in costs),
    )


class Run:
    """One execution of a config."""

    def __init__(
        self,
        config: RunConfig,
        workdir: Path,
        out: Emitter,
        credentials: Mapping[str, modelauth.Credential] | None = None,
    ) -> None:
        self.config = config
        # By matrix entry name, and modelauth.JUDGE_ENTRY: for the gateways only.
        self.credentials = dict(credentials or {})
        self.workdir = workdir
        self.out = out
        self.deadline = Deadline(config.timeout_seconds)
        self.finished: list[CaseOutcome] = []
        # What the package of a pass is made from: the digest of the agent.py this
        # run hands to the agent host, and what the agent host imports from.
        self.source_sha256 = source_digest(config.agent_source)
        self.environment: tuple[str, ...] = ()
        # Several trials or models: logs and results give rates and model names.
        self.detailed = config.trials > 1 or len(config.models) > 1
        self.judge_tokens = (0, 0)  # what the judge model used, for the report

    @property
    def total_cases(self) -> int:
        return len(self.config.cases) * len(self.config.models)

    def timed_out_result(self, current: _CaseTimedOut | None = None) -> RunResult:
        cases = list(self.finished)
        if current is not None:
            limit = format_seconds(self.deadline.seconds)
            cases.append(
                CaseOutcome(
                    current.case,
                    False,
                    time.perf_counter() - current.started,
                    "",
                    (f"timeout: still running when the {limit}s limit was reached",),
                    model=current.model,
                    trials=self.config.trials,
                    passes=current.passes,
                    interval=None,
                )
            )
        return RunResult(
            passed=False,
            reason=self.deadline.reason,
            total_cases=self.total_cases,
            cases=tuple(cases),
            timed_out=True,
            trials=self.config.trials,
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
            result,
            source_sha256=self.source_sha256,
            environment=self.environment,
            judge_tokens=self.judge_tokens,
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
        agent_dir = self._agent_dir()
        host: AgentHost | None = None
        gateways: list[ModelGateway] = []
        evaluators = Evaluators().start()
        try:
            self.out.phase(PHASE_BUILDING)
            site = self._install(agent_dir)
            if self.deadline.expired():
                raise TimedOut
            host = AgentHost(agent_dir, site, self.out)
            # Imported while the agent host starts: botocore alone takes ~0.15 s.
            from agenttest.runner.gateway import ModelGateway, Upstream

            def gateway_for(model: ModelConfig, entry: str) -> ModelGateway:
                credential = self.credentials.get(entry)
                ollama = model.provider == "ollama"
                upstream = Upstream(
                    model.provider,
                    model.endpoint,
                    model.region,
                    models=(model.model_id,),
                    headers=modelauth.ollama_headers(credential) if ollama else (),
                )
                signer = None if ollama else modelauth.bedrock_signer(credential, model.region)
                gateway = ModelGateway(upstream, credentials_provider=signer).start()
                gateways.append(gateway)
                return gateway

            # One gateway per model: what each one saw is that model's alone.
            model_gateways = [gateway_for(model, model.name) for model in config.models]
            judge_gateway = (
                gateway_for(config.judge_model, modelauth.JUDGE_ENTRY)
                if config.judge_model
                else None
            )
            self.out.log(f"loading agent.py, entrypoint {config.entrypoint!r}")
            agent_models = [
                dataclasses.replace(model, endpoint=gateway.url)
                for model, gateway in zip(config.models, model_gateways, strict=True)
            ]
            # Listed while the agent host imports Strands, and before it is sent
            # agent.py: no agent code has run yet.
            self._list_environment(site)
            host.setup(config, agent_models, self.deadline)
            self.out.phase(PHASE_RUNNING)
            for model in config.models:
                self.out.log(
                    f"model {model.provider}/{model.model_id} at {model.describe()}, "
                    "through the judge's gateway"
                    + (f" (matrix entry {model.name})" if len(config.models) > 1 else "")
                    + (", with its credentialsSecretRef" if model.name in self.credentials else "")
                )
            evaluation = evaluators.module()
            judge = self._judge_model(judge_gateway)
            if self.detailed:
                self.out.log(
                    f"{config.trials} trial{'s' if config.trials > 1 else ''} per case, "
                    f"pass threshold {config.pass_threshold:g}"
                    + (f", matrix policy {config.matrix_policy}" if len(config.models) > 1 else "")
                )
            judge_id = config.judge_model.model_id if config.judge_model else ""
            checks = [evaluation.checks_for(case.expect, judge, judge_id) for case in config.cases]
            for model, gateway in zip(config.models, model_gateways, strict=True):
                for case, case_checks in zip(config.cases, checks, strict=True):
                    outcome = self._run_case(
                        case, model, host, gateway, judge_gateway, evaluation, case_checks
                    )
                    self.finished.append(outcome)
                    host.flush()
                    log_case(self.out, outcome, self.detailed)
            by_model = [
                summarise_model(model, [c for c in self.finished if c.model in (model.name, None)])
                for model in config.models
            ]
            return verdict(
                self.finished, self.total_cases, by_model, config.matrix_policy, config.trials
            )
        except SetupFailed as error:
            return failed_setup(error.reason, self.total_cases)
        except _CaseTimedOut as error:
            return self.timed_out_result(error)
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
            for gateway in gateways:
                gateway.stop()
            shutil.rmtree(agent_dir, ignore_errors=True)

    def _judge_model(self, gateway: ModelGateway | None) -> Any:
        """The strands model judge rubrics are scored with, at its own gateway."""
        judge = self.config.judge_model
        if judge is None or gateway is None:
            return None
        from agenttest.runner.agentloader import SetupError, build_model

        try:
            return build_model(dataclasses.replace(judge, endpoint=gateway.url))
        except SetupError as error:
            raise SetupFailed(f"judge model: {error.reason}") from None

    def _run_case(
        self,
        case: Case,
        model: ModelConfig,
        host: AgentHost,
        gateway: ModelGateway,
        judge_gateway: ModelGateway | None,
        evaluation: ModuleType,
        checks: Any,
    ) -> CaseOutcome:
        config = self.config
        entry = model if len(config.models) > 1 else None
        entry_name = entry.name if entry is not None else None
        label = case_label(CaseOutcome(case.name, False, 0.0, model=entry_name))
        self.out.log(f"case {label}: asking {truncate(one_line(case.query), 200)!r}")
        runs: list[TrialRecord] = []
        for trial in range(1, config.trials + 1):
            if self.deadline.expired():
                raise TimedOut
            begun = time.perf_counter()
            gateway.open_case(f"{case.name}#{trial}")
            started = time.perf_counter()
            try:
                answer, error = host.ask(case.query, model.name, self.deadline)
            except TimedOut:
                gateway.close_case()
                passes = sum(1 for run in runs if run.passed)
                raise _CaseTimedOut(case.name, entry_name, started, passes) from None
            latency = time.perf_counter() - started
            observed = gateway.close_case()
            record = self._trial(
                trial,
                case,
                model,
                answer,
                error,
                latency,
                observed,
                judge_gateway,
                evaluation,
                checks,
            )
            # The judge's own cost of the trial: all it did but wait for the answer.
            overhead = time.perf_counter() - begun - latency
            runs.append(dataclasses.replace(record, evaluation_seconds=overhead))
            if config.trials > 1:
                host.flush()
                log_trial(self.out, case, entry, record, config.trials)
        outcome = summarise_case(case, entry, runs, config.pass_threshold)
        return outcome

    def _trial(
        self,
        trial: int,
        case: Case,
        model: ModelConfig,
        answer: str | None,
        error: str | None,
        latency: float,
        gateway_saw: Observed,
        judge_gateway: ModelGateway | None,
        evaluation: ModuleType,
        checks: Any,
    ) -> TrialRecord:
        """Evaluate one trial's answer with what the gateway saw."""
        seen = observation(gateway_saw)
        price = self.config.prices.get(model.model_id)
        cost = price.cost(seen.input_tokens, seen.output_tokens) if price else None
        if answer is None:
            failure = describe_failure(error or "no answer", gateway_saw, model)
            return TrialRecord(trial, False, "", failure, latency, seen, cost, (), (failure,))
        observed = evaluation.Observed(
            query=case.query,
            answer=answer,
            latency_seconds=latency,
            tool_calls=seen.tool_calls,
            input_tokens=seen.input_tokens,
            output_tokens=seen.output_tokens,
            model_id=model.model_id,
            price=price,
        )
        if checks.judged and judge_gateway is not None:
            judge_gateway.open_case(f"judge {case.name}#{trial}")
        try:
            verdicts = evaluation.evaluate(observed, checks, case.name)
        finally:
            if checks.judged and judge_gateway is not None:
                used = judge_gateway.close_case()
                self.judge_tokens = (
                    self.judge_tokens[0] + used.input_tokens,
                    self.judge_tokens[1] + used.output_tokens,
                )
        failures = tuple(evaluation.failures(verdicts))
        judged = next((v for v in verdicts if v.name == "judge"), None)
        return TrialRecord(
            trial=trial,
            passed=not failures,
            answer=answer,
            error=None,
            latency_seconds=latency,
            observed=seen,
            cost_usd=cost,
            evaluators=tuple(v.to_json() for v in verdicts),
            failures=failures,
            judge_score=judged.score if judged is not None else None,
            judge_reason=judged.reason if judged is not None else "",
        )


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
    def __init__(self, case: str, model: str | None, started: float, passes: int) -> None:
        super().__init__(case)
        self.case = case
        self.model = model
        self.started = started
        self.passes = passes  # trials of the case that passed before the deadline


def run(
    config: RunConfig,
    workdir: Path,
    out: Emitter,
    credentials: Mapping[str, modelauth.Credential] | None = None,
) -> RunResult:
    """Run every case of ``config``; never raises for the agent's faults."""
    return Run(config, workdir, out, credentials).execute()


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
    parser.add_argument(
        "--report-dir", help="also write report.json and junit.xml into this directory"
    )
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
        # Taken before anything else starts, and masked in all we print from here on:
        # the agent host must not learn them, even from a model that echoes one.
        credentials = modelauth.take(environ)
        redactor = modelauth.Redactor(modelauth.secret_values(credentials))
        out.redactor = redactor
        args = _parse_args(argv)
        config = load_config(args.config, environ)
    except (ConfigError, modelauth.CredentialsError) as error:
        out.log(f"bad config: {error}")
        failed = failed_setup(f"bad config: {error}", total_cases=0)
        out.result(with_report(out, failed, document(failed, None)))
        return EXIT_BAD_CONFIG

    workdir = Path(args.workdir) if args.workdir else Path.cwd()
    out.log(f"{len(config.cases)} cases, timeout {format_seconds(config.timeout_seconds)}s")
    try:
        result = run(config, workdir, out, credentials)
    except Exception as error:
        # A bug in the judge itself: still end with a readable reason and a result line.
        traceback.print_exc(file=sys.stderr)
        reason = f"judge error: {type(error).__name__}: {error}"
        result = failed_setup(reason, len(config.cases))

    out.log(result.summary + ("" if result.passed else f" - {result.reason}"))
    report = redactor.value(document(result, config, result.judge_tokens))
    if args.report_dir:
        try:
            write_files(report, args.report_dir)
        except OSError as error:
            out.log(f"cannot write the report to {args.report_dir}: {error}")
    out.result(with_report(out, result, report))
    if result.passed:
        return EXIT_PASSED
    return EXIT_TIMED_OUT if result.timed_out else EXIT_FAILED
