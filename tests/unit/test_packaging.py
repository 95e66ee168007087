"""The deployment package: rendered files, manifest, deterministic zip, limits.

The package is rendered from the sample AgentTest in manifests/samples/, the way the
operator would after that test passed.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from agenttest import packaging
from agenttest.models import AgentTestSpec
from agenttest.packaging import PackageInput

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "manifests" / "samples" / "agenttest.yaml"

VERSIONS = {"fastapi": "0.115.0", "uvicorn": "0.30.1", "ollama": "0.4.0"}
# What the judge listed where the agent ran (status.environment).
ENVIRONMENT = ["boto3==1.40.1", "ollama==0.5.9", "requests==2.32.4", "strands-agents==1.2.3"]
BEDROCK = {
    "provider": "bedrock",
    "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
    "region": "eu-west-1",
    "temperature": 0.2,
}
EXPECTED_FILES = {
    ".dockerignore",
    "Dockerfile",
    "README.md",
    "agent.py",
    "app.py",
    "cdk/app.py",
    "cdk/cdk.json",
    "cdk/requirements.txt",
    "cdk/stack.py",
    "manifest.json",
    "requirements.txt",
    "tests/__init__.py",
    "tests/cases.json",
    "tests/regression.py",
}


def sample_input(**changes: Any) -> PackageInput:
    spec = yaml.safe_load(SAMPLE.read_text())["spec"]
    suite = [case.wire() for case in AgentTestSpec.model_validate(spec).cases]
    inp = PackageInput(
        agent_source=spec["agent"]["source"]["inline"],
        entrypoint=spec["agent"]["entrypoint"],
        requirements=["strands-agents-tools==0.2.1", "requests>=2.31;python_version>='3.11'"],
        model=spec["model"],
        cases=[
            {"name": "greets", "passed": True, "latencySeconds": 0.42},
            {"name": "knows-capitals", "passed": True, "latencySeconds": 1.5},
        ],
        summary="2/2 cases passed",
        namespace="team-a",
        name="hello-agent",
        uid="6f1c2a9e-0000-4000-8000-000000000001",
        attempt=2,
        tested_at="2025-06-01T12:00:00Z",
        environment=ENVIRONMENT,
        versions=VERSIONS,
        suite=suite,
    )
    return dataclasses.replace(inp, **changes)


def module_constants(source: bytes) -> dict[str, Any]:
    """The module-level NAME = <literal> assignments of a Python file."""
    constants: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            # ValueError: not a literal (a call, a name); such constants are not compared.
            if isinstance(target, ast.Name):
                with contextlib.suppress(ValueError):
                    constants[target.id] = ast.literal_eval(node.value)
    return constants


def requirement_lines(text: bytes) -> list[str]:
    lines = (line.strip() for line in text.decode().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# --------------------------------------------------------------------------- files


def test_zip_holds_exactly_the_manifest_files_with_matching_checksums() -> None:
    files = packaging.render(sample_input())
    archive = zipfile.ZipFile(io.BytesIO(packaging.build_zip(files)))
    manifest = json.loads(archive.read("manifest.json"))

    listed = {entry["path"] for entry in manifest["files"]}
    assert "manifest.json" not in listed
    assert set(archive.namelist()) == listed | {"manifest.json"} == EXPECTED_FILES
    for entry in manifest["files"]:
        content = archive.read(entry["path"])
        assert packaging.sha256_hex(content) == entry["sha256"], entry["path"]
        assert len(content) == entry["size"]


def test_manifest_names_its_source_model_and_results() -> None:
    manifest = json.loads(packaging.render(sample_input())["manifest.json"])
    assert manifest["source"] == {
        "kind": "AgentTest",
        "namespace": "team-a",
        "name": "hello-agent",
        "uid": "6f1c2a9e-0000-4000-8000-000000000001",
        "attempt": 2,
        "testedAt": "2025-06-01T12:00:00Z",
    }
    assert manifest["model"]["provider"] == "ollama"
    assert manifest["model"]["modelId"] == "llama3.1:8b"
    assert manifest["test"]["summary"] == "2/2 cases passed"
    assert [case["name"] for case in manifest["test"]["cases"]] == ["greets", "knows-capitals"]


def test_agent_py_is_the_tested_source_byte_for_byte() -> None:
    source = "# ünïcode and trailing spaces   \nfrom strands import Agent\nagent = Agent()\n"
    assert packaging.render(sample_input(agent_source=source))["agent.py"] == source.encode()


def test_every_python_file_compiles() -> None:
    for inp in (sample_input(), sample_input(model=BEDROCK)):
        for path, content in packaging.render(inp).items():
            if path.endswith(".py"):
                compile(content, path, "exec")


def test_json_files_parse() -> None:
    files = packaging.render(sample_input())
    assert json.loads(files["cdk/cdk.json"])["app"] == "python3 app.py"


def test_regression_cases_are_the_specs_queries_and_expectations() -> None:
    cases = json.loads(packaging.render(sample_input())["tests/cases.json"])
    assert cases["agentTest"] == "team-a/hello-agent"
    assert [(c["name"], c["query"]) for c in cases["cases"]] == [
        ("greets", "Say hello to the user."),
        ("knows-capitals", "What is the capital of France?"),
    ]
    assert cases["cases"][1]["expect"]["contains"] == ["Paris"]
    assert cases["cases"][1]["expect"]["notContains"] == ["London"]


def test_cdk_app_pins_an_aws_cdk_lib_with_agentcore() -> None:
    # 2.275.0 is what the package's CDK app is synthesized with in the tests.
    pins = requirement_lines(packaging.render(sample_input())["cdk/requirements.txt"])
    assert "aws-cdk-lib>=2.275.0,<3" in pins


def test_awkward_model_id_stays_a_python_string() -> None:
    model_id = "we\"ird\\model's id 🦙"
    files = packaging.render(sample_input(model={**BEDROCK, "modelId": model_id}))
    assert module_constants(files["app.py"])["DEFAULT_MODEL_ID"] == model_id
    assert module_constants(files["cdk/stack.py"])["MODEL_ID"] == model_id


# --------------------------------------------------------------------------- determinism


def test_same_input_gives_the_same_zip_bytes() -> None:
    first = packaging.build_zip(packaging.render(sample_input()))
    second = packaging.build_zip(packaging.render(sample_input()))
    assert first == second


def test_zip_entries_have_fixed_time_and_permissions() -> None:
    archive = zipfile.ZipFile(io.BytesIO(packaging.build_zip({"b": b"2", "a/x": b"1"})))
    assert archive.namelist() == ["a/x", "b"]  # sorted, whatever the dict order
    for info in archive.infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr >> 16 == 0o100644
        assert info.compress_type == zipfile.ZIP_DEFLATED


def test_different_input_gives_a_different_checksum() -> None:
    first = packaging.build_zip(packaging.render(sample_input()))
    second = packaging.build_zip(packaging.render(sample_input(attempt=3)))
    assert packaging.sha256_hex(first) != packaging.sha256_hex(second)


# --------------------------------------------------------------------------- templates


def test_a_missing_template_variable_is_an_error(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(packaging.REPO_TEMPLATES_DIR, templates)
    (templates / "NOTES.md.j2").write_text("Tested by {{ tester }}\n")
    with pytest.raises(jinja2.UndefinedError, match="tester"):
        packaging.render(sample_input(), templates)


def test_real_templates_fail_on_an_empty_context() -> None:
    environment = packaging.template_environment(packaging.REPO_TEMPLATES_DIR)
    with pytest.raises(jinja2.UndefinedError):
        environment.get_template("app.py.j2").render({})


def test_plain_template_files_are_copied_and_j2_files_lose_the_suffix(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "plain.txt").write_bytes(b"{{ not rendered }}")
    (tmp_path / "hello.txt.j2").write_text("{{ name }} attempt {{ attempt }}\n")
    files = packaging.render(sample_input(), tmp_path)
    assert files["sub/plain.txt"] == b"{{ not rendered }}"
    assert files["hello.txt"] == b"hello-agent attempt 2\n"
    generated = {"agent.py", "manifest.json", "tests/cases.json"}
    assert set(files) == {"hello.txt", "sub/plain.txt", *generated}


def test_a_template_may_not_replace_agent_py(tmp_path: Path) -> None:
    (tmp_path / "agent.py.j2").write_text("print('not the tested code')\n")
    with pytest.raises(ValueError, match=r"agent\.py"):
        packaging.render(sample_input(), tmp_path)


def test_templates_dir_comes_from_the_environment(tmp_path: Path) -> None:
    assert packaging.templates_dir({}) == packaging.REPO_TEMPLATES_DIR
    assert packaging.templates_dir({"AGENTTEST_TEMPLATES_DIR": str(tmp_path)}) == tmp_path


def test_missing_templates_dir_says_which_setting_to_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="AGENTTEST_TEMPLATES_DIR"):
        packaging.render(sample_input(), tmp_path / "nowhere")


# --------------------------------------------------------------------------- requirements


def test_requirements_pin_what_the_run_had_then_the_service_then_the_agents_own() -> None:
    lines = requirement_lines(packaging.render(sample_input())["requirements.txt"])
    assert lines == [
        # the run's environment, not the operator's versions (its ollama is not 0.4.0)
        "boto3==1.40.1",
        "ollama==0.5.9",
        "requests==2.32.4",
        "strands-agents==1.2.3",
        # app.py's own, which the run did not have
        "fastapi==0.115.0",
        "uvicorn==0.30.1",
        "strands-agents-tools==0.2.1",
        "requests>=2.31;python_version>='3.11'",
    ]


def test_bedrock_package_adds_no_ollama_and_defaults_to_bedrock() -> None:
    # The service needs no ollama for bedrock; only a run that had it pins it.
    without = [pin for pin in ENVIRONMENT if not pin.startswith("ollama")]
    files = packaging.render(sample_input(model=BEDROCK, environment=without))
    assert not any(
        line.startswith("ollama") for line in requirement_lines(files["requirements.txt"])
    )
    defaults = module_constants(files["app.py"])
    assert defaults["DEFAULT_PROVIDER"] == "bedrock"
    assert defaults["DEFAULT_MODEL_ID"] == BEDROCK["modelId"]
    assert defaults["DEFAULT_AWS_REGION"] == "eu-west-1"
    assert defaults["DEFAULT_TEMPERATURE"] == 0.2
    stack = module_constants(files["cdk/stack.py"])
    assert (stack["MODEL_PROVIDER"], stack["MODEL_REGION"]) == ("bedrock", "eu-west-1")
    assert "DEFAULT_OLLAMA_ENDPOINT" not in stack


def test_ollama_package_defaults_to_the_tested_endpoint() -> None:
    files = packaging.render(sample_input())
    defaults = module_constants(files["app.py"])
    assert defaults["DEFAULT_PROVIDER"] == "ollama"
    assert defaults["DEFAULT_OLLAMA_ENDPOINT"] == "http://127.0.0.1:11434"
    assert defaults["DEFAULT_TEMPERATURE"] is None
    assert module_constants(files["cdk/stack.py"])["DEFAULT_OLLAMA_ENDPOINT"] == (
        "http://127.0.0.1:11434"
    )


def test_installed_versions_cover_every_service_package() -> None:
    versions = packaging.installed_versions()
    assert set(versions) == set(packaging.SERVICE_PACKAGES)
    assert all(re.fullmatch(r"\d+(\.\d+)+\S*", v) for v in versions.values()), versions


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": {"provider": "openai", "modelId": "x"}}, "provider"),
        ({"model": {"provider": "ollama", "modelId": "x"}}, "endpoint"),
        ({"model": {"provider": "bedrock", "modelId": "x"}}, "region"),
        ({"entrypoint": "make-agent"}, "identifier"),
        ({"requirements": ["ok==1\n--index-url http://elsewhere"]}, "single requirement"),
        ({"requirements": ["--extra-index-url=http://elsewhere"]}, "single requirement"),
        ({"attempt": 0}, "attempt"),
        ({"requirements": ["requests >=2"]}, "single requirement"),
        ({"requirements": ["requests\u2028>=2"]}, "single requirement"),
        ({"versions": {"uvicorn": "1.0"}}, "fastapi"),
        ({"environment": []}, "no installed distributions"),
        # Each entry is a line of requirements.txt: nothing but name==version gets there.
        ({"environment": [*ENVIRONMENT, "x==1\n--index-url=http://elsewhere"]}, "not name=="),
        ({"environment": [*ENVIRONMENT, "x @ https://elsewhere/x.whl"]}, "not name=="),
        ({"environment": ["boto3==1.40.1"]}, "does not list strands-agents"),
        ({"suite": [{"name": "no-query"}]}, "name and a query"),
    ],
)
def test_bad_input_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_input(**changes)


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_installs_requirements_before_copying_code_and_runs_uvicorn() -> None:
    dockerfile = packaging.render(sample_input())["Dockerfile"].decode()
    assert dockerfile.index("COPY requirements.txt") < dockerfile.index("RUN pip install")
    assert dockerfile.index("RUN pip install") < dockerfile.index("COPY agent.py app.py")
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)
    # AgentCore Runtime calls 8080.
    assert "EXPOSE 8080" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "127.0.0.1:8080/health" in dockerfile
    cmd = '["uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8080"]'
    assert dockerfile.rstrip().endswith(f"CMD {cmd}")


def test_dockerfile_builds_for_arm64_unless_told_otherwise() -> None:
    dockerfile = packaging.render(sample_input())["Dockerfile"].decode()
    assert re.search(r"^ARG TARGET_PLATFORM=linux/arm64$", dockerfile, re.MULTILINE)
    (base,) = re.findall(r"^FROM .*$", dockerfile, re.MULTILINE)
    assert base == "FROM --platform=${TARGET_PLATFORM} ${PYTHON_IMAGE}"


def test_package_python_matches_the_runner_image() -> None:
    runner = (ROOT / "runner.Dockerfile").read_text()
    assert f"python:{packaging.PYTHON_VERSION}-slim" in runner


# --------------------------------------------------------------------------- limits, keys


def test_check_size() -> None:
    packaging.check_size(b"x" * 10, limit=10)
    with pytest.raises(packaging.PackageTooLarge, match="11 bytes"):
        packaging.check_size(b"x" * 11, limit=10)
    assert packaging.MAX_PACKAGE_BYTES == 50 * 1024 * 1024


def test_sample_package_is_small() -> None:
    packaging.check_size(packaging.build_zip(packaging.render(sample_input())))


def test_object_key() -> None:
    assert packaging.object_key("team-a", "hello", "u-1", 3) == (
        "packages/team-a/hello/u-1/attempt-3/package.zip"
    )


def test_sha256_hex() -> None:
    assert packaging.sha256_hex(b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [("hello-agent", "agent-hello-agent"), ("v1.2", "agent-v1-2"), ("9lives", "agent-9lives")],
)
def test_stack_name_is_a_valid_cloudformation_name(name: str, expected: str) -> None:
    assert packaging.stack_name(name) == expected
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,127}", packaging.stack_name(name * 40))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("hello-agent", "agent_hello_agent"), ("v1.2", "agent_v1_2"), ("9lives", "agent_9lives")],
)
def test_runtime_name_is_a_valid_agentcore_runtime_name(name: str, expected: str) -> None:
    assert packaging.runtime_name(name) == expected
    assert re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_]{0,47}", packaging.runtime_name(name * 40))
    assert packaging.template_context(sample_input(name=name))["runtime_name"] == expected
