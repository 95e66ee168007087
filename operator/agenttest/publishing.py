"""Publishing a passing test: upload its package to S3, create its DeploymentPackage.

`packaging` renders and zips (pure); this module does the side effects. Both
steps are idempotent, so a step repeated after an operator restart neither
uploads twice (an object with the same checksum is left alone) nor creates a
second DeploymentPackage (the name derives from the test and its attempt).
The operator uploads: the agent's own execution never holds S3 credentials.

What goes in is what was tested: agent.py is the attempt's snapshot read back from
the bucket (sources.SnapshotStore) and verified against ``status.source``, never the
source read again, and requirements.txt pins ``status.environment``, the
distributions the judge listed where the agent ran.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from agenttest import conditions, kubeapi, packaging
from agenttest.models import (
    API_VERSION,
    AgentTest,
    AgentTestRef,
    ConditionType,
    DeploymentPackageSpec,
    DeploymentPackageStatus,
)
from agenttest.objects import owned_metadata, test_label
from agenttest.sources import SnapshotStore, SourceUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    name: str
    uri: str
    sha256: str
    size: int


def package_name(test_name: str, attempt: int) -> str:
    suffix = f"-a{attempt}"
    return test_name[: 253 - len(suffix)] + suffix


def package_input(test: AgentTest, source: str, tested_at: str) -> packaging.PackageInput:
    return packaging.PackageInput(
        agent_source=source,
        entrypoint=test.spec.agent.entrypoint,
        requirements=list(test.spec.agent.requirements),
        environment=list(test.status.environment),
        model=test.spec.model.wire(),
        cases=[case.wire() for case in test.status.cases],
        summary=test.status.summary or "",
        namespace=test.namespace,
        name=test.name,
        uid=test.uid,
        attempt=test.status.attempt,
        tested_at=tested_at,
    )


@dataclass(frozen=True)
class Built:
    """A package rendered and zipped, and where it goes: everything before the I/O."""

    data: bytes
    sha256: str
    files: list[str]
    bucket: str
    key: str

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
    )
    metadata = owned_metadata(
        package_name(test.name, test.status.attempt),
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
        self, bucket: str, prefix: str = "packages/", max_bytes: int = packaging.MAX_PACKAGE_BYTES
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.max_bytes = max_bytes
        self._s3: Any = None
        # Each attempt's agent.py, kept at launch beside where its package goes.
        self.snapshots = SnapshotStore(bucket, prefix)

    def _client(self) -> Any:
        if self._s3 is None:
            import boto3

            self._s3 = boto3.client("s3")
        return self._s3

    def _upload(self, key: str, data: bytes, digest: str) -> None:
        s3 = self._client()
        try:
            head = s3.head_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            if getattr(error, "response", {}).get("Error", {}).get("Code") not in (
                "404",
                "NoSuchKey",
            ):
                raise
        else:
            if head.get("Metadata", {}).get("sha256") == digest:
                return  # uploaded before (this operator restarted after the upload)
        s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType="application/zip",
            ServerSideEncryption="AES256",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
            Metadata={"sha256": digest},
        )

    def build(self, test: AgentTest, source: str, now: datetime.datetime) -> Built:
        """Render and zip the package of a passing test (no I/O)."""
        # The launch time, not the publish time, goes into the package, so a
        # publish repeated after a restart renders the same bytes.
        status = test.status
        tested_at = (status.execution.started_at if status.execution else None) or (
            conditions.stamp(now)
        )
        files = packaging.render(package_input(test, source, tested_at))
        data = packaging.build_zip(files)
        packaging.check_size(data, self.max_bytes)
        key = packaging.object_key(test.namespace, test.name, test.uid, status.attempt, self.prefix)
        return Built(data, packaging.sha256_hex(data), list(files), self.bucket, key)

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

    async def publish(self, test: AgentTest, now: datetime.datetime) -> Published:
        source = await self.tested_source(test)
        built = self.build(test, source, now)
        await asyncio.to_thread(self._upload, built.key, built.data, built.sha256)
        body = deployment_package(test, built)
        name = body["metadata"]["name"]
        try:
            await kubeapi.create_deployment_package(test.namespace, body)
        except kubeapi.Conflict:
            existing = await kubeapi.get_deployment_package(test.namespace, name)
            owners = existing.get("metadata", {}).get("ownerReferences", [])
            if not any(owner.get("uid") == test.uid for owner in owners):
                raise RuntimeError(
                    f"DeploymentPackage {test.namespace}/{name} exists and belongs to another test"
                ) from None
        ready = ready_status(built, now)
        await kubeapi.patch_deployment_package_status(test.namespace, name, ready.wire())
        return Published(name=name, uri=built.uri, sha256=built.sha256, size=len(built.data))
