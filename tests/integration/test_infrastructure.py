"""The AWS CDK app in infrastructure/, synthesized for real (aws-cdk-lib + Node.js).

No AWS account is involved: the stack is environment-agnostic, so synthesis is
local. Each test reads the CloudFormation template and checks what the operator
and the security model depend on: the runner task's shape, the log group, the
least-privilege roles, the package bucket, the network, and the outputs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agenttest.backends.fargate import MAX_INLINE_CONFIG, FargateConfig, FargateExecutor
from agenttest.executions import ExecutionKey, LaunchRequest
from agenttest.runner.protocol import CONFIG_S3_ENV, RUN_KEY_ENV
from agenttest.settings import Settings, _parse

from support import ROOT

cdk = pytest.importorskip("aws_cdk", reason="aws-cdk-lib is not installed (dev extras)")
if shutil.which("node") is None:  # pragma: no cover - depends on the machine
    pytest.skip("CDK synthesis needs Node.js", allow_module_level=True)

from aws_cdk.assertions import Annotations, Match, Template  # noqa: E402

INFRA = ROOT / "infrastructure"
sys.path.insert(0, str(INFRA))

from agenttest_infra import AgentTestInfraStack, InfraConfig  # noqa: E402

OIDC_ISSUER = "oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF"
OIDC_ARN = f"arn:aws:iam::123456789012:oidc-provider/{OIDC_ISSUER}"
MODELS = ["anthropic.claude-3-haiku-20240307-v1:0", "amazon.nova-lite-v1:0"]
SUBJECT = "system:serviceaccount:agenttest-system:agenttest-operator"

# The fargate backend's AWS calls (test_fargate_backend_calls_match_the_operator_role
# records them), as IAM actions.
FARGATE_CALLS = {
    "ecs:ListTasks",
    "ecs:RunTask",
    "ecs:DescribeTasks",
    "ecs:StopTask",
    "logs:GetLogEvents",
    "s3:PutObject",  # harness configurations over 7 KiB
}
# What RunTask needs besides ecs:RunTask: tags at launch, and passing the roles.
RUN_TASK_IMPLIES = {"ecs:TagResource", "iam:PassRole"}
# The packager's (a later feature), under packagesPrefix.
PACKAGE_ACTIONS = {"s3:PutObject", "s3:GetObject", "s3:GetObjectAttributes", "s3:ListBucket"}
OPERATOR_ACTIONS = FARGATE_CALLS | RUN_TASK_IMPLIES | PACKAGE_ACTIONS
REQUIRED_OUTPUTS = {
    "ClusterName",
    "TaskDefinitionFamily",
    "ContainerName",
    "Subnets",
    "SecurityGroup",
    "LogGroup",
    "LogStreamPrefix",
    "PackageBucket",
    "ConfigBucket",
    "AssignPublicIp",
    "OperatorRoleArn",
}


class Synth:
    """One synthesized stack: the CDK Template and its JSON."""

    def __init__(self, **context: Any) -> None:
        app = cdk.App(context=context)
        self.stack = AgentTestInfraStack(app, "AgentTestInfra")
        self.template = Template.from_stack(self.stack)
        self.json: dict[str, Any] = self.template.to_json()
        self.resources: dict[str, dict[str, Any]] = self.json["Resources"]

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v["Type"] == kind}

    def one(self, kind: str) -> tuple[str, dict[str, Any]]:
        found = self.of_type(kind)
        assert len(found) == 1, f"expected one {kind}, found {sorted(found)}"
        return next(iter(found.items()))

    def role_id(self, ref: Any) -> str:
        assert set(ref) == {"Fn::GetAtt"} and ref["Fn::GetAtt"][1] == "Arn", ref
        return str(ref["Fn::GetAtt"][0])

    def statements_of_role(self, role_id: str) -> list[dict[str, Any]]:
        """Every permission statement the role gets: inline, attached, managed (asserted none)."""
        role = self.resources[role_id]["Properties"]
        assert "ManagedPolicyArns" not in role, f"{role_id} has managed policies"
        statements = [
            s for policy in role.get("Policies", []) for s in policy["PolicyDocument"]["Statement"]
        ]
        for policy in self.of_type("AWS::IAM::Policy").values():
            if {"Ref": role_id} in policy["Properties"].get("Roles", []):
                statements += policy["Properties"]["PolicyDocument"]["Statement"]
        for policy in self.of_type("AWS::IAM::ManagedPolicy").values():
            assert {"Ref": role_id} not in policy["Properties"].get("Roles", [])
        return statements


def render(value: Any) -> Any:
    """Fn::Join/Ref/GetAtt as readable strings: ${AWS::Region}, ${Bucket.Arn}."""
    if isinstance(value, list):
        return [render(item) for item in value]
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return "${" + value["Ref"] + "}"
        if set(value) == {"Fn::GetAtt"}:
            return "${" + ".".join(value["Fn::GetAtt"]) + "}"
        if set(value) == {"Fn::Join"}:
            separator, parts = value["Fn::Join"]
            return separator.join(str(render(part)) for part in parts)
        return {key: render(item) for key, item in value.items()}
    return value


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --------------------------------------------------------------------------- fixtures


def _context(provider: str, egress: str) -> dict[str, Any]:
    context: dict[str, Any] = {
        "modelProvider": provider,
        "egress": egress,
        "oidcProviderArn": OIDC_ARN,
    }
    if provider == "bedrock":
        context |= {"bedrockModelIds": ",".join(MODELS), "bedrockRegion": "eu-west-1"}
    return context


@pytest.fixture(scope="module")
def synths() -> Iterator[dict[tuple[str, str], Synth]]:
    yield {
        (provider, egress): Synth(**_context(provider, egress))
        for provider in ("ollama", "bedrock")
        for egress in ("endpoints", "nat")
    }


@pytest.fixture(
    params=[
        ("ollama", "endpoints"),
        ("ollama", "nat"),
        ("bedrock", "endpoints"),
        ("bedrock", "nat"),
    ],
    ids=lambda p: "-".join(p),
)
def synth(request: pytest.FixtureRequest, synths: dict[tuple[str, str], Synth]) -> Synth:
    return synths[request.param]


@pytest.fixture(scope="module")
def default_synth() -> Synth:
    """No context at all: the defaults must synthesize without an AWS account."""
    return Synth()


# --------------------------------------------------------------------------- cluster, task


def test_cluster_and_log_group(synth: Synth) -> None:
    synth.template.has_resource_properties("AWS::ECS::Cluster", {"ClusterName": "agenttest"})
    synth.template.has_resource_properties(
        "AWS::Logs::LogGroup", {"LogGroupName": "/agenttest/runner", "RetentionInDays": 7}
    )


def test_runner_task_definition(synth: Synth) -> None:
    log_group_id, _ = synth.one("AWS::Logs::LogGroup")
    _, task = synth.one("AWS::ECS::TaskDefinition")
    props = task["Properties"]
    assert props["Family"] == "agenttest-runner"
    assert props["RequiresCompatibilities"] == ["FARGATE"]
    assert props["NetworkMode"] == "awsvpc"
    assert (props["Cpu"], props["Memory"]) == ("1024", "2048")
    assert props["Volumes"] == [{"Name": "scratch"}]

    [container] = props["ContainerDefinitions"]
    assert container["Name"] == "runner"
    assert container["Image"] == "agenttest/runner:0.1.0"
    assert container["ReadonlyRootFilesystem"] is True
    assert container["User"] == "10001"
    assert container["MountPoints"] == [
        {"ContainerPath": "/tmp", "SourceVolume": "scratch", "ReadOnly": False}
    ]
    assert container["LinuxParameters"]["Capabilities"]["Drop"] == ["ALL"]
    logging = container["LogConfiguration"]
    assert logging["LogDriver"] == "awslogs"
    assert logging["Options"]["awslogs-group"] == {"Ref": log_group_id}
    assert logging["Options"]["awslogs-stream-prefix"] == "agenttest"


def test_execution_role_writes_only_the_runner_log_group(synth: Synth) -> None:
    log_group_id, _ = synth.one("AWS::Logs::LogGroup")
    _, task = synth.one("AWS::ECS::TaskDefinition")
    role_id = synth.role_id(task["Properties"]["ExecutionRoleArn"])
    statements = synth.statements_of_role(role_id)
    assert statements == [
        {
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Effect": "Allow",
            "Resource": {"Fn::GetAtt": [log_group_id, "Arn"]},
        }
    ]


def test_execution_role_pulls_only_the_configured_ecr_repository() -> None:
    synth = Synth(runnerEcrRepository="agenttest/runner", runnerImageTag="1.2.3")
    _, task = synth.one("AWS::ECS::TaskDefinition")
    [container] = task["Properties"]["ContainerDefinitions"]
    assert render(container["Image"]).endswith("/agenttest/runner:1.2.3")
    role_id = synth.role_id(task["Properties"]["ExecutionRoleArn"])
    statements = [render(s) for s in synth.statements_of_role(role_id)]
    pull = [s for s in statements if "ecr:BatchGetImage" in as_list(s["Action"])]
    assert len(pull) == 1
    assert as_list(pull[0]["Resource"]) == [
        "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/agenttest/runner"
    ]
    # ecr:GetAuthorizationToken has no resource type: AWS requires "*" for it.
    wildcard = [s for s in statements if "*" in as_list(s["Resource"])]
    assert [as_list(s["Action"]) for s in wildcard] == [["ecr:GetAuthorizationToken"]]


# --------------------------------------------------------------------------- task role


def _task_role_statements(synth: Synth) -> list[dict[str, Any]]:
    _, task = synth.one("AWS::ECS::TaskDefinition")
    return synth.statements_of_role(synth.role_id(task["Properties"]["TaskRoleArn"]))


def _reads_configs(synth: Synth, statement: dict[str, Any]) -> bool:
    """The one statement letting the runner read its large harness configuration."""
    bucket_id, _ = synth.one("AWS::S3::Bucket")
    return (
        statement["Effect"] == "Allow"
        and as_list(statement["Action"]) == ["s3:GetObject"]
        and render(statement["Resource"]) == f"${{{bucket_id}.Arn}}/test-artifacts/configs/*"
        and "Condition" not in statement
    )


def test_task_role_only_reads_runner_configs_for_ollama(
    synths: dict[tuple[str, str], Synth],
) -> None:
    for egress in ("endpoints", "nat"):
        synth = synths[("ollama", egress)]
        [statement] = _task_role_statements(synth)
        assert _reads_configs(synth, statement), statement


def test_task_role_invokes_exactly_the_configured_bedrock_models(
    synths: dict[tuple[str, str], Synth],
) -> None:
    for egress in ("endpoints", "nat"):
        synth = synths[("bedrock", egress)]
        configs, statement = _task_role_statements(synth)
        if _reads_configs(synth, statement):
            configs, statement = statement, configs
        assert _reads_configs(synth, configs), configs
        assert statement["Effect"] == "Allow"
        assert sorted(as_list(statement["Action"])) == [
            "bedrock:InvokeModel",
            "bedrock:InvokeModelWithResponseStream",
        ]
        assert sorted(as_list(statement["Resource"])) == sorted(
            f"arn:aws:bedrock:eu-west-1::foundation-model/{model}" for model in MODELS
        )
        assert "Condition" not in statement


def test_bedrock_models_default_to_the_stacks_region() -> None:
    synth = Synth(modelProvider="bedrock", bedrockModelIds=["amazon.nova-lite-v1:0"])
    [statement] = [
        s for s in _task_role_statements(synth) if "bedrock:InvokeModel" in as_list(s["Action"])
    ]
    assert render(statement["Resource"]) == (
        "arn:${AWS::Partition}:bedrock:${AWS::Region}::foundation-model/amazon.nova-lite-v1:0"
    )


def test_task_role_trusts_only_ecs_tasks_of_this_account(synth: Synth) -> None:
    _, task = synth.one("AWS::ECS::TaskDefinition")
    role = synth.resources[synth.role_id(task["Properties"]["TaskRoleArn"])]
    [trust] = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


# --------------------------------------------------------------------------- bucket


def test_package_bucket(synth: Synth) -> None:
    bucket_id, bucket = synth.one("AWS::S3::Bucket")
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    [encryption] = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert bucket["DeletionPolicy"] == "Retain"
    assert bucket["UpdateReplacePolicy"] == "Retain"
    expiring = [r for r in props["LifecycleConfiguration"]["Rules"] if "ExpirationInDays" in r]
    assert expiring == [
        {
            "Id": "expire-test-artifacts",
            "Prefix": "test-artifacts/",
            "ExpirationInDays": 7,
            "Status": "Enabled",
        }
    ]

    _, policy = synth.one("AWS::S3::BucketPolicy")
    assert policy["Properties"]["Bucket"] == {"Ref": bucket_id}
    denies = [
        s
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny"
        and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert len(denies) == 1
    assert denies[0]["Principal"] == {"AWS": "*"}
    assert render(denies[0]["Resource"]) == [f"${{{bucket_id}.Arn}}", f"${{{bucket_id}.Arn}}/*"]


# --------------------------------------------------------------------------- operator role


def _operator(synth: Synth) -> tuple[str, dict[str, Any]]:
    arn = synth.json["Outputs"]["OperatorRoleArn"]["Value"]
    role_id = synth.role_id(arn)
    return role_id, synth.resources[role_id]


def test_operator_role_trusts_the_service_account_through_irsa(synth: Synth) -> None:
    _, role = _operator(synth)
    [trust] = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Effect"] == "Allow"
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert trust["Principal"] == {"Federated": OIDC_ARN}
    assert trust["Condition"] == {
        "StringEquals": {
            f"{OIDC_ISSUER}:sub": SUBJECT,
            f"{OIDC_ISSUER}:aud": "sts.amazonaws.com",
        }
    }


def test_operator_role_is_least_privilege(synth: Synth) -> None:
    role_id, _ = _operator(synth)
    cluster_id, _ = synth.one("AWS::ECS::Cluster")
    bucket_id, _ = synth.one("AWS::S3::Bucket")
    _, task = synth.one("AWS::ECS::TaskDefinition")
    execution_role = task["Properties"]["ExecutionRoleArn"]
    task_role = task["Properties"]["TaskRoleArn"]
    statements = synth.statements_of_role(role_id)
    in_cluster = {"ArnEquals": {"ecs:cluster": {"Fn::GetAtt": [cluster_id, "Arn"]}}}

    actions = [a for s in statements for a in as_list(s["Action"])]
    assert set(actions) == OPERATOR_ACTIONS
    assert all("*" not in action for action in actions)
    assert all(s["Effect"] == "Allow" for s in statements)
    assert all("NotAction" not in s and "NotResource" not in s for s in statements)

    def only(action: str, resource_suffix: str = "") -> dict[str, Any]:
        [statement] = [
            s
            for s in statements
            if action in as_list(s["Action"])
            and str(render(s["Resource"])).endswith(resource_suffix)
        ]
        return statement

    # Resource "*" only where AWS has no resource to scope, and then conditioned.
    for statement in statements:
        if "*" in as_list(statement["Resource"]):
            assert as_list(statement["Action"]) == ["ecs:ListTasks"]
            assert as_list(statement["Resource"]) == ["*"]
            assert statement["Condition"] == in_cluster

    arn = "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}"
    run = only("ecs:RunTask")
    assert as_list(run["Action"]) == ["ecs:RunTask"]
    assert render(run["Resource"]) == f"{arn}:task-definition/agenttest-runner:*"
    assert run["Condition"] == in_cluster

    for action in ("ecs:StopTask", "ecs:DescribeTasks"):
        statement = only(action)
        assert render(statement["Resource"]) == f"{arn}:task/agenttest/*"
        assert statement["Condition"] == in_cluster

    tag = only("ecs:TagResource")
    assert render(tag["Resource"]) == f"{arn}:task/agenttest/*"
    assert tag["Condition"] == {"StringEquals": {"ecs:CreateAction": "RunTask"}}

    pass_role = only("iam:PassRole")
    assert as_list(pass_role["Action"]) == ["iam:PassRole"]
    assert sorted(map(json.dumps, as_list(pass_role["Resource"]))) == sorted(
        map(json.dumps, [execution_role, task_role])
    )
    assert pass_role["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
    }

    logs = only("logs:GetLogEvents")
    assert as_list(logs["Action"]) == ["logs:GetLogEvents"]
    group = (
        "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:/agenttest/runner"
    )
    assert sorted(render(as_list(logs["Resource"]))) == [group, f"{group}:*"]

    configs = only("s3:PutObject", "/test-artifacts/configs/*")
    assert as_list(configs["Action"]) == ["s3:PutObject"]
    assert render(configs["Resource"]) == f"${{{bucket_id}.Arn}}/test-artifacts/configs/*"
    assert "Condition" not in configs

    objects = only("s3:PutObject", "/packages/*")
    assert sorted(as_list(objects["Action"])) == [
        "s3:GetObject",
        "s3:GetObjectAttributes",
        "s3:PutObject",
    ]
    assert render(objects["Resource"]) == f"${{{bucket_id}.Arn}}/packages/*"
    listing = only("s3:ListBucket")
    assert render(listing["Resource"]) == f"${{{bucket_id}.Arn}}"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["packages/", "packages/*"]}}

    reports = only("s3:PutObject", "/reports/*")
    assert sorted(as_list(reports["Action"])) == ["s3:GetObject", "s3:PutObject"]
    assert render(reports["Resource"]) == f"${{{bucket_id}.Arn}}/reports/*"

    # Every S3 grant is one of those prefixes or the prefix-conditioned listing.
    s3_resources = {
        str(render(s["Resource"])) for s in statements if as_list(s["Action"])[0].startswith("s3:")
    }
    assert s3_resources == {
        f"${{{bucket_id}.Arn}}/test-artifacts/configs/*",
        f"${{{bucket_id}.Arn}}/packages/*",
        f"${{{bucket_id}.Arn}}/reports/*",
        f"${{{bucket_id}.Arn}}",
    }


class _RecordingClient:
    """A boto3 client stand-in that records each call and answers like ECS/Logs/S3."""

    def __init__(self, service: str, calls: list[tuple[str, str, dict[str, Any]]]) -> None:
        self.service = service
        self.calls = calls

    def __getattr__(self, operation: str) -> Any:
        def call(**kwargs: Any) -> dict[str, Any]:
            self.calls.append((self.service, operation, kwargs))
            task = "arn:aws:ecs:eu-west-1:123456789012:task/agenttest/0123456789abcdef"
            if operation == "list_tasks":
                return {"taskArns": []}
            if operation == "run_task":
                if "capacityProviderStrategy" in kwargs:  # no Spot capacity: fall back
                    return {"tasks": [], "failures": [{"reason": "Capacity is unavailable"}]}
                return {"tasks": [{"taskArn": task}]}
            if operation == "describe_tasks":
                stopped = any(op == "stop_task" for _, op, _ in self.calls)
                status = "STOPPED" if stopped else "RUNNING"
                return {"tasks": [{"lastStatus": status, "stopCode": "UserInitiated"}]}
            if operation == "get_log_events":
                return {"events": [{"message": "hello\n"}], "nextForwardToken": "f/1"}
            return {}

        return call


def test_fargate_backend_calls_match_the_operator_role(synth: Synth) -> None:
    """Drive the real fargate backend (Spot with fallback, a config over 7 KiB) and check
    that the operator role allows every AWS call it makes and nothing else."""
    calls: list[tuple[str, str, dict[str, Any]]] = []
    executor = FargateExecutor(
        FargateConfig(
            cluster="agenttest",
            task_definition="agenttest-runner",
            container="runner",
            subnets=("subnet-1",),
            security_groups=("sg-1",),
            assign_public_ip=False,
            use_spot=True,
            log_group="/agenttest/runner",
            log_stream_prefix="agenttest",
            config_bucket="the-bucket",
            stop_timeout=5.0,
        ),
        client_factory=lambda service: _RecordingClient(service, calls),
        min_log_interval=0.0,
    )
    request = LaunchRequest(
        key=ExecutionKey(uid="0123456789abcdef0123456789abcdef", attempt=1),
        namespace="team-a",
        test_name="big",
        runner_config={"agentSource": "x" * (MAX_INLINE_CONFIG + 1)},
        timeout_seconds=60,
    )

    async def drive() -> None:
        task = await executor.launch(request)
        await executor.observe(task)
        await executor.read_logs(task, None)
        await executor.stop(task, "test")

    asyncio.run(drive())

    def iam_action(service: str, operation: str) -> str:
        return f"{service}:" + "".join(part.title() for part in operation.split("_"))

    made = {iam_action(service, operation) for service, operation, _ in calls}
    assert made == FARGATE_CALLS

    role_id, _ = _operator(synth)
    allowed = {a for s in synth.statements_of_role(role_id) for a in as_list(s["Action"])}
    assert allowed == made | RUN_TASK_IMPLIES | PACKAGE_ACTIONS

    # The call shapes the role's resources and the cluster's capacity providers assume.
    runs = [kwargs for _, operation, kwargs in calls if operation == "run_task"]
    assert [r.get("capacityProviderStrategy", [{}])[0].get("capacityProvider") for r in runs] == [
        "FARGATE_SPOT",
        None,
    ]
    assert runs[1]["launchType"] == "FARGATE"
    assert all(r["cluster"] == "agenttest" and r["tags"] for r in runs)
    assert all(r["taskDefinition"] == "agenttest-runner" for r in runs)
    [put] = [kwargs for _, operation, kwargs in calls if operation == "put_object"]
    assert put["Key"].startswith("test-artifacts/configs/team-a/big/")
    assert put["ServerSideEncryption"] == "AES256"
    environment = runs[0]["overrides"]["containerOverrides"][0]["environment"]
    assert environment == [
        {"name": CONFIG_S3_ENV, "value": f"s3://the-bucket/{put['Key']}"},
        # The execution's signing key, for the judge's environment only.
        {"name": RUN_KEY_ENV, "value": request.run_key},
    ]
    executor._pool.shutdown(wait=True)


def test_cluster_offers_fargate_spot(synth: Synth) -> None:
    """AGENTTEST_FARGATE_USE_SPOT=true runs with capacity provider FARGATE_SPOT."""
    [association] = synth.of_type("AWS::ECS::ClusterCapacityProviderAssociations").values()
    assert set(association["Properties"]["CapacityProviders"]) == {"FARGATE", "FARGATE_SPOT"}


def test_operator_role_follows_namespace_service_account_and_prefix() -> None:
    synth = Synth(
        oidcProviderArn=OIDC_ARN,
        operatorNamespace="ops",
        operatorServiceAccount="tester",
        packagesPrefix="pkgs/",
    )
    role_id, role = _operator(synth)
    [trust] = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Condition"]["StringEquals"][f"{OIDC_ISSUER}:sub"] == (
        "system:serviceaccount:ops:tester"
    )
    resources = sorted(
        render(s["Resource"])
        for s in synth.statements_of_role(role_id)
        if "s3:PutObject" in as_list(s["Action"])
    )
    assert [r.rsplit("}", 1)[1] for r in resources] == [
        "/pkgs/*",
        "/reports/*",
        "/test-artifacts/configs/*",
    ]


def test_defaults_synthesize_with_a_placeholder_trust_and_a_warning(default_synth: Synth) -> None:
    _, role = _operator(default_synth)
    [trust] = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert "111122223333" in trust["Principal"]["Federated"]
    Annotations.from_stack(default_synth.stack).has_warning(
        "*", Match.string_like_regexp("oidcProviderArn is not set")
    )
    assert set(default_synth.json["Outputs"]) >= REQUIRED_OUTPUTS


# --------------------------------------------------------------------------- network


def _service(endpoint: dict[str, Any]) -> str:
    """com.amazonaws.${AWS::Region}.ecr.api -> ecr.api"""
    name = str(render(endpoint["Properties"]["ServiceName"]))
    return name.removeprefix("com.amazonaws.${AWS::Region}.")


def test_endpoints_mode_has_vpc_endpoints_and_no_internet_path(
    synths: dict[tuple[str, str], Synth],
) -> None:
    for provider in ("ollama", "bedrock"):
        synth = synths[(provider, "endpoints")]
        endpoints = synth.of_type("AWS::EC2::VPCEndpoint").values()
        interface = {
            _service(e) for e in endpoints if e["Properties"]["VpcEndpointType"] == "Interface"
        }
        gateway = {
            _service(e) for e in endpoints if e["Properties"]["VpcEndpointType"] == "Gateway"
        }
        expected = {"ecr.api", "ecr.dkr", "logs", "sts"}
        if provider == "bedrock":
            expected.add("bedrock-runtime")
        assert interface == expected
        assert gateway == {"s3"}
        for endpoint in endpoints:
            if endpoint["Properties"]["VpcEndpointType"] == "Interface":
                assert endpoint["Properties"]["PrivateDnsEnabled"] is True
        for kind in ("AWS::EC2::NatGateway", "AWS::EC2::InternetGateway", "AWS::EC2::EIP"):
            assert synth.of_type(kind) == {}, kind
        subnets = synth.of_type("AWS::EC2::Subnet").values()
        assert all(s["Properties"]["MapPublicIpOnLaunch"] is False for s in subnets)


def test_s3_endpoint_admits_image_layers_and_runner_configs_only(
    synths: dict[tuple[str, str], Synth],
) -> None:
    """With egress=endpoints the runner reaches its large configuration through the
    S3 gateway endpoint, and nothing else in S3 but ECR's layers."""
    for provider in ("ollama", "bedrock"):
        synth = synths[(provider, "endpoints")]
        bucket_id, _ = synth.one("AWS::S3::Bucket")
        [s3] = [
            e
            for e in synth.of_type("AWS::EC2::VPCEndpoint").values()
            if e["Properties"]["VpcEndpointType"] == "Gateway"
        ]
        statements = s3["Properties"]["PolicyDocument"]["Statement"]
        assert {
            (s["Effect"], json.dumps(s["Action"]), str(render(s["Resource"]))) for s in statements
        } == {
            (
                "Allow",
                '"s3:GetObject"',
                "arn:${AWS::Partition}:s3:::prod-${AWS::Region}-starport-layer-bucket/*",
            ),
            ("Allow", '"s3:GetObject"', f"${{{bucket_id}.Arn}}/test-artifacts/configs/*"),
        }


def test_endpoints_accept_https_from_runner_tasks_only(
    synths: dict[tuple[str, str], Synth],
) -> None:
    synth = synths[("ollama", "endpoints")]
    runner_sg = synth.json["Outputs"]["SecurityGroup"]["Value"]
    [ingress] = synth.of_type("AWS::EC2::SecurityGroupIngress").values()
    assert ingress["Properties"]["SourceSecurityGroupId"] == runner_sg
    assert (ingress["Properties"]["FromPort"], ingress["Properties"]["ToPort"]) == (443, 443)


def test_nat_mode_has_a_nat_gateway_and_no_endpoints(
    synths: dict[tuple[str, str], Synth],
) -> None:
    for provider in ("ollama", "bedrock"):
        synth = synths[(provider, "nat")]
        assert len(synth.of_type("AWS::EC2::NatGateway")) == 1
        assert synth.of_type("AWS::EC2::VPCEndpoint") == {}
        # Tasks go in the private subnets (routed through the NAT), never the public ones.
        subnet_refs = render(synth.json["Outputs"]["Subnets"]["Value"]).split(",")
        for ref in subnet_refs:
            subnet = synth.resources[ref.strip("${}")]
            assert subnet["Properties"]["MapPublicIpOnLaunch"] is False


def test_runner_security_group(synth: Synth, request: pytest.FixtureRequest) -> None:
    provider = request.node.callspec.params["synth"][0]
    sg_ref = synth.json["Outputs"]["SecurityGroup"]["Value"]
    sg_id = sg_ref["Fn::GetAtt"][0]
    props = synth.resources[sg_id]["Properties"]
    assert "SecurityGroupIngress" not in props
    for ingress in synth.of_type("AWS::EC2::SecurityGroupIngress").values():
        assert ingress["Properties"]["GroupId"] != sg_ref, "runner tasks accept no traffic"
    egress = {
        (rule["IpProtocol"], rule["FromPort"], rule["ToPort"], rule["CidrIp"])
        for rule in props["SecurityGroupEgress"]
    }
    expected = {("tcp", 443, 443, "0.0.0.0/0")}
    if provider == "ollama":
        expected.add(("tcp", 11434, 11434, "10.80.0.0/16"))
    assert egress == expected


def test_ollama_cidr_is_configurable() -> None:
    synth = Synth(ollamaCidr="10.99.0.0/24")
    sg_id = synth.json["Outputs"]["SecurityGroup"]["Value"]["Fn::GetAtt"][0]
    rules = synth.resources[sg_id]["Properties"]["SecurityGroupEgress"]
    assert {(r["FromPort"], r["CidrIp"]) for r in rules} == {
        (443, "0.0.0.0/0"),
        (11434, "10.99.0.0/24"),
    }


# --------------------------------------------------------------------------- outputs, config


def test_outputs_name_everything_the_operator_needs(synth: Synth) -> None:
    outputs = synth.json["Outputs"]
    assert set(outputs) >= REQUIRED_OUTPUTS
    assert outputs["ClusterName"]["Value"] == "agenttest"
    assert outputs["TaskDefinitionFamily"]["Value"] == "agenttest-runner"
    assert outputs["ContainerName"]["Value"] == "runner"
    assert outputs["LogGroup"]["Value"] == "/agenttest/runner"
    assert outputs["LogStreamPrefix"]["Value"] == "agenttest"
    bucket_id, _ = synth.one("AWS::S3::Bucket")
    assert outputs["PackageBucket"]["Value"] == {"Ref": bucket_id}
    assert outputs["ConfigBucket"]["Value"] == {"Ref": bucket_id}


def test_outputs_are_valid_values_of_the_operator_settings(default_synth: Synth) -> None:
    """The README maps outputs to AGENTTEST_FARGATE_* settings; the fixed ones parse as
    those settings and equal the operator's defaults, so they work unset too."""
    outputs = default_synth.json["Outputs"]
    settings = {
        "ClusterName": "fargate_cluster",
        "TaskDefinitionFamily": "fargate_task_definition",
        "ContainerName": "fargate_container",
        "AssignPublicIp": "fargate_assign_public_ip",
        "LogGroup": "fargate_log_group",
        "LogStreamPrefix": "fargate_log_stream_prefix",
    }
    defaults = Settings()
    for output, name in settings.items():
        assert _parse(name, outputs[output]["Value"]) == getattr(defaults, name), output


def test_readme_names_only_real_settings() -> None:
    """Every AGENTTEST_* variable in infrastructure/README.md is an operator setting,
    and every fargate setting is documented there."""
    readme = (INFRA / "README.md").read_text()
    # The runner's own variable is the one AGENTTEST_* name that is not a setting.
    named = set(re.findall(r"AGENTTEST_[A-Z0-9_]*[A-Z0-9]", readme)) - {CONFIG_S3_ENV}
    real = {f"AGENTTEST_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    assert named <= real, sorted(named - real)
    fargate = {name for name in real if name.startswith("AGENTTEST_FARGATE_")}
    assert fargate <= named, sorted(fargate - named)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"modelProvider": "openai"}, "modelProvider"),
        ({"egress": "internet"}, "egress"),
        ({"modelProvider": "bedrock", "bedrockModelIds": "*"}, "bedrockModelIds"),
        ({"logRetentionDays": "8"}, "logRetentionDays"),
        ({"oidcProviderArn": "not-an-arn"}, "oidcProviderArn"),
        ({"oidcProviderArn": OIDC_ARN, "oidcIssuer": "other.example/id/X"}, "oidcIssuer"),
        ({"packagesPrefix": "test-artifacts/pkgs/"}, "packagesPrefix"),
        ({"ollamaCidr": "10.0.0.0/33"}, "ollamaCidr"),
    ],
)
def test_bad_parameters_are_refused_by_name(context: dict[str, Any], message: str) -> None:
    app = cdk.App(context=context)
    with pytest.raises(ValueError, match=message):
        InfraConfig.from_context(app.node)


def test_context_values_from_the_command_line_are_parsed() -> None:
    app = cdk.App(
        context={
            "bedrockModelIds": '["a.b-v1:0", "c.d-v1:0"]',
            "logRetentionDays": "14",
            "oidcIssuer": f"https://{OIDC_ISSUER}/",
            "oidcProviderArn": OIDC_ARN,
        }
    )
    config = InfraConfig.from_context(app.node)
    assert config.bedrock_model_ids == ("a.b-v1:0", "c.d-v1:0")
    assert config.log_retention_days == 14
    assert config.oidc_issuer == OIDC_ISSUER


# --------------------------------------------------------------------------- the app


def test_app_synthesizes_into_the_outdir(tmp_path: Path) -> None:
    """What `make infra-synth` runs, with CDK_OUTDIR so the repo stays clean."""
    env = dict(os.environ, CDK_OUTDIR=str(tmp_path))
    completed = subprocess.run(
        [sys.executable, "app.py", "-c", "modelProvider=bedrock", "-c", "egress=endpoints"],
        cwd=INFRA,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    template = json.loads((tmp_path / "AgentTestInfra.template.json").read_text())
    kinds = {resource["Type"] for resource in template["Resources"].values()}
    assert {"AWS::ECS::TaskDefinition", "AWS::ECS::Cluster", "AWS::S3::Bucket"} <= kinds
    assert "AWS::EC2::VPCEndpoint" in kinds
    assert (tmp_path / "manifest.json").exists()
