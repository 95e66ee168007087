"""Real Strands agents and Strands Evals judges against the scripted model, over HTTP.

The scripted model is the model of every test and of the demo, so what it scripts must
come out of strands unchanged: tool sequences run through ``@tool`` functions in order,
per-model rules play the models of a matrix, k-of-n rules give exact pass rates, and
``OutputEvaluator`` gets its verdict as structured output. Both wire formats, through
``OllamaModel`` and ``BedrockModel``; no control plane needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.config import Config
from strands import Agent, tool
from strands.models.bedrock import BedrockModel
from strands.models.model import Model
from strands.models.ollama import OllamaModel
from strands_evals.evaluators import OutputEvaluator
from strands_evals.types.evaluation import EvaluationData, EvaluationOutput

from agenttest_dev.modelserver import DEFAULT_SCRIPT, ScriptedModelServer, split_into_chunks

REGION = "us-east-1"
PASSING = {"score": 0.9, "test_pass": True, "reason": "The answer greets the user."}
FAILING = {"score": 0.1, "test_pass": False, "reason": "The answer names no city."}

SCRIPT: list[dict[str, Any]] = [
    # Judge rules first: a judge prompt quotes the case's input and answer.
    {"match": r"<Rubric>Pass if it greets", "structuredOutput": PASSING},
    {"match": r"<Rubric>Pass if it names a city", "structuredOutput": FAILING},
    {
        "match": r"plan a trip",
        "toolCalls": [
            {"name": "find_flight", "arguments": {"destination": "Lima"}},
            {"name": "book_hotel", "arguments": {"city": "Lima", "nights": 2}},
        ],
        "reply": "Your trip is ready:\n{tool_result}",
    },
    {"match": r"2 \+ 2", "models": ["good-model"], "reply": "2 + 2 = 4"},
    {"match": r"2 \+ 2", "models": ["bad-model"], "reply": "2 + 2 = 5"},
    {
        "match": r"flip",
        "toolCall": {"name": "find_flight", "arguments": {"destination": "Rome"}},
        "correct": {"k": 3, "n": 5, "seed": 7},
        "reply": "heads ({tool_result})",
        "wrongReply": "tails ({tool_result})",
    },
    *DEFAULT_SCRIPT,
]

ModelFactory = Callable[[ScriptedModelServer, str], Model]


def ollama_model(server: ScriptedModelServer, model_id: str) -> Model:
    return OllamaModel(host=server.url, model_id=model_id)


def bedrock_model(server: ScriptedModelServer, model_id: str) -> Model:
    return BedrockModel(
        model_id=model_id,
        endpoint_url=server.url,
        region_name=REGION,
        boto_client_config=Config(retries={"total_max_attempts": 1}),
    )


def bedrock_converse_model(server: ScriptedModelServer, model_id: str) -> Model:
    return BedrockModel(
        model_id=model_id,
        endpoint_url=server.url,
        region_name=REGION,
        streaming=False,
        boto_client_config=Config(retries={"total_max_attempts": 1}),
    )


MODELS = pytest.mark.parametrize(
    "make_model",
    [ollama_model, bedrock_model, bedrock_converse_model],
    ids=["ollama", "bedrock-stream", "bedrock-converse"],
)


@pytest.fixture(autouse=True)
def dummy_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # The scripted model accepts any signature; these keep botocore off real credentials.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSCRIPTEDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "scripted-test-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer.from_script(SCRIPT) as running:
        yield running


class TravelDesk:
    """Two tools that note every call, so a test sees what the agent really ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

        @tool
        def find_flight(destination: str) -> str:
            """Find a flight.

            Args:
                destination: Where to fly.
            """
            self.calls.append(("find_flight", {"destination": destination}))
            return f"flight LA-1 to {destination}"

        @tool
        def book_hotel(city: str, nights: int) -> str:
            """Book a hotel.

            Args:
                city: Where.
                nights: How many nights.
            """
            self.calls.append(("book_hotel", {"city": city, "nights": nights}))
            return f"hotel Sol in {city} for {nights} nights"

        self.tools = [find_flight, book_hotel]


def model_calls(server: ScriptedModelServer) -> int:
    return len(server.requests) + len(server.bedrock_requests)


# --------------------------------------------------------------------------- agents


@MODELS
def test_agent_calls_the_scripted_tools_in_order_and_quotes_the_results(
    server: ScriptedModelServer, make_model: ModelFactory
) -> None:
    desk = TravelDesk()
    agent = Agent(model=make_model(server, "scripted"), tools=desk.tools, callback_handler=None)

    result = agent("Please plan a trip to Lima")

    assert desk.calls == [
        ("find_flight", {"destination": "Lima"}),
        ("book_hotel", {"city": "Lima", "nights": 2}),
    ]
    expected = "Your trip is ready:\nflight LA-1 to Lima\nhotel Sol in Lima for 2 nights"
    assert str(result).strip() == expected
    assert model_calls(server) == 3  # one per tool, then the answer
    # Usage reached strands on every call: a tool call counts one output token.
    usage = result.metrics.accumulated_usage
    answer_tokens = len(split_into_chunks(expected))
    assert usage["outputTokens"] == 1 + 1 + answer_tokens
    assert usage["inputTokens"] > 0
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]


@MODELS
def test_the_same_server_plays_a_right_and_a_wrong_model(
    server: ScriptedModelServer, make_model: ModelFactory
) -> None:
    answers = {
        model_id: str(Agent(model=make_model(server, model_id), callback_handler=None)("2 + 2?"))
        for model_id in ("good-model", "bad-model")
    }
    assert {model_id: text.strip() for model_id, text in answers.items()} == {
        "good-model": "2 + 2 = 4",
        "bad-model": "2 + 2 = 5",
    }


@MODELS
def test_k_of_n_holds_over_agent_runs_that_use_a_tool(
    server: ScriptedModelServer, make_model: ModelFactory
) -> None:
    desk = TravelDesk()
    answers = [
        str(
            Agent(model=make_model(server, "coin"), tools=desk.tools, callback_handler=None)("flip")
        )
        for _ in range(10)
    ]

    # Each run is one conversation of two calls, counted once: 3 of every 5 are right.
    right = [answer.startswith("heads") for answer in answers]
    assert sum(right[:5]) == 3 and sum(right[5:]) == 3
    assert all(answer.rstrip().endswith("(flight LA-1 to Rome)") for answer in answers)
    assert len(desk.calls) == 10


def test_the_demo_weather_agent_calls_get_weather() -> None:
    cities: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Get the weather of a city.

        Args:
            city: The city.
        """
        cities.append(city)
        return "sunny, 21 degrees"

    with ScriptedModelServer() as running:
        agent = Agent(
            model=ollama_model(running, "scripted"), tools=[get_weather], callback_handler=None
        )
        answer = str(agent("What is the weather in Paris today?")).strip()
    assert cities == ["Paris"]
    assert answer == "The weather in Paris is sunny, 21 degrees."


# --------------------------------------------------------------------------- the judge


@MODELS
@pytest.mark.parametrize(
    ("rubric", "verdict"),
    [("Pass if it greets the user.", PASSING), ("Pass if it names a city.", FAILING)],
    ids=["passing", "failing"],
)
def test_output_evaluator_gets_the_scripted_verdict(
    server: ScriptedModelServer, make_model: ModelFactory, rubric: str, verdict: dict[str, Any]
) -> None:
    evaluator: OutputEvaluator[str, str] = OutputEvaluator(
        rubric=rubric, model=make_model(server, "judge")
    )
    case = EvaluationData(input="Say hello", actual_output="Hello! I am a scripted model.")

    [output] = evaluator.evaluate(case)

    assert (output.score, output.test_pass, output.reason) == (
        verdict["score"],
        verdict["test_pass"],
        verdict["reason"],
    )
    # The judge called the structured-output tool strands offered and stopped there.
    assert model_calls(server) == 1


@MODELS
def test_structured_output_answers_carry_usage(
    server: ScriptedModelServer, make_model: ModelFactory
) -> None:
    agent = Agent(model=make_model(server, "judge"), callback_handler=None)
    prompt = "<Output>Hi</Output>\n<Rubric>Pass if it greets the user.</Rubric>"

    result = agent(prompt, structured_output_model=EvaluationOutput)

    assert isinstance(result.structured_output, EvaluationOutput)
    assert result.structured_output.test_pass is True
    usage = result.metrics.accumulated_usage
    assert usage["outputTokens"] == 1
    assert usage["inputTokens"] >= len(prompt.split())


@pytest.mark.parametrize("make_model", [ollama_model, bedrock_model], ids=["ollama", "bedrock"])
@pytest.mark.parametrize(
    ("question", "passed"),
    [("What is the capital of France?", True), ("What is the capital of Peru?", False)],
    ids=["demo-answer", "other-answer"],
)
def test_the_demo_judge_passes_the_demo_answers_only(
    make_model: ModelFactory, question: str, passed: bool
) -> None:
    with ScriptedModelServer() as running:
        answer = str(Agent(model=make_model(running, "scripted"), callback_handler=None)(question))
        evaluator: OutputEvaluator[str, str] = OutputEvaluator(
            rubric="Pass if the answer is correct.", model=make_model(running, "scripted")
        )
        [output] = evaluator.evaluate(EvaluationData(input=question, actual_output=answer))
    assert output.test_pass is passed
    assert output.score == (1.0 if passed else 0.0)
    assert output.reason
