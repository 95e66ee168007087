"""The kopf handlers: decorators with bodies of a few lines.

* `configure` sets kopf's own names and builds the runtime (`wiring`).
* `queue_index` keeps what the queue needs about every AgentTest; kopf fills
  it from the initial listing before any timer runs, which is what lets a
  restarted operator rebuild its queue before it starts anything.
* `drive` steps each test that wants one (`lifecycle.wants_step`) every
  `poll_interval` seconds through `controller.reconcile`, then stores a finished
  test's report (`controller.report`) and packages a passing one (`controller.package`).
* `expire` deletes finished tests after `ttlSecondsAfterFinished`.
* `stop_on_delete` is the finalizer: a deleted test's execution is stopped
  and cleaned up before the resource goes away.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import kopf
from pydantic import ValidationError

from agenttest import controller, kubeapi, lifecycle, metrics, redaction, wiring
from agenttest import settings as settings_module
from agenttest.models import (
    AGENTTEST_PLURAL,
    GROUP,
    MAX_TTL_SECONDS,
    RETRY_ANNOTATION,
    VERSION,
    AgentTest,
    AgentTestStatus,
    Phase,
)
from agenttest.scheduling import QueueEntry
from agenttest.settings import Settings

logger = logging.getLogger(__name__)


def _status(body: kopf.Body, memo: kopf.Memo) -> AgentTestStatus:
    """The status we last wrote (the body can lag a watch event behind), else the body's."""
    written = memo.get("written_status")
    if isinstance(written, AgentTestStatus):
        return written
    return AgentTestStatus.model_validate(dict(body.get("status") or {}))


def _phase(body: kopf.Body) -> Phase | None:
    value = (body.get("status") or {}).get("phase")
    try:
        return Phase(value) if value else None
    except ValueError:
        return None


def needs_driving(body: kopf.Body, **_: Any) -> bool:
    phase = _phase(body)
    if phase is None or not phase.finished:
        # The common case, asked for every test at every tick: no status to parse.
        return True
    try:
        status = AgentTestStatus.model_validate(dict(body.get("status") or {}))
    except ValidationError:
        return True  # the step will say what is wrong with it
    package_enabled = bool((body.get("spec") or {}).get("package", {}).get("enabled", True))
    generation = int(body.metadata.get("generation") or 1)
    retry = body.metadata.annotations.get(RETRY_ANNOTATION)
    return lifecycle.wants_step(status, package_enabled, generation, retry)


def is_finished(body: kopf.Body, **_: Any) -> bool:
    phase = _phase(body)
    return phase is not None and phase.finished and not needs_driving(body)


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Keeps no copy of the spec: no handler here diffs old against new.

    kopf's default copies the whole spec into an annotation, and annotations
    share a 256 KiB limit that a large inline agent.py alone can fill.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: Settings = memo.get("settings") or settings_module.active()
    memo["settings"] = config
    # Our own names for kopf's bookkeeping, so it is recognisably ours.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase(prefix=GROUP, key="diffbase")
    # Only our own Events (phase transitions) and kopf's warnings reach the resource.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # No batching.worker_limit: kopf holds every object's worker until all of
    # them are indexed, so a limit below the number of AgentTests deadlocks.
    settings.networking.request_timeout = 30
    rt = memo["runtime"] = await wiring.runtime(config)
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    memo["sweeper"] = asyncio.create_task(_sweep_forever(rt, config.sweep_interval))
    logger.info(
        "agenttest operator ready: max %d running, default backend %s, backends: %s",
        config.max_running,
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
async def stop_sweeping(memo: kopf.Memo, **_: Any) -> None:
    sweeper = memo.get("sweeper")
    if isinstance(sweeper, asyncio.Task):
        sweeper.cancel()


@kopf.index(GROUP, VERSION, AGENTTEST_PLURAL)
def queue_index(
    body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, QueueEntry]:
    return {
        str(meta.uid): QueueEntry(
            uid=str(meta.uid),
            namespace=str(meta.namespace),
            name=str(meta.name),
            priority=int(spec.get("priority", 0)),
            created=str(meta.creation_timestamp),
            phase=_phase(body),
            not_before=lifecycle.parse_timestamp(status.get("retryAfter")),
        )
    }


def _entries(index: kopf.Index[str, QueueEntry]) -> list[QueueEntry]:
    return [entry for store in index.values() for entry in store]


# kopf passes indexes as extra keyword arguments, which its TimerFn protocol does not list.
@kopf.timer(  # type: ignore[arg-type]
    GROUP,
    VERSION,
    AGENTTEST_PLURAL,
    interval=settings_module.active().poll_interval,
    # A failed step is tried again at the next poll, not after kopf's default
    # minute: the controller counts failures per execution (STEP_ERROR_LIMIT).
    backoff=settings_module.active().poll_interval,
    when=needs_driving,
)
async def drive(
    body: kopf.Body, memo: kopf.Memo, queue_index: kopf.Index[str, QueueEntry], **_: Any
) -> None:
    rt: controller.Runtime = memo["runtime"]
    meta = body.metadata
    generation = int(meta.get("generation") or 1)
    try:
        old = _status(body, memo)
    except ValidationError as error:
        # Someone wrote a status this operator cannot read: say so once, keep nothing of it.
        old = AgentTestStatus()
        new = lifecycle.unreadable(old, "status", _brief(error), generation, rt.clock())
        await _end(body, memo, old, new)
        return
    try:
        test = AgentTest.from_body(body, old)
    except ValidationError as error:
        owner = controller.Owner(str(meta.uid), str(meta.namespace), str(meta.name))
        await controller.stop(rt, owner, old, "its spec cannot be read")
        new = lifecycle.unreadable(old, "spec", _brief(error), generation, rt.clock())
        await _end(body, memo, old, new)
        return
    step = await controller.reconcile(rt, test, lambda: _entries(queue_index))
    written = await write_status(body, memo, old, step.status)
    # The step's Events first: storing a report and packaging take S3 round trips.
    _post_events(body, old, written, step.transitions)
    if written.phase == Phase.ERROR and step.status.phase != Phase.ERROR:
        # The status was refused for its size and replaced by an Error.
        await controller.stop(rt, test, written, "its status could not be written", strict=False)
    else:
        # After the finished write, so the test shows its result first; the report
        # before the package, which holds it.
        if lifecycle.needs_report(written):
            reported = await controller.report(rt, test.with_status(written))
            written = await write_status(body, memo, written, reported)
        if lifecycle.needs_package(written, test.spec.package.enabled):
            packaged = await controller.package(rt, test.with_status(written))
            await write_status(body, memo, written, packaged)


def _brief(error: ValidationError) -> str:
    """pydantic's message without its documentation links, which say nothing to a user."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'value'}: {item['msg']}"
        for item in error.errors()
    )


async def _end(
    body: kopf.Body, memo: kopf.Memo, old: AgentTestStatus, new: AgentTestStatus
) -> None:
    written = await write_status(body, memo, old, new)
    if written.phase != old.phase or written.message != old.message:
        _post_events(body, old, written, [(Phase.ERROR, written.message or "")])


def _post_events(
    body: kopf.Body,
    old: AgentTestStatus,
    new: AgentTestStatus,
    transitions: list[tuple[Phase, str]],
) -> None:
    if new.forged_lines and not old.forged_lines:
        message = (
            f"{new.forged_lines} line(s) of the execution's output posed as the judge's "
            "machine lines without its signature and were ignored"
        )
        kopf.event(body, type="Warning", reason="ForgedOutput", message=message)
    flaky = lifecycle.flaky_cases(new)
    if flaky and new.phase is not None and new.phase.finished and new.phase != old.phase:
        # Said even when the test passed: a gate that passes 4 times in 5 is news.
        message = "flaky cases (some trials passed, some failed): " + ", ".join(flaky)
        kopf.event(
            body,
            type="Warning",
            reason="FlakyCases",
            message=redaction.shown(message, redaction.EVENT_BYTES),
        )
    for phase, message in transitions:
        failed = phase in (Phase.FAILED, Phase.ERROR, Phase.TIMED_OUT)
        kind = "Warning" if failed else "Normal"
        shown = redaction.shown(message, redaction.EVENT_BYTES)
        kopf.event(body, type=kind, reason=phase.value, message=shown)


async def write_status(
    body: kopf.Body, memo: kopf.Memo, old: AgentTestStatus, new: AgentTestStatus
) -> AgentTestStatus:
    """Patch only what changed; remember it, since the body lags our own writes.

    Returns the status as written: cleaned and bounded (`redaction`), or, if
    the API server refused it for its size anyway, a minimal Error status.
    """
    rt: controller.Runtime = memo["runtime"]
    new = redaction.status(new, rt.settings.log_tail_bytes)
    meta = body.metadata
    changes = kubeapi.merge_patch(old.wire(), new.wire())
    if not changes:
        return new
    try:
        await kubeapi.patch_agenttest_status(str(meta.namespace), str(meta.name), changes)
    except kubeapi.Gone:
        return new  # deleted meanwhile; the finalizer handler cleans up
    except kubeapi.TooLarge:
        logger.error("%s/%s: status refused for its size", meta.namespace, meta.name)
        new = lifecycle.too_large(new, rt.clock())
        changes = kubeapi.merge_patch(old.wire(), new.wire())
        await kubeapi.patch_agenttest_status(str(meta.namespace), str(meta.name), changes)
    memo["written_status"] = new
    rt.scheduler.record(str(meta.uid), new)
    metrics.STATUS_WRITES.inc()
    if new.phase != old.phase:
        metrics.record_transition(old, new)
    return new


@kopf.daemon(GROUP, VERSION, AGENTTEST_PLURAL, when=is_finished, cancellation_timeout=5)
async def expire(
    body: kopf.Body,
    meta: kopf.Meta,
    spec: kopf.Spec,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    """Delete the test once ttlSecondsAfterFinished has passed since it finished."""
    rt: controller.Runtime = memo["runtime"]
    finished = lifecycle.finished_at(_status(body, memo)) or rt.clock()
    ttl = min(int(spec.get("ttlSecondsAfterFinished", 604800)), MAX_TTL_SECONDS)
    remaining = (finished + datetime.timedelta(seconds=ttl) - rt.clock()).total_seconds()
    if remaining > 0 and await stopped.wait(remaining):
        return
    await kubeapi.delete_agenttest(str(meta.namespace), str(meta.name))
    logger.info("deleted %s/%s: ttlSecondsAfterFinished %ds passed", meta.namespace, meta.name, ttl)


@kopf.on.delete(GROUP, VERSION, AGENTTEST_PLURAL, retries=10, backoff=2)
async def stop_on_delete(body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    rt: controller.Runtime = memo["runtime"]
    try:
        status = _status(body, memo)
    except ValidationError:
        status = AgentTestStatus()  # an unreadable status names no execution to clean up
    await controller.delete(rt, str(meta.namespace), str(meta.uid), status)
    rt.scheduler.forget(str(meta.uid))
