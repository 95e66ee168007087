"""Publishing a passing test: upload its package to S3, create its DeploymentPackage.

`packaging` renders and zips (pure); this module does the side effects. Both
steps are idempotent, so a step repeated after an operator restart neither
uploads twice (an object with the same checksum is left alone) nor creates a
second DeploymentPackage (the name derives from the test and its attempt).
The operator uploads: the agent's own execution never holds S3 credentials.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from agenttest import kubeapi, packaging
from agenttest.models import (
    API_VERSION,
    AgentTestRef,
    AgentTestSpec,
    AgentTestStatus,
    Condition,
    DeploymentPackageSpec,
    DeploymentPackageStatus,
)
from agenttest.sources import fetch_source

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    name: str
    uri: str
    sha256: str
    size: int


class NotConfigured(RuntimeError):
    """No bucket to publish to."""


def package_name(test_name: str, attempt: int) -> str:
    suffix = f"-a{attempt}"
    return test_name[: 253 - len(suffix)] + suffix


def package_input(
    spec: AgentTestSpec,
    status: AgentTestStatus,
    source: str,
    namespace: str,
    name: str,
    uid: str,
    tested_at: str,
) -> packaging.PackageInput:
    return packaging.PackageInput(
        agent_source=source,
        entrypoint=spec.agent.entrypoint,
        requirements=list(spec.agent.requirements),
        model=spec.model.wire(),
        cases=[case.wire() for case in status.cases],
        summary=status.summary or "",
        namespace=namespace,
        name=name,
        uid=uid,
        attempt=status.attempt,
        tested_at=tested_at,
    )


class Publisher:
    def __init__(
        self, bucket: str, prefix: str = "packages/", max_bytes: int = packaging.MAX_PACKAGE_BYTES
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.max_bytes = max_bytes
        self._s3: Any = None

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

    async def publish(
        self,
        spec: AgentTestSpec,
        status: AgentTestStatus,
        namespace: str,
        name: str,
        uid: str,
        now: str,
    ) -> Published:
        # The launch time, not the publish time, goes into the package, so a
        # publish repeated after a restart renders the same bytes.
        tested_at = (status.execution.started_at if status.execution else None) or now
        source = await fetch_source(spec.agent.source, namespace)
        files = packaging.render(
            package_input(spec, status, source, namespace, name, uid, tested_at)
        )
        data = packaging.build_zip(files)
        packaging.check_size(data, self.max_bytes)
        digest = packaging.sha256_hex(data)
        key = packaging.object_key(namespace, name, uid, status.attempt, self.prefix)
        await asyncio.to_thread(self._upload, key, data, digest)
        uri = f"s3://{self.bucket}/{key}"
        dpkg = package_name(name, status.attempt)
        spec_out = DeploymentPackageSpec(
            agent_test_ref=AgentTestRef(name=name, uid=uid, attempt=status.attempt),
            s3_uri=uri,
            bucket=self.bucket,
            key=key,
            sha256=digest,
            size_bytes=len(data),
            files=sorted(files),
            summary=status.summary or "",
        )
        body = {
            "apiVersion": API_VERSION,
            "kind": "DeploymentPackage",
            "metadata": {
                "name": dpkg,
                "labels": {"agenttest.dev/test": name[:63]},
                # The AgentTest owns it: deleting the test garbage-collects it.
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": "AgentTest",
                        "name": name,
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec_out.wire(),
        }
        try:
            await kubeapi.create_deployment_package(namespace, body)
        except kubeapi.Conflict:
            existing = await kubeapi.get_deployment_package(namespace, dpkg)
            owners = existing.get("metadata", {}).get("ownerReferences", [])
            if not any(owner.get("uid") == uid for owner in owners):
                raise RuntimeError(
                    f"DeploymentPackage {namespace}/{dpkg} exists and belongs to another test"
                ) from None
        ready = DeploymentPackageStatus(
            observed_generation=1,
            conditions=[
                Condition(
                    type="Ready",
                    status="True",
                    reason="Uploaded",
                    message=f"{uri} ({len(data)} bytes, sha256 {digest[:12]}...)",
                    last_transition_time=now,
                    observed_generation=1,
                )
            ],
        )
        await kubeapi.patch_deployment_package_status(namespace, dpkg, ready.wire())
        return Published(name=dpkg, uri=uri, sha256=digest, size=len(data))
