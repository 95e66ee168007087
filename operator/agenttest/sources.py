"""Fetching agent.py and assembling the runner configuration."""

from __future__ import annotations

import asyncio
from typing import Any

from agenttest import kubeapi
from agenttest.models import MAX_INLINE_SOURCE, AgentSource, AgentTestSpec


class SourceUnavailable(RuntimeError):
    """agent.py cannot be read; the message says where it was looked for."""


def runner_config(spec: AgentTestSpec, source: str) -> dict[str, Any]:
    """What `python -m agenttest.runner` reads (the runner's config schema)."""
    return {
        "agentSource": source,
        "entrypoint": spec.agent.entrypoint,
        "requirements": list(spec.agent.requirements),
        "model": spec.model.wire(),
        "cases": [case.wire() for case in spec.cases],
        "timeoutSeconds": spec.timeout_seconds,
    }


async def _read_config_map(namespace: str, name: str, key: str) -> str:
    try:
        data = await kubeapi.read_config_map(namespace, name)
    except kubeapi.Gone as error:
        raise SourceUnavailable(f"ConfigMap {namespace}/{name} not found") from error
    if key not in data:
        raise SourceUnavailable(f"ConfigMap {namespace}/{name} has no key {key!r}")
    return data[key]


def _read_s3(uri: str) -> str:
    import boto3

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        body = (
            boto3.client("s3")
            .get_object(Bucket=bucket, Key=key)["Body"]
            .read(MAX_INLINE_SOURCE + 1)
        )
    except Exception as error:  # botocore raises many kinds; all mean "unreadable"
        raise SourceUnavailable(f"cannot read {uri}: {error}") from error
    if len(body) > MAX_INLINE_SOURCE:
        raise SourceUnavailable(f"{uri} is larger than 256 KiB")
    return bytes(body).decode("utf-8", errors="replace")


async def fetch_source(source: AgentSource, namespace: str) -> str:
    if source.inline is not None:
        return source.inline
    if source.config_map_ref is not None:
        ref = source.config_map_ref
        return await _read_config_map(namespace, ref.name, ref.key)
    if source.s3 is not None:
        return await asyncio.to_thread(_read_s3, source.s3.uri)
    raise SourceUnavailable("spec.agent.source sets none of inline, configMapRef, s3")
