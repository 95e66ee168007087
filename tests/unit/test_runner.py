"""The runner (judge and agent host), run against the real scripted model server.

Most scenarios run twice: in-process through ``main()`` (fast, easy to debug) and as
``python -m agenttest.runner`` in a subprocess, which is how the container runs it and
the only way to see exit codes and the watchdog for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from agenttest.runner.config import ConfigError, parse_config
from agenttest.runner.judge import main
from agenttest.runner.protocol import MACHINE_PREFIX, RUN_KEY_ENV, verify_line
from agenttest_dev.modelserver import DEFAULT_SCRIPT, ScriptedModelServer

KEY = bytes(range(32))

GREETING = "Hello! I am a scripted model, happy to help."

SCRIPT: list[dict[str, Any]] = [
    {
        "match": r"order",
        "toolCall": {"name": "order_status", "arguments": {"order_id": "A-17"}},
        "reply": "Order status: {tool_result}",
    },
    {"match": r"slow", "reply": "Sorry for the wait.", "delaySeconds": 0.4},
    {"match": r"hang", "reply": "too late", "delaySeconds": 60},
    {"match": r"essay", "reply": "word " * 1000},
    *DEFAULT_SCRIPT,
]

# An Agent object whose own model points nowhere: passing proves the runner replaced it.
AGENT_OBJECT = """\
from strands import Agent
from strands.models.ollama import OllamaModel

agent = Agent(model=OllamaModel(host="http://127.0.0.1:9", model_id="wrong"))
"""

FACTORY_TAKING_MODEL = """\
from strands import Agent

calls = []

def make_agent(model):
    calls.append(model)
    return Agent(model=model, system_prompt="You are terse.")
"""

FACTORY_WITHOUT_ARGS = """\
from strands import Agent

def build():
    return Agent()
"""

TOOL_AGENT = """\
from strands import Agent, tool

@tool
def order_status(order_id: str) -> str:
    \"\"\"Look up where an order is.

    Args:
        order_id: The order's id.
    \"\"\"
    return f"order {order_id} shipped on 2024-05-01"

agent = Agent(tools=[order_status])
"""

MODES = ["in-process", "subprocess"]


@dataclass
class RunnerRun:
    exit_code: int
    stdout: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every machine line, each verified with the run's key, in sequence."""
        events, seq = [], 0
        for line in self.lines:
            if line.startswith(MACHINE_PREFIX):
                seq, event = verify_line(KEY, line, seq)
                events.append(event)
        return events

    @property
    def result(self) -> dict[str, Any]:
        # The protocol promises the result is the very last line.
        last = self.lines[-1]
        assert last.startswith(MACHINE_PREFIX), f"last line is not the result: {last!r}"
        event = self.events[-1]
        assert event["event"] == "result"
        return event

    @property
    def phases(self) -> list[str]:
        return [e["phase"] for e in self.events if e["event"] == "phase"]

    def case(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(c for c in self.result["cases"] if c["name"] == name)
        return found


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer.from_script(SCRIPT) as running:
        yield running


def closed_port_url() -> str:
    """A URL nothing listens on: bind a free port, then let it go."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_config(
    endpoint: str, source: str, cases: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "agentSource": source,
        "model": {"provider": "ollama", "modelId": "scripted", "endpoint": endpoint},
        "cases": cases,
        **extra,
    }


def run_runner(
    mode: str, config: dict[str, Any] | str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> RunnerRun:
    """Run the runner on a config (dict, or raw text for broken configs)."""
    config_path = workdir / "config.json"
    config_path.write_text(config if isinstance(config, str) else json.dumps(config))
    if mode == "in-process":
        capsys.readouterr()  # drop anything printed before the run
        code = main(
            ["--config", str(config_path), "--workdir", str(workdir)],
            environ={RUN_KEY_ENV: KEY.hex()},
        )
        return RunnerRun(code, capsys.readouterr().out)
    # No --workdir: the container relies on the default, the current directory.
    completed = subprocess.run(
        [sys.executable, "-m", "agenttest.runner", "--config", str(config_path)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if k != "AGENTTEST_CONFIG"},
            RUN_KEY_ENV: KEY.hex(),
        },
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    return RunnerRun(completed.returncode, completed.stdout)


# --------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("mode", MODES)
def test_all_cases_pass(
    mode: str, server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        {"name": "greets", "query": "Say hello", "expect": {"contains": ["HELLO"]}},
        {
            "name": "capital",
            "query": "What is the capital of France?",
            "expect": {"contains": ["Paris"], "notContains": ["Berlin"], "regex": r"Paris\.$"},
        },
    ]
    run = run_runner(mode, make_config(server.url, AGENT_OBJECT, cases), tmp_path, capsys)

    assert run.exit_code == 0
    assert run.phases == ["Building", "Running"]
    assert run.result["passed"] is True
    assert run.result["reason"] == ""
    assert run.result["summary"] == "2/2 cases passed"
    greets = run.case("greets")
    assert set(greets) == {
        "name", "passed", "latencySeconds", "output", "failures", "modelCalls", "tokens",
        "toolCalls", "trials", "passes", "interval",
    }  # fmt: skip
    assert (greets["trials"], greets["passes"]) == (1, 1)
    assert (greets["passed"], greets["output"], greets["failures"]) == (True, GREETING, [])
    assert 0 < greets["latencySeconds"] < 5
    # What the gateway saw: one call, the scripted model's own token counts, no tools.
    assert (greets["modelCalls"], greets["toolCalls"]) == (1, [])
    assert greets["tokens"] == {"input": 2, "output": 9}
    assert re.search(r"^\[agenttest\] case greets: PASS \(\d+\.\d\ds\)$", run.stdout, re.M)
    assert f"[agenttest]   answer: {GREETING}" in run.lines
    # The agent host's own output (Strands' default handler streams the answer) is relayed,
    # before the judge's verdict on it.
    assert run.lines.index(f"[agent] {GREETING}") < run.lines.index(
        f"[agenttest]   answer: {GREETING}"
    )
    # The agent worked in a directory of its own, removed afterwards.
    assert not list(tmp_path.glob("agent-*"))


@pytest.mark.parametrize("mode", MODES)
def test_failing_contains_names_the_expectation(
    mode: str, server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        {"name": "greets", "query": "hello", "expect": {"contains": ["hello"]}},
        {"name": "capital", "query": "capital of France?", "expect": {"contains": ["Berlin"]}},
    ]
    run = run_runner(mode, make_config(server.url, AGENT_OBJECT, cases), tmp_path, capsys)

    assert run.exit_code == 1
    assert run.result["passed"] is False
    assert run.result["summary"] == "1/2 cases passed"
    assert run.result["reason"].startswith("1 of 2 cases failed: capital")
    assert 'contains "Berlin": not found in answer' in run.result["reason"]
    assert run.case("capital")["failures"] == ['contains "Berlin": not found in answer']
    assert run.case("capital")["output"] == "The capital of France is Paris."
    assert any(
        line.startswith("[agenttest] case capital: FAIL")
        and line.endswith('- contains "Berlin": not found in answer')
        for line in run.lines
    )


@pytest.mark.parametrize("mode", MODES)
def test_syntax_error_names_the_line(
    mode: str, server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = "from strands import Agent\n\nagent = Agent(\n"
    config = make_config(server.url, source, [{"name": "a", "query": "hi"}])
    run = run_runner(mode, config, tmp_path, capsys)

    assert run.exit_code == 1
    assert re.fullmatch(r"agent\.py has a syntax error at line 3: .+", run.result["reason"])
    assert run.result["cases"] == []
    assert run.result["summary"] == "0/1 cases passed"


@pytest.mark.parametrize("mode", MODES)
def test_missing_entrypoint(
    mode: str, server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(server.url, "x = 1\n", [{"name": "a", "query": "hi"}])
    run = run_runner(mode, config, tmp_path, capsys)

    assert run.exit_code == 1
    assert run.result["reason"] == "entrypoint 'agent' not found in agent.py"
    assert run.result["cases"] == []


@pytest.mark.parametrize("mode", MODES)
def test_unreachable_model_fails_every_case_readably(
    mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = closed_port_url()
    cases = [{"name": "first", "query": "hi"}, {"name": "second", "query": "hi"}]
    run = run_runner(mode, make_config(url, AGENT_OBJECT, cases), tmp_path, capsys)

    assert run.exit_code == 1
    # The gateway saw the upstream refuse: that, not the agent's own exception, is said.
    expected = f"error: model unreachable at {url}: connection refused"
    # Both cases ran: one failing case does not stop the others.
    assert [c["failures"] for c in run.result["cases"]] == [[expected], [expected]]
    assert run.result["reason"] == f"2 of 2 cases failed: first, second; first: {expected}"


@pytest.mark.parametrize("mode", MODES)
def test_factory_receives_the_model_and_each_case_starts_fresh(
    mode: str, server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        {"name": "one", "query": "hello", "expect": {"contains": ["scripted model"]}},
        {"name": "two", "query": "capital of France", "expect": {"contains": ["Paris"]}},
    ]
    config = make_config(server.url, FACTORY_TAKING_MODEL, cases, entrypoint="make_agent")
    run = run_runner(mode, config, tmp_path, capsys)

    assert run.exit_code == 0, run.stdout
    assert run.result["summary"] == "2/2 cases passed"
    # A fresh conversation per case: the model never sees the previous case's messages.
    assert [len(r["messages"]) for r in server.requests] == [2, 2]
    assert server.requests[0]["messages"][0] == {"role": "system", "content": "You are terse."}


@pytest.mark.parametrize("mode", MODES)
def test_agent_object_gets_the_configured_model_and_cleared_messages(
    mode: str, server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [{"name": "one", "query": "hello"}, {"name": "two", "query": "hi again"}]
    run = run_runner(mode, make_config(server.url, AGENT_OBJECT, cases), tmp_path, capsys)

    assert run.exit_code == 0, run.stdout
    assert [r["model"] for r in server.requests] == ["scripted", "scripted"]
    assert [r["messages"] for r in server.requests] == [
        [{"role": "user", "content": "hello"}],
        [{"role": "user", "content": "hi again"}],
    ]


def test_factory_without_arguments_gets_the_model_set(
    server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(
        server.url, FACTORY_WITHOUT_ARGS, [{"name": "a", "query": "hello"}], entrypoint="build"
    )
    run = run_runner("in-process", config, tmp_path, capsys)
    assert run.exit_code == 0, run.stdout
    assert len(server.requests) == 1


@pytest.mark.parametrize("mode", MODES)
def test_max_latency_with_a_delayed_rule(
    mode: str, server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        {"name": "slow", "query": "slow please", "expect": {"maxLatencySeconds": 0.2}},
        {"name": "patient", "query": "slow please", "expect": {"maxLatencySeconds": 30}},
    ]
    run = run_runner(mode, make_config(server.url, AGENT_OBJECT, cases), tmp_path, capsys)

    assert run.exit_code == 1
    [failure] = run.case("slow")["failures"]
    assert re.fullmatch(r"maxLatencySeconds 0\.2: took 0\.\d\ds", failure)
    assert run.case("slow")["latencySeconds"] >= 0.4
    assert run.case("patient")["passed"] is True


@pytest.mark.parametrize("mode", MODES)
def test_tool_call_round_trip(
    mode: str, server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        {"name": "order", "query": "Where is my order?", "expect": {"contains": ["2024-05-01"]}}
    ]
    run = run_runner(mode, make_config(server.url, TOOL_AGENT, cases), tmp_path, capsys)

    assert run.exit_code == 0, run.stdout
    assert run.case("order")["output"] == "Order status: order A-17 shipped on 2024-05-01"
    assert server.requests[-1]["messages"][-1]["role"] == "tool"
    # Observed by the gateway: the tool-use request and the answer after it.
    assert run.case("order")["toolCalls"] == ["order_status"]
    assert run.case("order")["modelCalls"] == 2


@pytest.mark.parametrize("mode", MODES)
def test_invalid_config_exits_2_with_a_result_line(
    mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_runner(mode, '{"agentSource": ', tmp_path, capsys)

    assert run.exit_code == 2
    assert run.result["passed"] is False
    assert run.result["reason"].startswith("bad config: config ")
    assert "is not valid JSON" in run.result["reason"]
    assert run.result["summary"] == "0/0 cases passed"
    assert run.lines[0].startswith("[agenttest] bad config:")


@pytest.mark.parametrize(
    ("source", "entrypoint", "reason"),
    [
        ("agent = 42\n", "agent", "entrypoint 'agent' is not an Agent or a factory"),
        ("def agent():\n    return 'nope'\n", "agent", "entrypoint 'agent' returned str, not"),
        ("def agent():\n    raise ValueError('no key')\n", "agent", "entrypoint 'agent' raised "),
        ("import no_such_module_xyz\n", "agent", "agent.py raised ModuleNotFoundError at import"),
    ],
)
def test_setup_errors_are_readable(
    source: str,
    entrypoint: str,
    reason: str,
    server: ScriptedModelServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(server.url, source, [{"name": "a", "query": "hi"}], entrypoint=entrypoint)
    run = run_runner("in-process", config, tmp_path, capsys)
    assert run.exit_code == 1
    assert run.result["reason"].startswith(reason)
    assert run.result["cases"] == []


def test_config_from_the_environment(
    server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(server.url, AGENT_OBJECT, [{"name": "a", "query": "hello"}])
    code = main(["--workdir", str(tmp_path)], environ={"AGENTTEST_CONFIG": json.dumps(config)})
    assert code == 0
    assert '"passed":true' in capsys.readouterr().out.splitlines()[-1]


def test_no_config_at_all(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], environ={}) == 2
    last = capsys.readouterr().out.splitlines()[-1]
    assert "no config: pass --config PATH or set AGENTTEST_CONFIG" in last


def test_long_answers_are_truncated(
    server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(server.url, AGENT_OBJECT, [{"name": "long", "query": "an essay"}])
    run = run_runner("in-process", config, tmp_path, capsys)

    output = run.case("long")["output"]
    assert len(output) == 2000 and output.endswith("…")
    [answer_line] = [line for line in run.lines if line.startswith("[agenttest]   answer: ")]
    assert len(answer_line.removeprefix("[agenttest]   answer: ")) == 500


# --------------------------------------------------------------------------- time limits


def test_deadline_passed_before_any_case_ends_the_run_cleanly(
    server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 1ns is gone before the first step starts: the check between steps reports it.
    config = make_config(
        server.url, AGENT_OBJECT, [{"name": "a", "query": "hi"}], timeoutSeconds=1e-9
    )
    run = run_runner("in-process", config, tmp_path, capsys)
    assert run.exit_code == 124
    assert run.result["reason"] == "timed out after 1e-09s"
    assert run.result["cases"] == []
    assert server.requests == []


def test_a_hung_case_ends_the_run_with_a_result_line(
    server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        {"name": "quick", "query": "hello"},
        {"name": "stuck", "query": "hang forever"},
        {"name": "never", "query": "hello"},
    ]
    config = make_config(server.url, AGENT_OBJECT, cases, timeoutSeconds=4)
    run = run_runner("subprocess", config, tmp_path, capsys)

    assert run.exit_code == 124
    assert run.result["reason"] == "timed out after 4s"
    assert run.result["summary"] == "1/3 cases passed"
    assert [c["name"] for c in run.result["cases"]] == ["quick", "stuck"]
    assert run.case("stuck")["failures"] == ["timeout: still running when the 4s limit was reached"]


# --------------------------------------------------------------------------- requirements


def _tiny_wheel(directory: Path) -> Path:
    """A dependency-free wheel, so pip installs it without any network."""
    wheel = directory / "tinydep-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("tinydep.py", "SUFFIX = ' (via tinydep)'\n")
        archive.writestr(
            "tinydep-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinydep\nVersion: 1.0\n"
        )
        archive.writestr(
            "tinydep-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr("tinydep-1.0.dist-info/RECORD", "")
    return wheel


def test_requirements_are_installed_and_importable(
    server: ScriptedModelServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = "import tinydep\n" + AGENT_OBJECT
    config = make_config(
        server.url,
        source,
        [{"name": "a", "query": "hello"}],
        requirements=[str(_tiny_wheel(tmp_path))],
    )
    run = run_runner("subprocess", config, tmp_path, capsys)

    assert run.exit_code == 0, run.stdout
    assert "[agenttest] installing 1 requirement: " in run.stdout
    # What the package will pin: the requirement at the version installed, beside the
    # runner's own distributions, and never the installer or the harness itself.
    environment = run.result["environment"]
    assert "tinydep==1.0" in environment
    assert f"strands-agents=={metadata.version('strands-agents')}" in environment
    assert not [pin for pin in environment if pin.startswith(("pip==", "agenttest-operator=="))]
    assert run.result["sourceSha256"] == hashlib.sha256(source.encode()).hexdigest()


@pytest.mark.parametrize(
    ("requirement", "reason"),
    [
        (
            "not a valid requirement!!",
            "requirement install failed: not a valid requirement!!: ERROR: Invalid requirement",
        ),
        (
            "--index-url=http://evil",
            "requirement install failed: '--index-url=http://evil' is a pip option",
        ),
    ],
)
def test_failed_install_names_the_requirement(
    requirement: str,
    reason: str,
    server: ScriptedModelServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(
        server.url, AGENT_OBJECT, [{"name": "a", "query": "hi"}], requirements=[requirement]
    )
    run = run_runner("in-process", config, tmp_path, capsys)
    assert run.exit_code == 1
    assert run.result["reason"].startswith(reason)
    assert run.phases == ["Building"]


# --------------------------------------------------------------------------- config


def test_config_defaults() -> None:
    config = parse_config(
        {
            "agentSource": "x",
            "model": {"provider": "bedrock", "modelId": "m"},
            "cases": [{"name": "a", "query": "q"}],
        }
    )
    assert config.entrypoint == "agent"
    assert config.requirements == ()
    assert config.timeout_seconds == 300
    assert config.model.region is None and config.model.temperature is None
    expect = config.cases[0].expect
    assert (expect.contains, expect.regex, expect.case_sensitive) == ((), None, False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"agentSource": None}, "config.agentSource is required"),
        ({"cases": []}, "config.cases must be a non-empty list"),
        ({"cases": [{"name": "a"}]}, "config.cases[0].query is required"),
        ({"model": {"provider": "gpt", "modelId": "m"}}, "config.model.provider must be one of"),
        ({"model": {"provider": "ollama", "modelId": "m"}}, "config.model.endpoint is required"),
        ({"timeoutSeconds": 0}, "config.timeoutSeconds must be greater than 0"),
        (
            {"cases": [{"name": "a", "query": "q", "expect": {"contains": "x"}}]},
            "config.cases[0].expect.contains must be a list of strings",
        ),
        (
            {"cases": [{"name": "a", "query": "q", "expect": {"caseSensitive": "yes"}}]},
            "config.cases[0].expect.caseSensitive must be true or false",
        ),
    ],
)
def test_config_errors_name_the_key(change: dict[str, Any], message: str) -> None:
    raw = {
        "agentSource": "x",
        "model": {"provider": "ollama", "modelId": "m", "endpoint": "http://h"},
        "cases": [{"name": "a", "query": "q"}],
        **change,
    }
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({k: v for k, v in raw.items() if v is not None})
