"""The deployment package for real: its service answers over HTTP, its CDK app synthesizes,
its regression suite replays the test's cases against the service.

The sample AgentTest's package is rendered to a directory and used as a user would:
``uvicorn app:app`` in that directory (against the scripted model server instead of
Ollama), ``python -m tests.regression --url ...`` there, and ``python app.py`` in its
cdk/ directory, which is what ``cdk synth`` runs, for both targets (ECS Fargate and
AgentCore Runtime). No Docker is needed: CDK only copies and hashes the image's build
context at synthesis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from agenttest import packaging
from agenttest.models import AgentTestSpec
from agenttest.packaging import PackageInput
from agenttest_dev.modelserver import ScriptedModelServer

pytest.importorskip("fastapi", reason="fastapi is not installed (dev extras)")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (dev extras)")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "manifests" / "samples" / "agenttest.yaml"
GREETING = "Hello! I am a scripted model, happy to help."
START_TIMEOUT = 60.0  # importing strands and fastapi takes a few seconds on a slow machine
SYNTH_TIMEOUT = 300.0

BEDROCK = {
    "provider": "bedrock",
    "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
    "region": "eu-west-1",
}
BEDROCK_ACTIONS = ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"]
BEDROCK_MODEL_ARN = (
    "arn:${AWS::Partition}:bedrock:eu-west-1::foundation-model/"
    "anthropic.claude-3-haiku-20240307-v1:0"
)
ACCOUNT, REGION = "123456789012", "us-east-1"
# The sample's cases, answered wrongly: what a regressed agent would say.
WRONG_ANSWERS = [
    {"match": "hello", "reply": "Good day."},
    {"match": "capital of France", "reply": "The capital of France is London."},
]
# An agent.py whose entrypoint is an Agent object rather than a factory.
AGENT_OBJECT_SOURCE = """\
from strands import Agent

agent = Agent(system_prompt="You are a friendly assistant. Be brief.")
"""


def sample_input(**changes: Any) -> PackageInput:
    spec = yaml.safe_load(SAMPLE.read_text())["spec"]
    # spec.cases as the API server stores them, which is what the operator hands over.
    suite = [case.wire() for case in AgentTestSpec.model_validate(spec).cases]
    inp = PackageInput(
        agent_source=spec["agent"]["source"]["inline"],
        entrypoint=spec["agent"]["entrypoint"],
        requirements=[],
        model=spec["model"],
        cases=[
            {"name": "greets", "passed": True, "latencySeconds": 0.1},
            {"name": "knows-capitals", "passed": True, "latencySeconds": 0.2},
        ],
        summary="2/2 cases passed",
        namespace="team-a",
        name="hello-agent",
        uid="6f1c2a9e-0000-4000-8000-000000000001",
        attempt=1,
        tested_at="2025-06-01T12:00:00Z",
        # As a run in this environment would list it (status.environment).
        environment=[f"strands-agents=={metadata.version('strands-agents')}"],
        suite=suite,
    )
    return dataclasses.replace(inp, **changes)


def write_package(inp: PackageInput, directory: Path) -> Path:
    for path, content in packaging.render(inp).items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return directory


def wait_for(description: str, condition: Callable[[], Any], timeout: float) -> Any:
    """Poll until ``condition()`` is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {description}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_service(package: Path, model_url: str) -> Iterator[str]:
    """``uvicorn app:app`` in the package directory; yields its base URL once healthy."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_")}
    env["OLLAMA_ENDPOINT"] = model_url
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=package,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"the service exited with {process.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                return json.loads(response.read()) == {"status": "ok"}
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_for("the service's /health", healthy, START_TIMEOUT)
        yield base
    finally:
        process.terminate()
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def user_turns(request: dict[str, Any]) -> int:
    return sum(1 for message in request["messages"] if message["role"] == "user")


def test_service_answers_streams_and_starts_fresh_conversations(tmp_path: Path) -> None:
    package = write_package(sample_input(), tmp_path)
    with ScriptedModelServer() as model, running_service(package, model.url) as base:
        status, body = post(f"{base}/invoke", {"prompt": "Say hello"})
        assert status == 200, body
        assert "Hello" in json.loads(body)["answer"]

        status, body = post(f"{base}/invoke-stream", {"prompt": "What is the capital of France?"})
        assert status == 200, body
        assert body.decode() == "The capital of France is Paris."

        status, body = post(f"{base}/invoke", {"prompt": ""})
        assert status == 422, body

        # The factory made a new Agent per request: no request carried an earlier one.
        assert len(model.requests) == 2
        assert [user_turns(request) for request in model.requests] == [1, 1]


def test_an_agent_object_serves_requests_in_turn_with_cleared_history(tmp_path: Path) -> None:
    package = write_package(sample_input(agent_source=AGENT_OBJECT_SOURCE), tmp_path)
    with ScriptedModelServer() as model, running_service(package, model.url) as base:
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(lambda _: post(f"{base}/invoke", {"prompt": "hi"}), range(3)))
        for status, body in results:
            assert status == 200, body
            assert json.loads(body)["answer"] == GREETING
        # One shared Agent, yet three separate one-question conversations.
        assert [user_turns(request) for request in model.requests] == [1, 1, 1]


def test_an_unreachable_model_is_a_502_that_does_not_leak_the_endpoint(tmp_path: Path) -> None:
    package = write_package(sample_input(), tmp_path)
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with running_service(package, nowhere) as base:
        status, body = post(f"{base}/invoke", {"prompt": "Say hello"})
        assert status == 502, body
        assert "agent failed" in json.loads(body)["detail"]
        assert nowhere not in body.decode()

        status, body = post(f"{base}/invoke-stream", {"prompt": "Say hello"})
        assert (status, body) == (200, b"")  # headers were sent before the model failed


def get(url: str) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_service_meets_the_agentcore_runtime_contract(tmp_path: Path) -> None:
    package = write_package(sample_input(), tmp_path)
    slow = [{"match": "take your time", "reply": "Done.", "delaySeconds": 2}]
    with (
        ScriptedModelServer.from_script(slow) as model,
        running_service(package, model.url) as base,
    ):
        status, idle = get(f"{base}/ping")
        assert status == 200
        assert idle["status"] == "Healthy"
        assert isinstance(idle["time_of_last_update"], int)

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(post, f"{base}/invocations", {"prompt": "take your time"})
            # While the model holds the answer back, the runtime is told work is under way.
            wait_for("a busy /ping", lambda: get(f"{base}/ping")[1]["status"] == "HealthyBusy", 10)
            status, body = pending.result(timeout=30)
        assert status == 200, body
        assert json.loads(body) == {"answer": "Done."}
        assert get(f"{base}/ping")[1]["status"] == "Healthy"

        status, body = post(f"{base}/invocations", {"prompt": ""})
        assert status == 422, body


def regression_suite(
    package: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m tests.regression ARGS`` in the package directory."""
    return subprocess.run(
        [sys.executable, "-m", "tests.regression", *args],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_regression_suite_passes_against_the_tested_agent(tmp_path: Path) -> None:
    package = write_package(sample_input(), tmp_path)
    with ScriptedModelServer() as model, running_service(package, model.url) as base:
        result = regression_suite(package, "--url", base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "2/2 cases passed"
    assert "FAIL" not in result.stdout
    # Both cases went to the model through /invocations, one conversation each.
    assert [user_turns(request) for request in model.requests] == [1, 1]


def test_regression_suite_fails_against_an_agent_giving_wrong_answers(tmp_path: Path) -> None:
    package = write_package(sample_input(), tmp_path)
    with (
        ScriptedModelServer.from_script(WRONG_ANSWERS) as model,
        running_service(package, model.url) as base,
    ):
        result = regression_suite(package, "--url", base)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert 'contains "hello": not found in answer' in lines
    assert 'contains "Paris": not found in answer' in lines
    assert 'notContains "London": found in answer' in lines
    assert lines[-1] == "0/2 cases passed"


class DataPlaneStandIn(ThreadingHTTPServer):
    """AgentCore's InvokeAgentRuntime on the wire, relaying each body to the package's
    /invocations as the runtime would; records what the caller sent."""

    def __init__(self, service: str) -> None:
        super().__init__(("127.0.0.1", 0), DataPlaneHandler)
        self.service = service
        self.calls: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class DataPlaneHandler(BaseHTTPRequestHandler):
    server: DataPlaneStandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        path, _, query = self.path.partition("?")
        self.server.calls.append(
            {"path": urllib.parse.unquote(path), "query": query, "headers": dict(self.headers)}
        )
        status, answer = post(f"{self.server.service}/invocations", json.loads(body))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@contextlib.contextmanager
def data_plane(service: str) -> Iterator[DataPlaneStandIn]:
    server = DataPlaneStandIn(service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


RUNTIME_ARN = f"arn:aws:bedrock-agentcore:eu-west-1:{ACCOUNT}:runtime/agent_hello_agent-a1b2c3d4e5"


@pytest.mark.parametrize(("script", "exit_code"), [(None, 0), (WRONG_ANSWERS, 1)])
def test_regression_suite_asks_an_agentcore_runtime_signed_a_session_per_case(
    tmp_path: Path, script: list[dict[str, Any]] | None, exit_code: int
) -> None:
    package = write_package(sample_input(), tmp_path)
    model_server = ScriptedModelServer.from_script(script) if script else ScriptedModelServer()
    with (
        model_server as model,
        running_service(package, model.url) as base,
        data_plane(base) as plane,
    ):
        result = regression_suite(
            package,
            *("--runtime-arn", RUNTIME_ARN, "--endpoint-url", plane.url),
            env={
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            },
        )
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"{2 if exit_code == 0 else 0}/2 cases passed"
    assert len(plane.calls) == 2
    sessions = set()
    for call in plane.calls:
        assert call["path"] == f"/runtimes/{RUNTIME_ARN}/invocations"
        assert call["query"] == "qualifier=DEFAULT"
        headers = {name.lower(): value for name, value in call["headers"].items()}
        # SigV4 for the data plane, in the runtime's region.
        credential = headers["authorization"].split("Credential=")[1].split(",")[0]
        assert credential.startswith("testing/")
        assert credential.endswith("/eu-west-1/bedrock-agentcore/aws4_request")
        sessions.add(headers["x-amzn-bedrock-agentcore-runtime-session-id"])
    assert len(sessions) == 2 and all(len(session) >= 33 for session in sessions)


def test_regression_suite_fails_when_the_service_is_down(tmp_path: Path) -> None:
    package = write_package(sample_input(), tmp_path)
    result = regression_suite(package, "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "the service could not be reached" in result.stdout


# --------------------------------------------------------------------------- the CDK app


class Synth:
    """``python app.py`` in the package's cdk/ directory, as ``cdk synth`` runs it."""

    def __init__(
        self, package: Path, outdir: Path, context: dict[str, str], env: dict[str, str]
    ) -> None:
        self.outdir = outdir
        self.process = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=package / "cdk",
            # The CDK CLI hands context and the output directory over the same way.
            env={
                **os.environ,
                "CDK_OUTDIR": str(outdir),
                "CDK_CONTEXT_JSON": json.dumps(context),
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._template: dict[str, Any] | None = None

    @property
    def template(self) -> dict[str, Any]:
        if self._template is None:
            output, _ = self.process.communicate(timeout=SYNTH_TIMEOUT)
            assert self.process.returncode == 0, output
            stack = packaging.stack_name("hello-agent")
            self._template = json.loads((self.outdir / f"{stack}.template.json").read_text())
        return self._template

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        resources = self.template["Resources"]
        return {key: value for key, value in resources.items() if value["Type"] == kind}

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_type(kind)
        assert len(found) == 1, f"expected one {kind}, found {sorted(found)}"
        return next(iter(found.values()))["Properties"]

    def container(self) -> dict[str, Any]:
        (container,) = self.one("AWS::ECS::TaskDefinition")["ContainerDefinitions"]
        return dict(container)

    def environment(self) -> dict[str, str]:
        return {item["Name"]: item["Value"] for item in self.container()["Environment"]}

    def task_role_statements(self) -> list[dict[str, Any]]:
        """Every statement granted to the task role, inline or attached."""
        return self.role_statements(self.one("AWS::ECS::TaskDefinition")["TaskRoleArn"])

    def role_statements(self, role_ref: dict[str, Any]) -> list[dict[str, Any]]:
        """Every statement granted to the role ``role_ref`` (a GetAtt), inline or attached."""
        role_id = role_ref["Fn::GetAtt"][0]
        role = self.template["Resources"][role_id]["Properties"]
        assert "ManagedPolicyArns" not in role
        statements = [
            s for policy in role.get("Policies", []) for s in policy["PolicyDocument"]["Statement"]
        ]
        for policy in self.of_type("AWS::IAM::Policy").values():
            if {"Ref": role_id} in policy["Properties"]["Roles"]:
                statements += policy["Properties"]["PolicyDocument"]["Statement"]
        return statements

    def image_asset(self) -> tuple[str, dict[str, Any]]:
        """The image asset's hash (its tag) and its source (platform, build args)."""
        assets = json.loads(next(self.outdir.glob("*.assets.json")).read_text())
        ((asset_hash, image),) = assets["dockerImages"].items()
        return asset_hash, dict(image["source"])

    def staged_image_files(self) -> set[str]:
        """What CDK staged as the image's build context."""
        (asset,) = self.outdir.glob("asset.*")
        return {path.relative_to(asset).as_posix() for path in asset.rglob("*") if path.is_file()}


def resolve(value: Any) -> Any:
    """Fn::Join and Ref as a readable string: arn:${AWS::Partition}:..."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return "${" + value["Ref"] + "}"
    if isinstance(value, dict) and set(value) == {"Fn::GetAtt"}:
        return "${" + ".".join(value["Fn::GetAtt"]) + "}"
    if isinstance(value, dict) and set(value) == {"Fn::Join"}:
        separator, parts = value["Fn::Join"]
        return separator.join(str(resolve(part)) for part in parts)
    return value


@pytest.fixture(scope="module")
def synths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Synth]]:
    """Both synthesizations started at once: each spends seconds starting jsii and Node.js."""
    if shutil.which("node") is None:  # pragma: no cover - depends on the machine
        pytest.skip("CDK synthesis needs Node.js")
    pytest.importorskip("aws_cdk", reason="aws-cdk-lib is not installed (dev extras)")

    def start(name: str, inp: PackageInput, context: dict[str, str], **env: str) -> Synth:
        base = tmp_path_factory.mktemp(name)
        package = write_package(inp, base / "package")
        return Synth(package, base / "cdk.out", context, env)

    started = {
        # A new VPC; the Ollama endpoint replaced at deploy time.
        "ollama": start(
            "ollama", sample_input(), {"ollamaEndpoint": "http://ollama.internal:11434"}
        ),
        # An existing VPC (looked up, so the account must be known), Graviton.
        "bedrock": start(
            "bedrock",
            sample_input(model=BEDROCK),
            {"vpcId": "vpc-0123456789abcdef0", "cpuArchitecture": "ARM64"},
            CDK_DEFAULT_ACCOUNT=ACCOUNT,
            CDK_DEFAULT_REGION=REGION,
        ),
        # The same package as an AgentCore runtime, in a known account and region.
        "agentcore": start(
            "agentcore",
            sample_input(model=BEDROCK),
            {"target": "agentcore"},
            CDK_DEFAULT_ACCOUNT=ACCOUNT,
            CDK_DEFAULT_REGION=REGION,
        ),
    }
    yield started
    for synth in started.values():
        if synth.process.poll() is None:  # a test failed before reading its template
            synth.process.kill()
            synth.process.communicate()


@pytest.mark.parametrize("variant", ["ollama", "bedrock"])
def test_stack_runs_the_image_on_fargate_behind_a_load_balancer(
    synths: dict[str, Synth], variant: str
) -> None:
    synth = synths[variant]
    service = synth.one("AWS::ECS::Service")
    assert service["LaunchType"] == "FARGATE"
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"]["Rollback"] is True

    listener = synth.one("AWS::ElasticLoadBalancingV2::Listener")
    assert (listener["Port"], listener["Protocol"]) == (80, "HTTP")
    target_group = synth.one("AWS::ElasticLoadBalancingV2::TargetGroup")
    assert target_group["HealthCheckPath"] == "/health"
    assert target_group["TargetType"] == "ip"  # Fargate tasks register by IP

    container = synth.container()
    assert container["PortMappings"] == [{"ContainerPort": 8080, "Protocol": "tcp"}]
    log_group_id = next(iter(synth.of_type("AWS::Logs::LogGroup")))
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert container["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": log_group_id}

    # .dockerignore kept cdk/ (and the README, manifest) out of the image's context.
    # (and tests/, which runs against the service from outside).
    assert synth.staged_image_files() == {
        ".dockerignore",
        "Dockerfile",
        "agent.py",
        "app.py",
        "requirements.txt",
    }


def test_ollama_stack_grants_the_task_nothing_and_takes_the_endpoint_from_context(
    synths: dict[str, Synth],
) -> None:
    synth = synths["ollama"]
    assert synth.task_role_statements() == []
    assert synth.environment() == {
        "MODEL_PROVIDER": "ollama",
        "MODEL_ID": "llama3.1:8b",
        "OLLAMA_ENDPOINT": "http://ollama.internal:11434",
    }
    assert len(synth.of_type("AWS::EC2::VPC")) == 1
    platform = synth.one("AWS::ECS::TaskDefinition")["RuntimePlatform"]
    assert platform["CpuArchitecture"] == "X86_64"
    # The Dockerfile's linux/arm64 default is overridden to match the tasks.
    _, image = synth.image_asset()
    assert image["platform"] == "linux/amd64"
    assert image["dockerBuildArgs"] == {"TARGET_PLATFORM": "linux/amd64"}


def test_bedrock_stack_may_invoke_only_the_tested_model(synths: dict[str, Synth]) -> None:
    synth = synths["bedrock"]
    (statement,) = synth.task_role_statements()
    assert statement["Effect"] == "Allow"
    assert sorted(statement["Action"]) == BEDROCK_ACTIONS
    assert resolve(statement["Resource"]) == BEDROCK_MODEL_ARN
    assert synth.environment() == {
        "MODEL_PROVIDER": "bedrock",
        "MODEL_ID": BEDROCK["modelId"],
        "MODEL_REGION": "eu-west-1",
    }


def test_bedrock_stack_uses_the_given_vpc_and_architecture(synths: dict[str, Synth]) -> None:
    synth = synths["bedrock"]
    assert synth.of_type("AWS::EC2::VPC") == {}  # looked up, not created
    platform = synth.one("AWS::ECS::TaskDefinition")["RuntimePlatform"]
    assert platform["CpuArchitecture"] == "ARM64"
    _, image = synth.image_asset()
    assert image["platform"] == "linux/arm64"
    assert image["dockerBuildArgs"] == {"TARGET_PLATFORM": "linux/arm64"}


def test_agentcore_target_deploys_the_arm64_image_as_a_runtime(synths: dict[str, Synth]) -> None:
    synth = synths["agentcore"]
    runtime = synth.one("AWS::BedrockAgentCore::Runtime")
    assert runtime["AgentRuntimeName"] == "agent_hello_agent"
    assert runtime["ProtocolConfiguration"] == "HTTP"
    assert runtime["NetworkConfiguration"] == {"NetworkMode": "PUBLIC"}
    assert runtime["EnvironmentVariables"] == {
        "MODEL_PROVIDER": "bedrock",
        "MODEL_ID": BEDROCK["modelId"],
        "MODEL_REGION": "eu-west-1",
    }
    # The container is the package's own image, built for linux/arm64.
    asset_hash, image = synth.image_asset()
    uri = runtime["AgentRuntimeArtifact"]["ContainerConfiguration"]["ContainerUri"]["Fn::Sub"]
    assert uri.endswith(f":{asset_hash}")
    assert image["platform"] == "linux/arm64"
    assert image["dockerBuildArgs"] == {"TARGET_PLATFORM": "linux/arm64"}
    assert synth.staged_image_files() == {
        ".dockerignore",
        "Dockerfile",
        "agent.py",
        "app.py",
        "requirements.txt",
    }
    # Nothing of the Fargate variant.
    for kind in ("AWS::ECS::Service", "AWS::ElasticLoadBalancingV2::LoadBalancer", "AWS::EC2::VPC"):
        assert synth.of_type(kind) == {}
    outputs = synth.template["Outputs"]
    assert outputs["RuntimeArn"]["Value"] == {
        "Fn::GetAtt": [
            next(iter(synth.of_type("AWS::BedrockAgentCore::Runtime"))),
            "AgentRuntimeArn",
        ]
    }


def test_agentcore_execution_role_may_invoke_the_tested_model_and_write_its_logs_only(
    synths: dict[str, Synth],
) -> None:
    synth = synths["agentcore"]
    runtime = synth.one("AWS::BedrockAgentCore::Runtime")
    role_id = runtime["RoleArn"]["Fn::GetAtt"][0]
    role = synth.template["Resources"][role_id]["Properties"]

    # Only AgentCore, on behalf of this account's runtimes, may assume it.
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "bedrock-agentcore.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    assert resolve(trust["Condition"]["ArnLike"]["aws:SourceArn"]) == (
        f"arn:${{AWS::Partition}}:bedrock-agentcore:{REGION}:{ACCOUNT}:*"
    )

    granted: dict[str, list[str]] = {}
    for statement in synth.role_statements(runtime["RoleArn"]):
        assert statement["Effect"] == "Allow"
        assert "Condition" not in statement
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        resources = (
            statement["Resource"]
            if isinstance(statement["Resource"], list)
            else [statement["Resource"]]
        )
        for action in actions:
            granted.setdefault(action, []).extend(str(resolve(r)) for r in resources)

    log_groups = (
        f"arn:${{AWS::Partition}}:logs:{REGION}:{ACCOUNT}:log-group:"
        "/aws/bedrock-agentcore/runtimes/agent_hello_agent-*"
    )
    (repository,) = granted["ecr:BatchGetImage"]
    assert repository.startswith(f"arn:${{AWS::Partition}}:ecr:{REGION}:{ACCOUNT}:repository/")
    assert granted == {
        # The tested model, in the region it was tested in, and nothing else.
        "bedrock:InvokeModel": [BEDROCK_MODEL_ARN],
        "bedrock:InvokeModelWithResponseStream": [BEDROCK_MODEL_ARN],
        # Its own log groups only.
        "logs:CreateLogGroup": [log_groups],
        "logs:DescribeLogStreams": [log_groups],
        "logs:CreateLogStream": [f"{log_groups}:log-stream:*"],
        "logs:PutLogEvents": [f"{log_groups}:log-stream:*"],
        # Its own image; an ECR login token cannot be scoped to a repository.
        "ecr:BatchCheckLayerAvailability": [repository],
        "ecr:GetDownloadUrlForLayer": [repository],
        "ecr:BatchGetImage": [repository],
        "ecr:GetAuthorizationToken": ["*"],
    }
    assert "ManagedPolicyArns" not in role
