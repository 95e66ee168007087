"""The ECS API where moto differs from ECS: patches of moto's classes, undone on stop.

RunTask (PROVISIONING, clientToken, override and size limits, injected
capacity failures), StopTask (asks; the task stops when its process is gone),
DescribeTasks (one cluster; MISSING failures), ListTasks (ECS's default
filter), GetLogEvents (injected throttling), and a count of every HTTP call.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from moto.backends import get_backend
from moto.core.responses import ActionResult, BaseResponse
from moto.ecs.exceptions import InvalidParameterException
from moto.ecs.models import EC2ContainerServiceBackend
from moto.ecs.responses import EC2ContainerServiceResponse
from moto.logs.exceptions import LogsClientError
from moto.logs.responses import LogsResponse

from agenttest_dev.fargate.aws import (
    ACCOUNT_ID,
    FARGATE_PROVIDERS,
    FARGATE_SIZES,
    MAX_CONTAINER_OVERRIDES,
    REGION,
    _now,
    task_id,
)
from agenttest_dev.fargate.state import PlayerState

# A patched attribute that the class did not have itself (inherited): delete it on undo.
_MISSING = object()


class EcsApi(PlayerState):
    """Installs and serves the patched ECS and Logs API of the player."""

    def _patch(self, owner: type, name: str, replacement: Any) -> None:
        self._patches.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, replacement)

    def _restore_patches(self) -> None:
        while self._patches:
            owner, name, original = self._patches.pop()
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

    def _install_patches(self) -> None:
        self._count_http_calls()
        self._patch_ecs_responses()
        self._patch_log_reads()
        self._patch_fargate_memory()

    def _count_http_calls(self) -> None:
        player = self
        setup_class = BaseResponse.setup_class

        def patched_setup_class(self: BaseResponse, request: Any, *args: Any, **kw: Any) -> None:
            setup_class(self, request, *args, **kw)
            if getattr(self, "is_werkzeug_request", False):
                try:
                    action = str(self._get_action())
                except Exception:
                    action = "Unknown"
                with player._lock:
                    player._calls[(str(self.service_name), action)] += 1

        self._patch(BaseResponse, "setup_class", patched_setup_class)

    def _patch_ecs_responses(self) -> None:
        player = self
        ecs_response = EC2ContainerServiceResponse
        run_task = ecs_response.run_task
        describe_tasks = ecs_response.describe_tasks
        list_tasks = ecs_response.list_tasks

        def patched_run_task(self: EC2ContainerServiceResponse) -> ActionResult:
            return player._run_task(self, run_task)

        def patched_stop_task(self: EC2ContainerServiceResponse) -> ActionResult:
            return player._stop_task(self)

        def patched_describe_tasks(self: EC2ContainerServiceResponse) -> ActionResult:
            return player._describe_tasks(self, describe_tasks)

        def patched_list_tasks(self: EC2ContainerServiceResponse) -> ActionResult:
            if self._get_param("desiredStatus") is None:
                self.params["desiredStatus"] = "RUNNING"  # ECS's default filter
            return list_tasks(self)

        self._patch(ecs_response, "run_task", patched_run_task)
        self._patch(ecs_response, "stop_task", patched_stop_task)
        self._patch(ecs_response, "describe_tasks", patched_describe_tasks)
        self._patch(ecs_response, "list_tasks", patched_list_tasks)

    def _patch_log_reads(self) -> None:
        player = self
        get_log_events = LogsResponse.get_log_events

        def patched_get_log_events(self: LogsResponse) -> str:
            with player._lock:
                throttled = player._log_throttles > 0
                if throttled:
                    player._log_throttles -= 1
            if throttled:
                raise LogsClientError("ThrottlingException", "Rate exceeded")
            return get_log_events(self)

        self._patch(LogsResponse, "get_log_events", patched_get_log_events)

    def _patch_fargate_memory(self) -> None:
        calculate = EC2ContainerServiceBackend.__dict__[
            "_calculate_task_resource_requirements"
        ].__func__

        def patched_calculate(task_definition: Any) -> dict[str, Any]:
            # moto needs container-level memory; Fargate task definitions may set
            # memory on the task only (the CDK app does). Count it as 0 here.
            patched = copy.copy(task_definition)
            patched.container_definitions = [
                {**c, "memory": c.get("memory") or c.get("memoryReservation") or 0}
                for c in task_definition.container_definitions
            ]
            return calculate(patched)  # type: ignore[no-any-return]

        self._patch(
            EC2ContainerServiceBackend,
            "_calculate_task_resource_requirements",
            staticmethod(patched_calculate),
        )

    @staticmethod
    def _find_task(backend: Any, cluster_name: str, reference: str) -> Any:
        tasks = backend.tasks.get(cluster_name, {})
        if reference in tasks:
            return tasks[reference]
        wanted = task_id(reference)
        return next((t for arn, t in tasks.items() if task_id(arn) == wanted), None)

    def _run_task(
        self, response: EC2ContainerServiceResponse, original: Callable[..., ActionResult]
    ) -> ActionResult:
        backend = response.ecs_backend
        cluster = backend._get_cluster(response._get_param("cluster", "default"))
        definition = backend.describe_task_definition(response._get_param("taskDefinition"))
        token = response._get_param("clientToken")
        if token is not None and not 1 <= len(token) <= 64:
            raise InvalidParameterException("clientToken must be 1 to 64 characters long.")
        overrides = response._get_param("overrides") or {}
        self._check_overrides(definition, overrides)
        placement = self._placement(response, backend, cluster, definition, overrides)
        with self._lock:
            key = (cluster.name, token)
            if token is not None and key in self._tokens:
                known = backend.tasks.get(cluster.name, {})
                tasks = [known[arn] for arn in self._tokens[key] if arn in known]
                return ActionResult({"tasks": tasks, "failures": []})
            failure = next(
                (f for f in self._run_failures if f.capacity_provider in (None, placement)),
                None,
            )
            if failure is not None:
                self._run_failures.remove(failure)
                entry = {"reason": failure.reason}
                if failure.arn is not None:
                    entry["arn"] = failure.arn
                return ActionResult({"tasks": [], "failures": [entry]})
            result = original(response)
            tasks = list(result.result["tasks"])  # type: ignore[index]
            for task in tasks:
                self._prepare_task(backend, task)
            if token is not None:
                self._tokens[key] = [task.task_arn for task in tasks]
            return result

    @staticmethod
    def _check_overrides(definition: Any, overrides: dict[str, Any]) -> None:
        """RunTask's limits on containerOverrides: 8192 characters, known container names."""
        container_overrides = overrides.get("containerOverrides") or []
        if len(json.dumps(container_overrides, separators=(",", ":"))) > MAX_CONTAINER_OVERRIDES:
            raise InvalidParameterException(
                f"Container Overrides length must be at most {MAX_CONTAINER_OVERRIDES}"
            )
        names = {c.get("name") for c in definition.container_definitions}
        for container_override in container_overrides:
            if container_override.get("name") not in names:
                raise InvalidParameterException(
                    f"Override for container named {container_override.get('name')} "
                    "is not a container in the TaskDefinition."
                )

    @staticmethod
    def _placement(
        response: EC2ContainerServiceResponse,
        backend: Any,
        cluster: Any,
        definition: Any,
        overrides: dict[str, Any],
    ) -> str:
        """Where RunTask places the task (EC2, FARGATE, FARGATE_SPOT), refused as ECS refuses."""
        launch_type = response._get_param("launchType")
        strategy = response._get_param("capacityProviderStrategy") or []
        provider = strategy[0].get("capacityProvider") if strategy else None
        if provider is None and not launch_type:
            default = cluster.default_capacity_provider_strategy or []
            provider = default[0].get("capacityProvider") if default else None
        placement = provider or launch_type or "EC2"
        if placement == "EC2" and not backend.container_instances.get(cluster.name):
            raise InvalidParameterException("No Container Instances were found in your cluster.")
        if placement in FARGATE_PROVIDERS:
            if placement not in (cluster.capacity_providers or []) and provider is not None:
                raise InvalidParameterException(
                    "The specified capacity provider strategy cannot contain a capacity "
                    "provider that is not associated with the cluster. Associate the "
                    "capacity provider with the cluster or specify a valid capacity provider "
                    "and try again."
                )
            cpu: Any = overrides.get("cpu") or definition.cpu
            memory: Any = overrides.get("memory") or definition.memory
            try:
                valid = int(memory) in FARGATE_SIZES.get(int(cpu), frozenset())
            except (TypeError, ValueError):
                valid = False
            if not valid:
                raise InvalidParameterException(
                    f"No Fargate configuration exists for given values: {cpu} CPU, "
                    f"{memory} memory. See the Amazon ECS documentation for the valid values."
                )
        return str(placement)

    def _prepare_task(self, backend: Any, task: Any) -> None:
        """A fresh task as ECS shows it: PROVISIONING, no exit code, Fargate fields."""
        # moto advances tasks towards STOPPED on every DescribeTasks; the player
        # moves them instead.
        task._transitions = []
        task.last_status = "PROVISIONING"
        task.desired_status = "RUNNING"
        task.stopped_reason = None
        task.stop_code = None
        task.created_at = _now()
        task.version = 1
        definition = backend.describe_task_definition(task.task_definition_arn)
        task.cpu = (task.overrides or {}).get("cpu") or definition.cpu
        task.memory = (task.overrides or {}).get("memory") or definition.memory
        fargate = task.launch_type == "FARGATE" or task.capacity_provider_name in FARGATE_PROVIDERS
        if fargate:
            task.launch_type = "FARGATE"
            if task.platform_version in (None, "", "LATEST"):
                task.platform_version = "1.4.0"
            task.platform_family = "Linux"
            task.ephemeral_storage = {"sizeInGiB": 20}
        task.health_status = "UNKNOWN"
        if not task.started_by:
            task.started_by = None  # ECS omits it when RunTask had none
        interfaces = []
        for attachment in task.attachments:
            details = {d["name"]: d["value"] for d in attachment.get("details", [])}
            if "subnetId" in details:
                ec2 = get_backend("ec2")[ACCOUNT_ID][REGION]
                task.availability_zone = ec2.get_subnet(details["subnetId"]).availability_zone
            if "privateIPv4Address" in details:
                interfaces.append(
                    {
                        "attachmentId": attachment["id"],
                        "privateIpv4Address": details["privateIPv4Address"],
                    }
                )
        for container in task.containers:
            container.task_arn = task.task_arn  # moto puts the task definition's ARN here
            container.exitCode = None
            container.last_status = "PENDING"
            container.health_status = "UNKNOWN"
            container.network_interfaces = interfaces

    def _stop_task(self, response: EC2ContainerServiceResponse) -> ActionResult:
        backend = response.ecs_backend
        cluster = backend._get_cluster(response._get_param("cluster", "default"))
        reference = response._get_param("task")
        task = self._find_task(backend, cluster.name, reference or "")
        if task is None:
            raise InvalidParameterException("The referenced task was not found.")
        with self._lock:
            if task.desired_status != "STOPPED":
                self._request_stop(
                    task, response._get_param("reason") or "Task stopped by user", "UserInitiated"
                )
        return ActionResult({"task": task})

    def _describe_tasks(
        self, response: EC2ContainerServiceResponse, original: Callable[..., ActionResult]
    ) -> ActionResult:
        references = response._get_param("tasks") or []
        if len(references) > 100:
            raise InvalidParameterException("Tasks cannot have more than 100 elements.")
        result = original(response)  # validates the cluster and the list; handles include
        backend = response.ecs_backend
        cluster = backend._get_cluster(response._get_param("cluster", "default"))
        tasks: list[Any] = []
        failures: list[dict[str, str]] = []
        for reference in references:
            task = self._find_task(backend, cluster.name, reference)
            if task is None:
                failures.append({"arn": reference, "reason": "MISSING"})
            elif task not in tasks:
                tasks.append(task)
        body: dict[str, Any] = result.result  # type: ignore[assignment]
        body["tasks"] = tasks
        body["failures"] = failures
        return result
