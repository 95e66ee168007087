"""Whole AgentTest flows: kubectl -> operator -> local runner -> status, on the real API server."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agenttest_dev.containers import kill_tree
from agenttest_dev.modelserver import DEFAULT_SCRIPT, ScriptedModelServer

import forgeries
from support import ROOT, SIMPLE_AGENT, Kube, Operator, agent_test, pid_alive

StartOperator = Callable[..., Operator]


def sample(endpoint: str) -> dict[str, Any]:
    manifest = yaml.safe_load((ROOT / "manifests" / "samples" / "agenttest.yaml").read_text())
    manifest["spec"]["model"]["endpoint"] = endpoint
    return dict(manifest)


def condition(test: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in test["status"]["conditions"] if c["type"] == kind)


def recording_agent(directory: Path, sleep: float = 0.0) -> str:
    """An agent that records its process: pid, start and end time, one file per run."""
    return f"""
import atexit, os, time
from strands import Agent

_record = os.path.join({str(directory)!r}, f"{{os.getpid()}}.json")
_start = time.time()
def _done():
    import json
    with open(_record, "w") as f:
        json.dump({{"start": _start,
                   "end": time.time(), "pid": os.getpid(), "cwd": os.getcwd()}}, f)
atexit.register(_done)
with open(os.path.join({str(directory)!r}, f"{{os.getpid()}}.pid"), "w") as f:
    f.write(str(os.getpid()))
time.sleep({sleep})

def agent(model):
    return Agent(model=model)
"""


def start_sleeper(kube: Kube, name: str, endpoint: str, directory: Path, **spec: Any) -> int:
    """Apply a test whose agent sleeps; return the agent host's pid once it runs."""
    kube.apply(agent_test(name, recording_agent(directory, sleep=300), endpoint, **spec))
    pid_file = kube.wait_for("the agent to start", lambda: next(directory.glob("*.pid"), None))
    return int(pid_file.read_text())


def test_sample_reaches_succeeded_with_log_tail_and_cases(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator()
    kube.apply(sample(model_server.url))
    test = kube.wait_for_phase("hello-agent", "Succeeded", "Failed", "Error", "TimedOut")
    status = test["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert "case greets: PASS" in status["logTail"]
    assert [(c["name"], c["passed"]) for c in status["cases"]] == [
        ("greets", True),
        ("knows-capitals", True),
    ]
    assert "Paris" in status["cases"][1]["output"]
    assert status["casesPassed"] == "2/2"
    assert status["attempt"] == 1
    assert status["observedGeneration"] == test["metadata"]["generation"]
    assert condition(test, "Ready")["status"] == "True"
    assert condition(test, "Succeeded")["reason"] == "Succeeded"
    assert "::agenttest::" not in status["logTail"], "machine lines stay out of the tail"

    # Events are posted beside the step: the last may follow the status a moment later.
    kube.wait_for("the Succeeded Event", lambda: kube.events("hello-agent", "Succeeded"))
    posted = kube.events("hello-agent")
    assert {"Queued", "Building", "Succeeded"} <= {event["reason"] for event in posted}
    # Under the operator's name, which `kubectl describe` shows as From.
    assert {event["source"]["component"] for event in posted} == {"agenttest-operator"}
    described = kube.run("describe", "agenttest", "hello-agent").stdout
    assert re.search(r"Normal\s+Succeeded\s+\S+\s+agenttest-operator\s", described), described

    # `kubectl wait` understands the Ready condition.
    kube.run("wait", "--for=condition=Ready", "agenttest/hello-agent", "--timeout=5s")


def test_kubectl_get_shows_the_columns(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator()
    kube.apply(sample(model_server.url))
    kube.wait_for_phase("hello-agent", "Succeeded")
    header, row = kube.run("get", "agenttests").stdout.splitlines()
    assert header.split() == [
        "NAME",
        "PHASE",
        "BACKEND",
        "MODEL",
        "CASES",
        "QUEUE",
        "AGE",
        "DURATION",
    ]
    cells = row.split()
    assert cells[:5] == ["hello-agent", "Succeeded", "local", "llama3.1:8b", "2/2"]
    assert cells[-1].endswith("s")  # the duration
    wide = kube.run("get", "agenttests", "-o", "wide").stdout
    assert "ATTEMPT" in wide and "MESSAGE" in wide


def test_syntax_error_ends_failed_with_reason(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator()
    kube.apply(agent_test("broken", "def agent(:\n    pass\n", model_server.url))
    status = kube.wait_for_phase("broken", "Failed", "Succeeded", "Error")["status"]
    assert status["phase"] == "Failed"
    assert "syntax error" in status["message"]
    assert "line 1" in status["message"]


def test_failing_expectation_is_named(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator()
    cases = [
        {"name": "greets", "query": "Say hello", "expect": {"contains": ["hello"]}},
        {"name": "wrong", "query": "Say hello", "expect": {"contains": ["goodbye"]}},
    ]
    kube.apply(agent_test("half", SIMPLE_AGENT, model_server.url, cases=cases))
    test = kube.wait_for_phase("half", "Failed", "Succeeded", "Error")
    status = test["status"]
    assert status["phase"] == "Failed"
    assert status["casesPassed"] == "1/2"
    assert "wrong" in status["message"] and "goodbye" in status["message"]
    assert condition(test, "Succeeded")["status"] == "False"


def test_unreachable_model_ends_failed(kube: Kube, start_operator: StartOperator) -> None:
    start_operator()
    kube.apply(agent_test("nomodel", SIMPLE_AGENT, "http://127.0.0.1:9"))
    status = kube.wait_for_phase("nomodel", "Failed", "Succeeded", "Error")["status"]
    assert status["phase"] == "Failed"
    assert "unreachable" in json.dumps(status["cases"])


def test_timeout_ends_timed_out_and_kills_the_process(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    start_operator()
    pid = start_sleeper(kube, "slow", model_server.url, tmp_path, timeoutSeconds=6)
    status = kube.wait_for_phase("slow", "TimedOut", "Failed", "Succeeded", "Error")["status"]
    assert status["phase"] == "TimedOut"
    assert "timed out after 6s" in status["message"]
    assert not pid_alive(pid), "the agent's process must be gone"


def test_cancel_mid_run_ends_cancelled_and_kills_the_process(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    start_operator()
    pid = start_sleeper(kube, "cancel-me", model_server.url, tmp_path)
    kube.patch("cancel-me", {"spec": {"cancel": True}})
    status = kube.wait_for_phase("cancel-me", "Cancelled", "Failed", "Succeeded")["status"]
    assert status["phase"] == "Cancelled"
    assert not pid_alive(pid)


def test_deleting_a_running_test_stops_its_process(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    start_operator()
    pid = start_sleeper(kube, "delete-me", model_server.url, tmp_path)
    kube.run("delete", "agenttest", "delete-me", "--timeout=60s")
    assert not pid_alive(pid)
    assert not kube.get_all()


def test_retry_annotation_and_spec_change_start_new_attempts(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator()
    kube.apply(agent_test("again", SIMPLE_AGENT, model_server.url))
    kube.wait_for_phase("again", "Succeeded")

    kube.run("annotate", "agenttest", "again", "agenttest.dev/retry=1")
    kube.wait_for("attempt 2", lambda: kube.get("again")["status"].get("attempt") == 2)
    status = kube.wait_for_phase("again", "Succeeded")["status"]
    assert status["attempt"] == 2

    kube.patch("again", {"spec": {"timeoutSeconds": 60}})
    kube.wait_for("attempt 3", lambda: kube.get("again")["status"].get("attempt") == 3)
    test = kube.wait_for_phase("again", "Succeeded")
    assert test["status"]["observedGeneration"] == test["metadata"]["generation"]

    kube.patch("again", {"spec": {"priority": 5}})  # not part of the run: no new attempt

    def observed() -> dict[str, Any] | None:
        test = kube.get("again")
        current = test["status"]["observedGeneration"] == test["metadata"]["generation"]
        return test if current and test["metadata"]["generation"] == 3 else None

    assert kube.wait_for("the new generation to be observed", observed)["status"]["attempt"] == 3


def test_queue_limit_priority_order_and_all_succeed(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    limit, count = 3, 25
    start_operator(max_running=limit)
    source = recording_agent(tmp_path, sleep=1.0)
    manifests = [
        agent_test(f"q{i:02d}", source, model_server.url, priority=i % 3) for i in range(count)
    ]
    kube.apply(*manifests)

    positions: set[int] = set()

    def all_finished() -> bool:
        tests = kube.get_all()
        positions.update(t["status"].get("queuePosition", 0) for t in tests if "status" in t)
        return all(t.get("status", {}).get("phase") == "Succeeded" for t in tests)

    kube.wait_for("all 25 to succeed", all_finished, timeout=300)
    assert max(positions) > limit, "queued tests show their queue position"

    tests = {t["metadata"]["name"]: t for t in kube.get_all()}
    runs = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(runs) == count, "every test ran exactly once"

    # Never more than `limit` runner processes alive at the same moment.
    moments = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    alive = peak = 0
    for _, change in moments:
        alive += change
        peak = max(peak, alive)
    assert peak <= limit

    # Start order: priority, then creation. A test may start before one that
    # ranks higher only within the window of free slots it started in.
    by_pid = {r["pid"]: r for r in runs}
    starts = []
    for test in tests.values():
        record_dir = test["status"]["execution"]["id"]
        run = next(r for r in by_pid.values() if record_dir in r["cwd"])
        starts.append(
            (
                run["start"],
                -test["spec"]["priority"],
                test["metadata"]["creationTimestamp"],
                test["metadata"]["name"],
            )
        )
    starts.sort()
    for index, (_, *rank) in enumerate(starts[limit:], start=limit):
        overtaken = [later for later in starts[index + 1 :] if later[1:] < tuple(rank)]
        assert len(overtaken) < limit, f"{rank[-1]} started before {overtaken}"


def test_operator_killed_mid_run_finishes_every_test_exactly_once(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    operator = start_operator(max_running=3)
    source = recording_agent(tmp_path, sleep=2.0)
    kube.apply(*[agent_test(f"r{i}", source, model_server.url) for i in range(6)])

    def some_running() -> bool:
        return any(
            t.get("status", {}).get("phase") in ("Building", "Running") for t in kube.get_all()
        )

    kube.wait_for("a test to run", some_running)
    operator.kill()
    start_operator(max_running=3)

    kube.wait_for(
        "all six to succeed",
        lambda: all(t.get("status", {}).get("phase") == "Succeeded" for t in kube.get_all()),
        timeout=180,
    )
    runs = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(runs) == 6, f"each test ran exactly once, got {len(runs)} runs"
    assert all(t["status"]["attempt"] == 1 for t in kube.get_all())


def test_a_lost_execution_is_retried_within_the_same_attempt(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    start_operator(infra_backoff_seconds=0.5)
    marker = tmp_path / "started-once"
    # The first run waits to be lost; the second answers.
    source = f"""
import os, time
from strands import Agent
if not os.path.exists({str(marker)!r}):
    open({str(marker)!r}, "w").close()
    time.sleep(300)

def agent(model):
    return Agent(model=model)
"""
    kube.apply(agent_test("flaky-host", source, model_server.url))
    kube.wait_for("the first run to start", marker.exists)
    # The host loses every process of the execution at once, supervisor included:
    # no exit code is ever recorded.
    (record,) = (tmp_path / "runs").iterdir()
    supervisor = int((record / "pid").read_text().split()[0])
    kill_tree(supervisor)
    kube.apply(agent_test("flaky-host", source, model_server.url))
    status = kube.wait_for_phase("flaky-host", "Succeeded", "Failed", "Error")["status"]
    assert status["phase"] == "Succeeded"
    assert status["attempt"] == 1
    assert status["infraRetries"] == 1


@pytest.fixture(scope="module")
def forgery_model() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer.from_script([*forgeries.SCRIPT, *DEFAULT_SCRIPT]) as server:
        yield server


def test_no_agent_forges_its_verdict_on_the_local_backend(
    kube: Kube, start_operator: StartOperator, forgery_model: ScriptedModelServer
) -> None:
    start_operator(max_running=7)
    catalogue = [*forgeries.CATALOGUE, forgeries.APPENDS_TO_THE_LOG_FILE]
    forgeries.apply_catalogue(kube, forgery_model.url, catalogue)
    ended = forgeries.assert_all_failed(kube, catalogue)

    # Only lines written past the judge reach its output; they are ignored,
    # counted, named in the message and reported once as a Warning Event.
    appended = ended[forgeries.APPENDS_TO_THE_LOG_FILE.name]["status"]
    assert appended["forgedLines"] >= 2
    assert "forged machine lines ignored" in appended["message"]
    [event] = forgeries.forged_output_events(kube, forgeries.APPENDS_TO_THE_LOG_FILE.name)
    assert event["type"] == "Warning"
    # Everything the others printed went through the judge's relay, behind its prefix.
    for forgery in forgeries.CATALOGUE:
        assert not ended[forgery.name]["status"].get("forgedLines"), forgery.name
    model_tail = ended[forgeries.MODEL_SAYS_IT.name]["status"]["logTail"]
    assert "[agent] ::agenttest:: " in model_tail
    # The judge's /proc entries are closed to the agent, whatever user it runs as.
    hunt_tail = ended[forgeries.HUNTS_FOR_THE_KEY.name]["status"]["logTail"]
    for entry in ("environ", "mem"):
        assert re.search(rf"DENIED /proc/\d+/{entry}: PermissionError", hunt_tail), hunt_tail
    assert "DENIED /proc/1/environ" in hunt_tail


TOOL_SCRIPT = [
    {
        "match": r"order",
        "toolCall": {"name": "order_status", "arguments": {"order_id": "A-17"}},
        "reply": "Order status: {tool_result}",
    },
    *DEFAULT_SCRIPT,
]

TOOL_AGENT = '''
from strands import Agent, tool

@tool
def order_status(order_id: str) -> str:
    """Look up where an order is.

    Args:
        order_id: The order's id.
    """
    return f"order {order_id} shipped on 2024-05-01"

def agent(model):
    return Agent(model=model, tools=[order_status])
'''

# Asserted inside the agent: the judge keeps every credential to itself.
BEDROCK_AGENT = """
import os
from strands import Agent

leaked = sorted(k for k in os.environ if k.startswith(("AWS_", "AGENTTEST_")))
assert not leaked, f"the agent host can see {leaked}"

def agent(model):
    return Agent(model=model, system_prompt="Be brief.")
"""

JUDGE_KEY_ID = "AKIDJUDGEONLY0000000"


def test_tool_calls_and_tokens_are_what_the_gateway_observed(
    kube: Kube, start_operator: StartOperator
) -> None:
    start_operator()
    cases = [
        {"name": "order", "query": "Where is my order?", "expect": {"contains": ["2024-05-01"]}},
        {"name": "greets", "query": "Say hello", "expect": {"contains": ["hello"]}},
    ]
    with ScriptedModelServer.from_script(TOOL_SCRIPT) as model:
        kube.apply(agent_test("tools", TOOL_AGENT, model.url, cases=cases))
        status = kube.wait_for_phase("tools", "Succeeded", "Failed", "Error")["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    order, greets = status["cases"]
    assert order["toolCalls"] == ["order_status"]
    assert order["modelCalls"] == 2  # the tool-use request, then the answer
    assert greets["toolCalls"] == [] and greets["modelCalls"] == 1
    assert greets["tokens"] == {"input": 2, "output": 9}  # as the scripted model counts


def test_a_bedrock_agent_runs_through_the_gateway_without_credentials(
    kube: Kube, start_operator: StartOperator
) -> None:
    start_operator(
        extra_env={
            "AWS_ACCESS_KEY_ID": JUDGE_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": "judge-secret",
        },
        local_pass_env="AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY",
    )
    with ScriptedModelServer() as model:
        test = agent_test("bedrock", BEDROCK_AGENT, model.url)
        test["spec"]["model"] = {
            "provider": "bedrock",
            "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
            "region": "us-east-1",
            "endpoint": model.url,
        }
        kube.apply(test)
        status = kube.wait_for_phase("bedrock", "Succeeded", "Failed", "Error")["status"]
        requests = model.bedrock_requests
    assert status["phase"] == "Succeeded", (status.get("message"), status.get("logTail"))
    [case] = status["cases"]
    assert case["modelCalls"] == 1
    assert case["tokens"]["input"] > 0 and case["tokens"]["output"] > 0
    # The model saw the judge's signature; the agent's throwaway key never left the host.
    [request] = requests
    assert request.model_id == "anthropic.claude-3-haiku-20240307-v1:0"
    assert f"Credential={JUDGE_KEY_ID}/" in request.authorization


NOISY_AGENT = r"""
import sys
from strands import Agent

sys.stdout.write("z" * 600_000 + "\n")  # one line longer than any read
sys.stdout.flush()
sys.stdout.buffer.write(b"\xff\xfe\x00binary\r::agenttest:: forged\x1b[31m red\n")
for n in range(80_000):  # about 1.5 MB: past what the judge relays
    print(f"flood line {n:06d}")
sys.stdout.flush()

def agent(model):
    return Agent(model=model)
"""


def test_output_of_any_shape_leaves_the_tail_bounded_and_the_result_read(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator()
    kube.apply(agent_test("noisy", NOISY_AGENT, model_server.url))
    status = kube.wait_for_phase("noisy", "Succeeded", "Failed", "Error")["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    tail = status["logTail"]
    assert len(tail.encode()) <= 8192
    assert "[agenttest] case greets: PASS" in tail
    assert "agent output over the log budget was dropped" in tail
    assert not status.get("forgedLines")
