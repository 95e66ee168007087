"""The API server itself refuses bad AgentTests, with a message naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from support import Kube, agent_test

SOURCE = "from strands import Agent\nagent = Agent()\n"


def valid() -> dict[str, Any]:
    return agent_test("valid", SOURCE, "http://127.0.0.1:11434")


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


# The API server names the item it refuses.
REQ_0 = "spec.agent.requirements[0] in body should match"
REQ_1 = "spec.agent.requirements[1] in body should match"


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
        "spec.model.region is required when provider is bedrock",
    ),
    "ollama without endpoint": (
        with_model(provider="ollama", modelId="llama3"),
        "spec.model.endpoint is required when provider is ollama",
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
}


@pytest.mark.parametrize("manifest,message", INVALID.values(), ids=INVALID.keys())
def test_invalid_spec_is_refused_by_kubectl_apply(
    kube: Kube, manifest: dict[str, Any], message: str
) -> None:
    result = kube.apply(manifest, check=False)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr
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


def test_explain_teaches_the_api(kube: Kube) -> None:
    explained = kube.run("explain", "agenttest.spec.model").stdout
    assert "Model provider: ollama or bedrock." in explained
    assert "Required for bedrock." in explained


def test_short_name_and_category(kube: Kube) -> None:
    kube.apply(valid())
    assert "valid" in kube.run("get", "at").stdout
    assert "valid" in kube.run("get", "agenttest", "valid").stdout
    assert "valid" in kube.run("describe", "agenttest", "valid").stdout
    assert "agenttest.agenttest.dev/valid" in kube.run("get", "agenttesting", "-o", "name").stdout
