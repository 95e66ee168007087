"""The operator's own Kubernetes API calls, through a small bounded pool.

Status writes go through here rather than kopf's `patch`: kopf's HTTP
session has no connection limit, so hundreds of tests writing in the same
second opened hundreds of TLS connections (about a megabyte each, kept by the
allocator afterwards). A few worker threads bound both the connections and
the write rate, and the write happens inside the step, so what follows a
write (cleaning up an execution) can rely on it having landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from agenttest.models import AGENTTEST_PLURAL, GROUP, PACKAGE_PLURAL, VERSION

logger = logging.getLogger(__name__)
T = TypeVar("T")

CONCURRENCY = 8
_pool = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="kubeapi")


class Gone(Exception):
    """The object no longer exists (404)."""


class Conflict(Exception):
    """The object already exists (409)."""


class TooLarge(Exception):
    """The API server or etcd refused the request for its size (413, or etcd's limit)."""


def _too_large(status: int | None, body: str) -> bool:
    text = body.lower()
    return status == 413 or (
        status in (422, 500) and ("too large" in text or "exceeds the maximum" in text)
    )


def load_config() -> None:
    """In a pod, the ServiceAccount; elsewhere, the kubeconfig (KUBECONFIG)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONCURRENCY
    client.Configuration.set_default(configuration)
    # One client for every call: without a default, each `CustomObjectsApi()` made
    # its own, with its own connection pool, so every call paid a TLS handshake
    # and a fresh SSL context (measured: admissions stalled on handshakes).
    client.ApiClient.set_default(client.ApiClient(configuration))  # type: ignore[no-untyped-call]


async def call(function: Callable[..., T], *args: Any) -> T:
    """Run one blocking client call on the pool; a 404 becomes `Gone`."""
    from kubernetes.client.exceptions import ApiException

    def invoke() -> T:
        try:
            return function(*args)
        except ApiException as error:
            if error.status == 404:
                raise Gone(str(error.reason)) from error
            if _too_large(error.status, f"{error.reason} {error.body}"):
                raise TooLarge(str(error.reason)) from error
            raise

    return await asyncio.get_running_loop().run_in_executor(_pool, invoke)


def _custom_objects() -> Any:
    from kubernetes import client

    return client.CustomObjectsApi()


async def _patch_status(plural: str, namespace: str, name: str, status: dict[str, Any]) -> str:
    """A JSON merge patch of .status (None values remove keys); the new resourceVersion."""
    api = _custom_objects()
    patched = await call(
        api.patch_namespaced_custom_object_status,
        GROUP,
        VERSION,
        namespace,
        plural,
        name,
        {"status": status},
    )
    return str((patched.get("metadata") or {}).get("resourceVersion") or "")


async def patch_agenttest_status(namespace: str, name: str, status: dict[str, Any]) -> str:
    return await _patch_status(AGENTTEST_PLURAL, namespace, name, status)


LIST_PAGE = 250


async def list_agenttests(namespaces: tuple[str, ...]) -> AsyncIterator[dict[str, Any]]:
    """Every AgentTest in `namespaces` (all when empty), a page at a time (bounded memory)."""
    api = _custom_objects()
    for namespace in namespaces or (None,):
        token: str | None = None
        while True:
            options: dict[str, Any] = {"limit": LIST_PAGE}
            if token:
                options["_continue"] = token
            if namespace is None:
                page = await call(
                    lambda o=options: api.list_cluster_custom_object(
                        GROUP, VERSION, AGENTTEST_PLURAL, **o
                    )
                )
            else:
                page = await call(
                    lambda n=namespace, o=options: api.list_namespaced_custom_object(
                        GROUP, VERSION, n, AGENTTEST_PLURAL, **o
                    )
                )
            for item in page.get("items") or []:
                yield dict(item)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break


async def get_agenttest(namespace: str, name: str) -> dict[str, Any]:
    api = _custom_objects()
    found = await call(
        api.get_namespaced_custom_object, GROUP, VERSION, namespace, AGENTTEST_PLURAL, name
    )
    return dict(found)


# JSON patches (RFC 6902) guarded by `test` operations: they apply to this very
# object (its uid) with the finalizers as last read, or not at all (422), so a
# finalizer someone else added or removed meanwhile is never clobbered.
_FINALIZER_TRIES = 3


async def _patch_finalizers(
    namespace: str,
    name: str,
    uid: str,
    change: Callable[[list[str]], list[dict[str, Any]] | None],
    known: list[str] | None = None,
    known_version: str = "",
) -> bool:
    """Apply `change(current finalizers)` as a guarded JSON patch; False when the test is gone.

    `known`: the finalizers as last seen, tried first without reading them again.
    """
    from kubernetes.client.exceptions import ApiException

    api = _custom_objects()
    for _ in range(_FINALIZER_TRIES):
        if known is not None:
            listed, known, version = known, None, known_version
        else:
            try:
                current = await get_agenttest(namespace, name)
            except Gone:
                return False
            meta = current.get("metadata") or {}
            if str(meta.get("uid")) != uid:
                return False  # deleted and created again under the same name
            listed = [str(item) for item in meta.get("finalizers") or []]
            version = str(meta.get("resourceVersion") or "")
        operations = change(listed)
        if operations is None:
            return True  # nothing to do
        guard: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": uid}]
        if listed:
            guard.append({"op": "test", "path": "/metadata/finalizers", "value": listed})
        elif version:
            # No list to compare: the object as read, unchanged, has none either.
            guard.append({"op": "test", "path": "/metadata/resourceVersion", "value": version})
        try:
            patch = guard + operations
            await call(
                lambda: api.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    AGENTTEST_PLURAL,
                    name,
                    patch,  # noqa: B023  (called at once, within this iteration)
                    _content_type="application/json-patch+json",
                )
            )
            return True
        except Gone:
            return False
        except ApiException as error:
            if error.status == 422 and "being deleted" in str(error.body).lower():
                return False  # being deleted: no new finalizers
            if error.status not in (409, 422):
                raise
        # A guard failed: someone changed the finalizers meanwhile; read them again.
    raise RuntimeError(f"{namespace}/{name}: its finalizers kept changing under us")


async def add_finalizer(
    namespace: str,
    name: str,
    uid: str,
    finalizer: str,
    known: list[str] | None = None,
    known_version: str = "",
) -> bool:
    """Add `finalizer` to the AgentTest; False when it is gone or being deleted."""

    def change(listed: list[str]) -> list[dict[str, Any]] | None:
        if finalizer in listed:
            return None
        if listed:
            return [{"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}]
        return [{"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}]

    return await _patch_finalizers(namespace, name, uid, change, known, known_version)


async def remove_finalizer(namespace: str, name: str, uid: str, finalizer: str) -> None:
    def change(listed: list[str]) -> list[dict[str, Any]] | None:
        if finalizer not in listed:
            return None
        return [{"op": "remove", "path": f"/metadata/finalizers/{listed.index(finalizer)}"}]

    await _patch_finalizers(namespace, name, uid, change)


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


async def delete_agenttest(namespace: str, name: str) -> None:
    api = _custom_objects()
    with contextlib.suppress(Gone):  # already gone is what we wanted
        await call(
            api.delete_namespaced_custom_object, GROUP, VERSION, namespace, AGENTTEST_PLURAL, name
        )


async def agenttest_uid(namespace: str, name: str) -> str | None:
    """The uid of the AgentTest namespace/name, or None when there is none."""
    api = _custom_objects()
    try:
        found = await call(
            api.get_namespaced_custom_object, GROUP, VERSION, namespace, AGENTTEST_PLURAL, name
        )
    except Gone:
        return None
    return str(found["metadata"]["uid"])


async def read_config_map(namespace: str, name: str) -> dict[str, str]:
    from kubernetes import client

    config_map = await call(client.CoreV1Api().read_namespaced_config_map, name, namespace)
    return dict(config_map.data or {})


async def read_secret(namespace: str, name: str) -> dict[str, str]:
    from kubernetes import client

    secret = await call(client.CoreV1Api().read_namespaced_secret, name, namespace)
    return {str(k): str(v) for k, v in (secret.data or {}).items()}


async def read_secret_labelled(namespace: str, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """A Secret's labels and its (base64) data."""
    from kubernetes import client

    secret = await call(client.CoreV1Api().read_namespaced_secret, name, namespace)
    labels = secret.metadata.labels if secret.metadata is not None else None
    return dict(labels or {}), {str(k): str(v) for k, v in (secret.data or {}).items()}


async def create_event(namespace: str, body: dict[str, Any]) -> None:
    """Post a core/v1 Event; the answer is not read into a model (nobody uses it)."""
    from kubernetes import client

    api: Any = client.CoreV1Api()  # the stubs know no dict body and no raw answer

    def invoke() -> None:
        response = api.create_namespaced_event(namespace, body, _preload_content=False)
        response.read()  # drained, the connection goes back to the pool
        response.release_conn()

    await call(invoke)


async def create_secret(namespace: str, body: dict[str, Any]) -> None:
    from kubernetes import client

    await create(client.CoreV1Api().create_namespaced_secret, namespace, body)


async def create(function: Callable[..., T], namespace: str, body: dict[str, Any]) -> T:
    """A namespaced create; `Conflict` if the object exists already."""
    from kubernetes.client.exceptions import ApiException

    def invoke() -> T:
        try:
            return function(namespace, body)
        except ApiException as error:
            if error.status == 409:
                raise Conflict(str(error.reason)) from error
            raise

    return await call(invoke)


async def create_deployment_package(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a DeploymentPackage; `Conflict` if one of that name exists."""
    api = _custom_objects()

    def create_object(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PACKAGE_PLURAL, body)
        )

    return await create(create_object, namespace, body)


async def get_deployment_package(namespace: str, name: str) -> dict[str, Any]:
    api = _custom_objects()
    return dict(
        await call(
            api.get_namespaced_custom_object, GROUP, VERSION, namespace, PACKAGE_PLURAL, name
        )
    )


async def patch_deployment_package_status(
    namespace: str, name: str, status: dict[str, Any]
) -> None:
    await _patch_status(PACKAGE_PLURAL, namespace, name, status)
