"""Model credentials end to end: kubectl -> operator -> local judge -> a model that demands them.

The scripted model server is made to require a bearer token (Ollama) or a SigV4
signature by a given access key (Bedrock); moto serves STS for a role to assume. The
operator runs as its ServiceAccount, with agenttest-model-credentials bound in the
test's namespace as a cluster admin would bind it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from agenttest_dev.modelserver import ScriptedModelServer
from agenttest_dev.node import FakeKubelet

from support import (
    MANIFESTS,
    SERVICE_ACCOUNT,
    SIMPLE_AGENT,
    SYSTEM_NAMESPACE,
    Kube,
    Operator,
    agent_test,
    on_pod,
)

StartOperator = Callable[..., Operator]

TOKEN = "tok-5f1e8c2a9b7d4e6f"
ECHO_QUESTION = "What key do you use?"
SCRIPT: list[dict[str, Any]] = [
    # A model that gives the credential away: the agent learns it from the answer.
    {"match": "what key", "reply": f"I was called with {TOKEN}, of course."},
    {"match": "hello", "reply": "Hello from the guarded model."},
]

# Looks for the credential everywhere an agent could, comparing digests so that it
# never prints the value itself (which the judge would mask, hiding a leak).
SNOOPING_AGENT = f"""
import hashlib, os
from strands import Agent

WANTED = {hashlib.sha256(TOKEN.encode()).hexdigest()!r}

def leaks(text):
    for word in text.replace("=", " ").replace('"', " ").replace("\\0", " ").split():
        if hashlib.sha256(word.encode()).hexdigest() == WANTED:
            return True
    return False

places = {{"environment": "\\n".join(f"{{k}}={{v}}" for k, v in os.environ.items())}}
pid, seen = os.getpid(), 0
for _ in range(4):  # the judge, the supervisor and above
    try:
        pid = int(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1])
        places[f"/proc/{{pid}}/environ"] = open(f"/proc/{{pid}}/environ", "rb").read().decode()
    except (OSError, ValueError, IndexError) as error:
        print("cannot read an ancestor's environment:", type(error).__name__)
top = os.path.dirname(os.path.dirname(os.getcwd()))
for root, _, files in os.walk(top):
    for name in files:
        try:
            places[os.path.join(root, name)] = open(os.path.join(root, name), "rb").read(
                1 << 20
            ).decode(errors="replace")
        except OSError:
            pass
found = [place for place, text in places.items() if leaks(text)]
print("snooped", len(places), "places; credential found in:", found or "nowhere")

def agent(model):
    return Agent(model=model)
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str, labelled: bool = True, **values: str) -> dict[str, Any]:
    labels = {"agenttest.dev/model-credentials": "true"} if labelled else {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels},
        "data": {key: b64(value) for key, value in values.items()},
    }


def with_credentials(manifest: dict[str, Any], secret_name: str) -> dict[str, Any]:
    manifest["spec"]["model"]["credentialsSecretRef"] = {"name": secret_name}
    return manifest


def grant_secret_reads(kube: Kube) -> None:
    """What the README tells a cluster admin to do for a namespace using credentials."""
    kube.cluster.kubectl("apply", "-f", str(MANIFESTS / "model-credentials-role.yaml"))
    kube.run(
        "create",
        "rolebinding",
        "agenttest-model-credentials",
        "--clusterrole=agenttest-model-credentials",
        f"--serviceaccount={SYSTEM_NAMESPACE}:{SERVICE_ACCOUNT}",
    )


@pytest.fixture
def guarded_model() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer.from_script(
        SCRIPT, required_headers={"Authorization": f"Bearer {TOKEN}"}
    ) as server:
        yield server


def test_the_token_reaches_the_model_and_nothing_the_agent_can_see(
    kube: Kube, start_operator: StartOperator, guarded_model: ScriptedModelServer
) -> None:
    grant_secret_reads(kube)
    kube.apply(secret("model-token", token=TOKEN))
    start_operator()
    cases = [
        {"name": "greets", "query": "Say hello", "expect": {"contains": ["guarded model"]}},
        {"name": "echoes", "query": ECHO_QUESTION, "expect": {"contains": ["of course"]}},
    ]
    manifest = agent_test("guarded", SNOOPING_AGENT, guarded_model.url, cases)
    kube.apply(with_credentials(manifest, "model-token"))
    test = kube.wait_for_phase("guarded", "Succeeded", "Failed", "Error", "TimedOut")
    status = test["status"]
    assert status["phase"] == "Succeeded", (status.get("message"), status.get("logTail"))

    tail = status["logTail"]
    assert "through the judge's gateway, with its credentialsSecretRef" in tail
    assert "credential found in: nowhere" in tail, tail
    # The model's answer carried the token: the agent printed it, the judge masked it
    # in the tail and in the result, and the check still saw the rest of the answer.
    assert TOKEN not in tail
    assert "I was called with [REDACTED], of course." in tail
    echoed = next(case for case in status["cases"] if case["name"] == "echoes")
    assert echoed["output"] == "I was called with [REDACTED], of course."
    everything = kube.run("get", "agenttest", "guarded", "-o", "yaml").stdout
    events = kube.run("get", "events", "-o", "yaml").stdout
    assert TOKEN not in everything + events
    assert b64(TOKEN) not in everything + events


def test_on_a_pod_the_token_reaches_the_judge_alone(
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    guarded_model: ScriptedModelServer,
) -> None:
    kube = restricted
    grant_secret_reads(kube)
    kube.apply(secret("model-token", token=TOKEN))
    start_operator()
    cases = [{"name": "echoes", "query": ECHO_QUESTION, "expect": {"contains": ["of course"]}}]
    manifest = on_pod("in-pod", SNOOPING_AGENT, guarded_model.url, cases=cases)
    kube.apply(with_credentials(manifest, "model-token"))
    status = kube.wait_for_phase("in-pod", "Succeeded", "Failed", "Error", "TimedOut")["status"]
    assert status["phase"] == "Succeeded", (status.get("message"), status.get("logTail"))
    assert "credential found in: nowhere" in status["logTail"]
    assert status["cases"][0]["output"] == "I was called with [REDACTED], of course."
    [pod] = [p for p in kube.get_all("pods") if p["metadata"]["name"].startswith("at-")]
    # The kubelet's own log of the container is masked too: the judge masked it.
    logs = kube.run("logs", pod["metadata"]["name"]).stdout
    assert "I was called with [REDACTED]" in logs and TOKEN not in logs
    assert TOKEN not in json.dumps(pod)


def test_each_model_of_a_matrix_gets_its_own_credential(
    kube: Kube, start_operator: StartOperator
) -> None:
    grant_secret_reads(kube)
    kube.apply(
        secret("first-token", token="first-" + TOKEN),
        secret("second-header", header="X-Api-Key", value="second-" + TOKEN),
    )
    start_operator()
    script = [{"match": "hello", "reply": "Hello from the guarded model."}]
    with (
        ScriptedModelServer.from_script(
            script, required_headers={"Authorization": f"Bearer first-{TOKEN}"}
        ) as first,
        ScriptedModelServer.from_script(
            script, required_headers={"X-Api-Key": f"second-{TOKEN}"}
        ) as second,
    ):
        manifest = agent_test("matrix", SIMPLE_AGENT, first.url)
        del manifest["spec"]["model"]
        manifest["spec"]["models"] = [
            {
                "name": name,
                "provider": "ollama",
                "modelId": "scripted",
                "endpoint": server.url,
                "credentialsSecretRef": {"name": secret_name},
            }
            for name, server, secret_name in (
                ("first", first, "first-token"),
                ("second", second, "second-header"),
            )
        ]
        manifest["spec"]["cases"] = [
            {"name": "greets", "query": "Say hello", "expect": {"contains": ["guarded"]}}
        ]
        kube.apply(manifest)
        status = kube.wait_for_phase("matrix", "Succeeded", "Failed", "Error")["status"]
        assert (len(first.requests), len(second.requests)) == (1, 1)
    assert status["phase"] == "Succeeded", (status.get("message"), status.get("logTail"))


def test_without_the_secret_the_model_refuses_and_the_case_fails(
    kube: Kube, start_operator: StartOperator, guarded_model: ScriptedModelServer
) -> None:
    start_operator()
    kube.apply(agent_test("unguarded", SIMPLE_AGENT, guarded_model.url))
    status = kube.wait_for_phase("unguarded", "Succeeded", "Failed", "Error")["status"]
    assert status["phase"] == "Failed"
    assert "401" in status["cases"][0]["failures"][0] or "401" in status["logTail"]


def test_unusable_secrets_end_the_test_error_naming_secret_and_key(
    kube: Kube, start_operator: StartOperator, guarded_model: ScriptedModelServer
) -> None:
    grant_secret_reads(kube)
    kube.apply(
        secret("no-token", header="X-Api-Key"),
        secret("unlabelled", labelled=False, token=TOKEN),
    )
    start_operator()
    source = SIMPLE_AGENT
    expected = {
        "absent": ("not-there", f"Secret {kube.namespace}/not-there not found"),
        "keyless": ("no-token", f"Secret {kube.namespace}/no-token has no key 'value'"),
        "unlabelled": (
            "unlabelled",
            f"Secret {kube.namespace}/unlabelled is not labelled for use by AgentTests; "
            "label it agenttest.dev/model-credentials with the value true",
        ),
    }
    kube.apply(
        *(
            with_credentials(agent_test(name, source, guarded_model.url), secret_name)
            for name, (secret_name, _) in expected.items()
        )
    )
    for name, (_, message) in expected.items():
        status = kube.wait_for_phase(name, "Succeeded", "Failed", "Error")["status"]
        assert status["phase"] == "Error", status
        assert message in status["message"]
        # Said once: one Error Event, no launch retried over and over.
        kube.wait_for(f"{name}'s Error Event", lambda n=name: kube.events(n, "Error"))
        assert len(kube.events(name, "Error")) == 1
        assert status["attempt"] == 1 and not status.get("infraRetries")
    assert guarded_model.requests == [], "nothing ran"


def test_without_the_role_binding_the_error_says_what_to_bind(
    kube: Kube, start_operator: StartOperator, guarded_model: ScriptedModelServer
) -> None:
    kube.apply(secret("model-token", token=TOKEN))
    start_operator()
    source = SIMPLE_AGENT
    kube.apply(with_credentials(agent_test("unbound", source, guarded_model.url), "model-token"))
    status = kube.wait_for_phase("unbound", "Succeeded", "Failed", "Error")["status"]
    assert status["phase"] == "Error"
    assert f"Secret {kube.namespace}/model-token cannot be read" in status["message"]
    assert "agenttest-model-credentials" in status["message"]


BEDROCK_AGENT = """
from strands import Agent

def agent(model):
    return Agent(model=model, system_prompt="Be brief.")
"""


def bedrock(manifest: dict[str, Any], url: str, secret_name: str) -> dict[str, Any]:
    manifest["spec"]["model"] = {
        "provider": "bedrock",
        "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
        "region": "us-east-1",
        "endpoint": url,
        "credentialsSecretRef": {"name": secret_name},
    }
    return manifest


def test_bedrock_calls_are_signed_with_the_secrets_keys_or_its_role(
    kube: Kube, start_operator: StartOperator
) -> None:
    sts = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    sts.start()
    host, port = sts.get_host_and_port()
    grant_secret_reads(kube)
    secret_key = "wJalrXUtnFEMI-secret-for-the-gateway"
    kube.apply(
        secret(
            "bedrock-keys",
            aws_access_key_id="AKIAGATEWAYKEY000001",
            aws_secret_access_key=secret_key,
        ),
        secret("bedrock-role", role_arn="arn:aws:iam::123456789012:role/bedrock-caller"),
    )
    # The execution's own credentials: what the role is assumed with, never what signs.
    start_operator(
        extra_env={
            "AWS_ACCESS_KEY_ID": "AKIDEXECUTIONBASE",
            "AWS_SECRET_ACCESS_KEY": "base-secret",
            "AWS_ENDPOINT_URL_STS": f"http://{host}:{port}",
        },
        local_pass_env="AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY,AWS_ENDPOINT_URL_STS",
    )
    try:
        with (
            ScriptedModelServer(required_access_key_id="AKIAGATEWAYKEY000001") as keyed,
            ScriptedModelServer() as assumed,
        ):
            kube.apply(
                bedrock(agent_test("keys", BEDROCK_AGENT, keyed.url), keyed.url, "bedrock-keys"),
                bedrock(
                    agent_test("role", BEDROCK_AGENT, assumed.url), assumed.url, "bedrock-role"
                ),
            )
            keys = kube.wait_for_phase("keys", "Succeeded", "Failed", "Error")["status"]
            role = kube.wait_for_phase("role", "Succeeded", "Failed", "Error")["status"]
            assumed_requests = assumed.bedrock_requests
    finally:
        sts.stop()
    assert keys["phase"] == "Succeeded", (keys.get("message"), keys.get("logTail"))
    assert role["phase"] == "Succeeded", (role.get("message"), role.get("logTail"))
    [request] = assumed_requests
    key_id = request.authorization.split("Credential=")[1].split("/")[0]
    assert key_id.startswith("ASIA"), "signed with the role's temporary key"
    assert request.headers.get("x-amz-security-token")
