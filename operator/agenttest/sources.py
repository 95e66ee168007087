"""agent.py as tested: read once per attempt, hashed, kept, and the runner configuration.

The package of a passing test must hold the bytes the judge ran, not whatever the
source says by the time the test is published (a ConfigMap can be edited during a
run, an S3 object overwritten). So the source is read once, when the attempt first
launches, and that snapshot is what everything after uses:

* its SHA-256 and where it came from go into ``status.source`` at launch;
* the judge hashes the agent.py it hands to the agent host and puts that digest in
  its signed result (``sourceSha256``), which the operator records as
  ``status.source.testedSha256``;
* when the test will be packaged, the snapshot's bytes are kept in the package
  bucket beside the package (``SnapshotStore``), and the publisher reads them back
  and refuses to package unless they hash to ``status.source.sha256`` and that
  equals what the judge reported.

Why the package bucket and not a Secret or ConfigMap owned by the test: the
operator may write there and nobody in the test's namespace may, so nobody can
swap the bytes between the run and the publish; it reads no Secret outside its own
namespace (manifests/rbac.yaml), which a Secret store would change; and it already
is where the package goes, under the same prefix the infrastructure's policy
grants. Why the judge's digest as well: the snapshot is written before the launch
and the status only after it, so an operator that dies in between launches again
after a restart; the judge's signed digest is the one record of what actually ran,
and the per-attempt snapshot, read back instead of fetched again on every later
launch of the attempt (restart, infrastructure retry), makes both agree. All of
this still holds for an operator that restarts before publishing: everything the
publisher needs is in the status and the bucket.

S3 sources are read with the operator's own credentials, so only objects the
AGENTTEST_S3_SOURCE_ALLOW setting lists are read at all (settings.S3Grant):
otherwise any user who may create an AgentTest could have the operator fetch any
object it can reach and see it run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agenttest import awsclients, faults, kubeapi
from agenttest.models import (
    MAX_INLINE_SOURCE,
    AgentSource,
    AgentTest,
    AgentTestSpec,
    SourceSnapshot,
)

S3_ALLOW_SETTING = "AGENTTEST_S3_SOURCE_ALLOW"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3Grant:
    """One AGENTTEST_S3_SOURCE_ALLOW entry: objects under s3://bucket/prefix."""

    bucket: str
    prefix: str
    namespace: str | None = None  # None: every namespace

    def allows(self, namespace: str, bucket: str, key: str) -> bool:
        return (
            self.namespace in (None, namespace)
            and bucket == self.bucket
            and key.startswith(self.prefix)
        )


# [namespace=]s3://bucket[/prefix]; namespace and bucket as Kubernetes and S3 spell them.
_S3_ENTRY = re.compile(r"^(?:([a-z0-9]([-a-z0-9]*[a-z0-9])?)=)?s3://([a-z0-9.\-]{3,63})(?:/(.*))?$")


def s3_grants(entries: tuple[str, ...]) -> tuple[S3Grant, ...]:
    """The parsed allowlist; ValueError names the entry that is not one."""
    grants = []
    for entry in entries:
        match = _S3_ENTRY.match(entry)
        if match is None:
            raise ValueError(
                f"{S3_ALLOW_SETTING} entry {entry!r} is neither s3://bucket/prefix "
                "nor namespace=s3://bucket/prefix"
            )
        grants.append(S3Grant(match.group(3), match.group(4) or "", match.group(1)))
    return tuple(grants)


class SourceUnavailable(RuntimeError):
    """agent.py cannot be read; the message says where it was looked for."""


@dataclass(frozen=True)
class Snapshot:
    """agent.py as read for an attempt, and where it came from."""

    text: str
    origin: str

    @property
    def data(self) -> bytes:
        # What the judge hashes too (protocol.source_digest): the UTF-8 of the text.
        return self.text.encode("utf-8")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def status(self) -> SourceSnapshot:
        return SourceSnapshot(origin=self.origin, sha256=self.sha256, size_bytes=len(self.data))


def runner_config(
    spec: AgentTestSpec, source: str, prices: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, Any]:
    """What `python -m agenttest.runner` reads (the runner's config schema).

    ``prices`` is the operator's price table; only the test's models' entries go.
    """
    models = spec.model_entries()
    judge = spec.judge_model or spec.primary_model
    wanted = {entry.model_id for entry in models} | {judge.model_id}
    config: dict[str, Any] = {
        "agentSource": source,
        "entrypoint": spec.agent.entrypoint,
        "requirements": list(spec.agent.requirements),
        "models": [entry.wire() for entry in models],
        "cases": [case.wire() for case in spec.cases],
        "timeoutSeconds": spec.timeout_seconds,
        "trials": spec.trials,
        "passThreshold": spec.pass_threshold,
        "matrixPolicy": spec.matrix_policy.value,
        "prices": {
            model_id: dict(price)
            for model_id, price in (prices or {}).items()
            if model_id in wanted
        },
    }
    if any(case.expect.judge is not None for case in spec.cases):
        config["judgeModel"] = judge.wire()
    return config


def config_models(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every model a runner config names (the matrix and the judge's): what it may reach."""
    models = list(config.get("models") or [])
    if config.get("judgeModel"):
        models.append(config["judgeModel"])
    return [dict(model) for model in models]


async def _read_config_map(namespace: str, name: str, key: str) -> str:
    try:
        data = await kubeapi.read_config_map(namespace, name)
    except kubeapi.Gone as error:
        raise SourceUnavailable(f"ConfigMap {namespace}/{name} not found") from error
    if key not in data:
        raise SourceUnavailable(f"ConfigMap {namespace}/{name} has no key {key!r}")
    return data[key]


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def check_s3_allowed(uri: str, namespace: str, grants: tuple[S3Grant, ...]) -> None:
    """Raise SourceUnavailable, naming the setting, unless a grant covers ``uri``."""
    bucket, key = split_s3_uri(uri)
    if any(grant.allows(namespace, bucket, key) for grant in grants):
        return
    raise SourceUnavailable(
        f"{uri} is not allowed as an agent source in namespace {namespace}: the operator "
        f"reads only S3 objects listed in {S3_ALLOW_SETTING} (s3://bucket/prefix or "
        "namespace=s3://bucket/prefix entries, comma-separated)"
    )


def _read_s3(uri: str) -> str:
    bucket, key = split_s3_uri(uri)
    try:
        body = (
            awsclients.client("s3")
            .get_object(Bucket=bucket, Key=key)["Body"]
            .read(MAX_INLINE_SOURCE + 1)
        )
    except Exception as error:  # botocore raises many kinds; all mean "unreadable"
        raise SourceUnavailable(f"cannot read {uri}: {error}") from error
    if len(body) > MAX_INLINE_SOURCE:
        raise SourceUnavailable(f"{uri} is larger than 256 KiB")
    return bytes(body).decode("utf-8", errors="replace")


def origin(source: AgentSource) -> str:
    """Where agent.py comes from, as status.source.origin says it."""
    if source.config_map_ref is not None:
        return f"configMap {source.config_map_ref.name} key {source.config_map_ref.key}"
    if source.s3 is not None:
        return source.s3.uri
    return "inline"


async def take_snapshot(
    source: AgentSource, namespace: str, grants: tuple[S3Grant, ...]
) -> Snapshot:
    """Read agent.py from wherever the spec says, once."""
    if source.inline is not None:
        return Snapshot(source.inline, origin(source))
    if source.config_map_ref is not None:
        ref = source.config_map_ref
        text = await _read_config_map(namespace, ref.name, ref.key)
        return Snapshot(text, origin(source))
    if source.s3 is not None:
        uri = source.s3.uri
        # Checked before any request: a refused URI must not even be probed.
        check_s3_allowed(uri, namespace, grants)
        return Snapshot(await asyncio.to_thread(_read_s3, uri), origin(source))
    raise SourceUnavailable("spec.agent.source sets none of inline, configMapRef or s3")


async def attempt_snapshot(
    test: AgentTest, grants: tuple[S3Grant, ...], store: SnapshotStore | None
) -> Snapshot:
    """agent.py for a launch of the test's current attempt.

    With a ``store`` (the test will be packaged), a later launch of the attempt
    (after a restart or an infrastructure retry) runs what the first one ran, read
    back from the store, even if the source changed or went away since; the first
    launch reads the source and keeps it there.
    """
    source, namespace = test.spec.agent.source, test.namespace
    if source.s3 is not None:
        # Also on a read-back: an allowlist narrowed since then applies at once.
        check_s3_allowed(source.s3.uri, namespace, grants)
    if store is None:
        return await take_snapshot(source, namespace, grants)
    at = (namespace, test.name, test.uid, test.status.attempt)
    kept = await store.kept(*at)
    if kept is not None:
        return Snapshot(kept, origin(source))
    fetched = await take_snapshot(source, namespace, grants)
    try:
        await store.keep(*at, fetched)
    except Exception as error:
        if faults.transient(error):
            raise  # retried as an infrastructure failure
        # Refused for good (a bucket policy, say): the test still runs; its
        # package is refused later for want of the snapshot, with the reason.
        logger.warning("cannot keep agent.py of %s/%s: %s", namespace, test.name, error)
    return fetched


class SnapshotStore:
    """Each attempt's agent.py in the package bucket, beside where its package goes."""

    def __init__(self, bucket: str, prefix: str = "packages/", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._s3 = client

    def _client(self) -> Any:
        if self._s3 is None:
            self._s3 = awsclients.client("s3")
        return self._s3

    def key(self, namespace: str, name: str, uid: str, attempt: int) -> str:
        return f"{self.prefix}{namespace}/{name}/{uid}/attempt-{attempt}/source/agent.py"

    def uri(self, namespace: str, name: str, uid: str, attempt: int) -> str:
        return f"s3://{self.bucket}/{self.key(namespace, name, uid, attempt)}"

    def _get(self, key: str) -> tuple[bytes, str] | None:
        try:
            found = self._client().get_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            code = getattr(error, "response", {}).get("Error", {}).get("Code")
            # 403 too: the infrastructure's policy grants ListBucket only under a
            # prefix, and without ListBucket S3 answers a missing key with 403. A real
            # lack of access shows on the PutObject that follows (or as "missing").
            if code in ("404", "NoSuchKey", "403", "AccessDenied"):
                return None
            raise
        return bytes(found["Body"].read()), str(found.get("Metadata", {}).get("sha256", ""))

    def _put(self, key: str, snapshot: Snapshot) -> None:
        self._client().put_object(
            Bucket=self.bucket,
            Key=key,
            Body=snapshot.data,
            ContentType="text/x-python; charset=utf-8",
            ServerSideEncryption="AES256",
            Metadata={"sha256": snapshot.sha256},
        )

    async def kept(self, namespace: str, name: str, uid: str, attempt: int) -> str | None:
        """The attempt's agent.py kept by an earlier launch, if it is intact."""
        kept = await asyncio.to_thread(self._get, self.key(namespace, name, uid, attempt))
        if kept is None:
            return None
        data, digest = kept
        # Not what was written (PutObject never leaves half an object, so someone
        # changed it): the first launch's bytes are lost; the caller starts over.
        return data.decode("utf-8") if hashlib.sha256(data).hexdigest() == digest else None

    async def keep(
        self, namespace: str, name: str, uid: str, attempt: int, snapshot: Snapshot
    ) -> None:
        await asyncio.to_thread(self._put, self.key(namespace, name, uid, attempt), snapshot)

    async def read(self, namespace: str, name: str, uid: str, attempt: int, sha256: str) -> str:
        """The kept agent.py, only if it hashes to ``sha256``; SourceUnavailable otherwise."""
        uri = self.uri(namespace, name, uid, attempt)
        kept = await asyncio.to_thread(self._get, self.key(namespace, name, uid, attempt))
        if kept is None:
            raise SourceUnavailable(
                f"the snapshot of the tested agent.py is missing or unreadable: {uri}"
            )
        data, _ = kept
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise SourceUnavailable(
                f"the snapshot {uri} has sha256 {actual}, not the tested {sha256}: not packaged"
            )
        return data.decode("utf-8")
