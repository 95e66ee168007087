"""Building the operator's runtime from its settings: executors, publisher, reports, key.

Kept apart from the handlers so that they stay a list of decorators, and so
that what runs where is read in one place.
"""

from __future__ import annotations

from agenttest import kubeapi, runkeys, sources
from agenttest.backends.base import Executor
from agenttest.controller import Runtime
from agenttest.models import Backend
from agenttest.publishing import Publisher
from agenttest.reporting import ReportStore
from agenttest.scheduling import Scheduler
from agenttest.settings import Settings


def executors(settings: Settings) -> dict[Backend, Executor]:
    """The backends this operator offers: pod always, local and fargate when set up."""
    built: dict[Backend, Executor] = {}
    if settings.enable_local_backend:
        from agenttest.backends.local import LocalExecutor

        built[Backend.LOCAL] = LocalExecutor(
            settings.local_state_dir, settings.local_pass_env, settings.stop_grace_seconds
        )
    from agenttest.backends.pod import PodExecutor

    built[Backend.POD] = PodExecutor(
        settings.runner_image,
        settings.pod_runtime_class,
        settings.stop_grace_seconds,
        ephemeral_storage=settings.pod_ephemeral_storage,
        egress_allow=settings.pod_egress_allow,
    )
    if settings.fargate_subnets:
        from agenttest.backends.fargate import FargateConfig, FargateExecutor

        built[Backend.FARGATE] = FargateExecutor(
            FargateConfig.from_settings(settings), min_log_interval=settings.poll_interval
        )
    return built


def report_store(settings: Settings) -> ReportStore | None:
    """Reports go to the results bucket, else the package bucket; with neither, nowhere."""
    bucket = settings.results_bucket or settings.package_bucket
    return ReportStore(bucket) if bucket else None


def publisher(settings: Settings, reports: ReportStore | None = None) -> Publisher | None:
    if not settings.package_bucket:
        return None
    return Publisher(
        settings.package_bucket, settings.package_prefix, settings.package_max_bytes, reports
    )


async def runtime(settings: Settings) -> Runtime:
    """Everything the handlers need; talks to the API server for the signing secret."""
    # A bad AGENTTEST_S3_SOURCE_ALLOW entry stops the operator here, at start, rather
    # than refusing every S3 source later with a message that blames the test.
    sources.s3_grants(settings.s3_source_allow)
    settings.price_table()  # the same for a bad AGENTTEST_MODEL_PRICES
    kubeapi.load_config()
    namespace = runkeys.operator_namespace(settings.operator_namespace)
    reports = report_store(settings)
    return Runtime(
        settings=settings,
        executors=executors(settings),
        scheduler=Scheduler(
            limit=settings.max_running, namespace_limit=settings.max_running_per_namespace
        ),
        signing_secret=await runkeys.load_master(namespace, settings.signing_secret),
        publisher=publisher(settings, reports),
        report_store=reports,
    )
