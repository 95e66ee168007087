"""What a status write means for the metrics, and the gauges counted from the index (pure)."""

from __future__ import annotations

import datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from agenttest import lifecycle, metrics
from agenttest.metrics import Context, Observation, census, context_of, observations
from agenttest.models import (
    AgentTestStatus,
    Backend,
    Execution,
    ModelResult,
    PackageRef,
    Phase,
    TokenUsage,
)
from agenttest.scheduling import QueueEntry

T0 = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def at(seconds: float) -> str:
    return lifecycle.timestamp(T0 + datetime.timedelta(seconds=seconds))


def status(**fields: Any) -> AgentTestStatus:
    return AgentTestStatus(**fields)


def named(found: list[Observation], metric: str) -> list[Observation]:
    return [one for one in found if one.metric == metric]


OLLAMA = Context(created=T0, providers={"default": "ollama"})


def test_a_phase_change_counts_the_phase_entered_and_nothing_else() -> None:
    found = observations(status(phase=Phase.PENDING), status(phase=Phase.QUEUED, backend="pod"))
    assert found == [Observation("agenttest_phase_transitions", (("phase", "Queued"),))]
    assert observations(status(phase=Phase.QUEUED), status(phase=Phase.QUEUED)) == []


def test_the_first_launch_records_the_wait_since_creation_by_backend() -> None:
    queued = status(phase=Phase.QUEUED, backend=Backend.POD, attempt=1)
    launched = lifecycle.launched(
        queued, Backend.POD, "ns/pod-1", T0 + datetime.timedelta(seconds=42)
    )
    [wait] = named(observations(queued, launched, OLLAMA), "agenttest_wait_seconds")
    assert wait == Observation("agenttest_wait_seconds", (("backend", "pod"),), 42.0)


def test_a_retried_or_later_attempt_records_no_wait_it_cannot_measure() -> None:
    later = status(phase=Phase.QUEUED, backend=Backend.POD, attempt=2)
    retried = status(phase=Phase.QUEUED, backend=Backend.POD, attempt=1, infra_retries=1)
    for queued in (later, retried):
        launched = lifecycle.launched(queued, Backend.POD, "x", T0 + datetime.timedelta(seconds=9))
        assert named(observations(queued, launched, OLLAMA), "agenttest_wait_seconds") == []
    # Nor without a creation time (a body without metadata).
    launched = lifecycle.launched(later.model_copy(update={"attempt": 1}), Backend.POD, "x", T0)
    assert named(observations(later, launched, Context()), "agenttest_wait_seconds") == []


def running(backend: Backend = Backend.LOCAL) -> AgentTestStatus:
    return status(
        phase=Phase.RUNNING,
        backend=backend,
        attempt=1,
        execution=Execution(backend=backend, id="e", started_at=at(0)),
    )


def test_finishing_records_the_outcome_and_execution_time_by_backend_and_outcome() -> None:
    ended = lifecycle.finish(
        running(Backend.FARGATE), Phase.FAILED, "1/2 cases", T0 + datetime.timedelta(seconds=75)
    )
    found = observations(running(Backend.FARGATE), ended, OLLAMA)
    assert named(found, "agenttest_outcomes") == [
        Observation(
            "agenttest_outcomes",
            (("backend", "fargate"), ("provider", "ollama"), ("outcome", "Failed")),
        )
    ]
    assert named(found, "agenttest_execution_seconds") == [
        Observation(
            "agenttest_execution_seconds", (("backend", "fargate"), ("outcome", "Failed")), 75.0
        )
    ]


def test_a_finished_test_written_again_is_not_counted_twice() -> None:
    ended = lifecycle.finish(running(), Phase.SUCCEEDED, "ok", T0)
    reported = ended.model_copy(update={"summary": "stored"})
    assert observations(ended, reported, OLLAMA) == []


def test_an_error_before_any_execution_counts_its_outcome_without_a_time() -> None:
    queued = status(phase=Phase.QUEUED, backend=Backend.FARGATE, attempt=1)
    ended = lifecycle.finish(queued, Phase.ERROR, "the fargate backend is not configured", T0)
    found = observations(queued, ended, OLLAMA)
    assert [one.metric for one in found] == ["agenttest_phase_transitions", "agenttest_outcomes"]


def test_tokens_are_counted_per_provider_of_each_matrix_model() -> None:
    matrix = Context(providers={"small": "ollama", "big": "bedrock"})
    assert matrix.provider == "mixed"
    models = [
        ModelResult(
            name="small",
            model_id="m",
            passed=True,
            cases_passed="1/1",
            pass_rate=1.0,
            tokens=TokenUsage(input=100, output=20),
        ),
        ModelResult(
            name="big",
            model_id="b",
            passed=True,
            cases_passed="1/1",
            pass_rate=1.0,
            tokens=TokenUsage(input=7, output=0),
        ),
    ]
    ended = lifecycle.finish(running(), Phase.SUCCEEDED, "ok", T0).model_copy(
        update={"models": models}
    )
    tokens = named(observations(running(), ended, matrix), "agenttest_model_tokens")
    assert tokens == [
        Observation(
            "agenttest_model_tokens", (("provider", "ollama"), ("direction", "input")), 100
        ),
        Observation(
            "agenttest_model_tokens", (("provider", "ollama"), ("direction", "output")), 20
        ),
        Observation("agenttest_model_tokens", (("provider", "bedrock"), ("direction", "input")), 7),
    ]


def test_an_infrastructure_retry_is_counted_by_backend_once() -> None:
    before = running(Backend.POD)
    retried = lifecycle.infra_failure(before, "the pod was deleted", T0, 3, 1.0)
    found = observations(before, retried, OLLAMA)
    assert named(found, "agenttest_infra_retries") == [
        Observation("agenttest_infra_retries", (("backend", "pod"),), 1)
    ]
    # A new attempt starts at zero again: that is no retry.
    fresh = status(phase=Phase.PENDING, attempt=2)
    assert named(observations(retried, fresh), "agenttest_infra_retries") == []


def test_forged_lines_count_what_this_write_added() -> None:
    seen = running().model_copy(update={"forged_lines": 2})
    more = seen.model_copy(update={"forged_lines": 5})
    assert named(observations(running(), seen), "agenttest_forged_lines") == [
        Observation("agenttest_forged_lines", (("backend", "local"),), 2)
    ]
    assert named(observations(seen, more), "agenttest_forged_lines")[0].value == 3
    assert named(observations(more, more), "agenttest_forged_lines") == []
    # The next attempt's lines are its own, counted from zero.
    next_attempt = more.model_copy(update={"attempt": 2, "forged_lines": 1})
    assert named(observations(more, next_attempt), "agenttest_forged_lines")[0].value == 1


def packaged(ok: bool, reason: str, packages: int = 0) -> AgentTestStatus:
    ended = lifecycle.finish(running(), Phase.SUCCEEDED, "ok", T0)
    refs = [PackageRef(name=f"p{i}") for i in range(packages)]
    return lifecycle.packaged(ended, ok, reason, "msg", 1, T0, None, refs)


def test_packages_published_count_each_package_and_refusals_count_by_reason() -> None:
    ended = lifecycle.finish(running(), Phase.SUCCEEDED, "ok", T0)
    assert named(observations(ended, packaged(True, "Uploaded")), "agenttest_packages") == [
        Observation("agenttest_packages", (("result", "published"), ("reason", "Uploaded")), 1)
    ]
    [matrix] = named(observations(ended, packaged(True, "Uploaded", 3)), "agenttest_packages")
    assert matrix.value == 3
    [refused] = named(observations(ended, packaged(False, "NameTaken")), "agenttest_packages")
    assert refused.labels == (("result", "refused"), ("reason", "NameTaken"))
    # Said once: a later write of the same condition is no new refusal.
    assert observations(packaged(False, "NameTaken"), packaged(False, "NameTaken")) == []


def test_label_values_come_from_fixed_sets_whatever_the_status_says() -> None:
    ended = lifecycle.finish(running(), Phase.SUCCEEDED, "ok", T0)
    odd = packaged(False, "SomethingNew")
    [refused] = named(observations(ended, odd), "agenttest_packages")
    assert refused.labels == (("result", "refused"), ("reason", "Other"))
    odd_spec = {"metadata": {}, "spec": {"model": {"provider": "someone/else"}}}
    assert context_of(odd_spec).provider == "unknown"
    assert context_of({"spec": "not a mapping"}).provider == "unknown"
    for found in (observations(running(), ended, context_of(odd_spec)),):
        for one in found:
            for name, value in one.labels:
                allowed = {
                    "phase": {phase.value for phase in Phase},
                    "backend": metrics.BACKENDS,
                    "provider": metrics.PROVIDERS,
                    "outcome": metrics.OUTCOMES,
                }[name]
                assert value in allowed


def test_context_reads_the_creation_time_and_each_models_provider() -> None:
    body = {
        "metadata": {"creationTimestamp": "2026-01-01T12:00:00Z", "name": "t", "uid": "u"},
        "spec": {
            "models": [
                {"name": "a", "provider": "bedrock", "modelId": "x"},
                {"name": "b", "provider": "bedrock", "modelId": "y"},
            ]
        },
    }
    context = context_of(body)
    assert context.created == T0
    assert context.providers == {"a": "bedrock", "b": "bedrock"}
    assert context.provider == "bedrock"


def entry(uid: str, phase: Phase | None, backend: Backend | None = None) -> QueueEntry:
    return QueueEntry(uid, "ns", uid, 0, "2026-01-01T00:00:00Z", phase, backend=backend)


def test_the_census_counts_every_test_by_its_latest_status() -> None:
    index = {
        "new": entry("new", None),
        "queued": entry("queued", Phase.QUEUED, Backend.POD),
        "claimed": entry("claimed", Phase.QUEUED, Backend.POD),
        "pod": entry("pod", Phase.RUNNING, Backend.POD),
        "local": entry("local", Phase.BUILDING, Backend.LOCAL),
        "done": entry("done", Phase.SUCCEEDED, Backend.LOCAL),
    }
    # The operator wrote these last; the watch has not shown them yet.
    written = {
        "claimed": status(phase=Phase.BUILDING, backend=Backend.POD),
        "local": status(phase=Phase.FAILED, backend=Backend.LOCAL),
    }
    now = census(index, written, limit=4)
    assert now.waiting == 2
    assert now.running == {"fargate": 0, "pod": 2, "local": 0}
    assert now.by_phase["Pending"] == 1
    assert now.by_phase["Failed"] == 1
    assert now.by_phase["Building"] == 1
    assert now.by_phase["TimedOut"] == 0  # every phase has a series, so panels show 0
    assert sum(now.by_phase.values()) == len(index)


def test_the_collector_exposes_the_gauges_and_survives_a_failing_source() -> None:
    collector = metrics.CensusCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    empty = generate_latest(registry).decode()
    assert "# TYPE agenttest_queue_depth gauge" in empty
    assert "\nagenttest_queue_depth " not in empty  # no operator yet: no samples
    collector.source = lambda: census({"q": entry("q", Phase.QUEUED)}, {}, 3)
    text = generate_latest(registry).decode()
    assert "agenttest_queue_depth 1.0" in text
    assert 'agenttest_tests{phase="Queued"} 1.0' in text
    assert 'agenttest_running_executions{backend="pod"} 0.0' in text
    assert "agenttest_max_running 3.0" in text

    def broken() -> metrics.Census:
        raise RuntimeError("a bug")

    collector.source = broken
    assert "\nagenttest_queue_depth " not in generate_latest(registry).decode()
