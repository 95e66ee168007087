"""The scripted model server, exercised through real HTTP clients.

The ollama client and strands' OllamaModel are the consumers that matter, so most tests
talk to the server through them rather than through hand-made requests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
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
    KOfN,
    OfferedTool,
    Outcomes,
    ScriptedModelServer,
    Turn,
    answer,
    choose_reply,
    ollama_turn,
    parse_rules,
    split_into_chunks,
    structured_output_tool,
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
        (
            [{"match": "a", "reply": "x", "toolCall": {"name": "t", "arguments": []}}],
            "rule 0: 'toolCall'.arguments must be an object",
        ),
        (
            [{"match": "a", "reply": "x"}, {"match": "b", "reply": "y", "toolCalls": []}],
            "rule 1: 'toolCalls' must be a non-empty list",
        ),
        (
            [{"match": "a", "reply": "x", "toolCalls": [{"name": "t"}, {"arguments": {}}]}],
            "rule 0: 'toolCalls[1]' must be an object with a string 'name'",
        ),
        (
            [{"match": "a", "reply": "x", "toolCall": {"name": "t"}, "toolCalls": [{"name": "t"}]}],
            "rule 0: give 'toolCall' or 'toolCalls', not both",
        ),
        ([{"match": "a", "reply": "x", "models": []}], "rule 0: 'models' must be a non-empty list"),
        (
            [{"match": "a", "reply": "x", "models": ["m", 3]}],
            "rule 0: 'models' must be a non-empty",
        ),
        (
            [{"match": "a", "reply": "x", "wrongReply": "y", "correct": {"k": 1, "n": 2}}],
            "rule 0: 'correct.seed' must be an integer",
        ),
        (
            [
                {
                    "match": "a",
                    "reply": "x",
                    "wrongReply": "y",
                    "correct": {"k": True, "n": 2, "seed": 1},
                }
            ],
            "rule 0: 'correct.k' must be an integer",
        ),
        (
            [
                {
                    "match": "a",
                    "reply": "x",
                    "wrongReply": "y",
                    "correct": {"k": 0, "n": 0, "seed": 1},
                }
            ],
            "rule 0: 'correct.n' must be at least 1",
        ),
        (
            [
                {
                    "match": "a",
                    "reply": "x",
                    "wrongReply": "y",
                    "correct": {"k": 3, "n": 2, "seed": 1},
                }
            ],
            "rule 0: 'correct.k' must be between 0 and n (2)",
        ),
        (
            [
                {
                    "match": "a",
                    "reply": "x",
                    "wrongReply": "y",
                    "correct": {"k": -1, "n": 2, "seed": 1},
                }
            ],
            "rule 0: 'correct.k' must be between 0 and n (2)",
        ),
        (
            [{"match": "a", "reply": "x", "correct": {"k": 1, "n": 2, "seed": 1}}],
            "rule 0: 'correct' needs 'wrongReply', a string",
        ),
        ([{"match": "a", "reply": "x", "wrongReply": "y"}], "rule 0: 'wrongReply' needs 'correct'"),
        ([{"match": "a", "reply": "x", "correct": 3}], "rule 0: 'correct' must be an object"),
        ([{"match": "a", "structuredOutput": []}], "rule 0: 'structuredOutput' must be an object"),
        (
            [{"match": "a", "reply": "x", "structuredOutputTool": "T"}],
            "rule 0: 'structuredOutputTool' needs 'structuredOutput'",
        ),
        (
            [{"match": "a", "structuredOutput": {}, "structuredOutputTool": ""}],
            "rule 0: 'structuredOutputTool' must be a non-empty string",
        ),
        ({"no": "rules"}, "a script must be a list of rules"),
    ],
)
def test_bad_scripts_are_rejected_with_the_rule_named(script: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_rules(script)


SEQUENCE_SCRIPT: list[dict[str, Any]] = [
    {
        "match": r"trip",
        "toolCalls": [
            {"name": "find_flight", "arguments": {"to": "Lima"}},
            {"name": "book_hotel", "arguments": {"city": "Lima", "nights": 2}},
        ],
        "reply": "Booked:\n{tool_result}",
    },
    {"match": r"quiz", "models": ["right"], "reply": "4"},
    {"match": r"quiz", "models": ["wrong"], "reply": "5"},
    {"match": r"quiz", "reply": "no idea"},
]


def asked(name: str) -> dict[str, Any]:
    return {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": name}}]}


def tool_message(content: str) -> dict[str, Any]:
    return {"role": "tool", "content": content}


def test_tool_calls_are_asked_one_per_turn_then_the_reply_quotes_every_result() -> None:
    rules = parse_rules(SEQUENCE_SCRIPT)
    conversation: list[dict[str, Any]] = [user("plan my trip")]

    first = choose_reply(rules, conversation)
    assert first.tool_call is not None and first.tool_call.name == "find_flight"
    conversation += [asked("find_flight"), tool_message("flight LA-1")]

    second = choose_reply(rules, conversation)
    assert second.tool_call is not None
    assert (second.tool_call.name, second.tool_call.arguments) == (
        "book_hotel",
        {"city": "Lima", "nights": 2},
    )
    conversation += [asked("book_hotel"), tool_message("hotel Sol")]

    final = choose_reply(rules, conversation)
    assert (final.text, final.tool_call) == ("Booked:\nflight LA-1\nhotel Sol", None)


def test_step_counts_only_the_turns_since_the_last_user_message() -> None:
    earlier = [user("plan my trip"), asked("find_flight"), tool_message("old"), asked("x")]
    messages = [*earlier, {"role": "assistant", "content": "done"}, user("another trip")]
    assert ollama_turn(messages).step == 0
    assert ollama_turn(messages).tool_results == ()

    messages += [asked("find_flight"), tool_message("a"), tool_message("b")]
    turn = ollama_turn(messages)
    # One call turn; its two result messages are one result turn.
    assert (turn.step, turn.tool_results, turn.trailing_results) == (1, ("a", "b"), True)
    assert turn.question == "another trip"
    # A hand-made conversation that carries results without the asking turn still counts.
    assert ollama_turn([user("q"), tool_message("r")]).step == 1


def test_turn_reads_the_model_the_tools_and_format_of_the_request() -> None:
    request = {
        "model": "judge:1b",
        "format": {"type": "object"},
        "tools": [{"type": "function", "function": {"name": "T", "description": "d"}}],
    }
    turn = ollama_turn([user("q")], request)
    assert (turn.model_id, turn.tools, turn.wants_json) == (
        "judge:1b",
        (OfferedTool("T", "d"),),
        True,
    )


def test_rules_for_other_models_are_skipped() -> None:
    rules = parse_rules(SEQUENCE_SCRIPT)
    by_model = {
        model: choose_reply(rules, [user("quiz: 2+2?")], {"model": model}).text
        for model in ("right", "wrong", "other")
    }
    assert by_model == {"right": "4", "wrong": "5", "other": "no idea"}
    assert choose_reply(rules, [user("quiz")]).text == "no idea"


def test_k_of_n_is_exact_in_every_block_and_the_same_each_time() -> None:
    k_of_n = KOfN(k=3, n=5, seed=7)
    outcomes = [k_of_n.is_correct(i) for i in range(10)]
    assert sum(outcomes[:5]) == 3 and sum(outcomes[5:]) == 3
    assert outcomes[:5] == outcomes[5:]
    # Any five consecutive conversations hold exactly three right answers.
    assert all(sum(outcomes[start : start + 5]) == 3 for start in range(6))
    assert [KOfN(k=3, n=5, seed=7).is_correct(i) for i in range(10)] == outcomes
    assert {KOfN(k=0, n=4, seed=1).is_correct(i) for i in range(8)} == {False}
    assert {KOfN(k=4, n=4, seed=1).is_correct(i) for i in range(8)} == {True}


def test_k_of_n_is_the_same_in_another_process() -> None:
    code = (
        "from agenttest_dev.modelserver import KOfN;"
        "print(sorted(KOfN(k=3, n=10, seed=42).correct_positions))"
    )
    printed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert printed.strip() == str(sorted(KOfN(k=3, n=10, seed=42).correct_positions))


K_OF_N_SCRIPT: list[dict[str, Any]] = [
    {
        "match": r"coin",
        "correct": {"k": 2, "n": 5, "seed": 11},
        "reply": "heads",
        "wrongReply": "tails",
    },
    {
        "match": r"lookup",
        "toolCall": {"name": "lookup", "arguments": {}},
        "correct": {"k": 1, "n": 3, "seed": 5},
        "reply": "right: {tool_result}",
        "wrongReply": "wrong: {tool_result}",
    },
]


def test_outcomes_are_counted_per_rule_and_model_once_per_conversation() -> None:
    rules = parse_rules(K_OF_N_SCRIPT)
    outcomes = Outcomes()
    for model in ("a", "b"):
        turn = Turn(question="coin", model_id=model)
        drawn = [outcomes.decide(0, rules[0], turn) for _ in range(10)]
        assert rules[0].correct is not None
        assert drawn == [rules[0].correct.is_correct(i) for i in range(10)]
        assert sum(drawn) == 4
    assert (outcomes.count(0, "a"), outcomes.count(0, "b"), outcomes.count(1, "a")) == (10, 10, 0)
    outcomes.reset()
    assert outcomes.count(0, "a") == 0


def test_a_tool_rule_is_decided_at_the_first_call_and_answered_at_the_last() -> None:
    rule = parse_rules(K_OF_N_SCRIPT)[1]
    outcomes = Outcomes()
    opening = Turn(question="lookup", model_id="m")
    closing = Turn(
        question="lookup", model_id="m", step=1, tool_results=("r",), trailing_results=True
    )

    texts = []
    for _ in range(6):
        outcomes.decide(1, rule, opening)
        texts.append(answer(rule, closing, outcomes.decide(1, rule, closing)).text)
    assert outcomes.count(1, "m") == 6  # the final answers were not counted again
    assert texts.count("right: r") == 2 and texts.count("wrong: r") == 4


def test_outcomes_stay_exact_when_threads_draw_at_once() -> None:
    rule = parse_rules(K_OF_N_SCRIPT)[0]
    outcomes = Outcomes()
    turn = Turn(question="coin", model_id="m")
    results: list[bool] = []
    results_lock = threading.Lock()

    def draw() -> None:
        for _ in range(50):
            correct = outcomes.decide(0, rule, turn)
            with results_lock:
                results.append(correct)

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 400 and sum(results) == 160


STRUCTURED = {"score": 0.5, "test_pass": False, "reason": "half"}
MARKED = OfferedTool("EvaluationOutput", "IMPORTANT: This StructuredOutputTool should only ...")


def test_structured_output_tool_is_picked_by_name() -> None:
    [rule] = parse_rules([{"match": "x", "structuredOutput": STRUCTURED}])
    [named] = parse_rules(
        [{"match": "x", "structuredOutput": STRUCTURED, "structuredOutputTool": "Verdict"}]
    )
    plain = OfferedTool("calculator", "adds")
    verdict = OfferedTool("Verdict", "a verdict")

    assert structured_output_tool(rule, Turn("x", tools=(plain, MARKED))) == "EvaluationOutput"
    assert structured_output_tool(rule, Turn("x", tools=(plain,))) is None
    assert structured_output_tool(rule, Turn("x", tools=(verdict,), forced_tool="Verdict")) == (
        "Verdict"
    )
    assert structured_output_tool(rule, Turn("x", tools=(MARKED,), wants_json=True)) is None
    assert structured_output_tool(named, Turn("x", tools=(MARKED, verdict))) == "Verdict"
    assert structured_output_tool(named, Turn("x", tools=(MARKED,))) is None


def test_structured_output_comes_after_the_tool_calls_then_text() -> None:
    [rule] = parse_rules(
        [{"match": "x", "toolCall": {"name": "look"}, "structuredOutput": STRUCTURED}]
    )
    tools = (OfferedTool("look"), MARKED)
    first = answer(rule, Turn("x", tools=tools))
    assert first.tool_call is not None and first.tool_call.name == "look"

    second = answer(rule, Turn("x", step=1, tool_results=("seen",), tools=tools))
    assert second.tool_call is not None
    assert (second.tool_call.name, second.tool_call.arguments) == ("EvaluationOutput", STRUCTURED)

    # Asked for JSON text, or offered no structured-output tool: the document as text.
    as_text = answer(rule, Turn("x", step=1, tools=(OfferedTool("look"),)))
    assert (json.loads(as_text.text), as_text.tool_call) == (STRUCTURED, None)
    # After the structured call came back, the reply (by default the document again).
    after = answer(rule, Turn("x", step=2, tools=tools))
    assert json.loads(after.text) == STRUCTURED


def test_judge_rules_of_the_default_script_come_before_the_agent_rules() -> None:
    rules = parse_rules(DEFAULT_SCRIPT)
    judged_good = "<Input>Say hello</Input>\n<Output>Hello! I am a scripted model, happy to help."
    judged_bad = "<Input>Say hello</Input>\n<Output>I heard: Say hello"
    tools = {
        "tools": [{"function": {"name": "EvaluationOutput", "description": MARKED.description}}]
    }
    for output, passed in ((judged_good, True), (judged_bad, False)):
        prompt = f"Evaluate this.\n{output}</Output>\n<Rubric>Greets politely.</Rubric>"
        reply = choose_reply(rules, [user(prompt)], tools)
        assert reply.tool_call is not None and reply.tool_call.name == "EvaluationOutput"
        assert reply.tool_call.arguments["test_pass"] is passed
    # Questions to the agents are answered as before.
    assert choose_reply(rules, [user("Say hello")]).text == GREETING
    weather = choose_reply(rules, [user("What is the weather in Paris?")])
    assert weather.tool_call is not None
    assert (weather.tool_call.name, weather.tool_call.arguments) == (
        "get_weather",
        {"city": "Paris"},
    )


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


def test_k_of_n_over_http_is_exact_per_model_and_resets() -> None:
    with ScriptedModelServer.from_script(K_OF_N_SCRIPT) as running:
        client = ollama.Client(host=running.url)

        def flips(model: str, times: int) -> list[str]:
            return [
                client.chat(model=model, messages=[user("flip a coin")]).message.content or ""
                for _ in range(times)
            ]

        first = flips("a", 10)
        assert first.count("heads") == 4 and first.count("tails") == 6
        assert flips("b", 5).count("heads") == 2  # model b has a count of its own
        running.reset_counters()
        assert flips("a", 10) == first


def test_token_counts_on_tool_call_and_structured_output_answers() -> None:
    script = [
        {"match": "order", "toolCall": {"name": "order_status"}, "reply": "ok"},
        {"match": "judge", "structuredOutput": STRUCTURED},
    ]
    tools = [
        {"type": "function", "function": {"name": "order_status", "description": "d"}},
        {"type": "function", "function": {"name": MARKED.name, "description": MARKED.description}},
    ]
    with ScriptedModelServer.from_script(script) as running:
        client = ollama.Client(host=running.url)
        for question, name in (("my order please", "order_status"), ("judge this", MARKED.name)):
            parts = list(
                client.chat(model="m", messages=[user(question)], tools=tools, stream=True)
            )
            assert [c.function.name for p in parts for c in p.message.tool_calls or []] == [name]
            final = parts[-1]
            assert final.done is True
            assert (final.prompt_eval_count, final.eval_count) == (len(question.split()), 1)

            whole = client.chat(model="m", messages=[user(question)], tools=tools)
            assert (whole.prompt_eval_count, whole.eval_count) == (len(question.split()), 1)


def test_ollama_format_requests_get_the_document_as_json_text() -> None:
    with ScriptedModelServer.from_script(
        [{"match": "x", "structuredOutput": STRUCTURED}]
    ) as running:
        response = ollama.Client(host=running.url).chat(
            model="m", messages=[user("x")], format={"type": "object"}
        )
    assert json.loads(response.message.content or "") == STRUCTURED
    assert response.eval_count == len(split_into_chunks(json.dumps(STRUCTURED)))


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
