"""The kopf handlers. Thin: read the resource, call `controller`, write the result.

* `queue_index` keeps what the queue needs about every AgentTest; kopf fills
  it from the initial listing before any timer runs, which is what lets a
  restarted operator rebuild its queue before it starts anything.
* `drive` ticks every `poll_interval` seconds for each unfinished test.
* `expire` deletes finished tests after `ttlSecondsAfterFinished`.
* `stop_on_delete` is the finalizer: a deleted test's execution is stopped
  and cleaned up before the resource goes away.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf
from pydantic import ValidationError

from agenttest import controller, kubeapi, lifecycle, metrics, queue, runkeys
from agenttest.backends.base import Executor
from agenttest.models import (
    AGENTTEST_PLURAL,
    GROUP,
    VERSION,
    AgentTestSpec,
    AgentTestStatus,
    Backend,
    Phase,
)
from agenttest.publishing import Publisher
from agenttest.settings import Settings

RETRY_ANNOTATION = f"{GROUP}/retry"
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
    """Unfinished, or finished but asked for a new attempt (spec change, retry)."""
    phase = _phase(body)
    if phase is None or not phase.finished:
        return True
    status = body.get("status") or {}
    package_enabled = (body.get("spec") or {}).get("package", {}).get("enabled", True)
    if (
        phase == Phase.SUCCEEDED
        and package_enabled
        and not any(c.get("type") == "Packaged" for c in status.get("conditions", []))
    ):
        return True  # passed but not yet packaged
    retry = body.metadata.annotations.get(RETRY_ANNOTATION)
    generation = body.metadata.get("generation")
    return (retry is not None and retry != status.get("observedRetry")) or (
        generation != status.get("observedGeneration")
    )


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


# --------------------------------------------------------------------------
# Start-up
# --------------------------------------------------------------------------


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: Settings = memo.get("settings") or Settings.from_env()
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

    executors: dict[Backend, Executor] = {}
    if config.enable_local_backend:
        from agenttest.backends.local import LocalExecutor

        executors[Backend.LOCAL] = LocalExecutor(
            config.local_state_dir, config.local_pass_env, config.stop_grace_seconds
        )
    from agenttest.backends.pod import PodExecutor

    executors[Backend.POD] = PodExecutor(
        config.runner_image, config.pod_runtime_class, config.stop_grace_seconds
    )
    if config.fargate_subnets:
        from agenttest.backends.fargate import FargateConfig, FargateExecutor

        executors[Backend.FARGATE] = FargateExecutor(
            FargateConfig.from_settings(config), min_log_interval=config.poll_interval
        )
    kubeapi.load_config()
    namespace = runkeys.operator_namespace(config.operator_namespace)
    memo["runtime"] = controller.Runtime(
        settings=config,
        signing_secret=await runkeys.load_master(namespace, config.signing_secret),
        executors=executors,
        scheduler=controller.Scheduler(limit=config.max_running),
        publisher=(
            Publisher(config.package_bucket, config.package_prefix, config.package_max_bytes)
            if config.package_bucket
            else None
        ),
    )
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    logger.info(
        "agenttest operator ready: max %d running, default backend %s, backends: %s",
        config.max_running,
        config.default_backend.value,
        ", ".join(sorted(b.value for b in executors)) or "none",
    )


# --------------------------------------------------------------------------
# The queue
# --------------------------------------------------------------------------


@kopf.index(GROUP, VERSION, AGENTTEST_PLURAL)
def queue_index(
    body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, queue.QueueEntry]:
    return {
        str(meta.uid): queue.QueueEntry(
            uid=str(meta.uid),
            namespace=str(meta.namespace),
            name=str(meta.name),
            priority=int(spec.get("priority", 0)),
            created=str(meta.creation_timestamp),
            phase=_phase(body),
            not_before=lifecycle.parse_timestamp(status.get("retryAfter")),
        )
    }


def _entries(index: kopf.Index[str, queue.QueueEntry]) -> list[queue.QueueEntry]:
    return [entry for store in index.values() for entry in store]


# --------------------------------------------------------------------------
# Driving a test
# --------------------------------------------------------------------------


def _interval() -> float:
    return Settings.from_env().poll_interval


# kopf passes indexes as extra keyword arguments, which its TimerFn protocol does not list.
# kopf passes indexes as extra keyword arguments, which its TimerFn protocol does not list.
@kopf.timer(  # type: ignore[arg-type]
    GROUP, VERSION, AGENTTEST_PLURAL, interval=_interval(), when=needs_driving
)
async def drive(
    body: kopf.Body,
    meta: kopf.Meta,
    memo: kopf.Memo,
    queue_index: kopf.Index[str, queue.QueueEntry],
    **_: Any,
) -> None:
    rt: controller.Runtime = memo["runtime"]
    old = _status(body, memo)
    transitions: list[tuple[Phase, str]]
    try:
        spec = AgentTestSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as error:
        new = lifecycle.finish(old, Phase.ERROR, f"invalid spec: {error}", rt.clock())
        transitions = [(Phase.ERROR, new.message or "")]
    else:
        test = controller.TestView(
            uid=str(meta.uid),
            namespace=str(meta.namespace),
            name=str(meta.name),
            generation=int(meta.get("generation", 1)),
            spec=spec,
            status=old,
            retry=meta.annotations.get(RETRY_ANNOTATION),
        )
        step = await controller.reconcile(rt, test, lambda: _entries(queue_index))
        new, transitions = step.status, step.transitions
    await write_status(meta, memo, old, new)
    rt.scheduler.record(str(meta.uid), new)
    if lifecycle.needs_package(new, spec.package.enabled):
        # After the Succeeded write, so the test shows its result first.
        await write_status(meta, memo, new, await controller.package(rt, test, new))
    if new.forged_lines and not old.forged_lines:
        kopf.event(
            body,
            type="Warning",
            reason="ForgedOutput",
            message=(
                f"{new.forged_lines} line(s) of the execution's output posed as the judge's "
                "machine lines without its signature and were ignored"
            ),
        )
    for phase, message in transitions:
        failed = phase in (Phase.FAILED, Phase.ERROR, Phase.TIMED_OUT)
        kopf.event(
            body, type="Warning" if failed else "Normal", reason=phase.value, message=message
        )


async def write_status(
    meta: kopf.Meta, memo: kopf.Memo, old: AgentTestStatus, new: AgentTestStatus
) -> None:
    """Patch only what changed; remember it, since the body lags our own writes."""
    changes = merge_patch(old.wire(), new.wire())
    if not changes:
        return
    try:
        await kubeapi.patch_agenttest_status(str(meta.namespace), str(meta.name), changes)
    except kubeapi.Gone:
        return  # deleted meanwhile; the finalizer handler cleans up
    memo["written_status"] = new
    metrics.STATUS_WRITES.inc()
    if new.phase != old.phase:
        metrics.record_transition(old, new)


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`."""
    changes: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        changes[key] = None
    for key, value in new.items():
        previous = old.get(key)
        if isinstance(value, dict) and isinstance(previous, dict):
            nested = merge_patch(previous, value)
            if nested:
                changes[key] = nested
        elif value != previous:
            changes[key] = value
    return changes


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
    status = _status(body, memo)
    finished = (
        lifecycle.parse_timestamp(
            (status.execution.completed_at if status.execution else None)
            or next(
                (c.last_transition_time for c in status.conditions if c.type == "Succeeded"), None
            )
        )
        or rt.clock()
    )
    ttl = int(spec.get("ttlSecondsAfterFinished", 604800))
    remaining = (finished + datetime.timedelta(seconds=ttl) - rt.clock()).total_seconds()
    if remaining > 0 and await stopped.wait(remaining):
        return
    await kubeapi.delete_agenttest(str(meta.namespace), str(meta.name))
    logger.info("deleted %s/%s: ttlSecondsAfterFinished %ds passed", meta.namespace, meta.name, ttl)


@kopf.on.delete(GROUP, VERSION, AGENTTEST_PLURAL, retries=10, backoff=2)
async def stop_on_delete(body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    rt: controller.Runtime = memo["runtime"]
    await controller.delete(rt, _status(body, memo))
    rt.scheduler.forget(str(meta.uid))
