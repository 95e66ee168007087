"""AWS for the Fargate backend's tests: a real moto server on loopback, and Fargate itself.

`AwsEnvironment` starts moto's threaded HTTP server in this process and
provisions (over HTTP, with boto3) what the CDK app in infrastructure/ would:
a VPC with two subnets and a security group, the ECS cluster ``agenttest``
with the FARGATE and FARGATE_SPOT capacity providers, the task definition
``agenttest-runner``, its IAM roles, the log group ``/agenttest/runner`` and
the S3 bucket ``agenttest-packages``. Anything that talks to `endpoint`
(`env()` gives a process what it needs) sees plain AWS APIs.

`FargatePlayer` does what Fargate and the awslogs driver do. A background
thread polls moto's ECS backend (in process) for new tasks on the cluster,
moves each through PROVISIONING -> PENDING -> RUNNING, runs the container's
command as a local process (own process group, scrubbed environment, fresh
directories), ships every output line to the CloudWatch Logs stream
``<prefix>/<container>/<task-id>``, and marks the task STOPPED with the exit
code when the process ends, or kills it when someone calls StopTask.

The player also makes moto behave like ECS where moto does not (each fix is a
patch of a moto class, undone by `FargatePlayer.stop()`):

* RunTask returns tasks in PROVISIONING, honours ``clientToken`` (same token,
  same cluster -> the same tasks), rejects container overrides over 8192
  characters and task sizes Fargate does not offer, as ECS does;
* StopTask only asks for the stop (desiredStatus STOPPED, stopCode
  UserInitiated, the caller's reason); lastStatus follows when the process is
  gone. Unknown tasks get InvalidParameterException instead of a 500;
* DescribeTasks looks in the given cluster only and reports unknown tasks as
  ``failures: [{arn, reason: MISSING}]``;
* ListTasks without ``desiredStatus`` lists only tasks whose desired status is
  RUNNING (ECS's default filter);
* moto's own clock-less status progression (every DescribeTasks would advance
  a task towards STOPPED) is switched off for the tasks the player owns.

Injection hooks emulate AWS's bad days: `fail_next_run_tasks` (no capacity),
`throttle_log_reads` (GetLogEvents ThrottlingException), `fail_next_task_starts`
(TaskFailedToStart), `interrupt` (Spot interruption); `count_calls` counts the
API calls clients made over HTTP.

A player plays the tasks created after its `start()`; tasks already on the
cluster (an earlier player's) are left alone, so one AwsEnvironment can serve
a module of tests, each with its own player. Only one AwsEnvironment (and one
FargatePlayer) may run at a time in a process: moto keeps its state in
process-wide backends, and the patches are process-wide too.

Typical use::

    with AwsEnvironment() as aws, FargatePlayer(aws) as player:
        operator = subprocess.Popen([...], env={**os.environ, **aws.env()})
        ...
        (task_arn,) = player.tasks()
        player.wait_all_stopped(timeout=60)
        assert player.output(task_arn)[-1].startswith("::agenttest:: ")
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from moto.backends import get_backend
from moto.core.responses import ActionResult, BaseResponse
from moto.ecs.exceptions import InvalidParameterException
from moto.ecs.models import EC2ContainerServiceBackend
from moto.ecs.responses import EC2ContainerServiceResponse
from moto.logs.exceptions import LogsClientError
from moto.logs.responses import LogsResponse
from moto.moto_api._internal.models import moto_api_backend
from moto.server import ThreadedMotoServer

from containershim import container_command, kill_tree

logger = logging.getLogger(__name__)

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"

# The docker default PATH inside a container, after the venv's bin directory
# (the runner image's own Python comes first on its PATH, too).
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# ECS's limit on the JSON of RunTask's containerOverrides.
MAX_CONTAINER_OVERRIDES = 8192
# CloudWatch Logs: one event holds at most 256 KiB including 26 bytes of overhead;
# one PutLogEvents call at most 10,000 events and 1 MiB (messages + 26 bytes each).
MAX_EVENT_BYTES = 262144 - 26
MAX_BATCH_EVENTS = 10000
MAX_BATCH_BYTES = 1048576
EVENT_OVERHEAD = 26

# Fargate's task sizes: CPU units -> memory (MiB) offered with them.
FARGATE_SIZES: dict[int, frozenset[int]] = {
    256: frozenset((512, 1024, 2048)),
    512: frozenset(range(1024, 4097, 1024)),
    1024: frozenset(range(2048, 8193, 1024)),
    2048: frozenset(range(4096, 16385, 1024)),
    4096: frozenset(range(8192, 30721, 1024)),
    8192: frozenset(range(16384, 61441, 4096)),
    16384: frozenset(range(32768, 122881, 8192)),
}
FARGATE_PROVIDERS = ("FARGATE", "FARGATE_SPOT")


@dataclass(frozen=True)
class Image:
    """What the fixture knows of a container image: its ENTRYPOINT, CMD and ENV."""

    entrypoint: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()


# Images the player can "pull", by repository (registry host and tag stripped).
# The runner image's ENTRYPOINT is `python -m agenttest.runner`; here, this
# interpreter, which has agenttest installed.
DEFAULT_IMAGES: dict[str, Image] = {
    "agenttest/runner": Image(
        entrypoint=(sys.executable, "-m", "agenttest.runner"),
        # runner.Dockerfile's ENV (HOME and TMPDIR are the task's own directories).
        environment=(
            ("PYTHONDONTWRITEBYTECODE", "1"),
            ("PIP_NO_CACHE_DIR", "1"),
            ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
        ),
    ),
}


def _now() -> datetime:
    return datetime.now(UTC)


def task_id(task_arn: str) -> str:
    """The last segment of a task ARN (what awslogs puts in the stream name)."""
    return task_arn.rsplit("/", 1)[-1]


def repository_of(image: str) -> str:
    """``registry.example:5000/a/b:tag`` or ``a/b@sha256:...`` -> ``a/b``."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    if name.rfind(":") > last_slash:
        name = name[: name.rfind(":")]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        name = rest
    return name.removeprefix("library/")


# --------------------------------------------------------------------------- AWS side

_active_lock = threading.Lock()
_active: dict[str, object] = {}


def _claim(kind: str, owner: object) -> None:
    with _active_lock:
        if kind in _active:
            raise RuntimeError(
                f"another {kind} is running in this process; moto's state is process-wide"
            )
        _active[kind] = owner


def _release(kind: str, owner: object) -> None:
    with _active_lock:
        if _active.get(kind) is owner:
            del _active[kind]


def reset_moto() -> None:
    """Forget every resource in every moto backend of this process."""
    moto_api_backend.reset()


class AwsEnvironment:
    """A moto server on loopback, provisioned like the CDK app provisions AWS.

    Use as a context manager (or `start()` / `stop()`); attributes are set by
    `start()`.
    """

    account_id = ACCOUNT_ID
    region = REGION
    access_key_id = "testing"
    secret_access_key = "testing"

    cluster = "agenttest"
    family = "agenttest-runner"
    container = "runner"
    image = "agenttest/runner:0.1.0"
    log_group = "/agenttest/runner"
    log_stream_prefix = "agenttest"
    bucket = "agenttest-packages"
    vpc_cidr = "10.80.0.0/16"

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.endpoint = ""
        self.vpc_id = ""
        self.subnets: list[str] = []
        self.security_group = ""
        self.cluster_arn = ""
        self.task_definition_arn = ""
        self.execution_role_arn = ""
        self.task_role_arn = ""
        # ECS's memory of RunTask clientTokens: (cluster, token) -> task ARNs.
        # AWS-side state, so it outlives any one FargatePlayer.
        self.client_tokens: dict[tuple[str, str], list[str]] = {}
        self._server: ThreadedMotoServer | None = None
        self._werkzeug_level: int | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> AwsEnvironment:
        _claim("AwsEnvironment", self)
        try:
            reset_moto()
            # werkzeug logs every request at INFO; keep warnings and errors only.
            werkzeug = logging.getLogger("werkzeug")
            self._werkzeug_level = werkzeug.level
            werkzeug.setLevel(logging.WARNING)
            # Port 0: the OS picks a free port atomically; the server reports it.
            self._server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
            self._server.start()
            host, port = self._server.get_host_and_port()
            self.endpoint = f"http://{host}:{port}"
            self.provision()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._werkzeug_level is not None:
            logging.getLogger("werkzeug").setLevel(self._werkzeug_level)
            self._werkzeug_level = None
        reset_moto()
        self.client_tokens.clear()
        _release("AwsEnvironment", self)

    def __enter__(self) -> AwsEnvironment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients --------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment variables a process needs to use this AWS."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def client(self, service: str, config: Config | None = None) -> Any:
        """A boto3 client for `service`, talking to the moto server over HTTP."""
        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=config,
        )

    def network_configuration(self, assign_public_ip: bool = False) -> dict[str, Any]:
        """RunTask's ``networkConfiguration`` for the provisioned subnets."""
        return {
            "awsvpcConfiguration": {
                "subnets": list(self.subnets),
                "securityGroups": [self.security_group],
                "assignPublicIp": "ENABLED" if assign_public_ip else "DISABLED",
            }
        }

    def log_stream(self, task_arn: str) -> str:
        """The awslogs stream of the runner container of a task."""
        return f"{self.log_stream_prefix}/{self.container}/{task_id(task_arn)}"

    # -- provisioning ----------------------------------------------------------

    def provision(self) -> None:
        """Create what the CDK app creates, through the public APIs."""
        ec2 = self.client("ec2")
        self.vpc_id = ec2.create_vpc(CidrBlock=self.vpc_cidr)["Vpc"]["VpcId"]
        # ec2.Vpc turns both on; ENIs get a private DNS name only with hostnames.
        ec2.modify_vpc_attribute(VpcId=self.vpc_id, EnableDnsSupport={"Value": True})
        ec2.modify_vpc_attribute(VpcId=self.vpc_id, EnableDnsHostnames={"Value": True})
        self.subnets = [
            ec2.create_subnet(
                VpcId=self.vpc_id,
                CidrBlock=f"10.80.{index * 64}.0/18",
                AvailabilityZone=f"{self.region}{zone}",
            )["Subnet"]["SubnetId"]
            for index, zone in enumerate("ab")
        ]
        self.security_group = ec2.create_security_group(
            GroupName="agenttest-runner",
            Description="agenttest runner tasks",
            VpcId=self.vpc_id,
        )["GroupId"]

        iam = self.client("iam")
        ecs_trust = json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        )
        self.execution_role_arn = iam.create_role(
            RoleName="agenttest-runner-execution", AssumeRolePolicyDocument=ecs_trust
        )["Role"]["Arn"]
        self.task_role_arn = iam.create_role(
            RoleName="agenttest-runner-task", AssumeRolePolicyDocument=ecs_trust
        )["Role"]["Arn"]

        logs = self.client("logs")
        logs.create_log_group(logGroupName=self.log_group)
        logs.put_retention_policy(logGroupName=self.log_group, retentionInDays=7)

        ecs = self.client("ecs")
        self.cluster_arn = ecs.create_cluster(
            clusterName=self.cluster, capacityProviders=list(FARGATE_PROVIDERS)
        )["cluster"]["clusterArn"]
        self.task_definition_arn = ecs.register_task_definition(
            family=self.family,
            networkMode="awsvpc",
            requiresCompatibilities=["FARGATE"],
            cpu="1024",
            memory="2048",
            executionRoleArn=self.execution_role_arn,
            taskRoleArn=self.task_role_arn,
            runtimePlatform={"operatingSystemFamily": "LINUX", "cpuArchitecture": "X86_64"},
            containerDefinitions=[
                {
                    "name": self.container,
                    "image": self.image,
                    "essential": True,
                    # No command: the image's ENTRYPOINT (python -m agenttest.runner).
                    "readonlyRootFilesystem": True,
                    "user": "10001",
                    "logConfiguration": {
                        "logDriver": "awslogs",
                        "options": {
                            "awslogs-group": self.log_group,
                            "awslogs-region": self.region,
                            "awslogs-stream-prefix": self.log_stream_prefix,
                        },
                    },
                }
            ],
        )["taskDefinition"]["taskDefinitionArn"]

        self.client("s3").create_bucket(Bucket=self.bucket)


# --------------------------------------------------------------------------- the player


@dataclass
class _Run:
    """One task the player has seen, and what it did with it."""

    arn: str
    task: Any  # moto's ecs Task
    directory: Path
    stream: str | None = None
    output: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    process: Any = None  # subprocess.Popen[bytes]
    killed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


@dataclass
class _Failure:
    reason: str
    arn: str | None
    capacity_provider: str | None


class _LogShipper:
    """The awslogs driver for one container: lines in, PutLogEvents batches out."""

    def __init__(self, player: FargatePlayer, run: _Run, group: str | None) -> None:
        self.player = player
        self.run = run
        self.group = group
        self.lines: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.pending: list[dict[str, Any]] = []
        self.pending_bytes = 0
        self.oldest = 0.0
        self.last_timestamp = 0

    def reader(self, stream: Any) -> threading.Thread:
        def read() -> None:
            with stream:
                for raw in iter(stream.readline, b""):
                    self.lines.put((int(time.time() * 1000), raw))

        thread = threading.Thread(target=read, name=f"awslogs-{task_id(self.run.arn)}", daemon=True)
        thread.start()
        return thread

    def _events(self, raw: bytes) -> Iterator[str]:
        """The events of one line: no newline; empty lines dropped; long ones split."""
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        while raw:
            chunk = raw[:MAX_EVENT_BYTES]
            # Do not cut a UTF-8 sequence in two.
            while len(chunk) < len(raw) and chunk and (raw[len(chunk)] & 0xC0) == 0x80:
                chunk = chunk[:-1]
            raw = raw[len(chunk) :]
            yield chunk.decode("utf-8", errors="replace")

    def pump(self, final: bool = False) -> None:
        """Move read lines into the batch; send it when due (or when `final`)."""
        while True:
            try:
                timestamp, raw = self.lines.get_nowait()
            except queue.Empty:
                break
            for message in self._events(raw):
                size = len(message.encode()) + EVENT_OVERHEAD
                if (
                    len(self.pending) >= MAX_BATCH_EVENTS
                    or self.pending_bytes + size > MAX_BATCH_BYTES
                ):
                    self.flush()
                # One stream's events must be in chronological order.
                self.last_timestamp = max(self.last_timestamp, timestamp)
                if not self.pending:
                    self.oldest = time.monotonic()
                self.pending.append({"timestamp": self.last_timestamp, "message": message})
                self.pending_bytes += size
        if self.pending and (final or time.monotonic() - self.oldest >= self.player.flush_interval):
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        if self.group is not None and self.run.stream is not None:
            logs = get_backend("logs")[ACCOUNT_ID][REGION]
            logs.put_log_events(self.group, self.run.stream, batch)
        with self.player._lock:
            self.run.output.extend(event["message"] for event in batch)


class FargatePlayer:
    """Plays Fargate (and the awslogs driver) for the tasks of one cluster.

    `stop_timeout` is the grace between SIGTERM and SIGKILL on StopTask (ECS's
    default is 30 s); `transition_seconds` is how long a task stays in each of
    PROVISIONING and PENDING, so that a watcher can see them.
    """

    def __init__(
        self,
        aws: AwsEnvironment,
        *,
        cluster: str | None = None,
        images: dict[str, Image] | None = None,
        stop_timeout: float = 2.0,
        poll_interval: float = 0.02,
        flush_interval: float = 0.05,
        transition_seconds: float = 0.02,
    ) -> None:
        self.aws = aws
        self.cluster = cluster or aws.cluster
        self.images = dict(DEFAULT_IMAGES if images is None else images)
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self.flush_interval = flush_interval
        self.transition_seconds = transition_seconds
        self._lock = threading.RLock()
        self._runs: dict[str, _Run] = {}
        self._order: list[str] = []
        self._tokens = aws.client_tokens
        self._run_failures: list[_Failure] = []
        self._start_failures: list[str] = []
        self._log_throttles = 0
        self._calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self._errors: list[BaseException] = []
        self._patches: list[tuple[type, str, Any]] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._base: Path | None = None
        self._ignored: set[str] = set()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> FargatePlayer:
        _claim("FargatePlayer", self)
        try:
            self._base = Path(tempfile.mkdtemp(prefix="fargate-player-"))
            # Tasks from before (an earlier player's) are history, not work.
            self._ignored = set(self._cluster_tasks())
            self._install_patches()
            self._stopping.clear()
            self._thread = threading.Thread(target=self._poll, name="fargate-player", daemon=True)
            self._thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill what still runs (as StopTask would), undo the patches, clean up.

        Raises if the player itself failed while playing (a fixture bug must
        not pass silently).
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout=self.stop_timeout + 15)
        self._restore_patches()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
        _release("FargatePlayer", self)
        if self._errors:
            raise RuntimeError(f"the Fargate player failed: {self._errors!r}") from self._errors[0]

    def __enter__(self) -> FargatePlayer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests ask -------------------------------------------------------

    def tasks(self) -> list[str]:
        """ARNs of every task the player has seen on its cluster, in order."""
        with self._lock:
            return list(self._order)

    def output(self, task_arn: str) -> list[str]:
        """Every log event the container produced, as sent to CloudWatch Logs.

        One entry per output line (stdout and stderr), without the newline; empty
        lines are dropped and lines over 256 KiB split, as the awslogs driver does.
        """
        with self._lock:
            return list(self._run(task_arn).output)

    def killed(self, task_arn: str) -> bool:
        """True if the player signalled the task's process (StopTask, interruption)."""
        with self._lock:
            return self._run(task_arn).killed

    def environment(self, task_arn: str) -> dict[str, str]:
        """The environment the task's process was started with."""
        with self._lock:
            return dict(self._run(task_arn).environment)

    def pid(self, task_arn: str) -> int | None:
        """The pid (and process group id) of the task's process, once started."""
        with self._lock:
            process = self._run(task_arn).process
            return None if process is None else int(process.pid)

    def command(self, task_arn: str) -> list[str]:
        """The argv the task's process was started with."""
        with self._lock:
            return list(self._run(task_arn).argv)

    def wait_for_tasks(self, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Wait until the player has seen at least `count` tasks; return all ARNs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.tasks()
            if len(seen) >= count:
                return seen
            time.sleep(self.poll_interval)
        raise TimeoutError(f"saw {len(self.tasks())} tasks, not {count}, in {timeout}s")

    def wait_stopped(self, task_arn: str, timeout: float = 60.0) -> None:
        """Wait until the player has finished with a task (it is STOPPED)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                run = self._runs.get(task_arn)
            if run is not None and run.done.wait(self.poll_interval):
                return
            if run is None:
                time.sleep(self.poll_interval)
        raise TimeoutError(f"task {task_arn} not STOPPED after {timeout}s")

    def wait_all_stopped(self, timeout: float = 60.0) -> None:
        """Wait until every task on the cluster is STOPPED and its logs are flushed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            arns = set(self._cluster_tasks()) - self._ignored
            with self._lock:
                runs = [self._runs.get(arn) for arn in arns]
            if all(run is not None and run.done.is_set() for run in runs):
                return
            time.sleep(self.poll_interval)
        raise TimeoutError(f"tasks still running after {timeout}s: {self.tasks()}")

    def count_calls(self, service: str, operation: str) -> int:
        """How many `operation` requests (e.g. "logs", "GetLogEvents") came over HTTP.

        Counts every request moto received, including throttled or failed ones;
        the player's own log writes do not go over HTTP and are not counted.
        """
        with self._lock:
            return self._calls[(service, operation)]

    def calls(self) -> dict[tuple[str, str], int]:
        """All HTTP calls so far, by (service, operation)."""
        with self._lock:
            return dict(self._calls)

    # -- injection hooks --------------------------------------------------------

    def fail_next_run_tasks(
        self,
        n: int = 1,
        reason: str = "RESOURCE:FARGATE",
        *,
        arn: str | None = None,
        capacity_provider: str | None = None,
    ) -> None:
        """The next `n` RunTask calls start nothing and answer ``failures``.

        That is how ECS answers when Fargate has no capacity: HTTP 200,
        ``tasks: []``, ``failures: [{"reason": ...}]``. Real capacity failures
        carry no ``arn`` (pass `arn` to add one). With `capacity_provider`
        ("FARGATE" also matches launchType FARGATE, or "FARGATE_SPOT"), only
        RunTask calls placing on that provider fail. A replay of a clientToken
        that already started a task still returns that task.
        """
        with self._lock:
            self._run_failures += [_Failure(reason, arn, capacity_provider)] * n

    def fail_next_task_starts(
        self,
        n: int = 1,
        reason: str = "ResourceInitializationError: failed to configure ENI: timed out",
    ) -> None:
        """The next `n` tasks the player picks up stop before their container starts.

        ``stopCode`` TaskFailedToStart, the given ``stoppedReason``, no exit code:
        what ECS reports when Fargate cannot start a task it accepted.
        """
        with self._lock:
            self._start_failures += [reason] * n

    def interrupt(
        self,
        task_arn: str,
        reason: str = "Your Spot Task was interrupted.",
        stop_code: str = "SpotInterruption",
    ) -> None:
        """Stop a task as AWS would (default: a Spot interruption): SIGTERM, then SIGKILL."""
        with self._lock:
            task = self._run(task_arn).task
            if task.desired_status != "STOPPED":
                self._request_stop(task, reason, stop_code)

    def throttle_log_reads(self, n: int = 1) -> None:
        """The next `n` GetLogEvents calls fail with ThrottlingException ("Rate exceeded").

        HTTP 400 with ``__type`` ThrottlingException, as CloudWatch Logs answers.
        boto3 retries throttling by itself (legacy mode: up to 4 retries; standard:
        2), so one client call consumes several of the `n`.
        """
        with self._lock:
            self._log_throttles += n

    # -- internals: the poll loop ---------------------------------------------

    def _cluster_tasks(self) -> dict[str, Any]:
        backend = get_backend("ecs")[ACCOUNT_ID][REGION]
        return dict(backend.tasks.get(self.cluster, {}))

    def _run(self, task_arn: str) -> _Run:
        try:
            return self._runs[task_arn]
        except KeyError:
            raise KeyError(f"the Fargate player has not seen task {task_arn}") from None

    def _poll(self) -> None:
        while not self._stopping.wait(self.poll_interval):
            try:
                backend = get_backend("ecs")[ACCOUNT_ID][REGION]
                try:
                    found = list(backend.tasks.get(self.cluster, {}).items())
                except RuntimeError:  # RunTask added one while we looked: next tick
                    continue
                for arn, task in found:
                    if arn not in self._runs and arn not in self._ignored:
                        self._adopt(arn, task)
            except Exception as error:  # keep playing; report at stop()
                logger.exception("Fargate player poll failed")
                self._errors.append(error)

    def _adopt(self, arn: str, task: Any) -> None:
        assert self._base is not None
        directory = self._base / task_id(arn)
        run = _Run(arn=arn, task=task, directory=directory)
        with self._lock:
            self._runs[arn] = run
            self._order.append(arn)
            # Tasks not created through the patched RunTask (StartTask, ...).
            if not hasattr(task, "version"):
                self._prepare_task(get_backend("ecs")[ACCOUNT_ID][REGION], task)
        run.thread = threading.Thread(
            target=self._play_safely, args=(run,), name=f"fargate-{task_id(arn)}", daemon=True
        )
        run.thread.start()

    def _play_safely(self, run: _Run) -> None:
        try:
            self._play(run)
        except Exception as error:
            logger.exception("Fargate player failed on %s", run.arn)
            self._errors.append(error)
            with contextlib.suppress(Exception):
                self._finish(run, None, "TaskFailedToStart", f"fixture error: {error}")
        finally:
            run.done.set()

    # -- internals: one task ---------------------------------------------------

    def _set_status(self, task: Any, status: str) -> None:
        with self._lock:
            task.version = getattr(task, "version", 0) + 1
            task.last_status = status

    def _stop_requested(self, task: Any) -> bool:
        return bool(task.desired_status == "STOPPED")

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _play(self, run: _Run) -> None:
        task = run.task
        backend = get_backend("ecs")[ACCOUNT_ID][REGION]
        self._wait(self.transition_seconds)
        if self._aborted_before_start(run):
            return
        with self._lock:
            start_failure = self._start_failures.pop(0) if self._start_failures else None
            now = _now()
            task.pull_started_at = now
            task.connectivity = "CONNECTED"
            task.connectivity_at = now
        self._set_status(task, "PENDING")
        if start_failure is not None:
            self._wait(self.transition_seconds)
            self._finish(run, exit_code=None, code="TaskFailedToStart", reason=start_failure)
            return

        definition = backend.describe_task_definition(task.task_definition_arn)
        # moto models one container per task (the first of the task definition).
        container_def: dict[str, Any] = definition.container_definitions[0]
        name = container_def["name"]
        override: dict[str, Any] = next(
            (
                o
                for o in (task.overrides or {}).get("containerOverrides") or []
                if o.get("name") == name
            ),
            {},
        )
        image = self._image(container_def.get("image", ""))
        if image is None:
            reference = container_def.get("image", "")
            pull_error = (
                "CannotPullContainerError: pull image manifest has been retried 7 time(s): "
                f"failed to resolve ref docker.io/{reference}: not found"
            )
            self._wait(self.transition_seconds)
            self._finish(
                run,
                exit_code=None,
                code="TaskFailedToStart",
                reason=pull_error,
                container_reason=pull_error,
            )
            return

        # The awslogs driver: the stream exists before the container starts.
        group = None
        log_config = container_def.get("logConfiguration") or {}
        if log_config.get("logDriver") == "awslogs":
            options = log_config.get("options") or {}
            group = options.get("awslogs-group")
            prefix = options.get("awslogs-stream-prefix")
            run.stream = f"{prefix}/{name}/{task_id(run.arn)}" if prefix else task_id(run.arn)
            logs = get_backend("logs")[ACCOUNT_ID][REGION]
            if group not in logs.groups:
                self._finish(
                    run,
                    exit_code=None,
                    code="TaskFailedToStart",
                    reason=(
                        "CannotStartContainerError: failed to initialize logging driver: "
                        "ResourceNotFoundException: The specified log group does not exist."
                    ),
                )
                return
            logs.create_log_stream(group, run.stream)

        entrypoint = list(container_def.get("entryPoint") or image.entrypoint)
        if "command" in override:
            command = list(override["command"] or [])
        else:
            command = list(container_def.get("command") or image.command)
        argv = entrypoint + command
        environment = self._environment(run, image, container_def, override)
        with self._lock:
            run.argv = argv
            run.environment = environment
        self._wait(self.transition_seconds)
        if self._aborted_before_start(run):
            return

        try:
            process = subprocess.Popen(
                container_command(argv, environment),
                env=environment,
                cwd=run.directory / "work",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:
            self._finish(
                run,
                exit_code=None,
                code="TaskFailedToStart",
                reason=f"CannotStartContainerError: {error.strerror}: {argv[:1]}",
                container_reason=f"CannotStartContainerError: {error.strerror}",
            )
            return
        run.process = process
        shipper = _LogShipper(self, run, group)
        readers = [shipper.reader(process.stdout), shipper.reader(process.stderr)]
        with self._lock:
            now = _now()
            task.pull_stopped_at = now
            task.started_at = now
            for container in task.containers:
                container.runtime_id = f"{task_id(run.arn)}-{uuid.uuid4().int % 10**10:010d}"
                container.image_digest = "sha256:" + uuid.uuid5(uuid.NAMESPACE_URL, argv[0]).hex * 2
                container.last_status = "RUNNING"
        self._set_status(task, "RUNNING")

        term_at: float | None = None
        killed_hard = False
        while process.poll() is None:
            shipper.pump()
            if term_at is None and (self._stop_requested(task) or self._stopping.is_set()):
                with self._lock:
                    if not self._stop_requested(task):  # the player is shutting down
                        self._request_stop(task, "Fargate player stopped", "UserInitiated")
                    run.killed = True
                self._set_status(task, "STOPPING")
                self._signal(process.pid, signal.SIGTERM)
                term_at = time.monotonic()
            elif (
                term_at is not None
                and not killed_hard
                and time.monotonic() - term_at >= self.stop_timeout
            ):
                self._signal(process.pid, signal.SIGKILL)
                killed_hard = True
            time.sleep(self.poll_interval)

        # The container is gone: so is everything else that ran in it.
        self._signal(process.pid, signal.SIGKILL)
        for reader in readers:
            reader.join(timeout=5)
        shipper.pump(final=True)
        code = process.returncode
        exit_code = 128 - code if code < 0 else code
        self._finish(
            run,
            exit_code=exit_code,
            code="EssentialContainerExited",
            reason="Essential container in task exited",
        )

    def _aborted_before_start(self, run: _Run) -> bool:
        """StopTask (or the player's shutdown) before the container started."""
        if not self._stop_requested(run.task) and not self._stopping.is_set():
            return False
        if not self._stop_requested(run.task):
            self._request_stop(run.task, "Fargate player stopped", "UserInitiated")
        self._finish(run, exit_code=None, code="UserInitiated", reason="Task stopped by user")
        return True

    @staticmethod
    def _signal(pgid: int, sig: signal.Signals) -> None:
        """SIGTERM the task's group; SIGKILL ends it whole, detached processes included."""
        if sig == signal.SIGKILL:
            kill_tree(pgid)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def _image(self, reference: str) -> Image | None:
        return self.images.get(repository_of(reference))

    def _environment(
        self, run: _Run, image: Image, container_def: dict[str, Any], override: dict[str, Any]
    ) -> dict[str, str]:
        """The container's environment: nothing of this process's own."""
        home = run.directory / "home"
        work = run.directory / "work"
        scratch = run.directory / "tmp"
        for directory in (home, work, scratch):
            directory.mkdir(parents=True, exist_ok=True)
        environment = {
            "PATH": f"{Path(sys.executable).parent}:{CONTAINER_PATH}",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            # What the ECS agent adds to every Fargate container.
            "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
            "AWS_REGION": self.aws.region,
            # The task role's credentials (ECS hands them out through its endpoint).
            **self.aws.env(),
            **dict(image.environment),
        }
        for pair in container_def.get("environment") or []:
            environment[pair["name"]] = pair["value"]
        for pair in override.get("environment") or []:
            environment[pair["name"]] = pair["value"]
        # The container's filesystem is this task's directory, whatever the
        # task definition says HOME is (the CDK app's /tmp is a task volume).
        environment["HOME"] = str(home)
        environment["TMPDIR"] = str(scratch)
        return environment

    def _request_stop(self, task: Any, reason: str | None, stop_code: str) -> None:
        """What StopTask (or an interruption) does to a task: ask for STOPPED."""
        with self._lock:
            task.desired_status = "STOPPED"
            task.stop_code = stop_code
            task.stopped_reason = reason
            task.stopping_at = _now()
            task.version = getattr(task, "version", 0) + 1

    def _finish(
        self,
        run: _Run,
        exit_code: int | None,
        code: str,
        reason: str,
        container_reason: str | None = None,
    ) -> None:
        """The task is over: container stopped, task STOPPED (logs already flushed)."""
        task = run.task
        with self._lock:
            now = _now()
            for container in task.containers:
                container.exitCode = exit_code
                container.last_status = "STOPPED"
                if container_reason is not None:
                    container.reason = container_reason
            if task.desired_status != "STOPPED" or getattr(task, "stop_code", None) is None:
                # Not asked to stop: the task ended by itself (or failed to start).
                task.desired_status = "STOPPED"
                task.stop_code = code
                task.stopped_reason = reason
                task.stopping_at = now
            task.execution_stopped_at = now
        self._set_status(task, "DEPROVISIONING")
        with self._lock:
            task.stopped_at = _now()
        self._set_status(task, "STOPPED")

    # -- internals: moto patches -------------------------------------------------

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
        player = self
        ecs_response = EC2ContainerServiceResponse
        run_task = ecs_response.run_task
        describe_tasks = ecs_response.describe_tasks
        list_tasks = ecs_response.list_tasks
        get_log_events = LogsResponse.get_log_events
        setup_class = BaseResponse.setup_class
        calculate = EC2ContainerServiceBackend.__dict__[
            "_calculate_task_resource_requirements"
        ].__func__

        def patched_setup_class(self: BaseResponse, request: Any, *args: Any, **kw: Any) -> None:
            setup_class(self, request, *args, **kw)
            if getattr(self, "is_werkzeug_request", False):
                try:
                    action = str(self._get_action())
                except Exception:
                    action = "Unknown"
                with player._lock:
                    player._calls[(str(self.service_name), action)] += 1

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

        def patched_get_log_events(self: LogsResponse) -> str:
            with player._lock:
                throttled = player._log_throttles > 0
                if throttled:
                    player._log_throttles -= 1
            if throttled:
                raise LogsClientError("ThrottlingException", "Rate exceeded")
            return get_log_events(self)

        def patched_calculate(task_definition: Any) -> dict[str, Any]:
            # moto needs container-level memory; Fargate task definitions may set
            # memory on the task only (the CDK app does). Count it as 0 here.
            patched = copy.copy(task_definition)
            patched.container_definitions = [
                {**c, "memory": c.get("memory") or c.get("memoryReservation") or 0}
                for c in task_definition.container_definitions
            ]
            return calculate(patched)  # type: ignore[no-any-return]

        self._patch(BaseResponse, "setup_class", patched_setup_class)
        self._patch(ecs_response, "run_task", patched_run_task)
        self._patch(ecs_response, "stop_task", patched_stop_task)
        self._patch(ecs_response, "describe_tasks", patched_describe_tasks)
        self._patch(ecs_response, "list_tasks", patched_list_tasks)
        self._patch(LogsResponse, "get_log_events", patched_get_log_events)
        self._patch(
            EC2ContainerServiceBackend,
            "_calculate_task_resource_requirements",
            staticmethod(patched_calculate),
        )

    # -- internals: ECS API behaviour --------------------------------------------

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


_MISSING = object()


@dataclass
class Fargate:
    """Both halves together, for a test's `with` statement or fixture."""

    aws: AwsEnvironment
    player: FargatePlayer


def start_fargate(**player_options: Any) -> Iterator[Fargate]:
    """A generator for a pytest fixture: ``yield from start_fargate()``."""
    with AwsEnvironment() as aws, FargatePlayer(aws, **player_options) as player:
        yield Fargate(aws, player)
