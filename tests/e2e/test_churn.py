"""200 AgentTests created and deleted in a random order while 20 others run.

The 20 fill the operator's limit and the churn queues behind them. A few of
the 20 are quick: as they finish, churned tests take their slots and are
deleted queued, launching or running, whichever the (seeded) dice say; the
rest of the 20 outlast the churn. (Every churned test that runs costs a runner
start, so the quick ones are few: enough slots to cycle, not to swamp the CPU.)
Afterwards every deleted test is gone (no finalizer left behind), nothing of
theirs runs or is left on disk, and the 20 have all finished.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config

from agenttest_dev.modelserver import ScriptedModelServer

from support import Kube, Operator, agent_test, pid_alive

StartOperator = Callable[..., Operator]

SEED = 20261129
LIMIT = 20
CHURN = 200
# Survivors that finish during the churn, freeing slots for churned tests.
QUICK = 2


def named_agent(directory: Path, seconds_per_case: float) -> str:
    """An agent that leaves `<test>.<pid>` in `directory` when it starts and runs a while."""
    return f"""
import os, time
from strands import Agent

# Its working directory lies in the execution's record, which names the test's uid.
with open(os.path.join({str(directory)!r}, f"{{os.getpid()}}.run"), "w") as mark:
    mark.write(os.getcwd())

class Deliberate(Agent):
    def __call__(self, *args, **kwargs):
        time.sleep({seconds_per_case})
        return super().__call__(*args, **kwargs)

def agent(model):
    return Deliberate(model=model)
"""


def churn_plan(rng: random.Random, names: list[str]) -> list[tuple[str, list[str], float]]:
    """(create|delete, names, pause before) steps: every name created once, deleted once."""
    plan: list[tuple[str, list[str], float]] = []
    waiting, alive = list(names), []
    while waiting or alive:
        if waiting and (not alive or rng.random() < 0.55):
            size = rng.randint(1, 8)
            batch, waiting = waiting[:size], waiting[size:]
            alive += batch
            plan.append(("create", batch, rng.uniform(0.0, 0.15)))
        else:
            batch = rng.sample(alive, min(len(alive), rng.randint(1, 8)))
            alive = [name for name in alive if name not in batch]
            plan.append(("delete", batch, rng.uniform(0.0, 0.15)))
    return plan


def test_random_creates_and_deletes_leave_nothing_behind_and_the_running_finish(
    kube: Kube, start_operator: StartOperator, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    runs = tmp_path / "agent-runs"
    runs.mkdir()
    start_operator(max_running=LIMIT, stop_grace_seconds=1)
    survivors = [f"s{i:02d}" for i in range(LIMIT)]
    kube.apply(
        *[
            agent_test(name, named_agent(runs, 2.0 if i < QUICK else 30.0), model_server.url)
            for i, name in enumerate(survivors)
        ]
    )

    def phases() -> dict[str, str]:
        listed = kube.run(
            "get",
            "agenttests",
            "--no-headers",
            "-o",
            "custom-columns=NAME:.metadata.name,PHASE:.status.phase",
        ).stdout
        return dict(line.split() for line in listed.splitlines() if line.strip())

    kube.wait_for(
        "the 20 to run",
        lambda: all(phases().get(name) in ("Running", "Succeeded") for name in survivors),
        timeout=120,
    )

    rng = random.Random(SEED)
    churned = [f"c{i:03d}" for i in range(CHURN)]
    source = named_agent(runs, 30.0)
    manifests = {name: agent_test(name, source, model_server.url) for name in churned}
    # Straight to the API server: a kubectl process per call would set the pace.
    configuration = client.Configuration()
    config.load_kube_config(str(kube.cluster.kubeconfig), client_configuration=configuration)
    api = client.CustomObjectsApi(client.ApiClient(configuration))
    where = ("agenttest.dev", "v1alpha1", kube.namespace, "agenttests")
    created = set()
    for action, batch, pause in churn_plan(rng, churned):
        time.sleep(pause)  # the users' own timing, not a wait for anything
        for name in batch:
            if action == "create":
                api.create_namespaced_custom_object(*where, manifests[name])
                created.add(name)
            else:
                api.delete_namespaced_custom_object(*where, name)
    assert created == set(churned)

    def churned_left() -> list[str]:
        return sorted(set(phases()) & set(churned))

    kube.wait_for("every deleted test to be gone", lambda: not churned_left(), timeout=120)

    survivors_by_uid = {t["metadata"]["uid"]: t["metadata"]["name"] for t in kube.get_all()}
    assert sorted(survivors_by_uid.values()) == survivors

    # Nothing of a deleted test is left: no execution record, no live process.
    records = {
        path.parent.name: json.loads(path.read_text())
        for path in (tmp_path / "runs").glob("*/owner.json")
    }
    orphans = {rid: o for rid, o in records.items() if o["uid"] not in survivors_by_uid}
    assert orphans == {}
    survivor_records = set(records)
    for mark in runs.glob("*.run"):
        pid, workdir = int(mark.stem), mark.read_text()
        if not any(record in workdir for record in survivor_records):
            assert not pid_alive(pid), f"an agent of a deleted test still runs: {workdir}"

    def all_finished() -> dict[str, Any] | None:
        current = phases()
        return current if all(current[name] == "Succeeded" for name in survivors) else None

    kube.wait_for("the 20 to succeed", all_finished, timeout=120)
    assert len(records) >= LIMIT
