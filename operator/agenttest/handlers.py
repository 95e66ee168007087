"""The kopf handlers: decorators with bodies of a few lines.

* `configure` sets kopf's own names, builds the runtime (`wiring`) and the
  reconciler, and serves /metrics and the queue view (`httpserver`).
  Before anything starts, the reconciler lists every AgentTest (`seed`), which is
  what lets a restarted operator rebuild its queue before it starts anything.
* `observe` hands every watch event to the reconciler, which decides whether
  it asks for a step (most events are our own writes coming back: they do not).

There is no per-test timer or daemon: a test is stepped on its events, on
the operator's start, when a slot frees for it, and at the poll interval
while it holds an execution (`reconciler` says when and why).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from agenttest import controller, httpserver, kubeapi, metrics, reconciler, wiring
from agenttest import settings as settings_module
from agenttest.models import AGENTTEST_PLURAL, GROUP, VERSION
from agenttest.settings import Settings

logger = logging.getLogger(__name__)


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Keeps no copy of the spec: no handler here diffs old against new.

    kopf's default copies the whole spec into an annotation, and annotations
    share a 256 KiB limit that a large inline agent.py alone can fill.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    config: Settings = memo.get("settings") or settings_module.active()
    memo["settings"] = config
    # kopf's own finalizer is never added (no handler of ours needs one): the
    # reconciler adds `reconciler.FINALIZER` itself when a test takes a slot. A
    # finalizer under kopf's name would be removed by kopf as unneeded.
    settings.persistence.finalizer = f"kopf.{GROUP}/unused"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase(prefix=GROUP, key="diffbase")
    # Events are the operator's own (`events`), under its name; kopf posts none.
    settings.posting.enabled = False
    # kopf says "Handler 'observe' succeeded" for every watch event: thousands a minute.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    # kopf keeps a worker task per object until it was idle this long. Ours only
    # hands the event over, so a worker's life is that of its burst: with 5,000
    # tests created in half a minute, kopf's 5 s kept a thousand alive at once.
    settings.queueing.idle_timeout = 0.5
    settings.networking.request_timeout = 30
    rt = memo["runtime"] = await wiring.runtime(config)
    core = memo["reconciler"] = reconciler.Reconciler(rt)
    known = await core.seed(config.namespaces)
    # The gauges are counted from the index at each scrape, so they cannot drift.
    metrics.CENSUS.source = lambda: metrics.census(
        core.index,
        {uid: written.status for uid, written in core.written.items()},
        config.max_running,
    )
    # Steps start now, with what the listing gave, not after kopf's own listing.
    core.start()
    if config.metrics_port:
        memo["http"] = await httpserver.serve(
            config.metrics_port, core.queue_document, host=config.http_host
        )
    memo["sweeper"] = asyncio.create_task(_sweep_forever(rt, config.sweep_interval))
    logger.info(
        "agenttest operator ready: %d AgentTests, max %d running (%s per namespace), "
        "default backend %s, backends: %s",
        known,
        config.max_running,
        config.max_running_per_namespace or "no cap",
        config.default_backend.value,
        ", ".join(sorted(b.value for b in rt.executors)) or "none",
    )


async def _sweep_forever(rt: controller.Runtime, interval: float) -> None:
    while True:
        try:
            await controller.sweep(rt, kubeapi.agenttest_uid)
        except Exception:
            logger.warning("sweeping for orphaned executions failed", exc_info=True)
        await asyncio.sleep(interval)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    sweeper = memo.get("sweeper")
    if isinstance(sweeper, asyncio.Task):
        sweeper.cancel()
    core = memo.get("reconciler")
    if isinstance(core, reconciler.Reconciler):
        metrics.CENSUS.source = None
        await core.stop()
    http = memo.get("http")
    if isinstance(http, httpserver.HttpServer):
        await http.stop()


@kopf.on.event(GROUP, VERSION, AGENTTEST_PLURAL)
async def observe(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    core: reconciler.Reconciler = memo["reconciler"]
    core.observe(event.get("type"), body)
