"""AgentTests on the Fargate backend: kubectl -> operator -> ECS (moto over HTTP) -> status.

The FargatePlayer runs each task's runner as a local process and ships its
output to CloudWatch Logs the way the awslogs driver does; the operator only
ever talks to the moto server through boto3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agenttest.runner.protocol import EXIT_TIMED_OUT, MACHINE_PREFIX
from agenttest_dev.fargate import AwsEnvironment, FargatePlayer
from agenttest_dev.modelserver import DEFAULT_SCRIPT, ScriptedModelServer

import forgeries
from bigreport import assert_stored_whole, large_report_test
from support import SIMPLE_AGENT, Kube, Operator, agent_test

StartOperator = Callable[..., Operator]

SLEEPING_AGENT = """
import time
from strands import Agent
print("agent imported; sleeping", flush=True)
time.sleep({seconds})

def agent(model):
    return Agent(model=model)
"""

CHATTY_AGENT = """
import time
from strands import Agent
for n in range(40):
    print(f"line {n:02d} of the agent's own output", flush=True)
    time.sleep(0.05)

def agent(model):
    return Agent(model=model)
"""

# Stops its judge (its parent), and with it the judge's own deadline.
JUDGE_STOPPER = """
import os, signal
from strands import Agent
os.kill(os.getppid(), signal.SIGSTOP)

def agent(model):
    return Agent(model=model)
"""


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsEnvironment]:
    environment = AwsEnvironment().start()
    try:
        yield environment
    finally:
        environment.stop()


@pytest.fixture
def player(aws: AwsEnvironment) -> Iterator[FargatePlayer]:
    playing = FargatePlayer(aws).start()
    try:
        yield playing
    finally:
        playing.stop()


@pytest.fixture
def start_fargate_operator(
    start_operator: StartOperator, aws: AwsEnvironment
) -> Callable[..., Operator]:
    def start(**settings: Any) -> Operator:
        return start_operator(
            extra_env=aws.env(),
            fargate_subnets=",".join(aws.subnets),
            fargate_security_groups=aws.security_group,
            **settings,
        )

    return start


def on_fargate(name: str, source: str, endpoint: str, **spec: Any) -> dict[str, Any]:
    return agent_test(name, source, endpoint, backend="fargate", **spec)


def test_fargate_test_succeeds_with_log_tail_and_cases(
    kube: Kube,
    start_fargate_operator: Callable[..., Operator],
    player: FargatePlayer,
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
) -> None:
    start_fargate_operator()
    kube.apply(on_fargate("on-fargate", SIMPLE_AGENT, model_server.url))
    test = kube.wait_for_phase("on-fargate", "Succeeded", "Failed", "Error", "TimedOut")
    status = test["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["backend"] == "fargate"
    assert "case greets: PASS" in status["logTail"]
    assert status["cases"][0]["passed"] is True

    [task_arn] = player.tasks()
    assert status["execution"]["id"] == task_arn
    task = aws.client("ecs").describe_tasks(cluster=aws.cluster, tasks=[task_arn])["tasks"][0]
    assert task["startedBy"].startswith("at-")
    assert task["lastStatus"] == "STOPPED"
    assert "AGENTTEST_CONFIG" in player.environment(task_arn)
    assert "AWS_SECRET_ACCESS_KEY" not in status["logTail"]


def test_failing_case_ends_failed_naming_the_expectation(
    kube: Kube,
    start_fargate_operator: Callable[..., Operator],
    player: FargatePlayer,
    model_server: ScriptedModelServer,
) -> None:
    start_fargate_operator()
    cases = [{"name": "rude", "query": "Say hello", "expect": {"notContains": ["hello"]}}]
    kube.apply(on_fargate("rude", SIMPLE_AGENT, model_server.url, cases=cases))
    status = kube.wait_for_phase("rude", "Failed", "Succeeded", "Error")["status"]
    assert status["phase"] == "Failed"
    assert 'notContains "hello"' in status["message"]


def test_timeout_stops_the_task(
    kube: Kube,
    start_fargate_operator: Callable[..., Operator],
    player: FargatePlayer,
    model_server: ScriptedModelServer,
) -> None:
    start_fargate_operator()
    source = SLEEPING_AGENT.format(seconds=300)
    # Long enough for the agent's import and first line on a loaded machine (4 s was
    # not, beside a whole suite), short enough to end long before the agent would.
    kube.apply(on_fargate("slow", source, model_server.url, timeoutSeconds=12))
    status = kube.wait_for_phase("slow", "TimedOut", "Failed", "Succeeded", "Error")["status"]
    assert status["phase"] == "TimedOut"
    [task_arn] = player.tasks()
    assert player.killed(task_arn), "the task's process must have been killed"
    assert "agent imported; sleeping" in status["logTail"]


def test_cancel_stops_the_task(
    kube: Kube,
    start_fargate_operator: Callable[..., Operator],
    player: FargatePlayer,
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
) -> None:
    start_fargate_operator()
    kube.apply(on_fargate("cancel-me", SLEEPING_AGENT.format(seconds=300), model_server.url))
    kube.wait_for_phase("cancel-me", "Running", "Building")
    [task_arn] = player.wait_for_tasks(1)
    kube.wait_for("the runner to run", lambda: player.output(task_arn))
    kube.patch("cancel-me", {"spec": {"cancel": True}})
    status = kube.wait_for_phase("cancel-me", "Cancelled", "Failed", "Succeeded")["status"]
    assert status["phase"] == "Cancelled"
    assert player.killed(task_arn)
    # StopTask's SIGTERM goes to PID 1 (the deadline timer) alone; it reached the
    # judge, which ended the run itself (128 + SIGTERM), before any SIGKILL.
    task = aws.client("ecs").describe_tasks(cluster=aws.cluster, tasks=[task_arn])["tasks"][0]
    assert task["containers"][0]["exitCode"] == 143


def test_operator_killed_after_run_task_yields_one_task(
    kube: Kube,
    start_fargate_operator: Callable[..., Operator],
    player: FargatePlayer,
    model_server: ScriptedModelServer,
) -> None:
    operator = start_fargate_operator()
    kube.apply(on_fargate("once", SLEEPING_AGENT.format(seconds=3), model_server.url))
    player.wait_for_tasks(1)
    operator.kill()
    start_fargate_operator()
    status = kube.wait_for_phase("once", "Succeeded", "Failed", "Error")["status"]
    assert status["phase"] == "Succeeded"
    assert len(player.tasks()) == 1


def test_capacity_failure_is_retried_within_the_attempt(
    kube: Kube,
    start_fargate_operator: Callable[..., Operator],
    player: FargatePlayer,
    model_server: ScriptedModelServer,
) -> None:
    start_fargate_operator(infra_backoff_seconds=0.5)
    player.fail_next_run_tasks(1, reason="RESOURCE:FARGATE")
    kube.apply(on_fargate("no-capacity", SIMPLE_AGENT, model_server.url))
    status = kube.wait_for_phase("no-capacity", "Succeeded", "Failed", "Error")["status"]
    assert status["phase"] == "Succeeded"
    assert status["attempt"] == 1
    assert status["infraRetries"] == 1
    assert len(player.tasks()) == 1


def test_throttled_log_reads_delay_the_tail_but_lose_no_line(
    kube: Kube,
    start_fargate_operator: Callable[..., Operator],
    player: FargatePlayer,
    model_server: ScriptedModelServer,
) -> None:
    start_fargate_operator()
    player.throttle_log_reads(6)
    kube.apply(on_fargate("chatty", CHATTY_AGENT, model_server.url))
    status = kube.wait_for_phase("chatty", "Succeeded", "Failed", "Error")["status"]
    assert status["phase"] == "Succeeded"
    [task_arn] = player.tasks()
    shown = [line for line in player.output(task_arn) if not line.startswith(MACHINE_PREFIX)]
    assert status["logTail"].splitlines() == shown
    assert player.count_calls("logs", "GetLogEvents") > 6


def test_invalid_fargate_size_is_refused_before_launch(
    kube: Kube,
    start_fargate_operator: Callable[..., Operator],
    player: FargatePlayer,
    model_server: ScriptedModelServer,
) -> None:
    start_fargate_operator()
    kube.apply(
        on_fargate(
            "too-big", SIMPLE_AGENT, model_server.url, resources={"cpu": "3", "memory": "8Gi"}
        )
    )
    status = kube.wait_for_phase("too-big", "Error", "Failed", "Succeeded")["status"]
    assert status["phase"] == "Error"
    assert "spec.resources.cpu 3 is not a Fargate size" in status["message"]
    assert "0.25, 0.5, 1, 2, 4, 8, 16" in status["message"]
    assert player.tasks() == []


def test_no_agent_forges_its_verdict_on_fargate(
    kube: Kube,
    player: FargatePlayer,
    aws: AwsEnvironment,
    start_fargate_operator: Callable[..., Operator],
) -> None:
    # Packaging on: a forged pass would show as a DeploymentPackage in S3.
    start_fargate_operator(max_running=6, package_bucket=aws.bucket)
    with ScriptedModelServer.from_script([*forgeries.SCRIPT, *DEFAULT_SCRIPT]) as model:
        forgeries.apply_catalogue(kube, model.url, forgeries.CATALOGUE, backend="fargate")
        ended = forgeries.assert_all_failed(kube, forgeries.CATALOGUE)
    for forgery in forgeries.CATALOGUE:
        assert not ended[forgery.name]["status"].get("forgedLines"), forgery.name
    # Launches keep their agent.py beside where a package would go; no package is there.
    listed = aws.client("s3").list_objects_v2(Bucket=aws.bucket).get("Contents", [])
    assert [entry["Key"] for entry in listed if entry["Key"].endswith("package.zip")] == []


def test_a_task_whose_test_vanished_is_swept(
    kube: Kube,
    start_fargate_operator: Callable[..., Operator],
    player: FargatePlayer,
    model_server: ScriptedModelServer,
) -> None:
    operator = start_fargate_operator(sweep_interval=1)
    kube.apply(on_fargate("orphan", SLEEPING_AGENT.format(seconds=300), model_server.url))
    [task] = player.wait_for_tasks(1)
    operator.kill()
    # Someone removes the finalizer while no operator runs, and deletes the test.
    kube.run(
        "patch", "agenttest", "orphan", "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
    )
    kube.run("delete", "agenttest", "orphan", "--timeout=30s")
    start_fargate_operator(sweep_interval=1)
    player.wait_stopped(task)
    assert player.killed(task)


def test_a_stopped_judge_ends_timed_out_with_no_operator_to_stop_it(
    kube: Kube,
    start_fargate_operator: Callable[..., Operator],
    player: FargatePlayer,
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
) -> None:
    operator = start_fargate_operator()
    kube.apply(on_fargate("stopper", JUDGE_STOPPER, model_server.url, timeoutSeconds=5))
    [task_arn] = player.wait_for_tasks(1)
    # The operator's own timeout would stop the task: gone, only the task's PID 1 is left.
    operator.kill()
    player.wait_stopped(task_arn, timeout=90)
    assert not player.killed(task_arn), "nobody called StopTask"
    task = aws.client("ecs").describe_tasks(cluster=aws.cluster, tasks=[task_arn])["tasks"][0]
    assert task["containers"][0]["exitCode"] == EXIT_TIMED_OUT
    assert any("outlived its 20s deadline" in line for line in player.output(task_arn))

    start_fargate_operator()
    status = kube.wait_for_phase("stopper", "TimedOut", "Failed", "Succeeded", "Error")["status"]
    assert status["phase"] == "TimedOut", status.get("message")


def test_a_report_of_many_parts_travels_through_cloudwatch_logs(
    kube: Kube,
    start_fargate_operator: Callable[..., Operator],
    player: FargatePlayer,
    model_server: ScriptedModelServer,
    aws: AwsEnvironment,
) -> None:
    start_fargate_operator(package_bucket=aws.bucket)
    kube.apply(large_report_test("big-report", model_server.url, "fargate"))
    status = kube.wait_for(
        "big-report to be reported",
        lambda: (s := kube.get("big-report").get("status", {})).get("reports") and s,
        240,
    )
    assert_stored_whole(status, aws)
