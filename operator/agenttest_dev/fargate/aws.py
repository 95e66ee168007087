"""The AWS side: a moto server on loopback, provisioned as the CDK app provisions AWS."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from moto.moto_api._internal.models import moto_api_backend
from moto.server import ThreadedMotoServer

logger = logging.getLogger("agenttest_dev.fargate")

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"

# ECS's limit on the JSON of RunTask's containerOverrides.
MAX_CONTAINER_OVERRIDES = 8192

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


def _now() -> datetime:
    return datetime.now(UTC)


def task_id(task_arn: str) -> str:
    """The last segment of a task ARN (what awslogs puts in the stream name)."""
    return task_arn.rsplit("/", 1)[-1]


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

    def provision(self) -> None:
        """Create what the CDK app creates, through the public APIs."""
        self._provision_network()
        self._provision_roles_and_logs()
        self._provision_ecs()
        self.client("s3").create_bucket(Bucket=self.bucket)

    def _provision_network(self) -> None:
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

    def _provision_roles_and_logs(self) -> None:
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

    def _provision_ecs(self) -> None:
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
