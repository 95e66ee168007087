"""AWS answering ThrottlingException, SlowDown and 5xx for a while, on the Fargate backend.

Every call the operator makes goes through `AwsFaults`, a proxy in front of
moto that fails the operations a test names, in each service's own protocol,
for a number of calls or for a time. Throttling and server errors are AWS's
everyday weather: a test that runs through them must end as if the sky had
been clear. It succeeds, from one task, with no infrastructure retry spent,
its log tail whole, its report stored and its package published once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agenttest.runner.protocol import MACHINE_PREFIX
from agenttest_dev.awsfaults import AwsFaults
from agenttest_dev.fargate import AwsEnvironment, FargatePlayer
from agenttest_dev.modelserver import ScriptedModelServer

from support import SIMPLE_AGENT, Kube, Operator, agent_test

StartOperator = Callable[..., Operator]

LINES = 40

# Prints for a few seconds while the faults are on, then answers.
COUNTING_AGENT = f"""
import time
for n in range({LINES}):
    print(f"line {{n:03d}}", flush=True)
    time.sleep(0.2)
{SIMPLE_AGENT}"""


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsEnvironment]:
    with AwsEnvironment() as environment:
        yield environment


@pytest.fixture
def player(aws: AwsEnvironment) -> Iterator[FargatePlayer]:
    with FargatePlayer(aws) as playing:
        yield playing


@pytest.fixture
def faults(aws: AwsEnvironment) -> Iterator[AwsFaults]:
    with AwsFaults(aws.endpoint) as proxy:
        yield proxy


@pytest.fixture
def start_faulted_operator(
    start_operator: StartOperator, aws: AwsEnvironment, faults: AwsFaults
) -> Callable[..., Operator]:
    """An operator on Fargate that publishes packages, reaching AWS only through the faults."""

    def start(**settings: Any) -> Operator:
        return start_operator(
            extra_env={**aws.env(), "AWS_ENDPOINT_URL": faults.endpoint},
            fargate_subnets=",".join(aws.subnets),
            fargate_security_groups=aws.security_group,
            package_bucket=aws.bucket,
            **settings,
        )

    return start


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def settled(kube: Kube, name: str) -> dict[str, Any]:
    """The status once the test finished and its report and package were dealt with."""

    def done() -> dict[str, Any] | None:
        status = kube.get(name).get("status", {})
        ended = status.get("phase") in ("Succeeded", "Failed", "Error", "TimedOut")
        dealt = condition(status, "Reported") and condition(status, "Packaged")
        return status if ended and dealt else None

    result: dict[str, Any] = kube.wait_for(f"{name} to be reported and packaged", done, 180)
    return result


def event_reasons(kube: Kube, name: str) -> list[str]:
    return [event["reason"] for event in kube.events(name)]


def assert_clear_sky_outcome(
    kube: Kube, name: str, player: FargatePlayer, aws: AwsEnvironment
) -> dict[str, Any]:
    """As if nothing had failed: one task, no retry, whole tail, stored, published once."""
    status = settled(kube, name)
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["attempt"] == 1
    assert not status.get("infraRetries"), status.get("message")
    [task_arn] = player.tasks()
    assert status["execution"]["id"] == task_arn

    shown = [line for line in player.output(task_arn) if not line.startswith(MACHINE_PREFIX)]
    assert status["logTail"].splitlines() == shown
    numbered = re.findall(r"line (\d{3})", status["logTail"])
    assert numbered == [f"{n:03d}" for n in range(LINES)]

    reported = condition(status, "Reported")
    packaged = condition(status, "Packaged")
    assert reported is not None and reported["status"] == "True", reported
    assert packaged is not None and packaged["status"] == "True", packaged
    [package] = kube.get_all("deploymentpackages")
    listed = aws.client("s3").list_objects_v2(
        Bucket=aws.bucket, Prefix=f"packages/{kube.namespace}/"
    )
    zips = [entry["Key"] for entry in listed.get("Contents", []) if entry["Key"].endswith(".zip")]
    assert zips == [package["spec"]["key"]]

    reasons = event_reasons(kube, name)
    assert "Error" not in reasons and reasons.count("Succeeded") == 1, reasons
    return status


def test_throttling_and_server_errors_for_some_calls_change_nothing(
    kube: Kube,
    start_faulted_operator: Callable[..., Operator],
    faults: AwsFaults,
    player: FargatePlayer,
    aws: AwsEnvironment,
    model_server: ScriptedModelServer,
) -> None:
    start_faulted_operator()
    # Throttled first; then ECS starts the task but its answer is lost: the retry's
    # clientToken must get that same task back.
    faults.throttle("ecs", "RunTask", times=2)
    faults.server_error("ecs", "RunTask", times=1, after=True)
    kube.apply(agent_test("weather", COUNTING_AGENT, model_server.url, backend="fargate"))
    kube.wait_for_phase("weather", "Building", "Running")
    # Launched (its agent.py kept in S3 already): the rest fails while it runs.
    faults.throttle("ecs", "DescribeTasks", times=4)
    faults.server_error("ecs", "DescribeTasks", times=3)
    faults.throttle("logs", "GetLogEvents", times=4)
    faults.server_error("logs", "GetLogEvents", times=3, after=True)
    # More than boto3 retries in one call: the report store and the publisher back off.
    faults.throttle("s3", "PutObject", times=6)
    faults.server_error("s3", "PutObject", times=3, after=True)

    assert_clear_sky_outcome(kube, "weather", player, aws)
    assert faults.count("ecs", "RunTask", 400) == 2
    assert faults.count("ecs", "RunTask", 500) == 1
    assert faults.count("ecs", "DescribeTasks", 400) == 4
    assert faults.count("ecs", "DescribeTasks", 500) == 3
    assert faults.count("logs", "GetLogEvents", 400) == 4
    assert faults.count("logs", "GetLogEvents", 500) == 3
    assert faults.count("s3", "PutObject", 503) == 6
    assert faults.count("s3", "PutObject", 500) == 3


def test_launches_refused_by_throttling_spend_no_infrastructure_retry(
    kube: Kube,
    start_faulted_operator: Callable[..., Operator],
    faults: AwsFaults,
    player: FargatePlayer,
    aws: AwsEnvironment,
    model_server: ScriptedModelServer,
) -> None:
    start_faulted_operator(infra_backoff_seconds=1)
    # Each refuses one launch outright: every try boto3 makes of one call (S3: 4,
    # ECS: 6). Keeping agent.py at launch is refused first, then RunTask.
    faults.throttle("s3", "PutObject", times=4)
    faults.throttle("ecs", "RunTask", times=6)
    kube.apply(agent_test("storm", COUNTING_AGENT, model_server.url, backend="fargate"))
    kube.wait_for_phase("storm", "Building", "Running", "Error", timeout=120)
    faults.throttle("ecs", "DescribeTasks", seconds=10)
    faults.throttle("logs", "GetLogEvents", seconds=10)
    # The report's and the package's puts: twice every try of one call.
    faults.throttle("s3", "PutObject", times=8)

    assert_clear_sky_outcome(kube, "storm", player, aws)
    assert faults.count("ecs", "RunTask", 400) == 6
    assert faults.count("s3", "PutObject", 503) == 12
