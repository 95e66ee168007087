"""The Fargate fixture itself, through plain boto3 over HTTP: no Kubernetes, no operator.

If these pass, the fixture behaves like ECS, CloudWatch Logs and Fargate in
the ways the Fargate backend relies on; the backend's own tests can then trust it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from agenttest_dev.fargate import AwsEnvironment, FargatePlayer
from agenttest_dev.modelserver import ScriptedModelServer

from support import pid_alive

GREETER = "from strands import Agent\ndef agent(model):\n    return Agent(model=model)\n"
SLEEPER = "import time\ntime.sleep(300)"


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsEnvironment]:
    # One moto server for the module (it takes about a second to provision);
    # every test gets its own player, which ignores the tasks of earlier tests.
    with AwsEnvironment() as environment:
        yield environment


@pytest.fixture
def player(aws: AwsEnvironment) -> Iterator[FargatePlayer]:
    with FargatePlayer(aws) as playing:
        yield playing


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


def harness_config(source: str, endpoint: str) -> str:
    return json.dumps(
        {
            "agentSource": source,
            "model": {"provider": "ollama", "modelId": "m", "endpoint": endpoint},
            "cases": [{"name": "greets", "query": "Say hello", "expect": {"contains": ["hello"]}}],
            "timeoutSeconds": 60,
        }
    )


def run_task(aws: AwsEnvironment, config: str, **arguments: Any) -> dict[str, Any]:
    answer: dict[str, Any] = aws.client("ecs").run_task(
        cluster=aws.cluster,
        taskDefinition=aws.family,
        launchType="FARGATE",
        networkConfiguration=aws.network_configuration(),
        overrides={
            "containerOverrides": [
                {
                    "name": aws.container,
                    "environment": [{"name": "AGENTTEST_CONFIG", "value": config}],
                }
            ]
        },
        **arguments,
    )
    return answer


def describe(aws: AwsEnvironment, task_arn: str) -> dict[str, Any]:
    answer = aws.client("ecs").describe_tasks(cluster=aws.cluster, tasks=[task_arn])
    assert answer["failures"] == []
    task: dict[str, Any] = answer["tasks"][0]
    return task


def wait_for(description: str, condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll until `condition()` is truthy; fail with what was last seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {description}; last: {last!r}")


def read_stream(aws: AwsEnvironment, stream: str) -> list[str]:
    """The whole stream, forward from the head, following the page token to its end."""
    logs = aws.client("logs")
    arguments: dict[str, Any] = {
        "logGroupName": aws.log_group,
        "logStreamName": stream,
        "startFromHead": True,
    }
    messages: list[str] = []
    while True:
        page = logs.get_log_events(**arguments)
        messages += [event["message"] for event in page["events"]]
        if page["nextForwardToken"] == arguments.get("nextToken"):
            return messages
        arguments["nextToken"] = page["nextForwardToken"]


def test_a_task_runs_the_harness_and_its_output_reaches_cloudwatch(
    aws: AwsEnvironment,
    player: FargatePlayer,
    model: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTTEST_FAKE_SECRET", "do-not-leak")
    answer = run_task(aws, harness_config(GREETER, model.url), startedBy="uid-1")
    assert answer["failures"] == []
    (launched,) = answer["tasks"]
    task_arn = launched["taskArn"]
    assert launched["lastStatus"] == "PROVISIONING"
    assert launched["desiredStatus"] == "RUNNING"
    assert "exitCode" not in launched["containers"][0]

    seen: list[str] = []

    def stopped() -> dict[str, Any] | None:
        task = describe(aws, task_arn)
        if not seen or seen[-1] != task["lastStatus"]:
            seen.append(task["lastStatus"])
        return task if task["lastStatus"] == "STOPPED" else None

    task = wait_for("the task to stop", stopped)
    # The harness takes seconds to import strands: RUNNING cannot be missed.
    assert "RUNNING" in seen
    assert seen.index("RUNNING") < seen.index("STOPPED")
    assert task["desiredStatus"] == "STOPPED"
    assert task["stopCode"] == "EssentialContainerExited"
    assert task["stoppedReason"] == "Essential container in task exited"
    assert task["startedBy"] == "uid-1"
    assert task["startedAt"] <= task["stoppedAt"]
    (container,) = task["containers"]
    assert container["name"] == aws.container
    assert container["taskArn"] == task_arn
    assert container["exitCode"] == 0, player.output(task_arn)

    stream = f"agenttest/runner/{task_arn.rsplit('/', 1)[-1]}"
    assert aws.log_stream(task_arn) == stream
    messages = read_stream(aws, stream)
    assert messages == player.output(task_arn)
    assert messages[-1].startswith("::agenttest:: ")
    assert '"passed":true' in messages[-1]
    assert len(model.requests) >= 1

    # The container saw the task's environment, and nothing of this process's own.
    environment = player.environment(task_arn)
    assert "AGENTTEST_FAKE_SECRET" not in environment
    assert environment["AWS_ENDPOINT_URL"] == aws.endpoint
    assert environment["AGENTTEST_CONFIG"] == harness_config(GREETER, model.url)
    assert environment["HOME"] != os.environ.get("HOME")
    assert player.killed(task_arn) is False
    assert player.tasks() == [task_arn]


def test_stop_task_kills_the_process_and_keeps_the_callers_reason(
    aws: AwsEnvironment, player: FargatePlayer
) -> None:
    ecs = aws.client("ecs")
    task_arn = run_task(aws, harness_config(SLEEPER, "http://127.0.0.1:9"))["tasks"][0]["taskArn"]
    wait_for("RUNNING", lambda: describe(aws, task_arn)["lastStatus"] == "RUNNING")
    pid = player.pid(task_arn)
    assert pid is not None and pid_alive(pid)

    answer = ecs.stop_task(cluster=aws.cluster, task=task_arn, reason="AgentTest cancelled")
    assert answer["task"]["desiredStatus"] == "STOPPED"

    task = wait_for(
        "STOPPED",
        lambda: (t := describe(aws, task_arn))["lastStatus"] == "STOPPED" and t,
    )
    assert player.killed(task_arn)
    assert not pid_alive(pid)
    assert task["stoppedReason"] == "AgentTest cancelled"
    assert task["stopCode"] == "UserInitiated"
    # Docker reports 128 + the signal that ended the process (SIGTERM: 143).
    assert task["containers"][0].get("exitCode") in (None, 137, 143)
    # Stopping a stopped task changes nothing.
    again = ecs.stop_task(cluster=aws.cluster, task=task_arn, reason="twice")["task"]
    assert again["stoppedReason"] == "AgentTest cancelled"


def test_the_same_client_token_yields_one_task(aws: AwsEnvironment, player: FargatePlayer) -> None:
    ecs = aws.client("ecs")
    first = run_task(aws, "{}", clientToken="uid-2-attempt-1", startedBy="uid-2")
    second = run_task(aws, "{}", clientToken="uid-2-attempt-1", startedBy="uid-2")
    task_arn = first["tasks"][0]["taskArn"]
    assert second["tasks"][0]["taskArn"] == task_arn

    player.wait_all_stopped(timeout=60)
    assert player.tasks() == [task_arn]
    stopped = ecs.list_tasks(cluster=aws.cluster, startedBy="uid-2", desiredStatus="STOPPED")
    assert stopped["taskArns"] == [task_arn]
    # An empty config is a bad config: the harness says so and exits 2.
    assert describe(aws, task_arn)["containers"][0]["exitCode"] == 2
    # A later replay still answers with the (now stopped) task, starting nothing.
    third = run_task(aws, "{}", clientToken="uid-2-attempt-1", startedBy="uid-2")
    assert third["tasks"][0]["taskArn"] == task_arn
    assert third["tasks"][0]["lastStatus"] == "STOPPED"
    # ListTasks without desiredStatus lists RUNNING only, as ECS does.
    assert ecs.list_tasks(cluster=aws.cluster, startedBy="uid-2")["taskArns"] == []


def test_a_capacity_failure_then_a_success(aws: AwsEnvironment, player: FargatePlayer) -> None:
    player.fail_next_run_tasks(1)
    failed = run_task(aws, "{}", clientToken="uid-3-attempt-1")
    assert failed["tasks"] == []
    assert failed["failures"] == [{"reason": "RESOURCE:FARGATE"}]

    succeeded = run_task(aws, "{}", clientToken="uid-3-attempt-1")
    assert succeeded["failures"] == []
    (task,) = succeeded["tasks"]
    player.wait_all_stopped(timeout=60)
    assert player.tasks() == [task["taskArn"]]


def test_spot_capacity_can_fail_alone(aws: AwsEnvironment, player: FargatePlayer) -> None:
    player.fail_next_run_tasks(
        1, "Capacity is unavailable at this time.", capacity_provider="FARGATE_SPOT"
    )
    spot = run_task_with_strategy(aws, "FARGATE_SPOT")
    assert spot["failures"] == [{"reason": "Capacity is unavailable at this time."}]
    on_demand = run_task(aws, "{}")
    assert on_demand["failures"] == []
    spot = run_task_with_strategy(aws, "FARGATE_SPOT")
    (task,) = spot["tasks"]
    assert task["capacityProviderName"] == "FARGATE_SPOT"
    assert task["launchType"] == "FARGATE"
    player.wait_all_stopped(timeout=60)
    assert len(player.tasks()) == 2


def run_task_with_strategy(aws: AwsEnvironment, provider: str) -> dict[str, Any]:
    answer: dict[str, Any] = aws.client("ecs").run_task(
        cluster=aws.cluster,
        taskDefinition=aws.family,
        capacityProviderStrategy=[{"capacityProvider": provider, "weight": 1}],
        networkConfiguration=aws.network_configuration(),
        overrides={
            "containerOverrides": [
                {
                    "name": aws.container,
                    "environment": [{"name": "AGENTTEST_CONFIG", "value": "{}"}],
                }
            ]
        },
    )
    return answer


def test_throttled_log_reads_raise_throttling_exception(
    aws: AwsEnvironment, player: FargatePlayer
) -> None:
    # One attempt in all: botocore's `max_attempts` counts retries (1 would mean two tries).
    logs = aws.client("logs", config=Config(retries={"total_max_attempts": 1}))
    logs.create_log_stream(logGroupName=aws.log_group, logStreamName="probe/throttle")
    read = {"logGroupName": aws.log_group, "logStreamName": "probe/throttle"}

    player.throttle_log_reads(1)
    with pytest.raises(ClientError) as caught:
        logs.get_log_events(**read)
    error = caught.value.response
    assert error["Error"]["Code"] == "ThrottlingException"
    assert error["Error"]["Message"] == "Rate exceeded"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert logs.get_log_events(**read)["events"] == []

    # boto3's default (legacy) retry mode retries throttling by itself: one
    # throttled answer costs the caller a retry, not an exception.
    patient = aws.client("logs")
    before = player.count_calls("logs", "GetLogEvents")
    player.throttle_log_reads(1)
    assert patient.get_log_events(**read)["events"] == []
    assert player.count_calls("logs", "GetLogEvents") == before + 2


def test_count_calls_counts_http_requests(aws: AwsEnvironment, player: FargatePlayer) -> None:
    assert player.count_calls("logs", "GetLogEvents") == 0
    logs = aws.client("logs")
    logs.create_log_stream(logGroupName=aws.log_group, logStreamName="probe/count")
    for _ in range(3):
        logs.get_log_events(logGroupName=aws.log_group, logStreamName="probe/count")
    aws.client("s3").put_object(Bucket=aws.bucket, Key="probe", Body=b"x")
    assert player.count_calls("logs", "GetLogEvents") == 3
    assert player.count_calls("logs", "CreateLogStream") == 1
    assert player.count_calls("s3", "PutObject") == 1
    assert player.count_calls("ecs", "RunTask") == 0


def test_ecs_refuses_what_ecs_refuses(aws: AwsEnvironment, player: FargatePlayer) -> None:
    ecs = aws.client("ecs")
    with pytest.raises(ClientError, match="Container Overrides length must be at most 8192"):
        run_task(aws, "x" * 8200)
    with pytest.raises(ClientError, match="No Fargate configuration exists"):
        ecs.run_task(
            cluster=aws.cluster,
            taskDefinition=aws.family,
            launchType="FARGATE",
            networkConfiguration=aws.network_configuration(),
            overrides={"cpu": "1024", "memory": "1024"},
        )
    with pytest.raises(ClientError) as caught:
        ecs.stop_task(cluster=aws.cluster, task="0123456789abcdef0123456789abcdef")
    assert caught.value.response["Error"]["Code"] == "InvalidParameterException"
    missing = f"arn:aws:ecs:{aws.region}:{aws.account_id}:task/{aws.cluster}/feedface"
    answer = ecs.describe_tasks(cluster=aws.cluster, tasks=[missing])
    assert answer["tasks"] == []
    assert answer["failures"] == [{"arn": missing, "reason": "MISSING"}]
    assert player.tasks() == []


def test_a_task_that_fails_to_start_has_no_exit_code(
    aws: AwsEnvironment, player: FargatePlayer
) -> None:
    player.fail_next_task_starts(1)
    task_arn = run_task(aws, "{}")["tasks"][0]["taskArn"]
    player.wait_stopped(task_arn, timeout=30)
    task = describe(aws, task_arn)
    assert task["lastStatus"] == "STOPPED"
    assert task["stopCode"] == "TaskFailedToStart"
    assert task["stoppedReason"].startswith("ResourceInitializationError")
    assert "exitCode" not in task["containers"][0]
    assert player.output(task_arn) == []


def test_an_interruption_stops_a_running_task_as_aws_would(
    aws: AwsEnvironment, player: FargatePlayer
) -> None:
    task_arn = run_task(aws, harness_config(SLEEPER, "http://127.0.0.1:9"))["tasks"][0]["taskArn"]
    wait_for("RUNNING", lambda: describe(aws, task_arn)["lastStatus"] == "RUNNING")
    player.interrupt(task_arn)
    player.wait_stopped(task_arn, timeout=30)
    task = describe(aws, task_arn)
    assert task["lastStatus"] == "STOPPED"
    assert task["stopCode"] == "SpotInterruption"
    assert task["stoppedReason"] == "Your Spot Task was interrupted."
    assert player.killed(task_arn)
