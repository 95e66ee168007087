"""The API server itself refuses bad AgentTests, with a message naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from support import Kube, agent_test

SOURCE = "from strands import Agent\nagent = Agent()\n"
ENDPOINT = "http://127.0.0.1:11434"


def valid() -> dict[str, Any]:
    return agent_test("valid", SOURCE, ENDPOINT)


def with_spec(**changes: Any) -> dict[str, Any]:
    manifest = valid()
    manifest["spec"].update(copy.deepcopy(changes))
    return manifest


def with_model(**model: Any) -> dict[str, Any]:
    return with_spec(model=model)


def case(name: str) -> dict[str, Any]:
    return {"name": name, "query": "hi"}


def with_requirements(*requirements: str) -> dict[str, Any]:
    return with_spec(agent={"source": {"inline": SOURCE}, "requirements": list(requirements)})


def entry(name: str, **fields: Any) -> dict[str, Any]:
    """One spec.models entry: the scripted model under a name, unless told otherwise."""
    return {
        "name": name,
        "provider": "ollama",
        "modelId": "scripted",
        "endpoint": ENDPOINT,
        **fields,
    }


def with_models(*entries: dict[str, Any]) -> dict[str, Any]:
    """A matrix instead of spec.model (none at all without entries)."""
    manifest = with_spec(models=list(entries)) if entries else valid()
    del manifest["spec"]["model"]
    return manifest


def with_expect(**expect: Any) -> dict[str, Any]:
    return with_spec(cases=[{"name": "c", "query": "hi", "expect": expect}])


# The API server names the item it refuses.
REQ_0 = "spec.agent.requirements[0] in body should match"
REQ_1 = "spec.agent.requirements[1] in body should match"
EXPECT = "spec.cases[0].expect"
EXACTLY_ONE_MODEL = 'spec: Invalid value: "object": spec must set exactly one of model and models'


INVALID = {
    "timeout too long": (with_spec(timeoutSeconds=601), "spec.timeoutSeconds"),
    "timeout zero": (with_spec(timeoutSeconds=0), "spec.timeoutSeconds"),
    "unknown backend": (with_spec(backend="lambda"), 'spec.backend: Unsupported value: "lambda"'),
    "unknown provider": (
        with_model(provider="openai", modelId="gpt"),
        'spec.model.provider: Unsupported value: "openai"',
    ),
    "bedrock without region": (
        with_model(provider="bedrock", modelId="anthropic.claude"),
        "spec.model: Required value: region is required when provider is bedrock",
    ),
    "ollama without endpoint": (
        with_model(provider="ollama", modelId="llama3"),
        "spec.model: Required value: endpoint is required when provider is ollama",
    ),
    "no cases": (with_spec(cases=[]), "spec.cases"),
    "51 cases": (with_spec(cases=[case(f"c{i}") for i in range(51)]), "spec.cases"),
    "duplicate case names": (with_spec(cases=[case("a"), case("a")]), "spec.cases[1]: Duplicate"),
    "two agent sources": (
        with_spec(agent={"source": {"inline": SOURCE, "configMapRef": {"name": "agent"}}}),
        "spec.agent.source must set exactly one of inline, configMapRef or s3",
    ),
    "no agent source": (
        with_spec(agent={"source": {}}),
        "spec.agent.source must set exactly one of inline, configMapRef or s3",
    ),
    # One requirement per string: whitespace would smuggle a second requirement or a
    # pip option in after it, a line break a line of its own into requirements.txt.
    "requirement with a space": (with_requirements("ok==1", "x --index-url=http://e"), REQ_1),
    "requirement with a newline": (with_requirements("x\n--index-url=http://e"), REQ_0),
    "requirement with a tab": (with_requirements("x\t==1"), REQ_0),
    "requirement with a bidi override": (with_requirements("x\u202e==1"), REQ_0),
    "requirement that is a pip option": (with_requirements("--extra-index-url=http://e"), REQ_0),
    # Trials, k-of-n and the model matrix.
    "no trials": (with_spec(trials=0), "spec.trials"),
    "21 trials": (with_spec(trials=21), "spec.trials"),
    "pass threshold above 1": (with_spec(passThreshold=1.5), "spec.passThreshold"),
    "negative pass threshold": (with_spec(passThreshold=-0.1), "spec.passThreshold"),
    "both model and models": (with_spec(models=[entry("a")]), EXACTLY_ONE_MODEL),
    "neither model nor models": (with_models(), EXACTLY_ONE_MODEL),
    "six models": (
        with_models(*(entry(f"m{i}") for i in range(6))),
        "spec.models: Too many: 6: must have at most 5 items",
    ),
    "duplicate model names": (
        with_models(entry("a"), entry("a")),
        'spec.models[1]: Duplicate value: {"name":"a"}',
    ),
    "model entry without a name": (
        with_models({k: v for k, v in entry("a").items() if k != "name"}),
        "spec.models[0].name: Required value",
    ),
    "upper-case model name": (
        with_models(entry("Big")),
        "spec.models[0].name in body should match",
    ),
    "unknown matrix policy": (
        with_spec(matrixPolicy="most"),
        'spec.matrixPolicy: Unsupported value: "most"',
    ),
    # The model shape's rules hold for every entry and for the judge's model, named by path.
    "bedrock entry without region": (
        with_models(entry("a"), entry("b", provider="bedrock", modelId="anthropic.claude")),
        "spec.models[1]: Required value: region is required when provider is bedrock",
    ),
    "bedrock judge model without region": (
        with_spec(judgeModel={"provider": "bedrock", "modelId": "anthropic.claude"}),
        "spec.judgeModel: Required value: region is required when provider is bedrock",
    ),
    # Model credentials: a Secret's name, wherever a model is described.
    "credentials secret name with upper case": (
        with_model(
            provider="ollama",
            modelId="m",
            endpoint=ENDPOINT,
            credentialsSecretRef={"name": "Model-Key"},
        ),
        "spec.model.credentialsSecretRef.name in body should match",
    ),
    "credentials secret without a name": (
        with_models(entry("a", credentialsSecretRef={})),
        "spec.models[0].credentialsSecretRef.name: Required value",
    ),
    "judge model credentials secret name with a slash": (
        with_spec(
            judgeModel={
                "provider": "ollama",
                "modelId": "m",
                "endpoint": ENDPOINT,
                "credentialsSecretRef": {"name": "ns/key"},
            }
        ),
        "spec.judgeModel.credentialsSecretRef.name in body should match",
    ),
    # Expectations.
    "unknown tool sequence match": (
        with_expect(toolSequence={"tools": ["a"], "match": "random"}),
        f'{EXPECT}.toolSequence.match: Unsupported value: "random"',
    ),
    "tool sequence without tools": (
        with_expect(toolSequence={"tools": []}),
        f"{EXPECT}.toolSequence.tools",
    ),
    "tool name with a space": (
        with_expect(toolCalled=["get weather"]),
        f"{EXPECT}.toolCalled[0] in body should match",
    ),
    "negative max tool calls": (with_expect(maxToolCalls=-1), f"{EXPECT}.maxToolCalls"),
    "zero max tokens": (with_expect(maxTokens=0), f"{EXPECT}.maxTokens"),
    "zero max cost": (with_expect(maxCostUSD=0), f"{EXPECT}.maxCostUSD"),
    "judge without rubric": (
        with_expect(judge={"threshold": 0.5}),
        f"{EXPECT}.judge.rubric: Required value",
    ),
    "judge threshold above 1": (
        with_expect(judge={"rubric": "polite", "threshold": 2}),
        f"{EXPECT}.judge.threshold",
    ),
    # The JSON Schema keywords a schema most often gets wrong, caught at apply time.
    "json schema with a misspelt type": (
        with_expect(jsonSchema={"type": "strin"}),
        f'{EXPECT}.jsonSchema.type: Unsupported value: "strin"',
    ),
    "json schema required not a list": (
        with_expect(jsonSchema={"type": "object", "required": "a"}),
        f"{EXPECT}.jsonSchema.required",
    ),
    "json schema property not a schema": (
        with_expect(jsonSchema={"type": "object", "properties": {"a": 5}}),
        f"{EXPECT}.jsonSchema.properties.a",
    ),
}


@pytest.mark.parametrize("manifest,message", INVALID.values(), ids=INVALID.keys())
def test_invalid_spec_is_refused_by_kubectl_apply(
    kube: Kube, manifest: dict[str, Any], message: str
) -> None:
    result = kube.apply(manifest, check=False)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr
    assert not kube.get_all(), "nothing may be stored"


def test_inline_source_over_256_kib_is_refused(kube: Kube) -> None:
    # Server-side apply: client-side apply would first trip over its own
    # last-applied annotation, which is not what this test is about.
    big = "# padding\n" * (26 * 1024 + 1)
    result = kube.apply(with_spec(agent={"source": {"inline": big}}), check=False, server_side=True)
    assert result.returncode != 0
    assert "spec.agent.source.inline: Too long" in result.stderr


def test_single_requirements_of_every_form_are_accepted(kube: Kube) -> None:
    forms = ["requests>=2.31,<3", "pkg[extra]==1.0;python_version>='3.11'", "x@https://h/x.whl"]
    kube.apply(with_requirements(*forms))
    assert kube.get("valid")["spec"]["agent"]["requirements"] == forms


def test_valid_spec_is_accepted_with_defaults(kube: Kube) -> None:
    kube.apply(valid())
    stored = kube.get("valid")["spec"]
    assert stored["timeoutSeconds"] == 120
    assert stored["priority"] == 0
    assert stored["agent"]["entrypoint"] == "agent"
    assert stored["ttlSecondsAfterFinished"] == 604800


# Every new field at once; unknown JSON Schema keywords, nested, must come back unchanged.
NESTED_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "city": {
            "type": "object",
            "properties": {"name": {"type": "string", "minLength": 1}, "temp": {"type": "number"}},
            "required": ["name"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "required": ["cities", "unit"],
    "properties": {
        "cities": {"type": "array", "items": {"$ref": "#/$defs/city"}, "minItems": 1},
        "unit": {"anyOf": [{"const": "C"}, {"const": "F"}]},
        "note": {"type": ["string", "null"], "pattern": "^[^<>]*$", "enum": [None, "x"]},
        "range": {"type": "array", "prefixItems": [{"type": "number"}], "maximum": 1.5},
    },
    "additionalProperties": False,
    "if": {"properties": {"unit": {"const": "F"}}},
    "then": {"required": ["note"]},
    "x-vendor": {"anything": [1, "two", True]},
}

EVERY_EXPECTATION: dict[str, Any] = {
    "contains": ["Paris"],
    "equals": '{"cities": []}',
    "startsWith": "{",
    "jsonSchema": NESTED_SCHEMA,
    "toolCalled": ["get_weather"],
    "toolNotCalled": ["delete-everything"],
    "toolSequence": {"tools": ["get_weather", "format"], "match": "inOrder"},
    "maxToolCalls": 3,
    "maxTokens": 5000,
    "maxCostUSD": 0.25,
    "judge": {"rubric": "Names the city and its weather.", "threshold": 0.7, "includeQuery": False},
}


def test_every_new_field_at_once_is_accepted_and_kept(kube: Kube) -> None:
    manifest = with_models(entry("small"), entry("large", modelId="big", temperature=0.2))
    manifest["spec"].update(
        judgeModel={"provider": "bedrock", "modelId": "anthropic.claude", "region": "eu-west-1"},
        trials=5,
        passThreshold=0.8,
        matrixPolicy="any",
        cases=[{"name": "weather", "query": "Weather in Paris?", "expect": EVERY_EXPECTATION}],
    )
    kube.apply(manifest)
    stored = kube.get("valid")["spec"]
    assert stored["cases"][0]["expect"]["jsonSchema"] == NESTED_SCHEMA
    assert stored["cases"][0]["expect"] == {**EVERY_EXPECTATION, "caseSensitive": False}
    assert stored["models"] == manifest["spec"]["models"]
    assert stored["judgeModel"] == manifest["spec"]["judgeModel"]
    assert (stored["trials"], stored["passThreshold"], stored["matrixPolicy"]) == (5, 0.8, "any")
    assert "model" not in stored


def test_credentials_secret_refs_are_kept_for_every_model(kube: Kube) -> None:
    manifest = with_models(
        entry("small", credentialsSecretRef={"name": "ollama-token"}),
        entry("big", provider="bedrock", modelId="m", region="eu-west-1"),
    )
    manifest["spec"]["judgeModel"] = {
        "provider": "bedrock",
        "modelId": "anthropic.claude",
        "region": "eu-west-1",
        "credentialsSecretRef": {"name": "bedrock.keys"},
    }
    kube.apply(manifest)
    stored = kube.get("valid")["spec"]
    assert stored["models"][0]["credentialsSecretRef"] == {"name": "ollama-token"}
    assert "credentialsSecretRef" not in stored["models"][1]
    assert stored["judgeModel"]["credentialsSecretRef"] == {"name": "bedrock.keys"}


def test_new_fields_default(kube: Kube) -> None:
    kube.apply(valid())
    stored = kube.get("valid")["spec"]
    assert (stored["trials"], stored["passThreshold"], stored["matrixPolicy"]) == (1, 1, "all")
    assert stored["cases"][0]["expect"]["caseSensitive"] is False


def test_explain_teaches_the_api(kube: Kube) -> None:
    explained = kube.run("explain", "agenttest.spec.model").stdout
    assert "Model provider: ollama or bedrock." in explained
    assert "Required for bedrock." in explained


EXPLAINED = {
    "spec.trials": "Runs of every case, 1 to 20, each in a fresh conversation.",
    "spec.cases.expect.toolSequence": "The order of the observed tool calls.",
    "spec.cases.expect.toolSequence.match": "inOrder: these appear in this order",
    "spec.models": "A model matrix: every case runs against each of these 1 to 5 models",
    "spec.models.name": "Name of the entry, unique in the test",
    "spec.model.credentialsSecretRef": "only the judge's gateway uses",
    "spec.model.credentialsSecretRef.name": "labelled agenttest.dev/model-credentials=true",
}


@pytest.mark.parametrize("field,text", EXPLAINED.items(), ids=EXPLAINED.keys())
def test_explain_teaches_the_new_fields(kube: Kube, field: str, text: str) -> None:
    explained = " ".join(kube.run("explain", f"agenttest.{field}").stdout.split())
    assert text in explained


def test_short_name_and_category(kube: Kube) -> None:
    kube.apply(valid())
    assert "valid" in kube.run("get", "at").stdout
    assert "valid" in kube.run("get", "agenttest", "valid").stdout
    assert "valid" in kube.run("describe", "agenttest", "valid").stdout
    assert "agenttest.agenttest.dev/valid" in kube.run("get", "agenttesting", "-o", "name").stdout
