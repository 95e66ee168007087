"""The AWS CDK app in infrastructure/, synthesized for real (aws-cdk-lib + Node.js).

No AWS account is involved: the stack is environment-agnostic, so synthesis is
local. Each test reads the CloudFormation template and checks what the operator
and the security model depend on: the runner task's shape, the log group, the
least-privilege roles, the package bucket, the network, and the outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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

OPERATOR_ACTIONS = {
    "ecs:RunTask",
    "ecs:TagResource",
    "ecs:StopTask",
    "ecs:DescribeTasks",
    "ecs:ListTasks",
    "iam:PassRole",
    "logs:GetLogEvents",
    "logs:FilterLogEvents",
    "logs:DescribeLogStreams",
    "s3:PutObject",
    "s3:GetObject",
    "s3:GetObjectAttributes",
    "s3:ListBucket",
}
REQUIRED_OUTPUTS = {
    "ClusterName",
    "TaskDefinitionFamily",
    "ContainerName",
    "Subnets",
    "SecurityGroup",
    "LogGroup",
    "LogStreamPrefix",
    "PackageBucket",
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


def test_task_role_has_no_permissions_for_ollama(synths: dict[tuple[str, str], Synth]) -> None:
    for egress in ("endpoints", "nat"):
        synth = synths[("ollama", egress)]
        _, task = synth.one("AWS::ECS::TaskDefinition")
        role_id = synth.role_id(task["Properties"]["TaskRoleArn"])
        assert synth.statements_of_role(role_id) == []
        assert "Policies" not in synth.resources[role_id]["Properties"]


def test_task_role_invokes_exactly_the_configured_bedrock_models(
    synths: dict[tuple[str, str], Synth],
) -> None:
    for egress in ("endpoints", "nat"):
        synth = synths[("bedrock", egress)]
        _, task = synth.one("AWS::ECS::TaskDefinition")
        role_id = synth.role_id(task["Properties"]["TaskRoleArn"])
        [statement] = synth.statements_of_role(role_id)
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
    _, task = synth.one("AWS::ECS::TaskDefinition")
    [statement] = synth.statements_of_role(synth.role_id(task["Properties"]["TaskRoleArn"]))
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

    def only(action: str) -> dict[str, Any]:
        [statement] = [s for s in statements if action in as_list(s["Action"])]
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
    assert sorted(as_list(logs["Action"])) == [
        "logs:DescribeLogStreams",
        "logs:FilterLogEvents",
        "logs:GetLogEvents",
    ]
    group = (
        "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:/agenttest/runner"
    )
    assert sorted(render(as_list(logs["Resource"]))) == [group, f"{group}:*"]

    objects = only("s3:PutObject")
    assert sorted(as_list(objects["Action"])) == [
        "s3:GetObject",
        "s3:GetObjectAttributes",
        "s3:PutObject",
    ]
    assert render(objects["Resource"]) == f"${{{bucket_id}.Arn}}/packages/*"
    listing = only("s3:ListBucket")
    assert render(listing["Resource"]) == f"${{{bucket_id}.Arn}}"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["packages/", "packages/*"]}}


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
    resources = [
        render(s["Resource"])
        for s in synth.statements_of_role(role_id)
        if "s3:PutObject" in as_list(s["Action"])
    ]
    assert [r.endswith("/pkgs/*") for r in resources] == [True]


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
