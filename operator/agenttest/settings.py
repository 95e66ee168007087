"""Operator settings: one place, read from the environment, overridable by flags.

Every setting is an `AGENTTEST_<NAME>` environment variable; `agenttest run`
flags override them. The defaults work for the demo.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agenttest.models import Backend

# US dollars per million tokens, the unit model price lists use.
PRICE_KEYS = ("inputPerMillion", "outputPerMillion")


def _default_state_dir() -> str:
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return str(base / "agenttest" / "local-runs")


@dataclass(frozen=True)
class Settings:
    # How many tests may hold an execution (Building or Running) at once.
    max_running: int = 10
    # How many of them one namespace may hold; 0: no cap beyond max_running.
    max_running_per_namespace: int = 0
    # A queued test's status.queuePosition is rewritten when it changed, at most
    # once per this many seconds per test, and at most this many tests per
    # second, the first positions first (`agenttest queue` is always exact).
    queue_position_interval: float = 5.0
    queue_position_writes_per_second: int = 50
    # Steps run at once (each waits on the API server or a backend, not the CPU).
    workers: int = 16
    # Backend for tests whose spec.backend is empty.
    default_backend: Backend = Backend.FARGATE
    # The local backend runs untrusted agent code on the operator's host:
    # it exists for development and the demo and must be switched on.
    enable_local_backend: bool = False
    # Namespaces to watch, comma separated; empty watches the whole cluster.
    namespaces: tuple[str, ...] = ()
    # Seconds between two looks at a running execution (and the most often a
    # test's status is written).
    poll_interval: float = 1.0
    # Bytes of log kept in status.logTail.
    log_tail_bytes: int = 8192
    # Infrastructure failures (lost process, capacity, throttling) retried
    # per attempt before the test ends in Error, and the first backoff.
    infra_max_retries: int = 3
    infra_backoff_seconds: float = 5.0
    # Seconds between two sweeps for executions whose AgentTest is gone.
    sweep_interval: float = 60.0
    # Seconds a stopped execution gets between SIGTERM and SIGKILL.
    stop_grace_seconds: float = 5.0
    # Where the local backend keeps its per-execution records.
    local_state_dir: str = field(default_factory=_default_state_dir)
    # Environment variables the local backend passes to the runner (the rest
    # of the operator's environment, credentials included, is withheld).
    local_pass_env: tuple[str, ...] = ()
    # Fargate backend: where tasks run. It is offered once subnets are set
    # (the CDK app in infrastructure/ prints all of these as outputs).
    fargate_cluster: str = "agenttest"
    fargate_task_definition: str = "agenttest-runner"
    fargate_container: str = "runner"
    fargate_subnets: tuple[str, ...] = ()
    fargate_security_groups: tuple[str, ...] = ()
    # Tasks get no public IP unless asked: egress goes through NAT or endpoints.
    fargate_assign_public_ip: bool = False
    # Try FARGATE_SPOT first and fall back to FARGATE when Spot has no capacity.
    fargate_use_spot: bool = False
    fargate_log_group: str = "/agenttest/runner"
    fargate_log_stream_prefix: str = "agenttest"
    # Harness configurations over 7 KiB (large inline agent.py) travel through
    # this bucket, since ECS container overrides hold 8 KiB at most.
    fargate_config_bucket: str = ""
    # Seconds to wait for a stopped task to reach STOPPED.
    fargate_stop_timeout: float = 120.0
    # Pod backend: the runner image (built from runner.Dockerfile) and an
    # optional RuntimeClass (gVisor, Kata) for stronger isolation.
    runner_image: str = "agenttest/runner:0.1.0"
    pod_runtime_class: str = ""
    # Pod backend: the runner's ephemeral-storage request and limit, also the
    # sizeLimit of each of its emptyDirs (/tmp, the work directory with the
    # installed requirements). A pod over it is evicted and the test Failed.
    pod_ephemeral_storage: str = "2Gi"
    # Pod backend: egress a runner pod may have besides DNS and its model,
    # as CIDR:PORT entries (e.g. the package mirror requirements come from:
    # 10.0.0.0/16:443). Link-local ranges are refused and always excepted.
    pod_egress_allow: tuple[str, ...] = ()
    # Deployment packages of passing tests go to this bucket under the prefix;
    # without a bucket, passing tests get a Packaged=False condition instead.
    package_bucket: str = ""
    package_prefix: str = "packages/"
    # Where every finished test's report goes (report.json and junit.xml under
    # reports/<namespace>/<name>/<uid>/<attempt>/); empty: the package bucket. With
    # neither, tests get a Reported=False condition instead of status.reports.
    results_bucket: str = ""
    # Packages over this size are refused (Packaged=False, PackageTooLarge).
    package_max_bytes: int = 50 * 1024 * 1024
    # S3 objects an AgentTest may name as spec.agent.source.s3: the operator reads
    # them with its own credentials, so without this list anyone who may create an
    # AgentTest could have it read any object the operator can (and see it run).
    # Comma-separated entries, each s3://bucket/prefix (any namespace) or
    # namespace=s3://bucket/prefix (that namespace only); a prefix matches as in S3
    # and IAM, so end it with "/" for a folder. Empty (the default): no S3 source.
    # Checked at start (sources.s3_grants): a bad entry stops the operator.
    s3_source_allow: tuple[str, ...] = ()
    # Where the operator keeps the secret every execution's signing key is derived
    # from: a Secret of this name in this namespace (empty: the namespace the
    # operator runs in, else agenttest-system). Made on first start.
    operator_namespace: str = ""
    signing_secret: str = "agenttest-signing-key"
    # Model prices for maxCostUSD and the cost in results: JSON text, or @PATH of a
    # JSON file (a mounted ConfigMap), mapping a model id to US dollars per million
    # tokens: {"my-model": {"inputPerMillion": 0.25, "outputPerMillion": 1.25}}.
    # A model without a price has no cost, and its maxCostUSD checks fail.
    # Checked at start (price_table): a bad table stops the operator.
    model_prices: str = ""
    # Several replicas, one active: each waits for the Lease of this name in the
    # operator namespace and acts only while it holds it (leadership.py). Off
    # for one process (development, the demo, tests); the Deployment turns it on.
    leader_election: bool = False
    leader_lease: str = "agenttest-operator"
    # A standby takes over this long after it last saw the holder renew: after
    # a crash, the active replica is replaced in about this time (8-12 s with
    # these values). The holder renews every lease_renew_seconds and stops (exits)
    # when no renewal has succeeded for duration - renew seconds: four tries, so
    # an API server hiccup of several seconds costs nothing. Renew at most half
    # the duration (checked at start).
    lease_duration_seconds: int = 10
    lease_renew_seconds: float = 2.0
    # The operator's HTTP port (httpserver.py): Prometheus /metrics and the queue
    # view /queue (`agenttest queue` reaches it through the API server's service
    # proxy); 0 turns it off. The name is older than /queue.
    metrics_port: int = 8080
    # The address that port listens on: every interface in a pod (the Service and
    # Prometheus reach it at the pod's IP); 127.0.0.1 keeps it on this host.
    http_host: str = "0.0.0.0"
    # Liveness/readiness endpoint port for the Deployment's probes; 0 is off.
    health_port: int = 8081
    # Testing only, fault injection: the operator SIGKILLs itself when it reaches
    # this point of a test's life (crashpoints.POINTS); empty: never.
    crash_at: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then AGENTTEST_* variables, then explicit overrides (flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            raw = environ.get(f"AGENTTEST_{item.name.upper()}")
            if raw is not None:
                values[item.name] = _parse(item.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def price_table(self) -> dict[str, dict[str, float]]:
        """model_prices parsed: model id -> inputPerMillion/outputPerMillion (USD).

        ValueError names what is wrong; the file of @PATH is read here.
        """
        text = self.model_prices.strip()
        if not text:
            return {}
        where = "AGENTTEST_MODEL_PRICES"
        if text.startswith("@"):
            where = text[1:]
            try:
                text = Path(where).read_text(encoding="utf-8")
            except OSError as error:
                raise ValueError(f"model prices {where}: {error.strerror}") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"model prices in {where} are not JSON: {error}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"model prices in {where} must map model ids to prices")
        table: dict[str, dict[str, float]] = {}
        for model_id, price in raw.items():
            if not isinstance(price, dict):
                raise ValueError(f"model prices in {where}: {model_id!r} is not an object")
            entry: dict[str, float] = {}
            for key in PRICE_KEYS:
                value = price.get(key)
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(
                        f"model prices in {where}: {model_id!r}.{key} must be a number >= 0"
                    )
                entry[key] = float(value)
            table[str(model_id)] = entry
        return table

    @classmethod
    def from_flags(
        cls, flags: Mapping[str, str | None], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """The environment's settings with `agenttest run` flags (text, like variables) on top."""
        parsed = {name: _parse(name, raw) for name, raw in flags.items() if raw is not None}
        return cls.from_env(environ, **parsed)


# The settings the running operator was started with. kopf reads a timer's interval
# when the handlers module is imported, before any handler runs, so the CLI sets
# them here first; without a CLI (kopf run, tests) they come from the environment.
_active: Settings | None = None


def activate(settings: Settings) -> None:
    global _active
    _active = settings


def active() -> Settings:
    return _active if _active is not None else Settings.from_env()


def _parse(name: str, raw: str) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(Settings)}[name]
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off", ""):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if kind == "Backend":
            return Backend(raw)
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as error:
        raise ValueError(f"AGENTTEST_{name.upper()}={raw!r} is not a valid {kind}") from error
    return raw
