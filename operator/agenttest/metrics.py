"""Prometheus metrics of the operator, served on its HTTP port (`httpserver`, GET /metrics).

Three kinds, each computed where it cannot drift:

* Gauges (tests by phase, queue depth, running executions by backend) are counted
  from the reconciler's index of every AgentTest at scrape time (`CensusCollector`),
  never kept by incrementing and decrementing.
* Counters and histograms of what happened to a test are derived from each status
  write, old status against new (`observations`, pure), and recorded in the one
  place a status is written (`record_write`, called by the reconciler).
* Launch latency and log-tail lag are timed where the launch and the read happen
  (the controller), since no status carries them.

Every label value comes from a fixed set (`BACKENDS`, `PROVIDERS`, `OUTCOMES`,
`PACKAGE_REASONS`, ...): never a test's name, namespace or uid, so the number of
series stays bounded however many tests run.
"""

from __future__ import annotations

import datetime
import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agenttest import conditions
from agenttest.lifecycle import parse_timestamp
from agenttest.models import (
    DEFAULT_MODEL_NAME,
    FINISHED_PHASES,
    AgentTestStatus,
    Backend,
    ConditionType,
    ModelProvider,
    Phase,
)

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
# A matrix whose models use more than one provider.
MIXED = "mixed"
BACKENDS = frozenset({*(backend.value for backend in Backend), UNKNOWN})
PROVIDERS = frozenset({*(provider.value for provider in ModelProvider), MIXED, UNKNOWN})
OUTCOMES = frozenset(phase.value for phase in FINISHED_PHASES)
# The Packaged condition's reasons (controller.package, publishing, s3objects); any
# other is counted as "Other" so a new reason cannot add series unnoticed.
PUBLISHED = "Uploaded"
PACKAGE_REASONS = frozenset(
    {
        PUBLISHED,
        "NotConfigured",
        "PackageTooLarge",
        "SourceUnavailable",
        "NotReproducible",
        "UploadRefused",
        "PackageRefused",
        "ReportUnavailable",
        "RenderFailed",
        "NameTaken",
        "Other",
    }
)
TOKEN_DIRECTIONS = ("input", "output")

STATUS_WRITES = Counter("agenttest_status_writes_total", "Status patches written to AgentTests")
TRANSITIONS = Counter(
    "agenttest_phase_transitions_total",
    "AgentTest phase transitions, by the phase entered",
    ["phase"],
)
OUTCOMES_TOTAL = Counter(
    "agenttest_outcomes_total",
    "Tests that finished, by backend, model provider and outcome (the finished phase)",
    ["backend", "provider", "outcome"],
)
EXECUTION_SECONDS = Histogram(
    "agenttest_execution_seconds",
    "Wall-clock time of finished executions, launch to end",
    ["backend", "outcome"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600),
)
WAIT_SECONDS = Histogram(
    "agenttest_wait_seconds",
    "Time from a test's creation to the launch of its first execution",
    ["backend"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)
LAUNCH_SECONDS = Histogram(
    "agenttest_launch_seconds",
    "Time from taking a slot to the backend accepting the execution",
    ["backend"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LOG_TAIL_LAG_SECONDS = Histogram(
    "agenttest_log_tail_lag_seconds",
    "Age of the newest output line read from an execution, when it is read for status.logTail",
    ["backend"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
INFRA_RETRIES = Counter(
    "agenttest_infra_retries_total",
    "Executions retried after an infrastructure failure (status.infraRetries increments)",
    ["backend"],
)
PACKAGES = Counter(
    "agenttest_packages_total",
    "Packaging outcomes of passing tests: published (reason Uploaded) or refused, by reason",
    ["result", "reason"],
)
FORGED_LINES = Counter(
    "agenttest_forged_lines_total",
    "Output lines posing as the judge's machine lines without its signature (ignored)",
    ["backend"],
)
MODEL_TOKENS = Counter(
    "agenttest_model_tokens_total",
    "Tokens the models reported to the judge's gateway, over finished tests",
    ["provider", "direction"],
)


def bounded(value: str | None, allowed: frozenset[str], other: str = UNKNOWN) -> str:
    """`value` if it is one of `allowed`, else `other`: label values come from fixed sets."""
    return value if value is not None and value in allowed else other


# --------------------------------------------------------------------------- status writes


@dataclass(frozen=True)
class Context:
    """What a status write's observations need from the rest of the test (`context_of`)."""

    created: datetime.datetime | None = None
    # The provider of each model under test, by its name (spec.model is "default").
    providers: Mapping[str, str] = field(default_factory=dict)

    @property
    def provider(self) -> str:
        """The test's provider: the one all its models share, else "mixed"."""
        distinct = set(self.providers.values())
        if not distinct:
            return UNKNOWN
        return distinct.pop() if len(distinct) == 1 else MIXED


def _provider(model: Any) -> str:
    value = model.get("provider") if isinstance(model, Mapping) else None
    return bounded(value if isinstance(value, str) else None, PROVIDERS)


def context_of(body: Mapping[str, Any]) -> Context:
    """The creation time and model providers of a test's body; a spec that does not
    parse gives "unknown" providers rather than an error (pure)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    providers: dict[str, str] = {}
    models = spec.get("models") if isinstance(spec, Mapping) else None
    if isinstance(models, list):
        for model in models:
            if isinstance(model, Mapping):
                providers[str(model.get("name"))] = _provider(model)
    elif isinstance(spec, Mapping) and spec.get("model") is not None:
        providers[DEFAULT_MODEL_NAME] = _provider(spec.get("model"))
    created = meta.get("creationTimestamp") if isinstance(meta, Mapping) else None
    return Context(parse_timestamp(created if isinstance(created, str) else None), providers)


@dataclass(frozen=True)
class Observation:
    """One thing to record: a counter increment or a histogram sample."""

    metric: str  # the series name without _total
    labels: tuple[tuple[str, str], ...] = ()
    value: float = 1.0


def _backend(status: AgentTestStatus) -> str:
    backend = status.backend or (status.execution.backend if status.execution else None)
    return bounded(backend.value if backend is not None else None, BACKENDS)


def _seconds(start: str | None, end: str | None) -> float | None:
    started, ended = parse_timestamp(start), parse_timestamp(end)
    if started is None or ended is None:
        return None
    return max(0.0, (ended - started).total_seconds())


def observations(
    old: AgentTestStatus, new: AgentTestStatus, context: Context = Context()
) -> list[Observation]:
    """What the write of `new` over `old` means for the metrics (pure)."""
    found: list[Observation] = []
    backend = _backend(new)
    entered = new.phase if new.phase != old.phase else None
    if entered is not None:
        found.append(Observation("agenttest_phase_transitions", (("phase", entered.value),)))
    if entered is not None and entered.finished and not (old.phase and old.phase.finished):
        outcome = entered.value
        found.append(
            Observation(
                "agenttest_outcomes",
                (("backend", backend), ("provider", context.provider), ("outcome", outcome)),
            )
        )
        if new.execution is not None:
            took = _seconds(new.execution.started_at, new.execution.completed_at)
            if took is not None:
                found.append(
                    Observation(
                        "agenttest_execution_seconds",
                        (("backend", backend), ("outcome", outcome)),
                        took,
                    )
                )
        for model in new.models:
            if model.tokens is None:
                continue
            provider = context.providers.get(model.name, UNKNOWN)
            for direction, count in zip(
                TOKEN_DIRECTIONS, (model.tokens.input, model.tokens.output), strict=True
            ):
                if count > 0:
                    found.append(
                        Observation(
                            "agenttest_model_tokens",
                            (("provider", provider), ("direction", direction)),
                            count,
                        )
                    )
    launched = new.execution is not None and (
        old.execution is None or old.execution.id != new.execution.id
    )
    # Only the first launch waited since the test's creation; a later attempt or an
    # infrastructure retry has no record of when it began waiting.
    if launched and new.attempt <= 1 and new.infra_retries == 0 and context.created is not None:
        assert new.execution is not None
        started = parse_timestamp(new.execution.started_at)
        if started is not None:
            wait = max(0.0, (started - context.created).total_seconds())
            found.append(Observation("agenttest_wait_seconds", (("backend", backend),), wait))
    if new.attempt == old.attempt and new.infra_retries > old.infra_retries:
        found.append(
            Observation(
                "agenttest_infra_retries",
                (("backend", backend),),
                new.infra_retries - old.infra_retries,
            )
        )
    # A new attempt starts its count again.
    before = (old.forged_lines or 0) if new.attempt == old.attempt else 0
    forged = (new.forged_lines or 0) - before
    if forged > 0:
        found.append(Observation("agenttest_forged_lines", (("backend", backend),), forged))
    found.extend(_packaging(old, new))
    return found


def _packaging(old: AgentTestStatus, new: AgentTestStatus) -> list[Observation]:
    now = conditions.get(new.conditions, ConditionType.PACKAGED)
    if now is None or now.status not in ("True", "False"):
        return []
    before = conditions.get(old.conditions, ConditionType.PACKAGED)
    if before is not None and (before.status, before.reason) == (now.status, now.reason):
        return []  # said before: this write changed something else
    if now.status == "True":
        made = max(1, len(new.packages))  # a matrix publishes one package per passing model
        return [
            Observation(
                "agenttest_packages", (("result", "published"), ("reason", PUBLISHED)), made
            )
        ]
    reason = bounded(now.reason, PACKAGE_REASONS, "Other")
    return [Observation("agenttest_packages", (("result", "refused"), ("reason", reason)))]


_RECORDERS: dict[str, Counter | Histogram] = {
    "agenttest_phase_transitions": TRANSITIONS,
    "agenttest_outcomes": OUTCOMES_TOTAL,
    "agenttest_execution_seconds": EXECUTION_SECONDS,
    "agenttest_wait_seconds": WAIT_SECONDS,
    "agenttest_infra_retries": INFRA_RETRIES,
    "agenttest_packages": PACKAGES,
    "agenttest_forged_lines": FORGED_LINES,
    "agenttest_model_tokens": MODEL_TOKENS,
}


def record(found: Iterable[Observation]) -> None:
    for one in found:
        metric = _RECORDERS[one.metric]
        child = metric.labels(**dict(one.labels)) if one.labels else metric
        if isinstance(child, Histogram):
            child.observe(one.value)
        else:
            child.inc(one.value)


def record_write(body: Mapping[str, Any], old: AgentTestStatus, new: AgentTestStatus) -> None:
    """A status patch of the test `body` was written: count it and what it changed."""
    STATUS_WRITES.inc()
    try:
        record(observations(old, new, context_of(body)))
    except Exception:
        # Metrics are a view: a bug here must never fail the write it describes.
        logger.warning("recording the metrics of a status write failed", exc_info=True)


def record_launch(backend: Backend, seconds: float) -> None:
    LAUNCH_SECONDS.labels(backend=bounded(backend.value, BACKENDS)).observe(max(0.0, seconds))


def record_log_lag(backend: Backend, seconds: float) -> None:
    LOG_TAIL_LAG_SECONDS.labels(backend=bounded(backend.value, BACKENDS)).observe(max(0.0, seconds))


# --------------------------------------------------------------------------- the census


class Listed(Protocol):
    """What the census reads of a test: an index entry or a status the operator wrote."""

    @property
    def phase(self) -> Phase | None: ...

    @property
    def backend(self) -> Backend | None: ...


@dataclass(frozen=True)
class Census:
    """The gauges at one scrape."""

    by_phase: Mapping[str, int]  # every phase, zero included
    waiting: int  # Pending and Queued (and not yet seen): the queue depth
    running: Mapping[str, int]  # tests holding an execution, by backend, zero included
    limit: int  # settings.max_running


def census(index: Mapping[str, Listed], written: Mapping[str, Listed], limit: int) -> Census:
    """Count every test by what it last showed: the status this operator wrote, where
    the watch has not shown it yet, else the index (pure)."""
    phases: Tally[str] = Tally({phase.value: 0 for phase in Phase})
    running: Tally[str] = Tally({backend.value: 0 for backend in Backend})
    waiting = 0
    for uid, entry in index.items():
        latest = written.get(uid, entry)
        phase = latest.phase or Phase.PENDING  # no status yet: not looked at yet
        phases[phase.value] += 1
        if phase in (Phase.PENDING, Phase.QUEUED):
            waiting += 1
        elif phase.active:
            backend = latest.backend or entry.backend
            running[bounded(backend.value if backend else None, BACKENDS)] += 1
    return Census(dict(phases), waiting, dict(running), limit)


class CensusCollector(Collector):
    """The gauges, counted from `source` (the reconciler's index) at each scrape.

    Scrapes run on the operator's event loop (aiohttp), where the index is kept,
    so it is read without a lock. No source (before the operator starts, or in a
    process that is no operator) yields the families without samples.
    """

    def __init__(self) -> None:
        self.source: Callable[[], Census] | None = None

    def _families(
        self,
    ) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("agenttest_tests", "AgentTests by phase", labels=["phase"]),
            GaugeMetricFamily(
                "agenttest_queue_depth", "AgentTests waiting for a slot (Pending or Queued)"
            ),
            GaugeMetricFamily(
                "agenttest_running_executions",
                "AgentTests holding an execution (Building or Running), by backend",
                labels=["backend"],
            ),
            GaugeMetricFamily(
                "agenttest_max_running", "Executions this operator runs at once at most"
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        tests, depth, running, limit = self._families()
        if self.source is not None:
            try:
                now = self.source()
            except Exception:
                logger.warning("counting the tests for /metrics failed", exc_info=True)
            else:
                for phase, count in sorted(now.by_phase.items()):
                    tests.add_metric([phase], count)
                depth.add_metric([], now.waiting)
                for backend, count in sorted(now.running.items()):
                    running.add_metric([backend], count)
                limit.add_metric([], now.limit)
        yield from (tests, depth, running, limit)


CENSUS = CensusCollector()
REGISTRY.register(CENSUS)
