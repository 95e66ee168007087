"""The model gateway, between real clients (strands, ollama, botocore) and a real model server.

Upstream is the scripted model server (Ollama and Bedrock Runtime on one port), or a
tiny hand-written server where a test needs an upstream misbehaving in a precise way.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import ollama
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from strands import Agent, tool
from strands.models.bedrock import BedrockModel
from strands.models.ollama import OllamaModel

from agenttest.runner.gateway import (
    API_CONVERSE,
    API_CONVERSE_STREAM,
    API_OLLAMA_CHAT,
    MAX_REQUEST_BYTES,
    ModelGateway,
    Observed,
    ToolUse,
    Upstream,
)
from agenttest_dev.modelserver import BedrockRequest, ScriptedModelServer, encode_event

REGION = "us-east-1"
JUDGE_KEY, JUDGE_SECRET = "AKIDJUDGEJUDGEJUDGE", "judge-secret"
AGENT_KEY, AGENT_SECRET = "AKIDAGENTTHROWAWAY", "agent-throwaway-secret"
# An inference-profile ARN: ':' and '/' in the model id, percent-encoded on the wire.
MODEL_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.scripted-v1:0"

SCRIPT: list[dict[str, Any]] = [
    {
        "match": r"order",
        "toolCall": {"name": "order_status", "arguments": {"order_id": "A-17"}},
        "reply": "Order status: {tool_result}",
    },
    {"match": r"slow", "reply": "Sorry for the wait.", "delaySeconds": 0.4},
    {"match": r"hello", "reply": "Hello! I am a scripted model, happy to help."},
]
ORDER_ANSWER = "Order status: order A-17 shipped"


@tool
def order_status(order_id: str) -> str:
    """Look up where an order is.

    Args:
        order_id: The order's id.
    """
    return f"order {order_id} shipped"


@pytest.fixture
def model() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer.from_script(SCRIPT) as running:
        yield running


@pytest.fixture
def ollama_gateway(model: ScriptedModelServer) -> Iterator[ModelGateway]:
    with ModelGateway(Upstream(provider="ollama", endpoint=model.url)) as gateway:
        yield gateway


def judge_credentials() -> Credentials:
    return Credentials(JUDGE_KEY, JUDGE_SECRET)


@pytest.fixture
def bedrock_gateway(model: ScriptedModelServer) -> Iterator[ModelGateway]:
    upstream = Upstream(provider="bedrock", endpoint=model.url, region=REGION)
    with ModelGateway(upstream, credentials_provider=judge_credentials) as gateway:
        yield gateway


def agent_session() -> boto3.Session:
    # What the agent host has: throwaway credentials, a session token included.
    return boto3.Session(
        aws_access_key_id=AGENT_KEY,
        aws_secret_access_key=AGENT_SECRET,
        aws_session_token="agent-throwaway-token",
        region_name=REGION,
    )


def agent_bedrock_client(url: str) -> BaseClient:
    # One attempt: botocore retries 5xx, and these tests want to see each answer once.
    return agent_session().client(
        "bedrock-runtime", endpoint_url=url, config=Config(retries={"total_max_attempts": 1})
    )


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def bedrock_user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def request(url: str, body: bytes | None = None, method: str = "GET") -> tuple[int, bytes]:
    outgoing = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(outgoing, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A hand-written upstream, for misbehaviour the scripted server does not offer."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=upstream.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{upstream.server_address[1]}"
    finally:
        upstream.shutdown()
        upstream.server_close()
        thread.join()


class ChunkedUpstream(BaseHTTPRequestHandler):
    """Answers every POST with ``pieces``, one HTTP chunk each, pausing where told."""

    protocol_version = "HTTP/1.1"
    content_type = "application/x-ndjson"
    pieces: list[bytes | float] = []  # a float is a pause, in seconds

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in self.pieces:
            if isinstance(piece, float):
                time.sleep(piece)
            else:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")


def closed_port_url() -> str:
    # Bound and closed again: nothing listens there, so connecting is refused at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def signature_is_valid(recorded: BedrockRequest, base_url: str, secret: str) -> bool:
    """Recompute the SigV4 signature over exactly what the upstream received."""
    match = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/\d{8}/(?P<region>[^/]+)/(?P<service>[^/]+)"
        r"/aws4_request, SignedHeaders=(?P<signed>[^,]+), Signature=(?P<signature>[0-9a-f]+)",
        recorded.authorization,
    )
    assert match is not None, recorded.authorization
    headers = {name: recorded.headers[name] for name in match["signed"].split(";")}
    received = AWSRequest("POST", base_url + recorded.path, data=recorded.raw_body, headers=headers)
    received.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(Credentials(match["key"], secret), match["service"], match["region"])
    string_to_sign = signer.string_to_sign(received, signer.canonical_request(received))
    return bool(signer.signature(string_to_sign, received) == match["signature"])


# --------------------------------------------------------------------------- Ollama


def test_strands_ollama_agent_tool_call_is_observed(
    model: ScriptedModelServer, ollama_gateway: ModelGateway
) -> None:
    agent = Agent(
        model=OllamaModel(host=ollama_gateway.url, model_id="scripted"),
        tools=[order_status],
        callback_handler=None,
    )
    ollama_gateway.open_case("order")
    result = agent("where is my order?")
    observed = ollama_gateway.close_case()

    assert str(result).strip() == ORDER_ANSWER
    assert observed.label == "order"
    assert observed.model_calls == 2
    assert observed.tool_calls == ("order_status",)
    assert observed.tool_uses == (ToolUse("order_status", {"order_id": "A-17"}),)
    # The same numbers the model reported to the agent.
    usage = result.metrics.accumulated_usage
    assert (observed.input_tokens, observed.output_tokens) == (
        usage["inputTokens"],
        usage["outputTokens"],
    )
    assert all(call.api == API_OLLAMA_CHAT and call.status == 200 for call in observed.calls)
    assert all(call.model == "scripted" and call.ok for call in observed.calls)
    assert all(call.latency_seconds > 0 for call in observed.calls)
    assert observed.refused == 0
    # The upstream saw what strands sent, streamed.
    assert [r["stream"] for r in model.requests] == [True, True]


def test_ollama_non_streamed_tool_round_trip_is_observed(ollama_gateway: ModelGateway) -> None:
    client = ollama.Client(host=ollama_gateway.url)
    ollama_gateway.open_case("manual")
    asked = client.chat(model="tiny:1b", messages=[user("my order?")])
    assert asked.message.tool_calls
    messages: list[Any] = [
        user("my order?"),
        asked.message,
        {"role": "tool", "content": "order A-17 shipped", "tool_name": "order_status"},
    ]
    final = client.chat(model="tiny:1b", messages=messages)
    observed = ollama_gateway.close_case()

    assert final.message.content == ORDER_ANSWER
    assert observed.model_calls == 2
    assert observed.tool_uses == (ToolUse("order_status", {"order_id": "A-17"}),)
    assert [call.output_tokens for call in observed.calls] == [asked.eval_count, final.eval_count]
    assert observed.input_tokens == (asked.prompt_eval_count or 0) + (final.prompt_eval_count or 0)
    assert [call.model for call in observed.calls] == ["tiny:1b", "tiny:1b"]


def test_metadata_routes_pass_through_without_a_case(
    model: ScriptedModelServer, ollama_gateway: ModelGateway
) -> None:
    client = ollama.Client(host=ollama_gateway.url)
    assert [entry.model for entry in client.list().models] == ["scripted"]
    assert client.show("scripted").capabilities == ["completion", "tools"]
    assert request(ollama_gateway.url + "/") == (200, b"Ollama is running")
    assert request(ollama_gateway.url + "/", method="HEAD") == (200, b"")
    status, body = request(ollama_gateway.url + "/api/version")
    assert status == 200 and json.loads(body)["version"]

    ollama_gateway.open_case("nothing")
    observed = ollama_gateway.close_case()
    assert (observed.model_calls, observed.refused) == (0, 0)


def test_streamed_lines_are_relayed_as_they_arrive() -> None:
    # An upstream that sends one line, then thinks, then the rest.
    pause = 0.5

    class SlowStream(ChunkedUpstream):
        pieces = [
            b'{"model": "m", "message": {"role": "assistant", "content": "first "}}\n',
            pause,
            b'{"model": "m", "message": {"role": "assistant", "content": "second"}}\n',
            b'{"model": "m", "message": {"role": "assistant", "content": ""}, "done": true}\n',
        ]

    with (
        serve(SlowStream) as endpoint,
        ModelGateway(Upstream(provider="ollama", endpoint=endpoint)) as gateway,
    ):
        gateway.open_case("stream")
        started = time.perf_counter()
        arrivals: list[float] = []
        stream = ollama.Client(host=gateway.url).chat(model="m", messages=[user("hi")], stream=True)
        for _ in stream:
            arrivals.append(time.perf_counter() - started)
        observed = gateway.close_case()

    assert len(arrivals) == 3
    assert arrivals[0] < pause / 2 < pause <= arrivals[1]
    # Unknown token counts stay unknown, and add nothing to the sums.
    [call] = observed.calls
    assert (call.input_tokens, call.output_tokens, observed.input_tokens) == (None, None, 0)


# --------------------------------------------------------------------------- Bedrock


@pytest.mark.parametrize("streaming", [True, False], ids=["converse-stream", "converse"])
def test_strands_bedrock_agent_is_relayed_and_re_signed_by_the_judge(
    model: ScriptedModelServer, bedrock_gateway: ModelGateway, streaming: bool
) -> None:
    bedrock = BedrockModel(
        model_id=MODEL_ARN,
        endpoint_url=bedrock_gateway.url,
        boto_session=agent_session(),
        streaming=streaming,
        boto_client_config=Config(retries={"total_max_attempts": 1}),
    )
    agent = Agent(model=bedrock, tools=[order_status], callback_handler=None)

    bedrock_gateway.open_case("order")
    result = agent("where is my order?")
    observed = bedrock_gateway.close_case()

    assert str(result).strip() == ORDER_ANSWER
    api = API_CONVERSE_STREAM if streaming else API_CONVERSE
    assert [(call.api, call.model, call.status) for call in observed.calls] == [
        (api, MODEL_ARN, 200),
        (api, MODEL_ARN, 200),
    ]
    assert observed.tool_uses == (ToolUse("order_status", {"order_id": "A-17"}),)
    usage = result.metrics.accumulated_usage
    assert (observed.input_tokens, observed.output_tokens) == (
        usage["inputTokens"],
        usage["outputTokens"],
    )

    for received in model.bedrock_requests:
        assert received.model_id == MODEL_ARN
        assert f"Credential={JUDGE_KEY}/" in received.authorization
        assert AGENT_KEY not in json.dumps(dict(received.headers))
        assert "x-amz-security-token" not in received.headers
        # The judge's signature holds over the very path, headers and body received.
        assert signature_is_valid(received, model.url, JUDGE_SECRET)
        assert "/us-east-1/bedrock/aws4_request" in received.authorization


def test_converse_stream_events_arrive_unchanged(
    model: ScriptedModelServer, bedrock_gateway: ModelGateway
) -> None:
    def events(url: str, question: str) -> list[dict[str, Any]]:
        response = agent_bedrock_client(url).converse_stream(
            modelId=MODEL_ARN, messages=[bedrock_user(question)]
        )
        found = list(response["stream"])
        found[-1]["metadata"].pop("metrics")  # the only part that varies: latency
        return found

    bedrock_gateway.open_case("stream")
    for question in ("hello", "my order"):
        assert events(bedrock_gateway.url, question) == events(model.url, question)
    observed = bedrock_gateway.close_case()

    assert [call.api for call in observed.calls] == [API_CONVERSE_STREAM] * 2
    assert [call.output_tokens for call in observed.calls] == [9, 1]
    assert observed.tool_calls == ("order_status",)


def test_event_frames_split_across_chunks_and_tool_input_across_deltas() -> None:
    # Bedrock may cut the byte stream anywhere and a tool's input JSON into pieces.
    events: list[tuple[str, dict[str, Any]]] = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me look."}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        (
            "contentBlockStart",
            {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": "find"}}},
        ),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"ci'}}},
        ),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 1, "delta": {"toolUse": {"input": 'ty": 1}'}}},
        ),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 12, "outputTokens": 7, "totalTokens": 19}}),
    ]
    frames = b"".join(encode_event(event_type, payload) for event_type, payload in events)

    class SplitStream(ChunkedUpstream):
        content_type = "application/vnd.amazon.eventstream"
        pieces = [frames[offset : offset + 7] for offset in range(0, len(frames), 7)]

    with serve(SplitStream) as endpoint:
        upstream = Upstream(provider="bedrock", endpoint=endpoint, region=REGION)
        with ModelGateway(upstream, credentials_provider=judge_credentials) as gateway:
            gateway.open_case("split")
            response = agent_bedrock_client(gateway.url).converse_stream(
                modelId="m", messages=[bedrock_user("where?")]
            )
            relayed = list(response["stream"])
            observed = gateway.close_case()

    assert len(relayed) == 9 and relayed[-2] == {"messageStop": {"stopReason": "tool_use"}}
    [call] = observed.calls
    assert call.tool_uses == (ToolUse("find", {"city": 1}),)
    assert (call.input_tokens, call.output_tokens, call.error) == (12, 7, "")


def test_bedrock_upstream_errors_are_relayed_and_recorded(bedrock_gateway: ModelGateway) -> None:
    bedrock_gateway.open_case("rejected")
    status, body = request(bedrock_gateway.url + "/model/m/converse", b"{oops", method="POST")
    observed = bedrock_gateway.close_case()

    assert status == 400 and "invalid JSON" in json.loads(body)["message"]
    [call] = observed.calls
    assert (call.api, call.status) == (API_CONVERSE, 400)
    assert "invalid JSON" in call.error


def test_bedrock_endpoint_comes_from_the_sdk_environment(
    model: ScriptedModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", raising=False)
    regional = ModelGateway(Upstream(provider="bedrock", region="eu-west-1"))
    assert regional.upstream_url == "https://bedrock-runtime.eu-west-1.amazonaws.com"

    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_port_url())
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", model.url)
    upstream = Upstream(provider="bedrock", region=REGION)
    with ModelGateway(upstream, credentials_provider=judge_credentials) as gateway:
        assert gateway.upstream_url == model.url
        gateway.open_case("env")
        agent_bedrock_client(gateway.url).converse(modelId="m", messages=[bedrock_user("hello")])
        assert gateway.close_case().calls[0].status == 200


def test_no_judge_credentials_is_a_readable_502(model: ScriptedModelServer) -> None:
    upstream = Upstream(provider="bedrock", endpoint=model.url, region=REGION)
    with ModelGateway(upstream, credentials_provider=lambda: None) as gateway:
        gateway.open_case("no-credentials")
        with pytest.raises(ClientError) as caught:
            agent_bedrock_client(gateway.url).converse(
                modelId="m", messages=[bedrock_user("hello")]
            )
        observed = gateway.close_case()
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502
    assert "no AWS credentials" in caught.value.response["Error"]["Message"]
    assert observed.calls[0].status == 502 and "no AWS credentials" in observed.calls[0].error
    assert model.bedrock_requests == []


# --------------------------------------------------------------------------- cases


def test_calls_without_an_open_case_are_refused_and_counted(
    model: ScriptedModelServer, ollama_gateway: ModelGateway
) -> None:
    client = ollama.Client(host=ollama_gateway.url)
    for _ in range(2):
        with pytest.raises(ollama.ResponseError) as caught:
            client.chat(model="m", messages=[user("hello")])
        assert caught.value.status_code == 503
        assert "no case is running" in caught.value.error

    ollama_gateway.open_case("after")
    client.chat(model="m", messages=[user("hello")])
    observed = ollama_gateway.close_case()
    assert (observed.model_calls, observed.refused) == (1, 2)
    assert len(model.requests) == 1  # refused calls never reached the model

    ollama_gateway.open_case("next")
    assert ollama_gateway.close_case().refused == 0


def test_only_the_tests_model_is_forwarded(model: ScriptedModelServer) -> None:
    upstream = Upstream("ollama", model.url, models=("scripted",))
    with ModelGateway(upstream) as gateway:
        client = ollama.Client(host=gateway.url)
        gateway.open_case("elsewhere")
        with pytest.raises(ollama.ResponseError) as caught:
            client.chat(model="an-expensive-one", messages=[user("hello")])
        client.chat(model="scripted", messages=[user("hello")])
        observed = gateway.close_case()
    assert caught.value.status_code == 403
    assert "not 'an-expensive-one'" in caught.value.error
    refused, forwarded = observed.calls
    assert (refused.status, refused.model) == (403, "an-expensive-one")
    assert forwarded.status == 200
    assert [r["model"] for r in model.requests] == ["scripted"]


def test_bedrock_refusal_is_an_error_botocore_reads(bedrock_gateway: ModelGateway) -> None:
    with pytest.raises(ClientError) as caught:
        agent_bedrock_client(bedrock_gateway.url).converse(
            modelId="m", messages=[bedrock_user("hello")]
        )
    assert caught.value.response["Error"]["Code"] == "ServiceUnavailableException"
    assert "no case is running" in caught.value.response["Error"]["Message"]
    bedrock_gateway.open_case("late")
    assert bedrock_gateway.close_case().refused == 1


def test_a_call_belongs_to_the_case_open_when_it_started(ollama_gateway: ModelGateway) -> None:
    client = ollama.Client(host=ollama_gateway.url)

    def ask_slowly() -> None:
        client.chat(model="m", messages=[user("slow please")])

    # close_case waits for a call still being answered.
    ollama_gateway.open_case("waits")
    caller = threading.Thread(target=ask_slowly)
    caller.start()
    time.sleep(0.1)
    waited = ollama_gateway.close_case()
    caller.join()
    assert [call.status for call in waited.calls] == [200]
    assert waited.calls[0].latency_seconds >= 0.4

    # Unless told not to: then the call is reported unfinished, and not given to the next case.
    ollama_gateway.open_case("impatient")
    caller = threading.Thread(target=ask_slowly)
    caller.start()
    time.sleep(0.1)
    impatient = ollama_gateway.close_case(wait_seconds=0)
    ollama_gateway.open_case("next")
    caller.join()
    following = ollama_gateway.close_case()
    [unfinished] = impatient.calls
    assert (unfinished.status, unfinished.api) == (0, API_OLLAMA_CHAT)
    assert "still running" in unfinished.error and not unfinished.ok
    assert following.calls == ()


def test_case_bookkeeping_errors(ollama_gateway: ModelGateway) -> None:
    with pytest.raises(RuntimeError, match="no case is open"):
        ollama_gateway.close_case()
    ollama_gateway.open_case("one")
    with pytest.raises(RuntimeError, match="'one' is still open"):
        ollama_gateway.open_case("two")
    assert ollama_gateway.close_case() == Observed("one", (), 0)


# --------------------------------------------------------------------------- failures


def test_unreachable_ollama_is_a_502_naming_the_upstream() -> None:
    endpoint = closed_port_url()
    with ModelGateway(Upstream(provider="ollama", endpoint=endpoint)) as gateway:
        gateway.open_case("down")
        with pytest.raises(ollama.ResponseError) as caught:
            ollama.Client(host=gateway.url).chat(model="m", messages=[user("hello")])
        observed = gateway.close_case()

    assert caught.value.status_code == 502
    assert endpoint in caught.value.error
    [call] = observed.calls
    assert call.status == 502 and endpoint in call.error
    assert call.tool_uses == () and call.input_tokens is None


def test_unreachable_bedrock_is_a_502_botocore_reads() -> None:
    endpoint = closed_port_url()
    upstream = Upstream(provider="bedrock", endpoint=endpoint, region=REGION)
    with ModelGateway(upstream, credentials_provider=judge_credentials) as gateway:
        gateway.open_case("down")
        with pytest.raises(ClientError) as caught:
            agent_bedrock_client(gateway.url).converse_stream(
                modelId="m", messages=[bedrock_user("hello")]
            )
        observed = gateway.close_case()

    assert caught.value.response["Error"]["Code"] == "BadGatewayException"
    assert endpoint in caught.value.response["Error"]["Message"]
    [call] = observed.calls
    assert (call.api, call.status) == (API_CONVERSE_STREAM, 502)
    assert endpoint in call.error


def test_upstream_errors_are_relayed_and_recorded(
    model: ScriptedModelServer, ollama_gateway: ModelGateway
) -> None:
    ollama_gateway.open_case("bad json")
    status, body = request(ollama_gateway.url + "/api/chat", b"{not json", method="POST")
    observed = ollama_gateway.close_case()

    assert status == 400 and "invalid JSON" in json.loads(body)["error"]
    [call] = observed.calls
    assert call.status == 400 and "invalid JSON" in call.error and not call.ok


def test_unknown_path_is_404_naming_it(ollama_gateway: ModelGateway) -> None:
    status, body = request(ollama_gateway.url + "/api/generate", b"{}", method="POST")
    assert status == 404 and "POST /api/generate" in json.loads(body)["error"]
    status, body = request(ollama_gateway.url + "/model/m/converse", b"{}", method="POST")
    assert status == 404  # an Ollama gateway does not speak Bedrock


def test_oversized_request_is_refused_unread(ollama_gateway: ModelGateway) -> None:
    host, port = ollama_gateway.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest("POST", "/api/chat")
        connection.putheader("Content-Length", str(MAX_REQUEST_BYTES + 1))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert "limited to" in json.loads(response.read())["error"]
    finally:
        connection.close()


def test_keep_alive_connection_serves_many_calls(ollama_gateway: ModelGateway) -> None:
    host, port = ollama_gateway.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    ollama_gateway.open_case("keep-alive")
    try:
        for _ in range(3):
            body = json.dumps({"model": "m", "messages": [user("hello")], "stream": True})
            connection.request("POST", "/api/chat", body=body)
            response = connection.getresponse()
            lines = response.read().splitlines()
            assert json.loads(lines[-1])["done"] is True
    finally:
        connection.close()
    assert ollama_gateway.close_case().model_calls == 3
