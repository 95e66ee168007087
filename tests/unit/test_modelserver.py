"""The scripted model server, exercised through real HTTP clients.

The ollama client and strands' OllamaModel are the consumers that matter, so most tests
talk to the server through them rather than through hand-made requests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest
from strands import Agent, tool
from strands.models.ollama import OllamaModel

from agenttest_dev.modelserver import (
    DEFAULT_SCRIPT,
    ScriptedModelServer,
    choose_reply,
    parse_rules,
    split_into_chunks,
)

GREETING = "Hello! I am a scripted model, happy to help."

TOOL_SCRIPT: list[dict[str, Any]] = [
    {
        "match": r"order",
        "toolCall": {"name": "order_status", "arguments": {"order_id": "A-17"}},
        "reply": "Order status: {tool_result}",
    },
    {"match": r"slow", "reply": "Sorry for the wait.", "delaySeconds": 0.3},
    {"match": r"first|both", "reply": "first rule"},
    {"match": r"second|both", "reply": "second rule"},
    *DEFAULT_SCRIPT,
]


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer.from_script(TOOL_SCRIPT) as running:
        yield running


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# --------------------------------------------------------------------------- script logic


def test_first_matching_rule_wins() -> None:
    rules = parse_rules(TOOL_SCRIPT)
    assert choose_reply(rules, [user("BOTH please")]).text == "first rule"


def test_match_is_case_insensitive_and_searches_the_last_user_message() -> None:
    rules = parse_rules(DEFAULT_SCRIPT)
    messages = [user("hello"), {"role": "assistant", "content": "hi"}, user("CAPITAL of France?")]
    assert choose_reply(rules, messages).text == "The capital of France is Paris."


def test_unmatched_question_is_echoed() -> None:
    assert choose_reply(parse_rules(DEFAULT_SCRIPT), [user("what now")]).text == (
        "I heard: what now"
    )


def test_tool_rule_asks_for_the_tool_then_quotes_its_result() -> None:
    rules = parse_rules(TOOL_SCRIPT)
    first = choose_reply(rules, [user("where is my order?")])
    assert first.tool_call is not None
    assert (first.tool_call.name, first.tool_call.arguments) == (
        "order_status",
        {"order_id": "A-17"},
    )

    after_tool = [
        user("where is my order?"),
        {"role": "assistant", "tool_calls": [{"function": {"name": "order_status"}}]},
        {"role": "tool", "content": "shipped"},
    ]
    second = choose_reply(rules, after_tool)
    assert (second.text, second.tool_call) == ("Order status: shipped", None)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ([{"reply": "x"}], "rule 0: 'match' must be a string"),
        ([{"match": "(", "reply": "x"}], "rule 0: 'match' '(' is not a valid regex"),
        ([{"match": "a"}], "rule 0: 'reply' must be a string"),
        ([{"match": "a", "reply": "x", "delaySeconds": -1}], "'delaySeconds' must be a non-neg"),
        ([{"match": "a", "reply": "x", "toolCall": {}}], "'toolCall' must be an object"),
        ({"no": "rules"}, "a script must be a list of rules"),
    ],
)
def test_bad_scripts_are_rejected_with_the_rule_named(script: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_rules(script)


def test_chunks_rejoin_to_the_reply() -> None:
    assert split_into_chunks("Hello! I am  here.") == ["Hello! ", "I ", "am  ", "here."]
    assert "".join(split_into_chunks(GREETING)) == GREETING
    assert split_into_chunks("") == [""]


def test_script_loads_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [{"match": "ping", "reply": "pong"}]}))
    with ScriptedModelServer.from_script(path) as running:
        reply = ollama.Client(host=running.url).chat(model="m", messages=[user("ping")])
    assert reply.message.content == "pong"


# --------------------------------------------------------------------------- HTTP API


def test_root_version_and_tags(server: ScriptedModelServer) -> None:
    assert get(server.url + "/") == (200, "Ollama is running")
    status, body = get(server.url + "/api/version")
    assert status == 200 and json.loads(body)["version"]

    listing = ollama.Client(host=server.url).list()
    assert [model.model for model in listing.models] == ["scripted"]


def test_unknown_route_and_bad_json_get_ollama_style_errors(server: ScriptedModelServer) -> None:
    status, body = get(server.url + "/api/nope")
    assert status == 404 and "error" in json.loads(body)

    request = urllib.request.Request(server.url + "/api/chat", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 400
    assert "invalid JSON" in json.loads(caught.value.read())["error"]


def test_chat_without_streaming(server: ScriptedModelServer) -> None:
    response = ollama.Client(host=server.url).chat(model="tiny:1b", messages=[user("hello")])
    assert response.message.role == "assistant"
    assert response.message.content == GREETING
    assert response.model == "tiny:1b"
    assert response.done is True and response.done_reason == "stop"
    assert response.eval_count and response.prompt_eval_count == 1
    assert response.created_at


def test_chat_streams_pieces_then_a_done_line(server: ScriptedModelServer) -> None:
    client = ollama.Client(host=server.url)
    parts = list(client.chat(model="m", messages=[user("hello")], stream=True))

    assert "".join(part.message.content or "" for part in parts) == GREETING
    assert len(parts) > 2
    assert all(part.done is False for part in parts[:-1])
    final = parts[-1]
    assert final.done is True and final.done_reason == "stop"
    assert final.eval_count == len(parts) - 1
    assert final.total_duration is not None and final.total_duration > 0


def test_streamed_tool_call_has_name_and_arguments(server: ScriptedModelServer) -> None:
    client = ollama.Client(host=server.url)
    parts = list(client.chat(model="m", messages=[user("my order?")], stream=True))
    calls = [call for part in parts for call in part.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("order_status", {"order_id": "A-17"})
    ]
    assert parts[-1].done is True


def test_delay_holds_the_answer_back(server: ScriptedModelServer) -> None:
    started = time.perf_counter()
    response = ollama.Client(host=server.url).chat(model="m", messages=[user("slow one")])
    assert time.perf_counter() - started >= 0.3
    assert response.message.content == "Sorry for the wait."


def test_requests_are_recorded_in_order(server: ScriptedModelServer) -> None:
    client = ollama.Client(host=server.url)
    client.chat(model="m", messages=[user("one")])
    list(client.chat(model="m", messages=[user("two")], stream=True))  # streams are lazy
    assert [r["messages"][-1]["content"] for r in server.requests] == ["one", "two"]
    assert [r["stream"] for r in server.requests] == [False, True]


def test_url_needs_a_started_server() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = ScriptedModelServer().url


def test_stop_is_idempotent_and_frees_the_port() -> None:
    running = ScriptedModelServer().start()
    url = running.url
    running.stop()
    running.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


# --------------------------------------------------------------------------- with strands


@tool
def order_status(order_id: str) -> str:
    """Look up where an order is.

    Args:
        order_id: The order's id.
    """
    return f"order {order_id} shipped"


def test_strands_agent_answers_from_the_script(server: ScriptedModelServer) -> None:
    agent = Agent(model=OllamaModel(host=server.url, model_id="scripted"), callback_handler=None)
    assert str(agent("hello there")).strip() == GREETING


def test_strands_agent_runs_the_scripted_tool_call(server: ScriptedModelServer) -> None:
    model = OllamaModel(host=server.url, model_id="scripted")
    agent = Agent(model=model, tools=[order_status], callback_handler=None)

    answer = str(agent("where is my order?")).strip()

    assert answer == "Order status: order A-17 shipped"
    # The second request carried the tool's result back to the model.
    assert server.requests[-1]["messages"][-1] == {
        "role": "tool",
        "content": "order A-17 shipped",
    }
    assert server.requests[0]["tools"][0]["function"]["name"] == "order_status"


# --------------------------------------------------------------------------- CLI


def test_cli_prints_one_line_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "rules.json"
    script.write_text(json.dumps([{"match": "ping", "reply": "pong"}]))
    process = subprocess.Popen(
        [sys.executable, "-m", "agenttest_dev.modelserver", "--script", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ")

        reply = ollama.Client(host=url).chat(model="m", messages=[user("ping")])
        assert reply.message.content == "pong"

        process.terminate()
        assert process.wait(timeout=10) == 0
        assert process.stdout.read() == ""  # nothing but the one line
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_cli_rejects_a_bad_script(tmp_path: Path) -> None:
    script = tmp_path / "rules.json"
    script.write_text("[{]")
    completed = subprocess.run(
        [sys.executable, "-m", "agenttest_dev.modelserver", "--script", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 2
    assert "not valid JSON" in completed.stderr
