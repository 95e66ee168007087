"""Pure parts of the Fargate backend: sizes and what a stopped task means."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from agenttest.backends.base import LaunchRefused
from agenttest.backends.fargate import (
    FargateConfig,
    fargate_size,
    run_task_arguments,
    task_observation,
)
from agenttest.executions import ExecutionKey, ExecutionState, LaunchRequest


@pytest.mark.parametrize(
    "cpu,memory,expected",
    [
        ("250m", "512Mi", (256, 512)),
        ("0.5", "1Gi", (512, 1024)),
        ("1", "2Gi", (1024, 2048)),
        ("2", "16Gi", (2048, 16384)),
        ("4", "30Gi", (4096, 30720)),
    ],
)
def test_offered_sizes_map_to_cpu_units_and_mib(
    cpu: str, memory: str, expected: tuple[int, int]
) -> None:
    assert fargate_size(cpu, memory) == expected


def test_unknown_cpu_lists_the_valid_vcpus() -> None:
    with pytest.raises(LaunchRefused, match=r"spec.resources.cpu 3 .* 0.25, 0.5, 1, 2, 4, 8, 16"):
        fargate_size("3", "8Gi")


def test_memory_not_offered_with_that_cpu_lists_the_valid_range() -> None:
    with pytest.raises(LaunchRefused, match=r"memory 16Gi .* 1 vCPU; valid: 2Gi to 8Gi in steps"):
        fargate_size("1", "16Gi")
    with pytest.raises(LaunchRefused, match=r"valid: 512Mi, 1Gi, 2Gi"):
        fargate_size("250m", "4Gi")


def task(last: str, **fields: Any) -> dict[str, Any]:
    return {"lastStatus": last, **fields}


def test_provisioning_is_starting_and_running_is_running() -> None:
    assert task_observation(task("PROVISIONING"), "runner").state == ExecutionState.STARTING
    assert task_observation(task("PENDING"), "runner").reason == "ECS task PENDING"
    assert task_observation(task("RUNNING"), "runner").state == ExecutionState.RUNNING
    assert task_observation(task("DEPROVISIONING"), "runner").state == ExecutionState.RUNNING


def test_stopped_container_exit_code_is_the_outcome() -> None:
    stopped = task(
        "STOPPED",
        stopCode="EssentialContainerExited",
        containers=[{"name": "sidecar", "exitCode": 0}, {"name": "runner", "exitCode": 1}],
    )
    observation = task_observation(stopped, "runner")
    assert (observation.state, observation.exit_code) == (ExecutionState.EXITED, 1)


@pytest.mark.parametrize(
    "reason",
    [
        "ResourceInitializationError: failed to pull secrets",
        "CannotPullContainerError: pull access denied",
        "Capacity is unavailable at this time",
    ],
)
def test_infrastructure_stops_are_infra_failures(reason: str) -> None:
    stopped = task(
        "STOPPED",
        stopCode="TaskFailedToStart",
        stoppedReason=reason,
        containers=[{"name": "runner"}],
    )
    observation = task_observation(stopped, "runner")
    assert observation.state == ExecutionState.MISSING
    assert observation.infra_failure and reason in observation.reason


def test_a_stop_we_asked_for_is_an_exit_not_an_infra_failure() -> None:
    stopped = task(
        "STOPPED",
        stopCode="UserInitiated",
        stoppedReason="timed out after 3s",
        containers=[{"name": "runner", "exitCode": 137}],
    )
    assert task_observation(stopped, "runner").state == ExecutionState.EXITED


def test_run_task_arguments_for_spot_and_on_demand() -> None:
    config = FargateConfig(
        cluster="c", task_definition="td", container="runner", subnets=("s-1",),
        security_groups=("sg-1",), assign_public_ip=False, use_spot=True,
        log_group="/g", log_stream_prefix="p", config_bucket="", stop_timeout=5.0,
    )  # fmt: skip
    request = LaunchRequest(
        key=ExecutionKey("0123456789abcdef-uid-0123456789ab", 2),
        namespace="team",
        test_name="t",
        runner_config={},
        timeout_seconds=60,
        cpu="1",
        memory="2Gi",
        run_key="ab" * 32,
    )
    spot = run_task_arguments(config, request, {"AGENTTEST_CONFIG": "{}"}, "FARGATE_SPOT")
    demand = run_task_arguments(config, request, {"AGENTTEST_CONFIG": "{}"})
    assert spot["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
    assert demand["launchType"] == "FARGATE" and "capacityProviderStrategy" not in demand
    assert spot["clientToken"] == request.key.name + "-spot"
    assert demand["clientToken"] == demand["startedBy"] == request.key.name
    assert demand["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "DISABLED"
    assert (demand["overrides"]["cpu"], demand["overrides"]["memory"]) == ("1024", "2048")
    [container] = demand["overrides"]["containerOverrides"]
    assert container["environment"] == [
        {"name": "AGENTTEST_CONFIG", "value": "{}"},
        {"name": "AGENTTEST_RUN_KEY", "value": "ab" * 32},
    ]
    # Appended to the image's ENTRYPOINT: the judge under a timer at timeout + margin.
    assert container["command"] == ["--deadline", "75"]
    assert {"key": "agenttest.dev/attempt", "value": "2"} in demand["tags"]


def test_model_credentials_go_to_the_judges_container_environment() -> None:
    config = FargateConfig(
        cluster="c", task_definition="td", container="runner", subnets=("s-1",),
        security_groups=("sg-1",), assign_public_ip=False, use_spot=False,
        log_group="/g", log_stream_prefix="p", config_bucket="", stop_timeout=5.0,
    )  # fmt: skip
    credentials = {"default": {"aws_access_key_id": "AKIAX", "aws_secret_access_key": "sk"}}
    request = LaunchRequest(
        key=ExecutionKey("0123456789abcdef-uid-0123456789ab", 1),
        namespace="team",
        test_name="t",
        runner_config={},
        timeout_seconds=60,
        run_key="ab" * 32,
        model_credentials=credentials,
    )
    [container] = run_task_arguments(config, request, {})["overrides"]["containerOverrides"]
    environment = {item["name"]: item["value"] for item in container["environment"]}
    assert json.loads(environment["AGENTTEST_MODEL_CREDENTIALS"]) == credentials


def test_credentials_leave_less_room_for_an_inline_configuration() -> None:
    import asyncio

    from agenttest.backends.fargate import MAX_INLINE_CONFIG, FargateExecutor

    config = FargateConfig(
        cluster="c", task_definition="td", container="runner", subnets=("s-1",),
        security_groups=("sg-1",), assign_public_ip=False, use_spot=False,
        log_group="/g", log_stream_prefix="p", config_bucket="", stop_timeout=5.0,
    )  # fmt: skip

    def no_aws(service: str) -> Any:
        raise AssertionError(f"no {service} call expected")

    executor = FargateExecutor(config, client_factory=no_aws)
    fits_alone = {"agentSource": "x" * (MAX_INLINE_CONFIG - 100)}
    request = LaunchRequest(
        key=ExecutionKey("0123456789abcdef-uid-0123456789ab", 1),
        namespace="team",
        test_name="t",
        runner_config=fits_alone,
        timeout_seconds=60,
    )
    try:
        assert "AGENTTEST_CONFIG" in asyncio.run(executor._config_environment(request))
        keyed = replace(request, model_credentials={"default": {"token": "t" * 500}})
        with pytest.raises(LaunchRefused, match="no AGENTTEST_FARGATE_CONFIG_BUCKET"):
            asyncio.run(executor._config_environment(keyed))
        huge = replace(request, model_credentials={"default": {"token": "t" * 5000}})
        with pytest.raises(LaunchRefused, match="the models' credentials take"):
            asyncio.run(executor._config_environment(huge))
    finally:
        executor._pool.shutdown(wait=True)
