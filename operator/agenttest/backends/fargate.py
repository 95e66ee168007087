"""The Fargate backend: the runner as an AWS ECS Fargate task.

A launch is `run_task` with a `clientToken` and `startedBy` derived from the
ExecutionKey, and a lookup by `startedBy` first, so a launch repeated after an
operator restart finds the task instead of starting another. The runner's
output comes back through CloudWatch Logs (the awslogs driver's stream
`<prefix>/<container>/<task-id>`), read forward with the page token.
Credentials come only from boto3's default chain (IRSA, environment,
profile); `AWS_ENDPOINT_URL` points every call elsewhere (tests use moto).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from agenttest import awsclients
from agenttest.backends.base import LaunchRefused
from agenttest.executions import (
    ExecutionKey,
    ExecutionState,
    Launched,
    LaunchRequest,
    LogChunk,
    Observation,
)
from agenttest.models import Backend
from agenttest.runner.deadline import DEADLINE_FLAG, backstop_seconds
from agenttest.runner.protocol import (
    CONFIG_ENV,
    CONFIG_S3_ENV,
    MODEL_CREDENTIALS_ENV,
    RUN_KEY_ENV,
)
from agenttest.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Fargate's CPU units -> the memory sizes (MiB) it offers with them.
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}

# Container overrides are limited to 8 KiB in total; leave room for the rest.
MAX_INLINE_CONFIG = 7 * 1024
# Stopped-task reasons that are the infrastructure's fault, not the test's.
INFRA_REASONS = re.compile(
    r"RESOURCE:|Capacity is unavailable|capacity|ResourceInitializationError|"
    r"CannotPullContainer|SpotInterruption|TaskFailedToStart|Timeout waiting for network|"
    r"Host EC2|ServiceUnavailable|InternalError",
    re.IGNORECASE,
)
MAX_LOG_BACKOFF = 5.0
# The tags naming a task's AgentTest (set by run_task_arguments; read by the sweeper).
OWNER_TAGS_ORDER = ("agenttest.dev/namespace", "agenttest.dev/name", "agenttest.dev/uid")
OWNER_TAGS = frozenset(OWNER_TAGS_ORDER)
THROTTLED = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
}


def cpu_units(cpu: str) -> int:
    """A Kubernetes CPU quantity as Fargate CPU units (1 vCPU = 1024)."""
    if cpu.endswith("m"):
        return round(int(cpu[:-1]) * 1024 / 1000)
    return round(float(cpu) * 1024)


def memory_mib(memory: str) -> int:
    number, unit = int(memory[:-2]), memory[-2:]
    return number * 1024 if unit == "Gi" else number


def fargate_size(cpu: str, memory: str) -> tuple[int, int]:
    """(cpu units, memory MiB) if Fargate offers that size; otherwise LaunchRefused."""
    units, mib = cpu_units(cpu), memory_mib(memory)
    if units not in FARGATE_SIZES:
        offered = ", ".join(f"{u / 1024:g}" for u in FARGATE_SIZES)
        raise LaunchRefused(
            f"spec.resources.cpu {cpu} is not a Fargate size; valid vCPU values: {offered}"
        )
    if mib not in FARGATE_SIZES[units]:
        raise LaunchRefused(
            f"spec.resources.memory {memory} is not offered by Fargate with {cpu} vCPU; "
            f"valid: {_describe(FARGATE_SIZES[units])}"
        )
    return units, mib


def _describe(sizes: tuple[int, ...]) -> str:
    def quantity(mib: int) -> str:
        return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"

    if len(sizes) <= 4:
        return ", ".join(quantity(size) for size in sizes)
    step = sizes[1] - sizes[0]
    return f"{quantity(sizes[0])} to {quantity(sizes[-1])} in steps of {quantity(step)}"


@dataclass(frozen=True)
class FargateConfig:
    cluster: str
    task_definition: str
    container: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: bool
    use_spot: bool
    log_group: str
    log_stream_prefix: str
    config_bucket: str = ""
    stop_timeout: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings) -> FargateConfig:
        return cls(
            cluster=settings.fargate_cluster,
            task_definition=settings.fargate_task_definition,
            container=settings.fargate_container,
            subnets=settings.fargate_subnets,
            security_groups=settings.fargate_security_groups,
            assign_public_ip=settings.fargate_assign_public_ip,
            use_spot=settings.fargate_use_spot,
            log_group=settings.fargate_log_group,
            log_stream_prefix=settings.fargate_log_stream_prefix,
            config_bucket=settings.fargate_config_bucket,
            stop_timeout=settings.fargate_stop_timeout,
        )


def run_task_arguments(
    config: FargateConfig,
    request: LaunchRequest,
    environment: dict[str, str],
    capacity: str = "FARGATE",
) -> dict[str, Any]:
    """The RunTask call for one execution on one capacity provider (pure).

    The clientToken makes a repeated call (an operator restarted mid-launch)
    return the task already started; Spot and on-demand get different tokens,
    since falling back to on-demand is a different request.
    """
    cpu, memory = fargate_size(request.cpu, request.memory)
    started_by = request.key.name
    # The signing key is seen by whoever may DescribeTasks in the account (keep
    # testers out of that), never by the agent host: the judge drops it at once.
    container_environment = {**environment, RUN_KEY_ENV: request.run_key}
    # The models' credentials go the same way, and are seen by the same people. A real
    # deployment should rather keep them in Secrets Manager and give the task role
    # read access to just that secret, so DescribeTasks shows a name, not the values.
    if request.model_credentials:
        container_environment[MODEL_CREDENTIALS_ENV] = json.dumps(request.model_credentials)
    placement: dict[str, Any] = (
        {"capacityProviderStrategy": [{"capacityProvider": capacity, "weight": 1}]}
        if capacity == "FARGATE_SPOT"
        else {"launchType": "FARGATE"}
    )
    return {
        "cluster": config.cluster,
        "taskDefinition": config.task_definition,
        "count": 1,
        "startedBy": started_by,
        "clientToken": started_by + ("-spot" if capacity == "FARGATE_SPOT" else ""),
        "networkConfiguration": {
            "awsvpcConfiguration": {
                "subnets": list(config.subnets),
                "securityGroups": list(config.security_groups),
                "assignPublicIp": "ENABLED" if config.assign_public_ip else "DISABLED",
            }
        },
        "overrides": {
            "cpu": str(cpu),
            "memory": str(memory),
            "containerOverrides": [
                {
                    "name": config.container,
                    # Appended to the image's ENTRYPOINT (python -m agenttest.runner):
                    # PID 1 becomes a timer the agent can neither stop nor outlive.
                    "command": [DEADLINE_FLAG, f"{backstop_seconds(request.timeout_seconds):g}"],
                    "environment": [
                        {"name": k, "value": v} for k, v in container_environment.items()
                    ],
                }
            ],
        },
        "tags": [
            *(
                {"key": key, "value": value}
                for key, value in zip(
                    OWNER_TAGS_ORDER,
                    (request.namespace, request.test_name, request.key.uid),
                    strict=True,
                )
            ),
            {"key": "agenttest.dev/attempt", "value": str(request.key.attempt)},
        ],
        **placement,
    }


class FargateExecutor:
    kind = Backend.FARGATE

    def __init__(
        self,
        config: FargateConfig,
        client_factory: Callable[[str], Any] | None = None,
        min_log_interval: float = 1.0,
    ) -> None:
        self.config = config
        self._client_factory = client_factory or _default_client
        self._clients: dict[str, Any] = {}
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="aws")
        self.min_log_interval = min_log_interval
        # task ARN -> monotonic time before which its logs are not read again
        self._log_not_before: dict[str, float] = {}
        self._log_backoff: dict[str, float] = {}
        # startedBy (the ExecutionKey's name) -> the task ARN it launched; filled
        # by launch and by lookups, so a step costs no ListTasks call.
        self._tasks: dict[str, str] = {}

    # Seconds to keep reading logs after the task stopped without a result
    # line: CloudWatch Logs delivers the last lines a little later.
    log_grace_seconds = 15.0

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._client_factory(service)
        return self._clients[service]

    async def _call(self, service: str, operation: str, **kwargs: Any) -> Any:
        method = getattr(self._client(service), operation)
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: method(**kwargs)
        )

    # -- launching ------------------------------------------------------------

    def _stream(self, task_arn: str) -> str:
        task_id = task_arn.rsplit("/", 1)[-1]
        return f"{self.config.log_stream_prefix}/{self.config.container}/{task_id}"

    async def _find(self, started_by: str) -> str | None:
        """A task this execution already started (running or stopped), if any."""
        for status in ("RUNNING", "STOPPED"):
            found = await self._call(
                "ecs",
                "list_tasks",
                cluster=self.config.cluster,
                startedBy=started_by,
                desiredStatus=status,
            )
            if found.get("taskArns"):
                return str(found["taskArns"][0])
        return None

    async def _config_environment(self, request: LaunchRequest) -> dict[str, str]:
        text = json.dumps(request.runner_config, separators=(",", ":"))
        # The models' credentials share the overrides' 8 KiB (and never go to S3).
        credentials = len(json.dumps(request.model_credentials)) if request.model_credentials else 0
        if credentials > MAX_INLINE_CONFIG // 2:
            raise LaunchRefused(
                f"the models' credentials take {credentials} bytes, more than Fargate's "
                f"container overrides can carry beside the configuration ({MAX_INLINE_CONFIG // 2})"
            )
        if len(text.encode()) <= MAX_INLINE_CONFIG - credentials:
            return {CONFIG_ENV: text}
        if not self.config.config_bucket:
            raise LaunchRefused(
                f"the runner configuration is {len(text.encode())} bytes; Fargate overrides "
                "hold 8 KiB, and no AGENTTEST_FARGATE_CONFIG_BUCKET is set to pass it through S3"
            )
        key = (
            f"test-artifacts/configs/{request.namespace}/{request.test_name}/"
            f"{request.key.name}.json"
        )
        await self._call(
            "s3",
            "put_object",
            Bucket=self.config.config_bucket,
            Key=key,
            Body=text.encode(),
            ServerSideEncryption="AES256",
        )
        return {CONFIG_S3_ENV: f"s3://{self.config.config_bucket}/{key}"}

    async def locate(self, namespace: str, key: ExecutionKey) -> str | None:
        # The task ARN cannot be derived, only looked up by what we derived:
        # the startedBy of a task is the key's name, and the cluster is ours.
        known = self._tasks.get(key.name)
        if known is None:
            known = await self._find(key.name)
            if known is not None:
                self._tasks[key.name] = known
        return known

    async def launch(self, request: LaunchRequest) -> str:
        fargate_size(request.cpu, request.memory)  # refuse an impossible size before anything
        started_by = request.key.name
        existing = await self._find(started_by)
        if existing:
            logger.info("adopting task %s for %s", existing, started_by)
            self._tasks[started_by] = existing
            return existing
        environment = await self._config_environment(request)
        reasons = []
        for capacity in ("FARGATE_SPOT", "FARGATE") if self.config.use_spot else ("FARGATE",):
            arguments = run_task_arguments(self.config, request, environment, capacity)
            answer = await self._call("ecs", "run_task", **arguments)
            if answer.get("tasks"):
                arn = str(answer["tasks"][0]["taskArn"])
                self._tasks[started_by] = arn
                return arn
            reasons += [f"{f.get('reason')}" for f in answer.get("failures", [])]
        raise RuntimeError("run_task found no capacity: " + "; ".join(reasons or ["no reason"]))

    # -- observing --------------------------------------------------------------

    async def observe(self, execution_id: str) -> Observation:
        answer = await self._call(
            "ecs", "describe_tasks", cluster=self.config.cluster, tasks=[execution_id]
        )
        if not answer.get("tasks"):
            return Observation(
                ExecutionState.MISSING, reason="the ECS task no longer exists", infra_failure=True
            )
        return task_observation(answer["tasks"][0], self.config.container)

    async def read_logs(self, execution_id: str, cursor: str | None) -> LogChunk:
        now = time.monotonic()
        if now < self._log_not_before.get(execution_id, 0.0):
            return LogChunk([], cursor, throttled=execution_id in self._log_backoff)
        self._log_not_before[execution_id] = now + self.min_log_interval
        arguments: dict[str, Any] = {
            "logGroupName": self.config.log_group,
            "logStreamName": self._stream(execution_id),
            "startFromHead": True,
        }
        if cursor:
            arguments["nextToken"] = cursor
        try:
            page = await self._call("logs", "get_log_events", **arguments)
        except Exception as error:
            code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                return LogChunk([], cursor)  # the stream appears with the first line
            if code in THROTTLED:
                backoff = min(MAX_LOG_BACKOFF, self._log_backoff.get(execution_id, 0.5) * 2)
                self._log_backoff[execution_id] = backoff
                self._log_not_before[execution_id] = time.monotonic() + backoff
                logger.info("CloudWatch Logs throttled; next read in %.0fs", backoff)
                return LogChunk([], cursor, throttled=True)
            raise
        self._log_backoff.pop(execution_id, None)
        events = page.get("events", [])
        lines = [event["message"].rstrip("\n") for event in events]
        # CloudWatch's event timestamp, milliseconds since the epoch.
        stamp = events[-1].get("timestamp") if events else None
        newest = stamp / 1000 if isinstance(stamp, int | float) else None
        # An empty page can still carry a new token with events behind it; the
        # token is kept and the next read (one per interval) continues there.
        return LogChunk(lines, page.get("nextForwardToken") or cursor, newest_at=newest)

    # -- stopping ---------------------------------------------------------------

    async def stop(self, execution_id: str, reason: str) -> None:
        try:
            await self._call(
                "ecs",
                "stop_task",
                cluster=self.config.cluster,
                task=execution_id,
                reason=reason[:255],
            )
        except Exception as error:
            code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
            if code in ("InvalidParameterException", "ClientException"):
                logger.info("stop_task %s: %s (treated as gone)", execution_id, error)
                return
            raise
        deadline = time.monotonic() + self.config.stop_timeout
        while time.monotonic() < deadline:
            observation = await self.observe(execution_id)
            if observation.state in (ExecutionState.EXITED, ExecutionState.MISSING):
                return
            await asyncio.sleep(0.5)
        logger.warning("task %s not STOPPED after %.0fs", execution_id, self.config.stop_timeout)

    async def cleanup(self, execution_id: str) -> None:
        observation = await self.observe(execution_id)
        if observation.state not in (ExecutionState.EXITED, ExecutionState.MISSING):
            await self.stop(execution_id, "AgentTest deleted")
        self._log_not_before.pop(execution_id, None)
        self._log_backoff.pop(execution_id, None)

    async def launched(self) -> list[Launched]:
        arns: list[str] = []
        token = ""
        while True:
            page = await self._call(
                "ecs",
                "list_tasks",
                cluster=self.config.cluster,
                desiredStatus="RUNNING",
                **({"nextToken": token} if token else {}),
            )
            arns += page.get("taskArns", [])
            token = page.get("nextToken") or ""
            if not token:
                break
        found = []
        for start in range(0, len(arns), 100):  # DescribeTasks takes 100 at a time
            answer = await self._call(
                "ecs",
                "describe_tasks",
                cluster=self.config.cluster,
                tasks=arns[start : start + 100],
                include=["TAGS"],
            )
            for task in answer.get("tasks", []):
                tags = {tag.get("key"): tag.get("value") for tag in task.get("tags") or []}
                if tags.keys() >= OWNER_TAGS:
                    namespace, name, uid = (tags[key] for key in OWNER_TAGS_ORDER)
                    found.append(Launched(str(task["taskArn"]), namespace, name, uid))
        return found


def task_observation(task: dict[str, Any], container_name: str) -> Observation:
    """What a describe_tasks entry means for the test (pure)."""
    last = task.get("lastStatus", "")
    if last in ("PROVISIONING", "PENDING", "ACTIVATING"):
        return Observation(ExecutionState.STARTING, reason=f"ECS task {last}")
    if last != "STOPPED":
        return Observation(ExecutionState.RUNNING)
    containers: list[dict[str, Any]] = task.get("containers", [])
    container = next((c for c in containers if c.get("name") == container_name), {})
    exit_code = container.get("exitCode")
    reason = " ".join(
        part
        for part in (
            task.get("stopCode", ""),
            task.get("stoppedReason", ""),
            container.get("reason", ""),
        )
        if part
    )
    if task.get("stopCode") == "UserInitiated":
        return Observation(ExecutionState.EXITED, exit_code=exit_code, reason=reason)
    if exit_code is None or INFRA_REASONS.search(reason):
        return Observation(
            ExecutionState.MISSING, reason=reason or "task stopped", infra_failure=True
        )
    return Observation(ExecutionState.EXITED, exit_code=int(exit_code), reason=reason)


def _default_client(service: str) -> Any:
    if service == "logs":
        # Log reads back off in read_logs, between steps, instead of sleeping
        # inside boto3 and holding up the step.
        return awsclients.client(service, retries={"total_max_attempts": 1})
    return awsclients.client(service, retries={"mode": "standard", "max_attempts": 5})
