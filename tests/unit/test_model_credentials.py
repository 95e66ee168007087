"""Model credentials: the Secret's keys as the operator reads them, and the judge's use of them.

The gateway parts run between real clients (ollama, botocore) and the scripted model
server made to require the credential; role assumption asks moto's STS over HTTP.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import ollama
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from agenttest import credentials
from agenttest.credentials import CredentialsUnavailable
from agenttest.models import AgentTestSpec, ModelProvider
from agenttest.runner import modelauth
from agenttest.runner.gateway import ModelGateway, Upstream
from agenttest.runner.protocol import MODEL_CREDENTIALS_ENV, Emitter, verify_line
from agenttest_dev.modelserver import ScriptedModelServer

WHERE = "Secret team-a/model-key"
TOKEN = "s3cr3t-ollama-token-value"
REGION = "us-east-1"


def data(**values: str) -> dict[str, str]:
    """Secret data as the API server returns it: base64."""
    return {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}


# --------------------------------------------------------------------------- the Secret's keys


def test_an_ollama_token_is_read_and_a_trailing_newline_dropped() -> None:
    parsed = credentials.parse(ModelProvider.OLLAMA, WHERE, data(token=TOKEN + "\n"))
    assert parsed == {"token": TOKEN}
    assert modelauth.ollama_headers(parsed) == (("Authorization", f"Bearer {TOKEN}"),)


def test_an_ollama_header_and_value_are_read() -> None:
    parsed = credentials.parse(ModelProvider.OLLAMA, WHERE, data(header="X-Api-Key", value="v1"))
    assert modelauth.ollama_headers(parsed) == (("X-Api-Key", "v1"),)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({}, "no key 'token'"),
        ({"header": "X-Api-Key"}, "no key 'value'"),
        ({"value": "v"}, "no key 'header'"),
        ({"token": "t", "header": "X-A", "value": "v"}, "sets both key 'token' and keys"),
        ({"header": "Content-Length", "value": "1"}, "key 'header' is not a header name"),
        ({"header": "X A", "value": "1"}, "key 'header' is not a header name"),
        ({"token": "two\nlines"}, "key 'token' must be one line"),
    ],
)
def test_a_bad_ollama_secret_is_refused_naming_secret_and_key(
    values: dict[str, str], named: str
) -> None:
    with pytest.raises(CredentialsUnavailable) as raised:
        credentials.parse(ModelProvider.OLLAMA, WHERE, data(**values))
    assert str(raised.value).startswith(WHERE)
    assert named in str(raised.value)


def test_bedrock_keys_and_a_role_are_read() -> None:
    keys = data(aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="sk", aws_session_token="st")
    assert credentials.parse(ModelProvider.BEDROCK, WHERE, keys) == {
        "aws_access_key_id": "AKIAEXAMPLE",
        "aws_secret_access_key": "sk",
        "aws_session_token": "st",
    }
    role = data(role_arn="arn:aws:iam::123456789012:role/bedrock", external_id="x")
    assert credentials.parse(ModelProvider.BEDROCK, WHERE, role) == {
        "role_arn": "arn:aws:iam::123456789012:role/bedrock",
        "external_id": "x",
    }


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({}, "no key 'aws_access_key_id' (with 'aws_secret_access_key') or 'role_arn'"),
        ({"aws_access_key_id": "AKIA"}, "no key 'aws_secret_access_key'"),
        ({"aws_secret_access_key": "sk"}, "no key 'aws_access_key_id'"),
        ({"role_arn": "bedrock"}, "key 'role_arn' is not an ARN"),
        ({"role_arn": "arn:aws:iam::1:role/r", "aws_access_key_id": "A"}, "sets both"),
    ],
)
def test_a_bad_bedrock_secret_is_refused_naming_secret_and_key(
    values: dict[str, str], named: str
) -> None:
    with pytest.raises(CredentialsUnavailable) as raised:
        credentials.parse(ModelProvider.BEDROCK, WHERE, data(**values))
    assert str(raised.value).startswith(WHERE)
    assert named in str(raised.value)


def test_only_a_labelled_secret_is_used() -> None:
    credentials.usable(WHERE, {"agenttest.dev/model-credentials": "true"})
    for labels in (None, {}, {"agenttest.dev/model-credentials": "yes"}):
        with pytest.raises(CredentialsUnavailable, match="not labelled"):
            credentials.usable(WHERE, labels)


def spec(**fields: Any) -> AgentTestSpec:
    return AgentTestSpec.model_validate(
        {
            "agent": {"source": {"inline": "agent = None"}},
            "cases": [{"name": "c", "query": "q"}],
            **fields,
        }
    )


def ollama_model(secret: str | None = None, **fields: Any) -> dict[str, Any]:
    model = {"provider": "ollama", "modelId": "m", "endpoint": "http://ollama:11434", **fields}
    if secret:
        model["credentialsSecretRef"] = {"name": secret}
    return model


def test_each_matrix_entry_and_the_judge_model_name_their_own_secret() -> None:
    matrix = spec(
        models=[ollama_model("a", name="one"), ollama_model(name="two")],
        judgeModel=ollama_model("j"),
        cases=[{"name": "c", "query": "q", "expect": {"judge": {"rubric": "good"}}}],
    )
    wanted = credentials.referenced(matrix)
    assert {entry: model.credentials_secret_ref.name for entry, model in wanted.items()} == {
        "one": "a",
        modelauth.JUDGE_ENTRY: "j",
    }
    # Without a rubric the judge model calls nothing: its Secret is not read.
    assert credentials.referenced(spec(model=ollama_model("a"))) == {
        "default": spec(model=ollama_model("a")).model_entries()[0]
    }


# --------------------------------------------------------------------------- the judge's side


def test_the_judge_takes_the_credentials_out_of_its_environment() -> None:
    environ = {MODEL_CREDENTIALS_ENV: json.dumps({"default": {"token": TOKEN}}), "PATH": "/bin"}
    assert modelauth.take(environ) == {"default": {"token": TOKEN}}
    assert environ == {"PATH": "/bin"}
    with pytest.raises(modelauth.CredentialsError):
        modelauth.take({MODEL_CREDENTIALS_ENV: '{"default": "not a map"}'})


def test_the_exact_values_are_redacted_in_text_and_in_json() -> None:
    found = modelauth.secret_values(
        {
            "a": {"token": TOKEN},
            "b": {"aws_access_key_id": "AKIDPUBLIC", "aws_secret_access_key": 'se"cret'},
        }
    )
    redactor = modelauth.Redactor(found)
    assert redactor.text(f"I know {TOKEN}!{TOKEN}") == "I know [REDACTED]![REDACTED]"
    # The key id names who signed, it is no secret; the secret key is.
    assert redactor.text("AKIDPUBLIC") == "AKIDPUBLIC"
    assert redactor.value({"answer": ['se"cret']}) == {"answer": ["[REDACTED]"]}
    assert redactor.text(json.dumps('se"cret')) == '"[REDACTED]"'


def test_the_emitter_redacts_log_relay_and_signed_lines() -> None:
    stream = io.StringIO()
    out = Emitter(stream, b"k" * 32)
    out.redactor = modelauth.Redactor([TOKEN])
    out.log(f"saw {TOKEN}")
    out.relay(f"agent printed {TOKEN}")
    out.machine({"event": "case", "output": f"answer {TOKEN}"})
    written = stream.getvalue()
    assert TOKEN not in written
    assert written.count("[REDACTED]") == 3
    # Redacted before signing: the line still verifies.
    _, event = verify_line(b"k" * 32, written.splitlines()[-1], 0)
    assert event["output"] == "answer [REDACTED]"


# --------------------------------------------------------------------------- the gateway


@pytest.fixture
def guarded_ollama() -> Iterator[ScriptedModelServer]:
    script = [{"match": "hello", "reply": "Hello there"}]
    with ScriptedModelServer.from_script(
        script, required_headers={"Authorization": f"Bearer {TOKEN}"}
    ) as server:
        yield server


def ask_ollama(gateway: ModelGateway, **headers: str) -> str:
    gateway.open_case("c")
    try:
        client = ollama.Client(host=gateway.url, headers=headers)
        return str(
            client.chat(model="m", messages=[{"role": "user", "content": "hello"}]).message.content
        )
    finally:
        gateway.close_case()


def test_the_gateway_adds_the_bearer_token_and_overrides_the_agents(
    guarded_ollama: ScriptedModelServer,
) -> None:
    upstream = Upstream(
        "ollama", guarded_ollama.url, headers=modelauth.ollama_headers({"token": TOKEN})
    )
    with ModelGateway(upstream) as gateway:
        assert ask_ollama(gateway) == "Hello there"
        # An agent sending its own Authorization cannot replace the judge's.
        assert ask_ollama(gateway, Authorization="Bearer guessed") == "Hello there"


def test_without_the_token_the_model_refuses(guarded_ollama: ScriptedModelServer) -> None:
    with ModelGateway(Upstream("ollama", guarded_ollama.url)) as gateway:
        gateway.open_case("c")
        client = ollama.Client(host=gateway.url)
        with pytest.raises(ollama.ResponseError) as raised:
            client.chat(model="m", messages=[{"role": "user", "content": "hello"}])
        observed = gateway.close_case()
    assert raised.value.status_code == 401
    assert observed.calls[0].status == 401


def converse(gateway: ModelGateway) -> dict[str, Any]:
    # The agent host's throwaway credentials: the gateway re-signs with the Secret's.
    client = boto3.Session(
        aws_access_key_id="AKIDAGENTTHROWAWAY", aws_secret_access_key="x", region_name=REGION
    ).client(
        "bedrock-runtime",
        endpoint_url=gateway.url,
        config=Config(retries={"total_max_attempts": 1}),
    )
    gateway.open_case("c")
    try:
        return dict(
            client.converse(
                modelId="scripted", messages=[{"role": "user", "content": [{"text": "hello"}]}]
            )
        )
    finally:
        gateway.close_case()


def test_bedrock_calls_are_signed_with_the_secrets_keys() -> None:
    with ScriptedModelServer(required_access_key_id="AKIASECRETKEYID") as model:
        signer = modelauth.bedrock_signer(
            {"aws_access_key_id": "AKIASECRETKEYID", "aws_secret_access_key": "sk"}, REGION
        )
        upstream = Upstream("bedrock", model.url, REGION)
        with ModelGateway(upstream, credentials_provider=signer) as gateway:
            answer = converse(gateway)
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert "Credential=AKIASECRETKEYID/" in model.bedrock_requests[0].authorization


@pytest.fixture
def moto_sts(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # The judge's own (base) credentials and where its STS is.
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDJUDGEBASE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "base-secret")
    try:
        yield url
    finally:
        server.stop()


def test_bedrock_calls_are_signed_as_the_assumed_role(moto_sts: str) -> None:
    with ScriptedModelServer() as model:
        role = "arn:aws:iam::123456789012:role/bedrock-caller"
        signer = modelauth.bedrock_signer({"role_arn": role}, REGION)
        upstream = Upstream("bedrock", model.url, REGION)
        with ModelGateway(upstream, credentials_provider=signer) as gateway:
            converse(gateway)
            converse(gateway)
        authorizations = [request.authorization for request in model.bedrock_requests]
    key_ids = {a.split("Credential=")[1].split("/")[0] for a in authorizations}
    # One assumption for both calls, and neither the base nor the agent's key signed.
    assert len(key_ids) == 1
    (key_id,) = key_ids
    assert key_id.startswith("ASIA")
    assert all("X-Amz-Security-Token" not in a for a in authorizations)
    assert all(request.headers.get("x-amz-security-token") for request in model.bedrock_requests)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_the_relay_masks_a_value_across_the_cut_of_an_endless_line() -> None:
    import os
    import threading

    from agenttest.runner.relay import LINE_LIMIT, Budget, Relay, _waiting_bytes

    redactor = modelauth.Redactor([TOKEN])
    relayed: list[str] = []
    lock = threading.Lock()

    def emit(line: str) -> None:
        with lock:
            relayed.append(line)

    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as stream:
        relay = Relay(stream, emit, Budget(), "stdout", redactor.raw, redactor.longest).start()
        # No newline for far longer than a piece; the token lies across where a cut
        # without the hold-back would fall, and arrives in two writes.
        text = ("x" * (LINE_LIMIT * 4 - 5) + TOKEN + "y" * LINE_LIMIT * 5).encode()
        split = LINE_LIMIT * 4 + 5  # past the cut, in the middle of the token
        os.write(write_end, text[:split])
        # Read before the rest is written: the relay has a partial token in hand.
        wait_until(lambda: _waiting_bytes(stream) == 0)
        os.write(write_end, text[split:])
        os.close(write_end)
        relay.join(timeout=10)
    joined = "".join(relayed)
    assert TOKEN not in joined
    assert joined.count("[REDACTED]") == 1
    assert len(joined) == len(text) - len(TOKEN) + len("[REDACTED]")
