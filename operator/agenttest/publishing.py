"""Publishing a passing test: upload its package to S3, create its DeploymentPackage.

`packaging` renders and zips (pure); this module does the side effects. Both
steps are idempotent, so a step repeated after an operator restart neither
uploads twice (an object with the same checksum is left alone) nor creates a
second DeploymentPackage (the name derives from the test and its attempt).
The operator uploads: the agent's own execution never holds S3 credentials.

A failure is one of two kinds (s3objects, shared with the reports). `PublishRefused`:
S3 or the API server said no in a way a retry cannot change (a 4xx other than
throttling, a package that cannot be rendered, a name taken by another test); the
test gets `Packaged=False` with the reason, once. Anything else (throttling, 5xx, a
lost connection) is retried, each test's retries spaced by a growing backoff
(`PublishDeferred` while it waits).

What goes in is what was tested: agent.py is the attempt's snapshot read back from
the bucket (sources.SnapshotStore) and verified against ``status.source``, never the
source read again, and requirements.txt pins ``status.environment``, the
distributions the judge listed where the agent ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
from dataclasses import dataclass
from typing import Any

import jinja2

from agenttest import awsclients, conditions, kubeapi, packaging
from agenttest.models import (
    API_VERSION,
    AgentTest,
    AgentTestRef,
    ConditionType,
    DeploymentPackageSpec,
    DeploymentPackageStatus,
    NamedModel,
)
from agenttest.objects import owned_metadata, test_label
from agenttest.reporting import ReportStore, ReportUnavailable
from agenttest.s3objects import Backoff, PublishRefused, put_once
from agenttest.sources import SnapshotStore, SourceUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    name: str
    uri: str
    sha256: str
    size: int
    model: str | None = None  # the matrix entry it was made for


def api_refusal(error: BaseException, what: str) -> PublishRefused | None:
    """A PublishRefused for an API server 4xx (but throttling); None for a transient one."""
    if isinstance(error, kubeapi.Gone):
        return PublishRefused("PackageRefused", f"the API server refused {what}: not found")
    status = getattr(error, "status", None)
    # 401: an expired token, which the client renews; 429: throttled.
    if not isinstance(status, int) or not 400 <= status < 500 or status in (401, 429):
        return None
    message = str(getattr(error, "reason", "") or "")
    body = getattr(error, "body", None)
    if isinstance(body, str | bytes):
        with contextlib.suppress(ValueError, AttributeError):
            message = str(json.loads(body).get("message") or message)
    return PublishRefused("PackageRefused", f"the API server refused {what}: {message}")


def package_name(test_name: str, attempt: int, model: str | None = None) -> str:
    """<test>-a<attempt>, and -<model> for each passing model of a matrix."""
    suffix = f"-a{attempt}" + (f"-{model}" if model else "")
    # A cut that ends in '.' or '-' followed by the suffix is no valid name ("x.-a1").
    return test_name[: 253 - len(suffix)].rstrip(".-") + suffix


def packaged_models(test: AgentTest) -> list[NamedModel | None]:
    """What gets a package: the model (None), or each matrix model that passed."""
    if not test.spec.matrix:
        return [None]
    passed = {model.name for model in test.status.models if model.passed}
    return [entry for entry in test.spec.model_entries() if entry.name in passed]


def package_input(
    test: AgentTest,
    source: str,
    tested_at: str,
    report: bytes | None = None,
    model: NamedModel | None = None,
) -> packaging.PackageInput:
    spec_model = model or test.spec.primary_model
    cases = [case for case in test.status.cases if model is None or case.model == model.name]
    return packaging.PackageInput(
        agent_source=source,
        entrypoint=test.spec.agent.entrypoint,
        requirements=list(test.spec.agent.requirements),
        environment=list(test.status.environment),
        model=spec_model.wire(),
        cases=[case.wire() for case in cases],
        suite=[case.wire() for case in test.spec.cases],
        summary=test.status.summary or "",
        namespace=test.namespace,
        name=test.name,
        uid=test.uid,
        attempt=test.status.attempt,
        tested_at=tested_at,
        report=report,
    )


@dataclass(frozen=True)
class Built:
    """A package rendered and zipped, and where it goes: everything before the I/O."""

    data: bytes
    sha256: str
    files: list[str]
    bucket: str
    key: str
    model: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def deployment_package(test: AgentTest, built: Built) -> dict[str, Any]:
    """The DeploymentPackage resource for a built package (pure)."""
    spec = DeploymentPackageSpec(
        agent_test_ref=AgentTestRef(name=test.name, uid=test.uid, attempt=test.status.attempt),
        s3_uri=built.uri,
        bucket=built.bucket,
        key=built.key,
        sha256=built.sha256,
        size_bytes=len(built.data),
        files=sorted(built.files),
        summary=test.status.summary or "",
        model=built.model,
    )
    metadata = owned_metadata(
        package_name(test.name, test.status.attempt, built.model),
        test.namespace,
        test.name,
        test.uid,
        test_label(test.name),
    )
    del metadata["namespace"]  # given by the create call
    return {
        "apiVersion": API_VERSION,
        "kind": "DeploymentPackage",
        "metadata": metadata,
        "spec": spec.wire(),
    }


def ready_status(built: Built, now: datetime.datetime) -> DeploymentPackageStatus:
    message = f"{built.uri} ({len(built.data)} bytes, sha256 {built.sha256[:12]}...)"
    ready = conditions.set_condition([], ConditionType.READY, "True", "Uploaded", message, 1, now)
    return DeploymentPackageStatus(observed_generation=1, conditions=ready)


class Publisher:
    def __init__(
        self,
        bucket: str,
        prefix: str = "packages/",
        max_bytes: int = packaging.MAX_PACKAGE_BYTES,
        reports: ReportStore | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.max_bytes = max_bytes
        self._s3: Any = None
        # Per (uid, attempt): transient failures in a row and when to try again.
        self.backoff = Backoff("publishing")
        # Where the tests' reports are, to put them into their packages.
        self.reports = reports
        # Each attempt's agent.py, kept at launch beside where its package goes.
        self.snapshots = SnapshotStore(bucket, prefix)

    def _client(self) -> Any:
        if self._s3 is None:
            self._s3 = awsclients.client("s3")
        return self._s3

    def _upload(self, key: str, data: bytes, digest: str) -> None:
        put_once(self._client(), self.bucket, key, data, digest, "application/zip")

    def build(
        self,
        test: AgentTest,
        source: str,
        now: datetime.datetime,
        report: bytes | None = None,
        model: NamedModel | None = None,
    ) -> Built:
        """Render and zip the package of a passing test, or of one model of it (no I/O)."""
        # The launch time, not the publish time, goes into the package, so a
        # publish repeated after a restart renders the same bytes.
        status = test.status
        tested_at = (status.execution.started_at if status.execution else None) or (
            conditions.stamp(now)
        )
        files = packaging.render(package_input(test, source, tested_at, report, model))
        data = packaging.build_zip(files)
        packaging.check_size(data, self.max_bytes)
        name = model.name if model is not None else None
        key = packaging.object_key(
            test.namespace, test.name, test.uid, status.attempt, self.prefix, name
        )
        return Built(data, packaging.sha256_hex(data), list(files), self.bucket, key, name)

    async def tested_source(self, test: AgentTest) -> str:
        """The agent.py the judge ran, from the attempt's snapshot; SourceUnavailable if unsure."""
        source = test.status.source
        if source is None:
            raise SourceUnavailable("the attempt recorded no snapshot of its agent.py")
        if source.tested_sha256 != source.sha256:
            ran = source.tested_sha256 or "an unreported one"
            raise SourceUnavailable(
                f"the judge ran an agent.py with sha256 {ran}, not the snapshot's "
                f"{source.sha256}: the package could not hold what was tested"
            )
        return await self.snapshots.read(
            test.namespace, test.name, test.uid, test.status.attempt, source.sha256
        )

    async def publish(self, test: AgentTest, now: datetime.datetime) -> list[Published]:
        """Upload and record the packages; PublishRefused for good, PublishDeferred for now.

        One package, or one per passing model of a matrix; each step is idempotent,
        so a retry after a partial failure repeats nothing that was done.

        PackageTooLarge and SourceUnavailable pass through (the caller names them).
        """
        attempt = (test.uid, test.status.attempt)
        self.backoff.wait(attempt, now)
        try:
            source = await self.tested_source(test)
            report = await self.stored_report(test)
            published = [
                await self._publish(test, source, report, now, model)
                for model in packaged_models(test)
            ]
        except (
            PublishRefused,
            packaging.PackageTooLarge,
            packaging.NotReproducible,
            SourceUnavailable,
        ):
            self.backoff.forget(attempt)
            raise
        except Exception as error:
            raise self.backoff.failed(
                attempt, now, error, f"{test.namespace}/{test.name}"
            ) from error
        self.backoff.forget(attempt)
        return published

    async def stored_report(self, test: AgentTest) -> bytes | None:
        """The test's stored report.json, verified; None when it stored none."""
        if self.reports is None or test.status.reports is None:
            return None
        try:
            return await self.reports.read(test)
        except ReportUnavailable as error:
            raise PublishRefused("ReportUnavailable", str(error)) from error

    async def _publish(
        self,
        test: AgentTest,
        source: str,
        report: bytes | None,
        now: datetime.datetime,
        model: NamedModel | None,
    ) -> Published:
        try:
            built = self.build(test, source, now, report, model)
        except (packaging.PackageTooLarge, packaging.NotReproducible):
            raise
        except (ValueError, TypeError, OSError, jinja2.TemplateError) as error:
            # The same inputs render the same way on every try.
            raise PublishRefused(
                "RenderFailed", f"the package cannot be rendered: {error}"
            ) from error
        await asyncio.to_thread(self._upload, built.key, built.data, built.sha256)
        body = deployment_package(test, built)
        name = body["metadata"]["name"]
        try:
            await kubeapi.create_deployment_package(test.namespace, body)
        except kubeapi.Conflict:
            existing = await kubeapi.get_deployment_package(test.namespace, name)
            owners = existing.get("metadata", {}).get("ownerReferences", [])
            if not any(owner.get("uid") == test.uid for owner in owners):
                raise PublishRefused(
                    "NameTaken",
                    f"DeploymentPackage {test.namespace}/{name} exists and belongs to another test",
                ) from None
        except Exception as error:
            refusal = api_refusal(error, f"DeploymentPackage {test.namespace}/{name}")
            if refusal is not None:
                raise refusal from error
            raise
        ready = ready_status(built, now)
        try:
            await kubeapi.patch_deployment_package_status(test.namespace, name, ready.wire())
        except Exception as error:
            refusal = api_refusal(error, f"the status of DeploymentPackage {test.namespace}/{name}")
            if refusal is not None:
                raise refusal from error
            raise
        return Published(
            name=name, uri=built.uri, sha256=built.sha256, size=len(built.data), model=built.model
        )
