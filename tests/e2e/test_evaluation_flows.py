"""Evaluation worth gating on, end to end: kubectl -> operator -> judge -> status.

Every expectation, trials with a k-of-n scripted model, a model matrix and judge
rubrics, on the real API server with the local backend and a real Strands agent
whose @tool functions the scripted model really calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from agenttest.runner.trials import wilson_interval
from agenttest_dev.modelserver import ScriptedModelServer

from support import ROOT, Kube, Operator, agent_test

StartOperator = Callable[..., Operator]

WEATHER_AGENT = '''
from strands import Agent, tool

@tool
def lookup_city(name: str) -> str:
    """Find a city.

    Args:
        name: The city's name.
    """
    return f"{name} (FR)"

@tool
def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: The city.
    """
    return "sunny, 21 C"

def agent(model):
    return Agent(model=model, tools=[lookup_city, get_weather])
'''

SCRIPT: list[dict[str, Any]] = [
    # The judge's prompts (OutputEvaluator puts the rubric in <Rubric>) come first.
    {
        "match": r"<Rubric>.*mentions the temperature",
        "structuredOutput": {"score": 0.9, "test_pass": True, "reason": "Gives 21 C."},
    },
    {
        "match": r"<Rubric>.*mentions the Eiffel tower",
        "structuredOutput": {
            "score": 0.2,
            "test_pass": False,
            "reason": "Says nothing about the Eiffel tower.",
        },
    },
    {
        "match": r"weather in paris",
        "toolCalls": [
            {"name": "lookup_city", "arguments": {"name": "Paris"}},
            {"name": "get_weather", "arguments": {"city": "Paris"}},
        ],
        "reply": "The weather in Paris is {tool_result}.",
    },
    {"match": r"as json", "reply": '{"city": "Paris", "population": 2100000}'},
    {"match": r"just the city", "reply": "Paris"},
    # A k-of-n model: 3 right answers in every 5 conversations.
    {
        "match": r"capital of italy",
        "correct": {"k": 3, "n": 5, "seed": 11},
        "reply": "Rome",
        "wrongReply": "Milan",
    },
    # A matrix: the model "good" knows, the model "bad" does not.
    {"match": r"capital of spain", "models": ["good"], "reply": "Madrid"},
    {"match": r"capital of spain", "models": ["bad"], "reply": "Barcelona"},
]

PRICES = json.dumps({"scripted": {"inputPerMillion": 3.0, "outputPerMillion": 15.0}})


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer.from_script(SCRIPT) as server:
        yield server


def weather_case(name: str, **expect: Any) -> dict[str, Any]:
    return {"name": name, "query": "What is the weather in Paris?", "expect": expect}


def failures_by_case(status: dict[str, Any]) -> dict[str, list[str]]:
    return {case["name"]: case["failures"] for case in status["cases"]}


def test_every_expectation_passes_and_fails_for_the_reason_it_names(
    kube: Kube, start_operator: StartOperator, model: ScriptedModelServer
) -> None:
    start_operator(model_prices=PRICES)
    schema = {
        "type": "object",
        "required": ["city", "population"],
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    }
    passing = [
        weather_case(
            "tools",
            toolCalled=["get_weather"],
            toolNotCalled=["delete_everything"],
            toolSequence={"tools": ["lookup_city", "get_weather"], "match": "exact"},
            maxToolCalls=2,
            maxTokens=1000,
            maxCostUSD=0.01,
            startsWith="the weather",
        ),
        {"name": "json", "query": "Paris as JSON", "expect": {"jsonSchema": schema}},
        {"name": "equals", "query": "Just the city", "expect": {"equals": "paris"}},
    ]
    failing = [
        weather_case(
            "tools",
            toolCalled=["get_time"],
            toolNotCalled=["lookup_city"],
            toolSequence={"tools": ["get_weather", "lookup_city"], "match": "inOrder"},
            maxToolCalls=1,
            maxTokens=5,
            maxCostUSD=0.01,
            startsWith="Sunny",
        ),
        {
            "name": "json",
            "query": "Paris as JSON",
            "expect": {"jsonSchema": {**schema, "required": ["country"]}},
        },
        {"name": "equals", "query": "Just the city", "expect": {"equals": "Lyon"}},
    ]
    kube.apply(agent_test("passes", WEATHER_AGENT, model.url, cases=passing))
    unpriced = agent_test("fails", WEATHER_AGENT, model.url, cases=failing)
    unpriced["spec"]["model"]["modelId"] = "unpriced"
    kube.apply(unpriced)

    passed = kube.wait_for_phase("passes", "Succeeded", "Failed", "Error")["status"]
    assert passed["phase"] == "Succeeded", passed.get("message")
    tools = passed["cases"][0]
    assert tools["toolCalls"] == ["lookup_city", "get_weather"]
    assert tools["modelCalls"] == 3  # two tool-use turns, then the answer

    failed = kube.wait_for_phase("fails", "Succeeded", "Failed", "Error")["status"]
    assert failed["phase"] == "Failed"
    tokens = sum(failed["cases"][0]["tokens"].values())
    assert failures_by_case(failed) == {
        "tools": [
            # The scripted model joins the two tool results with a newline.
            'startsWith "Sunny": the answer starts "The weather in Paris is Paris (FR)\\nsunn…"',
            'toolCalled "get_time": not called (lookup_city, get_weather)',
            'toolNotCalled "lookup_city": called 1 time(s)',
            "toolSequence inOrder [get_weather, lookup_city]: observed [lookup_city, get_weather]",
            "maxToolCalls 1: observed 2",
            f"maxTokens 5: observed {tokens} ({failed['cases'][0]['tokens']['input']} input + "
            f"{failed['cases'][0]['tokens']['output']} output)",
            'maxCostUSD 0.01: model "unpriced" has no price in the operator\'s price table '
            "(AGENTTEST_MODEL_PRICES)",
        ],
        "json": ["jsonSchema: (root): 'country' is a required property"],
        "equals": ['equals "Lyon": the answer is "Paris"'],
    }
    # The priced model's cost is in its summary; the unpriced one has none.
    [priced] = passed["models"]
    assert priced["costUSD"] > 0 and priced["modelId"] == "scripted"
    assert "costUSD" not in failed["models"][0]


def test_trials_give_the_exact_pass_rate_interval_and_a_flaky_warning(
    kube: Kube, start_operator: StartOperator, model: ScriptedModelServer
) -> None:
    start_operator()
    case = {"name": "italy", "query": "The capital of Italy?", "expect": {"equals": "Rome"}}
    # Each test its own model id: the k-of-n count is kept per model.
    lenient = agent_test("lenient", WEATHER_AGENT, model.url, cases=[case], trials=5)
    lenient["spec"]["passThreshold"] = 0.6
    lenient["spec"]["model"]["modelId"] = "kofn-lenient"
    strict = agent_test("strict", WEATHER_AGENT, model.url, cases=[case], trials=5)
    strict["spec"]["passThreshold"] = 0.8
    strict["spec"]["model"]["modelId"] = "kofn-strict"
    kube.apply(lenient, strict)

    low, high = wilson_interval(3, 5)
    for name, phase in (("lenient", "Succeeded"), ("strict", "Failed")):
        status = kube.wait_for_phase(name, "Succeeded", "Failed", "Error")["status"]
        assert status["phase"] == phase, status.get("message")
        [italy] = status["cases"]
        assert (italy["passes"], italy["trials"], italy["passRate"]) == (3, 5, 0.6)
        assert italy["interval"] == {"low": round(low, 4), "high": round(high, 4)}
        assert italy["flaky"] is True
        assert italy["failures"] == ['equals "Rome": the answer is "Milan" (2 of 5 trials)']
        assert status["casesPassed"] == ("1/1 (60%)" if phase == "Succeeded" else "0/1 (60%)")
        assert "60% of 5 trials" in status["summary"]
        # Named in a Warning Event, even when the test passed.
        [event] = kube.wait_for(
            f"the FlakyCases event of {name}", lambda n=name: kube.events(n, "FlakyCases")
        )
        assert event["type"] == "Warning" and "italy 3/5" in event["message"]
    # The interval is the Wilson score interval, not the normal approximation.
    assert (round(low, 3), round(high, 3)) == (0.231, 0.882)
    columns = kube.run("get", "agenttest", "lenient").stdout
    assert "1/1 (60%)" in columns


def matrix_test(name: str, url: str, policy: str) -> dict[str, Any]:
    case = {"name": "spain", "query": "The capital of Spain?", "expect": {"contains": ["Madrid"]}}
    manifest = agent_test(name, WEATHER_AGENT, url, cases=[case], trials=2)
    del manifest["spec"]["model"]
    manifest["spec"]["models"] = [
        {"name": "good", "provider": "ollama", "modelId": "good", "endpoint": url},
        {"name": "bad", "provider": "ollama", "modelId": "bad", "endpoint": url},
    ]
    manifest["spec"]["matrixPolicy"] = policy
    return manifest


def test_a_two_model_matrix_where_one_fails(
    kube: Kube, start_operator: StartOperator, model: ScriptedModelServer
) -> None:
    start_operator()
    kube.apply(matrix_test("all", model.url, "all"), matrix_test("any", model.url, "any"))
    every = kube.wait_for_phase("all", "Succeeded", "Failed", "Error")["status"]
    assert every["phase"] == "Failed"
    assert every["message"].startswith("models passed: good (matrixPolicy all)")
    some = kube.wait_for_phase("any", "Succeeded", "Failed", "Error")["status"]
    assert some["phase"] == "Succeeded", some.get("message")
    for status in (every, some):
        assert [(c["name"], c["model"], c["passed"]) for c in status["cases"]] == [
            ("spain", "good", True),
            ("spain", "bad", False),
        ]
        good, bad = status["models"]
        assert (good["name"], good["passed"], good["passRate"], good["casesPassed"]) == (
            "good", True, 1.0, "1/1",
        )  # fmt: skip
        assert (bad["name"], bad["passed"], bad["passRate"]) == ("bad", False, 0.0)
        assert good["latencySeconds"]["p95"] >= good["latencySeconds"]["mean"] > 0
        assert good["tokens"]["output"] > 0
        assert status["cases"][1]["failures"] == [
            'contains "Madrid": not found in answer (2 of 2 trials)'
        ]


def test_a_judge_rubric_passes_or_fails_with_the_judges_reason(
    kube: Kube, start_operator: StartOperator, model: ScriptedModelServer
) -> None:
    start_operator()
    cases = [
        weather_case("temperature", judge={"rubric": "The answer mentions the temperature."}),
        weather_case(
            "landmark", judge={"rubric": "The answer mentions the Eiffel tower.", "threshold": 0.5}
        ),
    ]
    kube.apply(agent_test("judged", WEATHER_AGENT, model.url, cases=cases))
    status = kube.wait_for_phase("judged", "Succeeded", "Failed", "Error")["status"]
    assert status["phase"] == "Failed"
    temperature, landmark = status["cases"]
    assert temperature["passed"] is True
    assert temperature["judge"] == {"score": 0.9, "reason": "Gives 21 C."}
    assert landmark["passed"] is False
    assert landmark["judge"] == {"score": 0.2, "reason": "Says nothing about the Eiffel tower."}
    assert landmark["failures"] == [
        "judge: score 0.20 below 0.5: Says nothing about the Eiffel tower."
    ]
    # The judge's own model calls are not the agent's: the agent made three.
    assert temperature["modelCalls"] == 3


def test_the_evaluation_sample_passes_against_the_demo_model(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    start_operator()
    manifest = yaml.safe_load(
        (ROOT / "manifests" / "samples" / "agenttest-evaluation.yaml").read_text()
    )
    manifest["spec"]["model"]["endpoint"] = model_server.url
    kube.apply(manifest)
    status = kube.wait_for_phase("weather-agent", "Succeeded", "Failed", "Error")["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    weather, capital = status["cases"]
    assert (weather["passes"], weather["trials"], weather["flaky"]) == (3, 3, False)
    assert weather["toolCalls"] == ["get_weather"]
    assert weather["judge"]["score"] == 1.0 and capital["judge"]["score"] == 1.0
    assert status["casesPassed"] == "2/2 (100%)"
