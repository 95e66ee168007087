"""The API: spec and status of AgentTest and DeploymentPackage.

These pydantic models are the single source of truth. `crdgen` turns them
into the CRD YAML in `crds/` (descriptions become `kubectl explain` text,
`x-kubernetes-validations` become CEL rules the API server enforces), and the
operator parses resources through them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict, JsonValue

GROUP = "agenttest.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
AGENTTEST_KIND = "AgentTest"
AGENTTEST_PLURAL = "agenttests"
PACKAGE_PLURAL = "deploymentpackages"

MAX_INLINE_SOURCE = 256 * 1024
MAX_CASES = 50
MAX_TIMEOUT_SECONDS = 600
# A year: the expiry daemon sleeps this long at most (an unbounded integer
# overflows the event loop's timer), and nobody keeps a finished test longer.
MAX_TTL_SECONDS = 365 * 24 * 3600
DEFAULT_TTL_SECONDS = 7 * 24 * 3600
# One pip requirement: no whitespace (which would let one string carry a second
# requirement or an option after it), no control, format or separator characters
# (which could end the line in requirements.txt, or hide text in it), and no leading
# "-" (a pip option such as --index-url). \p{...} reads the same in Rust's regex
# (pydantic) and Go's RE2 (the API server).
REQUIREMENT_PATTERN = r"^[^-\s\p{Z}\p{C}][^\s\p{Z}\p{C}]*$"


def cel(
    rule: str, message: str, field_path: str | None = None, reason: str | None = None
) -> JsonDict:
    """One `x-kubernetes-validations` entry."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields kept out."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict as the API server stores it."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------
# AgentTest spec
# --------------------------------------------------------------------------


class ConfigMapSource(ApiModel):
    """agent.py read from a key of a ConfigMap in the test's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the ConfigMap.")
    key: str = Field(
        default="agent.py", min_length=1, max_length=253, description="Key holding agent.py."
    )


class S3Source(ApiModel):
    """agent.py read from an S3 object, with the operator's credentials.

    Only objects under a bucket and prefix the operator is configured to allow
    (AGENTTEST_S3_SOURCE_ALLOW) are read; any other ends the test in Error.
    """

    uri: str = Field(
        pattern=r"^s3://[a-z0-9.\-]{3,63}/.+$",
        max_length=1024,
        description="Object URI, s3://bucket/key.",
    )


class AgentSource(ApiModel):
    """Where agent.py comes from. Exactly one of inline, configMapRef or s3."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "[has(self.inline), has(self.configMapRef), has(self.s3)]"
                    ".filter(x, x).size() == 1",
                    "spec.agent.source must set exactly one of inline, configMapRef or s3",
                )
            ]
        }
    )

    inline: str | None = Field(
        default=None,
        max_length=MAX_INLINE_SOURCE,
        description="The agent.py source itself (at most 256 KiB).",
    )
    config_map_ref: ConfigMapSource | None = Field(
        default=None, description="agent.py from a ConfigMap key."
    )
    s3: S3Source | None = Field(default=None, description="agent.py from an S3 object.")


class AgentSpec(ApiModel):
    """The agent under test: a Python module built on the Strands Agents framework."""

    source: AgentSource = Field(description="Where agent.py comes from.")
    entrypoint: str = Field(
        default="agent",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        max_length=128,
        description=(
            "Name in agent.py of a strands Agent object, or of a factory function that takes "
            "the configured model and returns an Agent."
        ),
    )
    requirements: list[
        Annotated[str, Field(min_length=1, max_length=200, pattern=REQUIREMENT_PATTERN)]
    ] = Field(
        default_factory=list,
        max_length=50,
        description=(
            "Extra pip requirements installed before the run (phase Building), one "
            "requirement each, e.g. requests>=2.31 or name@https://host/name.whl: no "
            "whitespace, no control characters, no pip options."
        ),
    )


class ModelProvider(StrEnum):
    OLLAMA = "ollama"
    BEDROCK = "bedrock"


# A Secret's name: a DNS subdomain (RFC 1123), as the API server requires of it.
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class CredentialsSecretRef(ApiModel):
    """A Secret in the test's namespace holding the model's credential.

    Only the judge's model gateway ever holds its values: the agent sees neither the
    Secret nor its keys. Keys by provider (exactly one form):

    * ollama: ``token`` (sent as ``Authorization: Bearer <token>``), or ``header`` and
      ``value`` (sent as ``<header>: <value>``);
    * bedrock: ``aws_access_key_id`` and ``aws_secret_access_key`` (and optionally
      ``aws_session_token``), or ``role_arn`` (assumed with STS using the execution's own
      AWS credentials; optionally ``external_id``).

    The Secret must carry the label ``agenttest.dev/model-credentials: "true"``.
    """

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=SECRET_NAME_PATTERN,
        description=(
            "Name of a Secret in the test's namespace, labelled agenttest.dev/model-credentials"
            "=true. ollama: key token (Authorization: Bearer), or keys header and value; "
            "bedrock: keys aws_access_key_id and aws_secret_access_key (optional "
            "aws_session_token), or key role_arn (optional external_id)."
        ),
    )


class ModelSpec(ApiModel):
    """The model the agent talks to."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.provider != 'bedrock' || has(self.region)",
                    "region is required when provider is bedrock",
                    reason="FieldValueRequired",
                ),
                cel(
                    "self.provider != 'ollama' || has(self.endpoint)",
                    "endpoint is required when provider is ollama",
                    reason="FieldValueRequired",
                ),
            ]
        }
    )

    provider: ModelProvider = Field(description="Model provider: ollama or bedrock.")
    model_id: str = Field(
        min_length=1,
        max_length=256,
        description="Model identifier, e.g. llama3.1:8b (Ollama) or a Bedrock model id.",
    )
    endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://",
        max_length=512,
        description=(
            "Ollama base URL, e.g. http://ollama.ollama:11434 (required for ollama); for "
            "bedrock, an optional endpoint override such as a VPC endpoint. Either way only "
            "the judge talks to it: the agent reaches the model through the judge's gateway."
        ),
    )
    region: str | None = Field(
        default=None,
        pattern=r"^[a-z]{2}(-[a-z]+)+-\d$",
        max_length=32,
        description="AWS region of the Bedrock model. Required for bedrock.",
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature passed to the model."
    )
    credentials_secret_ref: CredentialsSecretRef | None = Field(
        default=None,
        description=(
            "A Secret in the test's namespace with the model's credential, which only the "
            "judge's gateway uses (the agent never sees it). Default: none (Ollama without "
            "authentication; Bedrock signed with the execution's own AWS credentials)."
        ),
    )


# A Strands tool name (what the model's tool-use request carries).
ToolName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]

JSON_SCHEMA_TYPES: list[JsonValue] = [
    "string",
    "number",
    "integer",
    "boolean",
    "object",
    "array",
    "null",
]
# A JSON Schema is free-form, so the CRD keeps its unknown fields; the keywords
# most often mistyped are declared, so the API server refuses them naming the field.
JSON_SCHEMA_NODE: JsonDict = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "type": {
            "type": "string",
            "enum": JSON_SCHEMA_TYPES,
            "description": "The JSON type of the answer (one name; use anyOf for unions).",
        },
        "required": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Property names an object answer must have.",
        },
        "properties": {
            "type": "object",
            "description": "Schemas of an object answer's properties, by name.",
            "additionalProperties": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
    },
}


def _json_schema_field(schema: JsonDict) -> None:
    # Replaces pydantic's node for dict[str, Any] (additionalProperties: true, which
    # a structural schema may not combine with properties).
    description = schema.get("description")
    schema.clear()
    schema.update(JSON_SCHEMA_NODE)
    if description is not None:
        schema["description"] = description


class ToolSequenceMatch(StrEnum):
    EXACT = "exact"
    IN_ORDER = "inOrder"
    ANY_ORDER = "anyOrder"


class ToolSequence(ApiModel):
    """Tools the model must ask for, checked against the observed tool calls."""

    tools: list[ToolName] = Field(
        min_length=1, max_length=20, description="Tool names, in the expected order."
    )
    match: ToolSequenceMatch = Field(
        default=ToolSequenceMatch.EXACT,
        description=(
            "exact: the observed calls are exactly these, in this order; inOrder: these "
            "appear in this order, other calls allowed between; anyOrder: each of these "
            "was called, in any order."
        ),
    )


class JudgeRubric(ApiModel):
    """An LLM-as-judge check (Strands Evals OutputEvaluator) of the answer."""

    rubric: str = Field(
        min_length=1,
        max_length=8192,
        description="What a good answer does, in words the judge model scores against (0 to 1).",
    )
    threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="The lowest score that passes (default 0.5).",
    )
    include_query: bool = Field(
        default=True, description="Show the judge the query as well as the answer."
    )


class Expectation(ApiModel):
    """What a case's final answer must satisfy. All given checks must pass."""

    contains: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=20, description="Substrings the answer must contain."
    )
    not_contains: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=20,
        description="Substrings the answer must not contain.",
    )
    regex: str | None = Field(
        default=None,
        max_length=1024,
        description="A Python regular expression that must match somewhere in the answer.",
    )
    case_sensitive: bool = Field(
        default=False, description="Compare contains/notContains case-sensitively."
    )
    max_latency_seconds: float | None = Field(
        default=None, gt=0, le=MAX_TIMEOUT_SECONDS, description="Upper bound on the case's time."
    )
    equals: str | None = Field(
        default=None,
        max_length=16384,
        description=(
            "The whole answer, leading and trailing whitespace aside, must be this "
            "(caseSensitive applies)."
        ),
    )
    starts_with: str | None = Field(
        default=None,
        max_length=1024,
        description=(
            "The answer, leading whitespace aside, must start with this (caseSensitive applies)."
        ),
    )
    json_schema: dict[str, Any] | None = Field(
        default=None,
        description=(
            "The answer must parse as JSON and validate against this JSON Schema (draft "
            "2020-12 unless $schema says otherwise). A ```json fence around the answer is "
            "allowed. type and required are checked when applied; any other error in the "
            "schema fails the case, naming it. The API server drops JSON null values: write "
            'type: "null", not const: null.'
        ),
        json_schema_extra=_json_schema_field,
    )
    tool_called: list[ToolName] = Field(
        default_factory=list,
        max_length=20,
        description="Tools the model must have asked the agent to run (observed by the judge).",
    )
    tool_not_called: list[ToolName] = Field(
        default_factory=list,
        max_length=20,
        description="Tools the model must not have asked the agent to run (observed).",
    )
    tool_sequence: ToolSequence | None = Field(
        default=None, description="The order of the observed tool calls."
    )
    max_tool_calls: int | None = Field(
        default=None, ge=0, le=1000, description="At most this many observed tool calls."
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="At most this many tokens (input + output) over the case's model calls.",
    )
    max_cost_usd: float | None = Field(
        default=None,
        alias="maxCostUSD",
        gt=0,
        le=1000,
        description=(
            "At most this cost in US dollars: observed tokens times the operator's price "
            "for the model (AGENTTEST_MODEL_PRICES). A model without a price fails the check."
        ),
    )
    judge: JudgeRubric | None = Field(
        default=None,
        description="A rubric an LLM judge (spec.judgeModel) scores the answer against.",
    )


class TestCase(ApiModel):
    """One query sent to the agent and the expectation on its answer."""

    __test__ = False  # not a pytest class

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
        description="Case name, unique within the test (lower case, digits, - _ .).",
    )
    query: str = Field(min_length=1, max_length=16384, description="The prompt sent to the agent.")
    expect: Expectation = Field(
        default_factory=Expectation, description="Checks on the agent's answer."
    )


class NamedModel(ModelSpec):
    """One model of a matrix: a name and the same fields as spec.model."""

    name: str = Field(
        min_length=1,
        max_length=20,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description=(
            "Name of the entry, unique in the test (lower case, digits, -): shown in "
            "results and part of its package's name."
        ),
    )


class MatrixPolicy(StrEnum):
    ALL = "all"
    ANY = "any"


MAX_MODELS = 5
MAX_TRIALS = 20
DEFAULT_MODEL_NAME = "default"


class Backend(StrEnum):
    FARGATE = "fargate"
    POD = "pod"
    LOCAL = "local"


class ResourceSpec(ApiModel):
    """CPU and memory for the execution."""

    cpu: str = Field(
        default="1",
        pattern=r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$",
        description="CPU as a Kubernetes quantity, e.g. 500m, 1, 2.",
    )
    memory: str = Field(
        default="2Gi",
        pattern=r"^[0-9]+(Mi|Gi)$",
        description="Memory as a Kubernetes quantity in Mi or Gi, e.g. 512Mi, 2Gi.",
    )


class PackageSpec(ApiModel):
    """Whether a passing test produces a DeploymentPackage."""

    enabled: bool = Field(default=True, description="Upload a deployment package on success.")


class AgentTestSpec(ApiModel):
    """What to test: the agent, its model, the cases, and how to run them."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.model) != has(self.models)",
                    "spec must set exactly one of model and models",
                    reason="FieldValueInvalid",
                )
            ]
        }
    )

    agent: AgentSpec = Field(description="The agent under test.")
    model: ModelSpec | None = Field(
        default=None, description="The model the agent talks to (or spec.models)."
    )
    models: list[NamedModel] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MODELS,
        description=(
            "A model matrix: every case runs against each of these 1 to 5 models in the same "
            "execution (or spec.model)."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    matrix_policy: MatrixPolicy = Field(
        default=MatrixPolicy.ALL,
        description=(
            "all: the test passes when every model passes; any: when at least one does. "
            "Each passing model gets its own DeploymentPackage."
        ),
    )
    judge_model: ModelSpec | None = Field(
        default=None,
        description=(
            "The model that scores judge rubrics, through the judge's gateway. Default: "
            "spec.model, or the first of spec.models."
        ),
    )
    trials: int = Field(
        default=1,
        ge=1,
        le=MAX_TRIALS,
        description="Runs of every case, 1 to 20, each in a fresh conversation.",
    )
    pass_threshold: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="A case passes when the share of its trials that passed reaches this.",
    )
    cases: list[TestCase] = Field(
        min_length=1,
        max_length=MAX_CASES,
        description="Test cases, 1 to 50, with unique names.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    backend: Backend | None = Field(
        default=None,
        description="Where the test runs: fargate, pod or local. Default: the operator's setting.",
    )
    timeout_seconds: int = Field(
        default=300,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description="Wall-clock limit for the execution, 1 to 600 seconds.",
    )
    priority: int = Field(
        default=0, ge=-1000, le=1000, description="Higher starts first when the queue is full."
    )
    resources: ResourceSpec = Field(
        default_factory=ResourceSpec, description="CPU and memory for the execution."
    )
    cancel: bool = Field(default=False, description="Set true to stop the test; it ends Cancelled.")
    package: PackageSpec = Field(
        default_factory=PackageSpec, description="Deployment packaging on success."
    )
    ttl_seconds_after_finished: int = Field(
        default=DEFAULT_TTL_SECONDS,
        ge=0,
        le=MAX_TTL_SECONDS,
        description="Delete the finished test after this many seconds (default 7 days, "
        "at most 365 days).",
    )

    def model_entries(self) -> list[NamedModel]:
        """The models under test: spec.models, or spec.model named "default"."""
        if self.models:
            return list(self.models)
        assert self.model is not None, "the API server requires model or models"
        return [NamedModel(name=DEFAULT_MODEL_NAME, **self.model.model_dump())]

    @property
    def primary_model(self) -> ModelSpec:
        """spec.model, or the first of spec.models: the judge's default."""
        return self.model or self.model_entries()[0]

    @property
    def matrix(self) -> bool:
        return bool(self.models)


# --------------------------------------------------------------------------
# AgentTest status
# --------------------------------------------------------------------------


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    BUILDING = "Building"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    CANCELLED = "Cancelled"
    ERROR = "Error"

    @property
    def finished(self) -> bool:
        return self in FINISHED_PHASES

    @property
    def active(self) -> bool:
        """Holds an execution slot."""
        return self in (Phase.BUILDING, Phase.RUNNING)


FINISHED_PHASES = frozenset(
    {Phase.SUCCEEDED, Phase.FAILED, Phase.TIMED_OUT, Phase.CANCELLED, Phase.ERROR}
)


class ConditionType(StrEnum):
    """The conditions the operator sets."""

    READY = "Ready"  # kstatus: the resource has done what it is for (a test: it passed)
    SUCCEEDED = "Succeeded"  # Tekton: Unknown while running, then True or False
    PACKAGED = "Packaged"  # a passing test's DeploymentPackage was made, or why not
    # The judge's report was stored in S3 (True), is being stored (Unknown), or why not.
    REPORTED = "Reported"


class Condition(ApiModel):
    """A Kubernetes API condition (type, status, reason, message, lastTransitionTime)."""

    type: str = Field(description="Condition type: Ready, Succeeded, Packaged or Reported.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str | None = Field(
        default=None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this condition was computed from."
    )


class Execution(ApiModel):
    """The backend execution of the current attempt."""

    backend: Backend = Field(description="Backend that runs the attempt.")
    id: str = Field(description="Backend id: task ARN, pod name or local record name.")
    started_at: str | None = Field(default=None, description="When the execution was launched.")
    completed_at: str | None = Field(default=None, description="When the execution ended.")


class TokenUsage(ApiModel):
    """Token counts as the model reported them to the judge's gateway."""

    input: int = Field(default=0, description="Input (prompt) tokens.")
    output: int = Field(default=0, description="Output (completion) tokens.")


class Interval(ApiModel):
    """A confidence interval of a pass rate."""

    low: float = Field(description="Lower bound, 0 to 1.")
    high: float = Field(description="Upper bound, 0 to 1.")


class JudgeScore(ApiModel):
    """What the LLM judge said about a case's answers."""

    score: float = Field(description="Mean score over the trials, 0 to 1.")
    reason: str = Field(
        default="", description="The judge's reasoning (of a failing trial, if any)."
    )


class CaseResult(ApiModel):
    """The outcome of one case (of one model, in a matrix), over all its trials.

    output, failures, tokens and toolCalls are those of one trial: the first that
    failed, else the last.
    """

    name: str = Field(description="Case name.")
    passed: bool = Field(description="Whether every expectation held.")
    latency_seconds: float | None = Field(default=None, description="Time the agent took.")
    output: str = Field(default="", description="The agent's answer (truncated).")
    failures: list[str] = Field(default_factory=list, description="Expectations that failed.")
    model_calls: int | None = Field(
        default=None,
        description=(
            "Model calls the judge's gateway forwarded during the case. Observed by the "
            "judge, never reported by the agent: an agent that reaches a model directly "
            "shows none."
        ),
    )
    tokens: TokenUsage | None = Field(
        default=None, description="Tokens the model reported for the case's calls (observed)."
    )
    tool_calls: list[str] = Field(
        default_factory=list,
        description="Tools the model asked the agent to run, in order (observed).",
    )
    model: str | None = Field(
        default=None, description="The spec.models entry the case ran against (a matrix)."
    )
    trials: int | None = Field(default=None, description="Trials run (spec.trials).")
    passes: int | None = Field(default=None, description="Trials that passed.")
    pass_rate: float | None = Field(default=None, description="passes / trials.")
    interval: Interval | None = Field(
        default=None, description="95% Wilson score interval of the pass rate."
    )
    flaky: bool | None = Field(
        default=None, description="True when some trials passed and some failed."
    )
    judge: JudgeScore | None = Field(
        default=None, description="The LLM judge's score and reasoning (judge rubric)."
    )


class SourceSnapshot(ApiModel):
    """The agent.py of this attempt, read once at its first launch."""

    origin: str = Field(
        description="Where it was read: inline, configMap NAME key KEY, or the s3:// URI."
    )
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="SHA-256 of agent.py (UTF-8) as snapshotted."
    )
    size_bytes: int = Field(ge=0, description="Its size in bytes.")
    tested_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description=(
            "SHA-256 of the agent.py the judge ran, from its signed result. A package is "
            "made only when it equals sha256."
        ),
    )


MAX_ENVIRONMENT = 400  # distributions in status.environment (protocol.ENVIRONMENT_LIMIT)


class PackageRef(ApiModel):
    """The DeploymentPackage made from this test."""

    name: str = Field(description="Name of the DeploymentPackage in this namespace.")
    model: str | None = Field(
        default=None, description="The spec.models entry it was made for (a matrix test)."
    )
    s3_uri: str | None = Field(
        default=None, description="Where the operator uploaded the zip (what download trusts)."
    )
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the zip it uploaded."
    )


class LatencySummary(ApiModel):
    """Case latency over all trials."""

    mean: float = Field(description="Mean, in seconds.")
    p95: float = Field(description="95th percentile, in seconds.")


class ModelResult(ApiModel):
    """How one model of the test did over all cases and trials."""

    name: str = Field(description="The spec.models entry (default for spec.model).")
    model_id: str = Field(description="Its model id.")
    passed: bool = Field(description="Whether every case passed for this model.")
    cases_passed: str = Field(description="Cases passed out of total, e.g. 4/5.")
    pass_rate: float = Field(description="Trials passed / trials run, over all cases.")
    latency_seconds: LatencySummary | None = Field(default=None, description="Case latency.")
    tokens: TokenUsage | None = Field(default=None, description="Observed tokens, all cases.")
    cost_usd: float | None = Field(
        default=None,
        alias="costUSD",
        description="Observed tokens times the operator's price; absent when unpriced.",
    )


class Reports(ApiModel):
    """Where the operator stored the judge's report of this attempt.

    Status keeps summaries only; every trial's answer, observations and evaluator
    verdicts are in these objects. `agenttest report NAME` prints and fetches them.
    """

    json_: str = Field(
        alias="json",
        description=(
            "S3 URI of report.json: the judge's report (every case on every model, every "
            "trial with its answer, observed tool calls, tokens and latency, each "
            "evaluator's score and reason), redacted, with the test it belongs to."
        ),
    )
    junit: str = Field(description="S3 URI of junit.xml: the report as JUnit XML, for CI.")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the stored report.json (what `agenttest report` checks).",
    )


class AgentTestStatus(ApiModel):
    """Observed state, written by the operator only."""

    phase: Phase | None = Field(default=None, description="Lifecycle phase.")
    message: str | None = Field(default=None, description="Why the test is in its phase.")
    backend: Backend | None = Field(
        default=None, description="The backend chosen for the test (spec.backend or the default)."
    )
    queue_position: int | None = Field(
        default=None, description="1-based position while Queued; absent otherwise."
    )
    attempt: int = Field(default=0, description="Attempt number, raised by spec change or retry.")
    execution: Execution | None = Field(default=None, description="The current execution.")
    log_tail: str | None = Field(
        default=None, description="Last lines of the execution's output (at most 8 KiB)."
    )
    cases: list[CaseResult] = Field(default_factory=list, description="Per-case results.")
    cases_passed: str | None = Field(
        default=None,
        description=(
            "Passed out of total, e.g. 2/3, and the pass rate over all trials when there "
            "are several (the CASES column)."
        ),
    )
    models: list[ModelResult] = Field(
        default_factory=list, description="Per-model results (one entry without a matrix)."
    )
    summary: str | None = Field(default=None, description="One-line outcome.")
    duration: str | None = Field(
        default=None, description="Execution time of the finished attempt, e.g. 12s."
    )
    infra_retries: int = Field(
        default=0, description="Infrastructure failures retried in this attempt."
    )
    forged_lines: int | None = Field(
        default=None,
        description=(
            "Lines of this attempt's output that looked like the judge's machine lines but "
            "did not carry its signature: ignored, and reported as a ForgedOutput Event."
        ),
    )
    retry_after: str | None = Field(
        default=None, description="Earliest time of the next infrastructure retry."
    )
    observed_retry: str | None = Field(
        default=None, description="The agenttest.dev/retry annotation value last honoured."
    )
    spec_hash: str | None = Field(
        default=None,
        description="Fingerprint of the spec fields that define a run; a change starts an attempt.",
    )
    package_ref: PackageRef | None = Field(
        default=None, description="The deployment package (the first, for a matrix test)."
    )
    packages: list[PackageRef] = Field(
        default_factory=list,
        description="A matrix test's packages, one per passing model.",
    )
    reports: Reports | None = Field(
        default=None,
        description=(
            "The stored report and JUnit XML of a finished attempt that reported a result "
            "(the Reported condition says why there are none)."
        ),
    )
    source: SourceSnapshot | None = Field(
        default=None, description="The agent.py this attempt runs, snapshotted at launch."
    )
    environment: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list,
        max_length=MAX_ENVIRONMENT,
        description=(
            "Every distribution installed where the agent ran (name==version), as the judge "
            "listed it after installing the requirements: the deployment package's "
            "requirements.txt pins these."
        ),
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Succeeded and (for passing tests) Packaged conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the status describes."
    )


# --------------------------------------------------------------------------
# DeploymentPackage
# --------------------------------------------------------------------------


class AgentTestRef(ApiModel):
    """The AgentTest a package came from."""

    name: str = Field(description="Name of the AgentTest.")
    uid: str = Field(description="UID of the AgentTest.")
    attempt: int = Field(description="The attempt that passed.")


class DeploymentPackageSpec(ApiModel):
    """A deployment package in S3, made from a passing AgentTest. Immutable once created."""

    # Where the package is and what its bytes hash to is what was tested: an
    # edit could point a downloader at other bytes with a matching digest. The
    # API server refuses any change (the operator never changes one either).
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self == oldSelf",
                    "spec is immutable: a DeploymentPackage records what was tested",
                    reason="FieldValueForbidden",
                )
            ]
        }
    )

    agent_test_ref: AgentTestRef = Field(description="The AgentTest it came from.")
    s3_uri: str = Field(pattern=r"^s3://", description="Where the zip is, s3://bucket/key.")
    bucket: str = Field(description="S3 bucket holding the zip.")
    key: str = Field(description="S3 key of the zip.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the zip.")
    size_bytes: int = Field(ge=0, description="Size of the zip in bytes.")
    files: list[str] = Field(default_factory=list, description="Files inside the zip.")
    summary: str = Field(default="", description="The test outcome the package was made from.")
    model: str | None = Field(
        default=None, description="The spec.models entry it was made for (a matrix test)."
    )


class DeploymentPackageStatus(ApiModel):
    """Observed state of the package."""

    conditions: list[Condition] = Field(
        default_factory=list,
        description="The Ready condition.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(default=None, description="Generation described.")


# --------------------------------------------------------------------------- a parsed resource

RETRY_ANNOTATION = f"{GROUP}/retry"


@dataclass(frozen=True)
class AgentTest:
    """One AgentTest as a step sees it: its identity, spec and status, parsed once."""

    __test__ = False  # not a pytest class

    uid: str
    namespace: str
    name: str
    generation: int
    spec: AgentTestSpec
    status: AgentTestStatus
    retry: str | None = None  # the agenttest.dev/retry annotation

    @classmethod
    def from_body(cls, body: Mapping[str, Any], status: AgentTestStatus | None = None) -> AgentTest:
        """Parse a resource; ``status`` replaces the body's (ours can be newer).

        A spec that does not parse raises pydantic's ValidationError.
        """
        meta = body.get("metadata") or {}
        return cls(
            uid=str(meta.get("uid")),
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
            generation=int(meta.get("generation") or 1),
            spec=AgentTestSpec.model_validate(dict(body.get("spec") or {})),
            status=status or AgentTestStatus.model_validate(dict(body.get("status") or {})),
            retry=(meta.get("annotations") or {}).get(RETRY_ANNOTATION),
        )

    def with_status(self, status: AgentTestStatus) -> AgentTest:
        return replace(self, status=status)
