"""The scripted model server's Bedrock Runtime side, exercised through botocore and strands.

botocore is the client that matters (strands' BedrockModel is built on it), so the
tests talk to the server through a real ``bedrock-runtime`` client; the event-stream
framing is checked by botocore's own parser, never by a decoder of ours.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError
from strands import Agent, tool
from strands.models.bedrock import BedrockModel

from agenttest_dev.modelserver import (
    EVENT_STREAM_CONTENT_TYPE,
    ScriptedModelServer,
    bedrock_turn,
    choose_bedrock_reply,
    encode_event,
    parse_rules,
)

REGION = "us-east-1"
AGENT_KEY = "AKIDSCRIPTEDAGENT"
# Model ids carry ':' and '/', which botocore percent-encodes into one path segment.
MODEL_ID = "us.anthropic.claude-sonnet-4-20250514-v1:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/scripted"

SCRIPT: list[dict[str, Any]] = [
    {
        "match": r"order",
        "toolCall": {"name": "order_status", "arguments": {"order_id": "A-17"}},
        "reply": "Order status: {tool_result}",
    },
    {"match": r"hello", "reply": "Hello! I am a scripted model, happy to help."},
]
GREETING = "Hello! I am a scripted model, happy to help."


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer.from_script(SCRIPT) as running:
        yield running


def bedrock_client(server: ScriptedModelServer) -> BaseClient:
    # No retries: a failure should show up as itself, not as a slow test.
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=AGENT_KEY,
        aws_secret_access_key="scripted-agent-secret",
        config=Config(retries={"total_max_attempts": 1}),
    )


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def post(url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


# --------------------------------------------------------------------------- script logic


def test_tool_results_in_the_last_user_message_bring_the_final_answer() -> None:
    rules = parse_rules(SCRIPT)
    tool_use = {"toolUseId": "t1", "name": "order_status", "input": {"order_id": "A-17"}}
    result = {"toolUseId": "t1", "status": "success", "content": [{"text": "shipped"}]}
    messages = [
        user("where is my order?"),
        {"role": "assistant", "content": [{"toolUse": tool_use}]},
        {"role": "user", "content": [{"toolResult": result}]},
    ]

    first = choose_bedrock_reply(rules, messages[:1])
    assert first.tool_call is not None and first.tool_call.name == "order_status"
    final = choose_bedrock_reply(rules, messages)
    assert (final.text, final.tool_call) == ("Order status: shipped", None)


def test_json_tool_results_are_quoted_as_json() -> None:
    result = {"toolUseId": "t1", "content": [{"json": {"state": "shipped"}}]}
    messages = [user("my order"), {"role": "user", "content": [{"toolResult": result}]}]
    reply = choose_bedrock_reply(parse_rules(SCRIPT), messages)
    assert reply.text == 'Order status: {"state": "shipped"}'


def tool_use_message(name: str, tool_id: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"toolUse": {"toolUseId": tool_id, "name": name}}]}


def tool_result_message(*texts: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"toolResult": {"toolUseId": f"t{i}", "content": [{"text": text}]}}
            for i, text in enumerate(texts)
        ],
    }


SEQUENCE_SCRIPT: list[dict[str, Any]] = [
    {
        "match": r"trip",
        "toolCalls": [
            {"name": "find_flight", "arguments": {"to": "Lima"}},
            {"name": "book_hotel", "arguments": {"city": "Lima"}},
        ],
        "reply": "Booked:\n{tool_result}",
    },
    {"match": r"quiz", "models": [MODEL_ID], "reply": "4"},
    {"match": r"quiz", "models": [PROFILE_ARN], "reply": "5"},
]


def test_tool_calls_are_asked_one_per_turn_from_bedrock_blocks() -> None:
    rules = parse_rules(SEQUENCE_SCRIPT)
    conversation: list[dict[str, Any]] = [user("plan my trip")]
    steps = []
    for result in ("flight LA-1", "hotel Sol"):
        reply = choose_bedrock_reply(rules, conversation)
        assert reply.tool_call is not None
        steps.append(reply.tool_call.name)
        conversation += [
            tool_use_message(reply.tool_call.name, result),
            tool_result_message(result),
        ]

    assert steps == ["find_flight", "book_hotel"]
    turn = bedrock_turn(conversation)
    assert (turn.step, turn.tool_results, turn.question) == (
        2,
        ("flight LA-1", "hotel Sol"),
        "plan my trip",
    )
    assert choose_bedrock_reply(rules, conversation).text == "Booked:\nflight LA-1\nhotel Sol"
    # A new question starts counting again.
    later = [*conversation, {"role": "assistant", "content": [{"text": "ok"}]}, user("trip 2")]
    assert bedrock_turn(later).step == 0


def test_bedrock_turn_reads_tools_tool_choice_and_output_config() -> None:
    request = {
        "toolConfig": {
            "tools": [{"toolSpec": {"name": "EvaluationOutput", "description": "d"}}],
            "toolChoice": {"tool": {"name": "EvaluationOutput"}},
        },
        "outputConfig": {"textFormat": {"type": "json_schema"}},
    }
    turn = bedrock_turn([user("q")], request, MODEL_ID)
    assert (turn.model_id, turn.forced_tool, turn.wants_json) == (
        MODEL_ID,
        "EvaluationOutput",
        True,
    )
    assert [tool.name for tool in turn.tools] == ["EvaluationOutput"]


def test_rules_apply_to_the_model_in_the_path() -> None:
    with ScriptedModelServer.from_script(SEQUENCE_SCRIPT) as running:
        client = bedrock_client(running)
        answers = [
            client.converse(modelId=model, messages=[user("quiz: 2+2")])["output"]["message"]
            for model in (MODEL_ID, PROFILE_ARN, "other")
        ]
    assert [message["content"][0]["text"] for message in answers] == [
        "4",
        "5",
        "I heard: quiz: 2+2",
    ]


def test_k_of_n_over_converse_counts_per_model_id() -> None:
    script = [
        {
            "match": "coin",
            "correct": {"k": 3, "n": 5, "seed": 7},
            "reply": "heads",
            "wrongReply": "tails",
        }
    ]
    with ScriptedModelServer.from_script(script) as running:
        client = bedrock_client(running)

        def flips(model: str, times: int) -> list[str]:
            return [
                client.converse(modelId=model, messages=[user("flip a coin")])["output"]["message"][
                    "content"
                ][0]["text"]
                for _ in range(times)
            ]

        by_model = {model: flips(model, 10) for model in (MODEL_ID, PROFILE_ARN)}
    assert by_model[MODEL_ID] == by_model[PROFILE_ARN]
    assert by_model[MODEL_ID].count("heads") == 6


STRUCTURED = {"score": 0.25, "test_pass": False, "reason": "too short"}
STRUCTURED_TOOL = {
    "toolSpec": {
        "name": "EvaluationOutput",
        "description": "IMPORTANT: This StructuredOutputTool should only be invoked last.",
        "inputSchema": {"json": {"type": "object"}},
    }
}


def test_structured_output_is_a_tool_use_with_usage_in_both_operations() -> None:
    with ScriptedModelServer.from_script(
        [{"match": "judge", "structuredOutput": STRUCTURED}]
    ) as running:
        client = bedrock_client(running)
        request: dict[str, Any] = {
            "modelId": MODEL_ID,
            "messages": [user("judge this answer")],
            "toolConfig": {"tools": [STRUCTURED_TOOL], "toolChoice": {"auto": {}}},
        }
        response = client.converse(**request)
        events = list(client.converse_stream(**request)["stream"])

    [block] = response["output"]["message"]["content"]
    assert (block["toolUse"]["name"], block["toolUse"]["input"]) == ("EvaluationOutput", STRUCTURED)
    assert response["stopReason"] == "tool_use"
    assert response["usage"] == {"inputTokens": 3, "outputTokens": 1, "totalTokens": 4}

    start = events[1]["contentBlockStart"]["start"]["toolUse"]
    assert start["name"] == "EvaluationOutput"
    assert json.loads(events[2]["contentBlockDelta"]["delta"]["toolUse"]["input"]) == STRUCTURED
    assert events[-1]["metadata"]["usage"] == response["usage"]


def test_forced_tool_choice_and_native_output_config() -> None:
    script = [{"match": "judge", "structuredOutput": STRUCTURED}]
    verdict = {"toolSpec": {"name": "Verdict", "inputSchema": {"json": {"type": "object"}}}}
    with ScriptedModelServer.from_script(script) as running:
        client = bedrock_client(running)
        forced = client.converse(
            modelId=MODEL_ID,
            messages=[user("judge")],
            toolConfig={"tools": [verdict], "toolChoice": {"tool": {"name": "Verdict"}}},
        )
        native = client.converse(
            modelId=MODEL_ID,
            messages=[user("judge")],
            outputConfig={
                "textFormat": {
                    "type": "json_schema",
                    "structure": {"jsonSchema": {"schema": "{}", "name": "Verdict"}},
                }
            },
        )
    assert forced["output"]["message"]["content"][0]["toolUse"]["name"] == "Verdict"
    [text] = native["output"]["message"]["content"]
    assert json.loads(text["text"]) == STRUCTURED
    assert native["stopReason"] == "end_turn"
    assert native["usage"]["outputTokens"] == len(json.dumps(STRUCTURED).split())


def test_tool_call_stream_ends_with_usage_metadata(server: ScriptedModelServer) -> None:
    events = list(
        bedrock_client(server).converse_stream(modelId=MODEL_ID, messages=[user("my order?")])[
            "stream"
        ]
    )
    assert events[-1]["metadata"]["usage"] == {
        "inputTokens": 2,
        "outputTokens": 1,
        "totalTokens": 3,
    }


# --------------------------------------------------------------------------- Converse


def test_converse_answers_text_with_usage(server: ScriptedModelServer) -> None:
    response = bedrock_client(server).converse(
        modelId=MODEL_ID,
        system=[{"text": "Be brief."}],
        messages=[user("hello there")],
        inferenceConfig={"maxTokens": 100},
    )

    assert response["output"]["message"] == {"role": "assistant", "content": [{"text": GREETING}]}
    assert response["stopReason"] == "end_turn"
    # Words of the system prompt and the message; one output token per streamed word.
    assert response["usage"] == {"inputTokens": 4, "outputTokens": 9, "totalTokens": 13}
    assert response["metrics"]["latencyMs"] >= 0


def test_converse_asks_for_the_tool_with_a_stable_id(server: ScriptedModelServer) -> None:
    client = bedrock_client(server)
    first = client.converse(modelId=MODEL_ID, messages=[user("where is my order?")])
    again = client.converse(modelId=MODEL_ID, messages=[user("where is my order?")])

    assert first["stopReason"] == "tool_use"
    [block] = first["output"]["message"]["content"]
    tool_use = block["toolUse"]
    assert (tool_use["name"], tool_use["input"]) == ("order_status", {"order_id": "A-17"})
    assert tool_use["toolUseId"].startswith("tooluse_")
    assert again["output"]["message"]["content"][0]["toolUse"]["toolUseId"] == tool_use["toolUseId"]
    assert first["usage"]["outputTokens"] == 1


def test_requests_are_recorded_with_path_model_and_signature(server: ScriptedModelServer) -> None:
    client = bedrock_client(server)
    client.converse(modelId=PROFILE_ARN, messages=[user("hello")])
    list(client.converse_stream(modelId=MODEL_ID, messages=[user("hello")])["stream"])

    first, second = server.bedrock_requests
    assert (first.operation, first.model_id) == ("converse", PROFILE_ARN)
    assert first.path == (
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fscripted"
        "/converse"
    )
    assert (second.operation, second.model_id) == ("converse-stream", MODEL_ID)
    assert second.body["messages"] == [user("hello")]
    assert f"Credential={AGENT_KEY}/" in first.authorization
    assert "/us-east-1/bedrock/aws4_request" in first.authorization
    # The Ollama record stays for Ollama chats only.
    assert server.requests == []


# --------------------------------------------------------------------------- ConverseStream


def test_converse_stream_sends_text_deltas_then_stop_and_usage(
    server: ScriptedModelServer,
) -> None:
    response = bedrock_client(server).converse_stream(
        modelId=MODEL_ID, messages=[user("hello there")]
    )
    events = list(response["stream"])

    names = [next(iter(event)) for event in events]
    assert names[0] == "messageStart" and events[0]["messageStart"] == {"role": "assistant"}
    assert names[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    deltas = [e["contentBlockDelta"] for e in events if "contentBlockDelta" in e]
    assert len(deltas) == 9
    assert "".join(delta["delta"]["text"] for delta in deltas) == GREETING
    assert {delta["contentBlockIndex"] for delta in deltas} == {0}
    assert events[-2]["messageStop"] == {"stopReason": "end_turn"}
    assert events[-1]["metadata"]["usage"] == {
        "inputTokens": 2,
        "outputTokens": 9,
        "totalTokens": 11,
    }
    assert "latencyMs" in events[-1]["metadata"]["metrics"]


def test_converse_stream_tool_use_has_start_input_and_stop(server: ScriptedModelServer) -> None:
    response = bedrock_client(server).converse_stream(
        modelId=MODEL_ID, messages=[user("my order?")]
    )
    events = list(response["stream"])

    assert [next(iter(event)) for event in events] == [
        "messageStart",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    start = events[1]["contentBlockStart"]["start"]["toolUse"]
    assert start["name"] == "order_status" and start["toolUseId"].startswith("tooluse_")
    tool_input = events[2]["contentBlockDelta"]["delta"]["toolUse"]["input"]
    assert json.loads(tool_input) == {"order_id": "A-17"}
    assert events[4]["messageStop"] == {"stopReason": "tool_use"}


def test_stream_body_is_event_stream_framing_botocore_parses(server: ScriptedModelServer) -> None:
    # Over plain HTTP, so the bytes are exactly what the server wrote.
    body = json.dumps({"messages": [user("hello")]}).encode()
    status, headers, raw = post(server.url + "/model/m/converse-stream", body)
    assert status == 200
    assert headers["Content-Type"] == EVENT_STREAM_CONTENT_TYPE

    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    messages = list(buffer)
    assert [m.headers[":event-type"] for m in messages][:1] == ["messageStart"]
    assert all(m.headers[":message-type"] == "event" for m in messages)
    assert all(m.headers[":content-type"] == "application/json" for m in messages)
    assert json.loads(messages[-1].payload)["usage"]["outputTokens"] == 9


def test_encode_event_round_trips_through_botocore() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(encode_event("messageStop", {"stopReason": "end_turn"}))
    [message] = list(buffer)
    assert message.headers == {
        ":event-type": "messageStop",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert json.loads(message.payload) == {"stopReason": "end_turn"}


# --------------------------------------------------------------------------- errors


def test_unknown_bedrock_operation_is_404_and_bad_json_400(server: ScriptedModelServer) -> None:
    status, _, raw = post(server.url + "/model/m/invoke", b"{}")
    assert status == 404 and "no route" in json.loads(raw)["error"]

    status, headers, raw = post(server.url + "/model/m/converse", b"{not json")
    assert status == 400 and "invalid JSON" in json.loads(raw)["message"]
    assert headers["x-amzn-ErrorType"] == "ValidationException"


def test_botocore_reads_the_error_code_and_message(server: ScriptedModelServer) -> None:
    # An endpoint with a path prefix sends every call to a route that does not exist.
    client = boto3.client(
        "bedrock-runtime",
        endpoint_url=server.url + "/nowhere",
        region_name=REGION,
        aws_access_key_id=AGENT_KEY,
        aws_secret_access_key="scripted-agent-secret",
        config=Config(retries={"total_max_attempts": 1}),
    )
    with pytest.raises(ClientError) as caught:
        client.converse(modelId=MODEL_ID, messages=[user("hello")])
    assert caught.value.response["Error"]["Code"] == "NotFoundException"
    assert "no route for POST /nowhere/model/" in caught.value.response["Error"]["Message"]


# --------------------------------------------------------------------------- with strands


@tool
def order_status(order_id: str) -> str:
    """Look up where an order is.

    Args:
        order_id: The order's id.
    """
    return f"order {order_id} shipped"


@pytest.mark.parametrize("streaming", [True, False], ids=["converse-stream", "converse"])
def test_strands_agent_runs_the_scripted_tool_call(
    server: ScriptedModelServer, streaming: bool
) -> None:
    # The agent signs with throwaway credentials of its own, as the agent host does.
    session = boto3.Session(
        aws_access_key_id=AGENT_KEY,
        aws_secret_access_key="scripted-agent-secret",
        region_name=REGION,
    )
    model = BedrockModel(
        model_id=MODEL_ID,
        endpoint_url=server.url,
        boto_session=session,
        streaming=streaming,
        boto_client_config=Config(retries={"total_max_attempts": 1}),
    )
    agent = Agent(model=model, tools=[order_status], callback_handler=None)

    result = agent("where is my order?")

    assert str(result).strip() == "Order status: order A-17 shipped"
    operation = "converse-stream" if streaming else "converse"
    first, second = server.bedrock_requests
    assert (first.operation, second.operation) == (operation, operation)
    assert first.body["toolConfig"]["tools"][0]["toolSpec"]["name"] == "order_status"
    # The second call carried the tool's result back, answering the scripted toolUse id.
    [asked] = [b["toolUse"] for b in second.body["messages"][1]["content"] if "toolUse" in b]
    [answered] = [b["toolResult"] for b in second.body["messages"][-1]["content"]]
    assert answered["toolUseId"] == asked["toolUseId"]
    assert answered["content"] == [{"text": "order A-17 shipped"}]
    # Usage reached strands: prompt words of both calls, 1 + 5 output pieces.
    usage = result.metrics.accumulated_usage
    assert usage["outputTokens"] == 6
    assert usage["inputTokens"] > 0
