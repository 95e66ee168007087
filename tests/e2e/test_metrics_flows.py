"""The operator's /metrics after real tests ran, and the Grafana dashboard that reads it.

A dashboard whose query names a series the operator does not export shows "No
data" and nobody notices: every PromQL expression in
manifests/monitoring/grafana-dashboard.json must name series this operator
exports, checked against a scrape of a real operator that ran a passing test and
a forger. A pod holding a slot shows under its backend, and the kubelet's
timestamps give the log-tail lag.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from agenttest_dev import devcluster
from agenttest_dev.modelserver import ScriptedModelServer
from agenttest_dev.node import FakeKubelet

import forgeries
from support import MANIFESTS, SIMPLE_AGENT, Kube, Operator, agent_test, on_pod

StartOperator = Callable[..., Operator]

DASHBOARD = MANIFESTS / "monitoring" / "grafana-dashboard.json"

# The series a metric family of each type exposes (what PromQL can name).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "unknown": ("",),
}
# PromQL words that are not series names (functions are told by the "(" after them;
# aggregations can have their by-clause first: `sum by (le) (...)`).
AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
KEYWORDS = AGGREGATIONS | {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression refers to."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges, Grafana's $__rate_interval
    # Label lists of by/without/on/ignoring/group_*: names of labels, not series.
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1 ()", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name in KEYWORDS:
            continue
        names.add(name)
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def test_series_names_are_read_from_promql_as_prometheus_reads_them() -> None:
    quantile = (
        "histogram_quantile(0.95, sum by (le, backend) "
        '(rate(agenttest_wait_seconds_bucket{backend="pod"}[$__rate_interval])))'
    )
    assert series_names(quantile) == {"agenttest_wait_seconds_bucket"}
    joined = (
        'sum(rate(a_total{outcome="Succeeded"}[5m])) / on (x) group_left (y) '
        "sum without (z) (rate(b_total[1h])) or vector(0)"
    )
    assert series_names(joined) == {"a_total", "b_total"}
    assert series_names("max(agenttest_queue_depth) * 60") == {"agenttest_queue_depth"}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def exported(text: str) -> tuple[set[str], list[Sample]]:
    """The series names the exposition declares, and its samples."""
    names: set[str] = set()
    samples: list[Sample] = []
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        samples.extend(family.samples)
    return names, samples


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        sample.value
        for sample in samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_every_dashboard_query_names_a_series_the_operator_exports(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer
) -> None:
    port = devcluster.free_port()
    start_operator(metrics_port=port, http_host="127.0.0.1", max_running=3)
    forger = forgeries.APPENDS_TO_THE_LOG_FILE
    kube.apply(agent_test("passes", SIMPLE_AGENT, model_server.url))
    kube.apply(agent_test(forger.name, forger.source, model_server.url, cases=forgeries.CASES))
    passed = kube.wait_for_phase("passes", "Succeeded", "Failed", "Error", timeout=180)
    forged = kube.wait_for_phase(forger.name, "Succeeded", "Failed", "Error", timeout=180)
    assert passed["status"]["phase"] == "Succeeded"
    assert forged["status"]["phase"] == "Failed"

    def settled() -> tuple[set[str], list[Sample]] | None:
        # Counted when the finished status is written; packaging (not configured
        # here) is said in a write after it.
        names, samples = exported(scrape(port))
        refused = value(samples, "agenttest_packages_total", reason="NotConfigured")
        return (names, samples) if refused >= 1 else None

    names, samples = kube.wait_for("the packaging outcome in /metrics", settled)

    # What happened is what the series say.
    outcome = {"backend": "local", "provider": "ollama"}
    assert value(samples, "agenttest_outcomes_total", outcome="Succeeded", **outcome) == 1
    assert value(samples, "agenttest_outcomes_total", outcome="Failed", **outcome) == 1
    assert (
        value(samples, "agenttest_forged_lines_total", backend="local")
        == (forged["status"]["forgedLines"])
    )
    tokens = sum(model["tokens"]["input"] for model in passed["status"]["models"])
    assert value(samples, "agenttest_model_tokens_total", direction="input") >= tokens > 0
    assert value(samples, "agenttest_tests", phase="Succeeded") == 1
    assert value(samples, "agenttest_tests", phase="Failed") == 1
    assert value(samples, "agenttest_queue_depth") == 0
    assert value(samples, "agenttest_running_executions") == 0
    assert value(samples, "agenttest_max_running") == 3
    for histogram in (
        "agenttest_wait_seconds",
        "agenttest_launch_seconds",
        "agenttest_execution_seconds",
        "agenttest_log_tail_lag_seconds",
    ):
        assert value(samples, f"{histogram}_count", backend="local") >= 2, histogram
    # Label values are the fixed sets, never a test's name, namespace or uid.
    for sample in samples:
        for label in sample.labels.values():
            assert kube.namespace not in label and "passes" not in label, sample

    # Every series a dashboard query names is one the operator exports.
    expressions = dashboard_expressions()
    assert len(expressions) >= 15
    for expr in expressions:
        referenced = series_names(expr)
        assert referenced, f"no series named in {expr!r}"
        missing = referenced - names
        assert not missing, f"{expr!r} names {sorted(missing)}, not exported"
    # ... and every series the operator exports of its own has a panel.
    shown = {name for expr in expressions for name in series_names(expr)}
    own = {family.name for family in text_string_to_metric_families(scrape(port))}
    undisplayed = {
        name
        for name in own
        # The text format lists a counter's creation times as a family of their own.
        if name.startswith("agenttest_")
        and not name.endswith("_created")
        and not any(s.startswith(name) for s in shown)
    }
    assert not undisplayed, f"no panel shows {sorted(undisplayed)}"


SLEEPER = """
import time
from strands import Agent
print("agent imported; sleeping", flush=True)
time.sleep(300)

def agent(model):
    return Agent(model=model)
"""


def test_a_pod_holding_a_slot_is_counted_under_its_backend_and_its_log_lag_measured(
    restricted: Kube,
    kubelet: FakeKubelet,
    start_operator: StartOperator,
    model_server: ScriptedModelServer,
) -> None:
    kube = restricted
    port = devcluster.free_port()
    start_operator(metrics_port=port, http_host="127.0.0.1")
    kube.apply(on_pod("sleeps", SLEEPER, model_server.url))
    kube.wait_for_phase("sleeps", "Building", "Running")

    def holding() -> list[Sample] | None:
        _, samples = exported(scrape(port))
        running = value(samples, "agenttest_running_executions", backend="pod")
        # The kubelet's timestamp of the agent's line, read into the tail.
        lagged = value(samples, "agenttest_log_tail_lag_seconds_count", backend="pod")
        return samples if running == 1 and lagged >= 1 else None

    samples = kube.wait_for("the pod counted and its output read", holding)
    assert value(samples, "agenttest_running_executions", backend="local") == 0
    assert value(samples, "agenttest_launch_seconds_count", backend="pod") == 1
    assert value(samples, "agenttest_queue_depth") == 0

    kube.patch("sleeps", {"spec": {"cancel": True}})
    assert kube.wait_for_phase("sleeps", "Cancelled", "Failed")["status"]["phase"] == "Cancelled"

    def released() -> list[Sample] | None:
        # kubectl can see the write a moment before the operator has its answer.
        _, samples = exported(scrape(port))
        return samples if value(samples, "agenttest_running_executions") == 0 else None

    samples = kube.wait_for("the slot released in /metrics", released)
    assert value(samples, "agenttest_tests", phase="Cancelled") == 1
    ended = {"backend": "pod", "outcome": "Cancelled"}
    assert value(samples, "agenttest_outcomes_total", provider="ollama", **ended) == 1
    assert value(samples, "agenttest_execution_seconds_count", **ended) == 1
