"""The deployment package of a passing AgentTest: its files, its zip, its place in S3.

A package holds the tested agent.py unchanged (the attempt's snapshot, sources.py), a
FastAPI service around it, a requirements.txt pinned to the distributions the run had
(the judge lists them in its signed result; the operator's own versions play no part),
a Dockerfile (linux/arm64 unless told otherwise), a CDK app that deploys the image to
ECS Fargate or as an Amazon Bedrock AgentCore runtime, the test's cases as a regression
suite to run against the deployed service (tests/, cases in tests/cases.json), a
README, the test's report (report.json as the operator stored it, and junit.xml
rendered from it) and a manifest.json with every file's SHA-256. Everything here is pure: the
files are a function of a PackageInput and the templates in ``templates/package/``,
and the zip is a function of the files, so a retried upload produces the same bytes
and the same checksum. Uploading and the DeploymentPackage resource live elsewhere.

Templates: a ``*.j2`` file is rendered with jinja2 (a missing variable is an error,
never an empty string) and written without the suffix; any other file is copied as is.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import unicodedata
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2

from agenttest.runner.protocol import ENVIRONMENT_ENTRY_LIMIT, PIN
from agenttest.runner.reports import JUNIT_FILE, REPORT_FILE, render_junit

TEMPLATES_DIR_ENV = "AGENTTEST_TEMPLATES_DIR"
# Where the templates are in a source checkout: <repo>/templates/package. An installed
# wheel has no such directory; its image sets AGENTTEST_TEMPLATES_DIR (see ./Dockerfile).
REPO_TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates" / "package"

AGENT_FILE = "agent.py"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
# The AgentTest's cases (name, query, expect as spec.cases has them), which the
# package's regression suite (templates/package/tests/regression.py) replays.
REGRESSION_CASES_FILE = "tests/cases.json"
# Files the operator makes, which no template may replace.
GENERATED_FILES = frozenset(
    {AGENT_FILE, MANIFEST_FILE, REPORT_FILE, JUNIT_FILE, REGRESSION_CASES_FILE}
)
TEMPLATE_SUFFIX = ".j2"

MAX_PACKAGE_BYTES = 50 * 1024 * 1024

# Same minor version as runner.Dockerfile's base image: the agent runs where it was tested.
PYTHON_VERSION = "3.11"

# The service around the agent (app.py) needs these; the run had no service, so
# where the run's environment does not list one, its version comes from the
# operator's own environment, else the fallback (fastapi and uvicorn are only a
# development dependency here): versions the package's service is tested with.
SERVICE_PACKAGES = ("fastapi", "uvicorn", "ollama")
FALLBACK_VERSIONS: Mapping[str, str] = {
    "fastapi": "0.165.0",
    "uvicorn": "0.54.0",
    "ollama": "0.6.3",
}
# The run's environment must hold this, or it is not the environment of a Strands agent.
AGENT_FRAMEWORK = "strands-agents"

PROVIDERS = ("ollama", "bedrock")

# zip entries carry a timestamp and permissions; fixing them (and the order and the
# compression level) makes the archive a function of its contents alone.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
ZIP_FILE_MODE = 0o644
ZIP_COMPRESS_LEVEL = 9


def installed_versions() -> dict[str, str]:
    """The version of each service package installed here, else its fallback."""
    versions: dict[str, str] = {}
    for package in SERVICE_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = FALLBACK_VERSIONS[package]
    return versions


def single_requirement(text: str) -> bool:
    """models.REQUIREMENT_PATTERN in Python's terms: no whitespace, separator, control
    or format character, and no leading "-"."""
    return (
        bool(text)
        and not text.startswith("-")
        and not any(char.isspace() or unicodedata.category(char)[0] in "CZ" for char in text)
    )


class NotReproducible(ValueError):
    """The run did not say what it ran with, so no package could pin it."""


def distribution_name(pin: str) -> str:
    """The PEP 503 normalized name of a ``name==version`` pin."""
    return re.sub(r"[-_.]+", "-", pin.partition("==")[0]).lower()


@dataclass(frozen=True)
class PackageInput:
    """Everything a package is made of, in the CRD's camelCase where it comes from there.

    ``model`` has ``provider`` and ``modelId`` and optionally ``endpoint``, ``region``
    and ``temperature`` (spec.model); each of ``cases`` has ``name``, ``passed`` and
    ``latencySeconds`` (status.cases). ``suite`` is spec.cases in wire form (``name``,
    ``query``, ``expect``): what the package's regression suite asks and checks.
    """

    agent_source: str
    entrypoint: str
    requirements: list[str]
    model: dict[str, Any]
    cases: list[dict[str, Any]]
    summary: str
    namespace: str
    name: str
    uid: str
    attempt: int
    tested_at: str
    environment: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=installed_versions)
    # The stored report.json (reporting.py), byte for byte; None: the test stored none.
    report: bytes | None = None
    suite: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The CRD's schema already enforces most of this; checked again because a
        # package is built from whatever the caller hands in, and a bad value would
        # otherwise surface as a broken file inside the zip.
        if self.model.get("provider") not in PROVIDERS:
            raise ValueError(f"model.provider must be one of {', '.join(PROVIDERS)}")
        if not self.model.get("modelId"):
            raise ValueError("model.modelId is required")
        if self.model["provider"] == "ollama" and not self.model.get("endpoint"):
            raise ValueError("model.endpoint is required when provider is ollama")
        if self.model["provider"] == "bedrock" and not self.model.get("region"):
            raise ValueError("model.region is required when provider is bedrock")
        if not self.entrypoint.isidentifier():
            raise ValueError(f"entrypoint {self.entrypoint!r} is not a Python identifier")
        for requirement in self.requirements:
            # One requirement per line, and no pip options (--index-url ...): the
            # API server refuses both (models.REQUIREMENT_PATTERN), so a tested agent
            # never has them.
            if not single_requirement(requirement):
                raise ValueError(f"requirement {requirement!r} is not a single requirement")
        if self.attempt < 1:
            raise ValueError("attempt must be 1 or more")
        missing = [p for p in SERVICE_PACKAGES if p not in self.versions]
        if missing:
            raise ValueError(f"versions is missing {', '.join(missing)}")
        if not self.environment:
            raise NotReproducible(
                "the run reported no installed distributions (a runner image older than "
                "the operator, or more than the judge reports): nothing to pin the package to"
            )
        for pin in self.environment:
            # Each becomes a line of requirements.txt: only name==version may.
            if len(pin) > ENVIRONMENT_ENTRY_LIMIT or not PIN.match(pin):
                raise NotReproducible(f"environment entry {pin!r} is not name==version")
        if AGENT_FRAMEWORK not in {distribution_name(pin) for pin in self.environment}:
            raise NotReproducible(f"the run's environment does not list {AGENT_FRAMEWORK}")
        for case in self.suite:
            if not isinstance(case.get("name"), str) or not isinstance(case.get("query"), str):
                raise ValueError("every suite case needs a name and a query")


# --------------------------------------------------------------------------- rendering


def templates_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$AGENTTEST_TEMPLATES_DIR, else the source checkout's templates/package."""
    environ = os.environ if environ is None else environ
    configured = environ.get(TEMPLATES_DIR_ENV)
    return Path(configured) if configured else REPO_TEMPLATES_DIR


def template_environment(directory: Path) -> jinja2.Environment:
    """A jinja2 environment for the package templates in ``directory``."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        # A typo in a template must fail the render, not ship an empty value.
        undefined=jinja2.StrictUndefined,
        # Nothing rendered is HTML; escaping would corrupt code and JSON.
        autoescape=False,
        keep_trailing_newline=True,
        # Block tags on their own lines leave no blank lines behind.
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["pyrepr"] = python_literal
    return environment


def python_literal(value: str | float | bool | None) -> str:
    """``value`` as Python source, so quotes or backslashes in a model id stay code.

    Strings get double quotes, as the formatter would write them: a JSON string is a
    valid Python string literal (ensure_ascii=False keeps characters outside the BMP
    whole instead of splitting them into two \\u escapes).
    """
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    raise TypeError(f"no Python literal for {type(value).__name__}")


def stack_name(name: str) -> str:
    """A CloudFormation stack name for the AgentTest ``name``: [A-Za-z][A-Za-z0-9-]*."""
    return ("agent-" + re.sub(r"[^A-Za-z0-9-]", "-", name))[:128]


# AgentCore's agentRuntimeName: a letter, then letters, digits and "_", 48 at most.
RUNTIME_NAME_LIMIT = 48


def runtime_name(name: str) -> str:
    """An AgentCore runtime name for the AgentTest ``name``: [a-zA-Z][a-zA-Z0-9_]{0,47}."""
    return ("agent_" + re.sub(r"[^A-Za-z0-9_]", "_", name))[:RUNTIME_NAME_LIMIT]


def _model_info(inp: PackageInput) -> dict[str, Any]:
    # Every key present (None when unset), so templates can test them without tripping
    # StrictUndefined, and nothing the caller added beyond the documented keys.
    return {
        "provider": inp.model["provider"],
        "modelId": inp.model["modelId"],
        "endpoint": inp.model.get("endpoint"),
        "region": inp.model.get("region"),
        "temperature": inp.model.get("temperature"),
    }


def _case_results(inp: PackageInput) -> list[dict[str, Any]]:
    return [
        {
            "name": case["name"],
            "passed": bool(case.get("passed")),
            "latencySeconds": case.get("latencySeconds"),
        }
        for case in inp.cases
    ]


def service_pins(inp: PackageInput) -> list[str]:
    """What app.py needs beyond the run's environment, pinned (ollama for ollama only)."""
    needed = [p for p in SERVICE_PACKAGES if p != "ollama" or inp.model["provider"] == "ollama"]
    tested = {distribution_name(pin) for pin in inp.environment}
    return [f"{p}=={inp.versions[p]}" for p in needed if p not in tested]


def template_context(inp: PackageInput) -> dict[str, Any]:
    """The variables every template sees."""
    return {
        "environment": list(inp.environment),
        "service_pins": service_pins(inp),
        "entrypoint": inp.entrypoint,
        "requirements": list(inp.requirements),
        "model": _model_info(inp),
        "cases": _case_results(inp),
        "summary": inp.summary,
        "namespace": inp.namespace,
        "name": inp.name,
        "uid": inp.uid,
        "attempt": inp.attempt,
        "tested_at": inp.tested_at,
        "versions": dict(inp.versions),
        "python_version": PYTHON_VERSION,
        "stack_name": stack_name(inp.name),
        "runtime_name": runtime_name(inp.name),
    }


def render(inp: PackageInput, templates: Path | None = None) -> dict[str, bytes]:
    """Every file of the package, path -> content, manifest.json included.

    ``templates`` defaults to templates_dir(). Paths use "/" on every platform.
    """
    directory = templates_dir() if templates is None else templates
    if not directory.is_dir():
        raise FileNotFoundError(
            f"package templates not found at {directory}; set {TEMPLATES_DIR_ENV}"
        )
    environment = template_environment(directory)
    context = template_context(inp)

    files: dict[str, bytes] = {AGENT_FILE: inp.agent_source.encode("utf-8")}
    for source in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = source.relative_to(directory).as_posix()
        if "__pycache__" in relative:
            continue
        if relative.endswith(TEMPLATE_SUFFIX):
            path = relative.removesuffix(TEMPLATE_SUFFIX)
            content = environment.get_template(relative).render(context).encode("utf-8")
        else:
            path, content = relative, source.read_bytes()
        if path in GENERATED_FILES:
            raise ValueError(f"template {relative} would replace the generated {path}")
        files[path] = content

    files[REGRESSION_CASES_FILE] = regression_cases(inp)
    if inp.report is not None:
        files[REPORT_FILE] = inp.report
        files[JUNIT_FILE] = render_junit(json.loads(inp.report)).encode("utf-8")
    files[MANIFEST_FILE] = manifest(inp, files)
    return files


def regression_cases(inp: PackageInput) -> bytes:
    """tests/cases.json: each case's name, query and expectations, as the spec has them."""
    cases = [
        {"name": case["name"], "query": case["query"], "expect": case.get("expect", {})}
        for case in inp.suite
    ]
    document = {"agentTest": f"{inp.namespace}/{inp.name}", "cases": cases}
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def manifest(inp: PackageInput, files: Mapping[str, bytes]) -> bytes:
    """manifest.json: every other file's checksum, the source AgentTest and the results."""
    document = {
        "formatVersion": MANIFEST_FORMAT,
        "source": {
            "kind": "AgentTest",
            "namespace": inp.namespace,
            "name": inp.name,
            "uid": inp.uid,
            "attempt": inp.attempt,
            "testedAt": inp.tested_at,
        },
        "model": _model_info(inp),
        "test": {"summary": inp.summary, "cases": _case_results(inp)},
        "files": [
            {"path": path, "sha256": sha256_hex(files[path]), "size": len(files[path])}
            for path in sorted(files)
            if path != MANIFEST_FILE
        ],
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- archive


def build_zip(files: Mapping[str, bytes]) -> bytes:
    """A zip of ``files`` whose bytes depend only on the names and contents."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(files):
            info = zipfile.ZipInfo(path, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so that external_attr holds Unix permissions
            info.external_attr = (0o100000 | ZIP_FILE_MODE) << 16  # a regular file, rw-r--r--
            archive.writestr(info, files[path], compresslevel=ZIP_COMPRESS_LEVEL)
    return buffer.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PackageTooLarge(Exception):
    """The zip is over MAX_PACKAGE_BYTES (most likely a very large inline agent.py)."""

    def __init__(self, size: int, limit: int = MAX_PACKAGE_BYTES) -> None:
        super().__init__(f"deployment package is {size} bytes, over the {limit} byte limit")
        self.size = size
        self.limit = limit


def check_size(data: bytes, limit: int = MAX_PACKAGE_BYTES) -> None:
    """Raise PackageTooLarge when ``data`` is over ``limit`` bytes."""
    if len(data) > limit:
        raise PackageTooLarge(len(data), limit)


def object_key(
    namespace: str,
    name: str,
    uid: str,
    attempt: int,
    prefix: str = "packages/",
    model: str | None = None,
) -> str:
    """The package's S3 key; uid and attempt make it unique and a retried upload idempotent.

    A matrix test has one package per passing model, under the model's name.
    """
    where = f"{prefix}{namespace}/{name}/{uid}/attempt-{attempt}"
    return f"{where}/{model}/package.zip" if model else f"{where}/package.zip"
