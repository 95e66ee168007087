"""Leader election: of several operator replicas, exactly one acts.

The replicas contend for one coordination.k8s.io/v1 Lease in the operator's
namespace, with the semantics of client-go's leaderelection:

* the Lease records holderIdentity, leaseDurationSeconds, acquireTime,
  renewTime and leaseTransitions;
* a contender takes the Lease only when it is free (no holder: released) or
  when the record has not changed for leaseDurationSeconds *as measured by
  the contender's own clock* since it last saw it change. renewTime's value
  is never compared with a local clock, so clock skew between nodes does not
  matter; only the rate at which clocks advance does;
* every write is an update carrying the resourceVersion last read, so two
  contenders that both see an expired Lease cannot both win: the second gets
  409 Conflict and reads again.

The holder renews every `renew_seconds`. If no renewal has succeeded for
`duration - renew_seconds` since the last successful one was sent, or a
read shows another holder, the process stops acting at once: it logs and
leaves with `os._exit(1)` (the Deployment restarts it, as a standby). A
contender takes over no earlier than `duration` after it saw that renewal,
which it cannot have seen before it was sent, so the holder is gone before
anyone else acts. A watchdog thread enforces the deadline as well, so a
holder whose event loop is stuck cannot outlive its Lease either.

A graceful stop (SIGTERM: kopf returns) releases the Lease (empty holder), so
a standby takes over at its next look instead of waiting out the duration.

Why not kopf's peering: replicas of equal priority freeze each other, and the
operator runs `standalone=True`.

Calls go through a pool of their own (two threads, one API client), so
status writes queued on kubeapi's pool never delay a renewal; every call is
bounded by a request timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from agenttest import kubeapi, runkeys
from agenttest.settings import Settings

logger = logging.getLogger(__name__)

LostHandler = Callable[[str], None]


class LeaseError(Exception):
    """A Lease call failed for a reason other than 404/409 (refused, unreachable, slow)."""


@dataclass(frozen=True)
class Election:
    namespace: str
    name: str
    identity: str
    duration: float
    renew_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Election:
        check(settings.lease_duration_seconds, settings.lease_renew_seconds)
        return cls(
            namespace=runkeys.operator_namespace(settings.operator_namespace),
            name=settings.leader_lease,
            identity=identity(),
            duration=settings.lease_duration_seconds,
            renew_seconds=settings.lease_renew_seconds,
        )

    @property
    def give_up_after(self) -> float:
        """Seconds after a successful renewal was sent by which the next one must succeed."""
        return self.duration - self.renew_seconds


def check(duration: int, renew_seconds: float) -> None:
    """ValueError unless a holder gets at least two tries within the duration."""
    if duration < 1:
        raise ValueError(f"lease_duration_seconds={duration} must be at least 1")
    if renew_seconds <= 0 or 2 * renew_seconds > duration:
        raise ValueError(
            f"lease_renew_seconds={renew_seconds} must be > 0 and at most half of "
            f"lease_duration_seconds={duration}"
        )


def identity() -> str:
    """POD_NAME (the downward API) or the host name, and the pid: unique per process."""
    host = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{host}_{os.getpid()}"


def _micro_time(moment: datetime.datetime) -> str:
    """A MicroTime as the API server writes it (RFC 3339, always six fractional digits)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def exit_now(reason: str) -> None:
    """The default when leadership is lost: stop acting at once, whatever is in flight."""
    logger.critical("leadership lost: %s; exiting so that no other replica is doubled", reason)
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(1)


class Elector:
    """One contender for one Lease; `acquire`, then `hold` while acting, then `release`."""

    def __init__(
        self,
        election: Election,
        api_client: Any = None,
        on_lost: LostHandler = exit_now,
    ) -> None:
        self.election = election
        self.on_lost = on_lost
        self._api_client = api_client
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="lease")
        # The Lease as last read or written (raw JSON), and when its spec was
        # last seen to change, by our monotonic clock.
        self._lease: dict[str, Any] | None = None
        self._observed_spec: dict[str, Any] | None = None
        self._observed_at = 0.0
        # When the last successful write of ours was sent (monotonic): we may act
        # until give_up_after past it, and renew renew_seconds past it.
        self._last_sent = 0.0
        self._leading = False
        self._lost = threading.Event()
        self._losing = threading.Lock()
        self._stop_watchdog = threading.Event()
        self._watchdog: threading.Thread | None = None

    # ---------------------------------------------------------------- API calls

    def _api(self) -> Any:
        from kubernetes import client

        if self._api_client is None:
            self._api_client = client.ApiClient()
        return client.CoordinationV1Api(self._api_client)

    async def _call(self, method: str, *args: Any, bound: float) -> dict[str, Any] | None:
        """One Lease call on our pool: the object, None on 404, Conflict on 409."""
        from kubernetes.client.exceptions import ApiException

        api = self._api()
        timeout = max(0.2, bound)

        def invoke() -> dict[str, Any] | None:
            try:
                response = getattr(api, method)(
                    *args, _preload_content=False, _request_timeout=timeout
                )
            except ApiException as error:
                if error.status == 404:
                    return None
                if error.status == 409:
                    raise _Conflict from error
                raise LeaseError(f"{method}: {error.status} {error.reason}") from error
            except Exception as error:  # urllib3's: unreachable, timed out, reset
                raise LeaseError(f"{method}: {error}") from error
            return dict(json.loads(response.data))

        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._pool, invoke), timeout + 1)

    async def _read(self, bound: float) -> dict[str, Any] | None:
        lease = await self._call(
            "read_namespaced_lease", self.election.name, self.election.namespace, bound=bound
        )
        self._remember(lease)
        return lease

    def _remember(self, lease: dict[str, Any] | None) -> None:
        self._lease = lease
        spec = (lease or {}).get("spec") or {}
        if spec != self._observed_spec:
            self._observed_spec = spec
            self._observed_at = time.monotonic()

    # ---------------------------------------------------------------- decisions

    def holder(self) -> str:
        return str((self._observed_spec or {}).get("holderIdentity") or "")

    def _expired(self) -> bool:
        spec = self._observed_spec or {}
        duration = float(spec.get("leaseDurationSeconds") or self.election.duration)
        return time.monotonic() >= self._observed_at + duration

    def _spec(self, now: datetime.datetime, taking: bool) -> dict[str, Any]:
        old = self._observed_spec or {}
        stamp = _micro_time(now)
        return {
            "holderIdentity": self.election.identity,
            "leaseDurationSeconds": int(self.election.duration),
            "acquireTime": stamp if taking else old.get("acquireTime", stamp),
            "renewTime": stamp,
            # Every change of holder counts, from a released Lease too (as client-go).
            "leaseTransitions": int(old.get("leaseTransitions") or 0)
            + (1 if taking and old else 0),
        }

    async def try_acquire(self) -> bool:
        """One look: create the Lease, take it if free or expired, or renew it if ours."""
        bound = self.election.renew_seconds
        sent = time.monotonic()
        now = datetime.datetime.now(datetime.UTC)
        try:
            lease = await self._read(bound)
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.election.name,
                        "namespace": self.election.namespace,
                        "labels": {"app.kubernetes.io/managed-by": "agenttest-operator"},
                    },
                    "spec": self._spec(now, taking=True),
                }
                created = await self._call(
                    "create_namespaced_lease", self.election.namespace, body, bound=bound
                )
                self._remember(created)
                self._won(sent)
                return True
            holder = self.holder()
            mine = holder == self.election.identity
            if holder and not mine and not self._expired():
                return False
            updated = dict(lease)
            updated["spec"] = self._spec(now, taking=not mine)
            replaced = await self._call(
                "replace_namespaced_lease",
                self.election.name,
                self.election.namespace,
                updated,
                bound=bound,
            )
        except _Conflict:
            # Someone else wrote first: look again next time.
            return False
        self._remember(replaced)
        self._won(sent)
        return True

    def _won(self, sent: float) -> None:
        self._leading = True
        self._last_sent = sent

    @property
    def _valid_until(self) -> float:
        return self._last_sent + self.election.give_up_after

    # ---------------------------------------------------------------- the phases

    async def acquire(self) -> None:
        """Wait until this process holds the Lease, logging who holds it meanwhile."""
        last_holder: str | None = None
        while True:
            try:
                if await self.try_acquire():
                    logger.info(
                        "leading: holding Lease %s/%s as %s",
                        self.election.namespace,
                        self.election.name,
                        self.election.identity,
                    )
                    return
            except (LeaseError, TimeoutError) as error:
                logger.warning("cannot read Lease %s: %s", self.election.name, error)
            else:
                if self.holder() != last_holder and self.holder():
                    # (No holder yet: another contender was creating it as we did.)
                    last_holder = self.holder()
                    logger.info(
                        "standby: waiting for Lease %s/%s, held by %s",
                        self.election.namespace,
                        self.election.name,
                        last_holder,
                    )
            # Look again after a renewal period, or just when the holder's
            # lease would expire if that is sooner.
            spec = self._observed_spec or {}
            duration = float(spec.get("leaseDurationSeconds") or self.election.duration)
            expires_in = self._observed_at + duration - time.monotonic()
            await asyncio.sleep(max(0.05, min(self.election.renew_seconds, expires_in + 0.01)))

    async def renew_once(self) -> None:
        """Renew, re-reading after a conflict; `on_lost` if another holder shows up."""
        sent = time.monotonic()
        now = datetime.datetime.now(datetime.UTC)
        # A slow API server may take longer than a renewal period and still be in
        # time; half of what is left keeps a second try for a stuck connection.
        bound = min(
            self._valid_until - sent,
            max(self.election.renew_seconds, self.election.give_up_after / 2),
        )
        lease = self._lease
        for _ in range(2):
            if lease is None or self.holder() != self.election.identity:
                self._lose(f"Lease {self.election.name} is now held by {self.holder() or 'nobody'}")
                return
            updated = dict(lease)
            updated["spec"] = self._spec(now, taking=False)
            try:
                replaced = await self._call(
                    "replace_namespaced_lease",
                    self.election.name,
                    self.election.namespace,
                    updated,
                    bound=bound,
                )
            except _Conflict:
                lease = await self._read(bound)
                continue
            self._remember(replaced)
            self._last_sent = sent
            return
        raise LeaseError("the Lease kept changing under us")

    async def hold(self) -> None:
        """Renew until cancelled; leadership lost means `on_lost` (by default, exit)."""
        self._start_watchdog()
        while not self._lost.is_set():
            due = self._last_sent + self.election.renew_seconds
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self._lost.is_set():
                return
            try:
                await self.renew_once()
            except (LeaseError, TimeoutError) as error:
                # The watchdog ends it if this goes on until the deadline.
                left = self._valid_until - time.monotonic()
                logger.warning(
                    "renewing Lease %s failed (%.1fs left): %s", self.election.name, left, error
                )
                await asyncio.sleep(min(self.election.renew_seconds / 2, max(0.0, left)))

    def _lose(self, reason: str) -> None:
        with self._losing:  # the renewal task and the watchdog thread may both get here
            if self._lost.is_set():
                return
            self._lost.set()
        self._leading = False
        self._stop_watchdog.set()
        self.on_lost(reason)

    def _start_watchdog(self) -> None:
        def watch() -> None:
            while not self._stop_watchdog.wait(max(0.01, self._valid_until - time.monotonic())):
                if time.monotonic() >= self._valid_until:
                    self._lose(
                        f"Lease {self.election.name} not renewed within "
                        f"{self.election.give_up_after:g}s of the last renewal"
                    )
                    return

        self._watchdog = threading.Thread(target=watch, name="lease-watchdog", daemon=True)
        self._watchdog.start()

    async def release(self) -> None:
        """Give the Lease up (graceful stop): the standby need not wait out the duration."""
        self._stop_watchdog.set()
        if not self._leading or self._lost.is_set():
            return
        self._leading = False
        bound = self.election.renew_seconds
        try:
            # A renewal cut short by the stop may still land first: then the
            # release conflicts, and goes again on what it wrote.
            for _ in range(2):
                lease = self._lease
                if lease is None or self.holder() != self.election.identity:
                    return
                spec = dict(self._observed_spec or {})
                spec.update(
                    holderIdentity=None,
                    renewTime=_micro_time(datetime.datetime.now(datetime.UTC)),
                    leaseDurationSeconds=1,
                )
                try:
                    released = await self._call(
                        "replace_namespaced_lease",
                        self.election.name,
                        self.election.namespace,
                        {**lease, "spec": spec},
                        bound=bound,
                    )
                except _Conflict:
                    await self._read(bound)
                    continue
                self._remember(released)
                logger.info("released Lease %s/%s", self.election.namespace, self.election.name)
                return
        except (LeaseError, TimeoutError) as error:
            logger.warning("could not release Lease %s: %s", self.election.name, error)
            return
        logger.warning("could not release Lease %s: it kept changing", self.election.name)

    def close(self) -> None:
        self._stop_watchdog.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Conflict(Exception):
    """409: the Lease changed since it was read (or was created meanwhile)."""


@contextlib.asynccontextmanager
async def standby_health(liveness_endpoint: str | None) -> AsyncIterator[None]:
    """While waiting, answer the liveness endpoint: a standby is alive, only not leading.

    kopf serves the endpoint once it runs; this one closes first, freeing the port.
    """
    if not liveness_endpoint:
        yield
        return
    import aiohttp.web

    parts = urllib.parse.urlsplit(liveness_endpoint)

    async def healthy(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"leader": False})

    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get(parts.path or "/", healthy)])
    runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, parts.hostname, parts.port).start()
    try:
        yield
    finally:
        await runner.cleanup()


# The kubernetes client imports an API class, and the models it uses, on first use:
# about 1.5 s of CPU for CoreV1Api alone, all of it holding the GIL. Paid in the
# first seconds of leading, it starved the renewal (a new holder gave up its Lease
# while kopf started); so a replica pays it before it contends.
CLIENT_APIS = ("CoreV1Api", "CustomObjectsApi", "NetworkingV1Api", "CoordinationV1Api")


def warm_up() -> None:
    from kubernetes import client

    for name in CLIENT_APIS:
        getattr(client, name)


def _stop_on_signals(stopping: asyncio.Event) -> None:
    """SIGTERM/SIGINT set `stopping` until kopf installs its own handlers (which replace these).

    Without them a signal between taking the Lease and kopf's start would kill the
    process outright, and the standby would wait out the duration instead of
    taking a released Lease at once.
    """
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stopping.set)  # main thread only


async def run_as_leader(
    settings: Settings,
    work: Callable[[asyncio.Event], Awaitable[None]],
    liveness_endpoint: str | None = None,
) -> None:
    """Wait for the Lease, then run `work` while renewing it; release it when `work` ends.

    `work` gets an event that is set when the process is asked to stop before its
    own signal handling is in place (kopf.operator's stop_flag).
    """
    kubeapi.load_config()
    warm_up()
    elector = Elector(Election.from_settings(settings))
    stopping = asyncio.Event()
    _stop_on_signals(stopping)
    try:
        async with standby_health(liveness_endpoint):
            acquiring = asyncio.create_task(elector.acquire(), name="lease-acquire")
            stopped = asyncio.create_task(stopping.wait(), name="stop-while-waiting")
            await asyncio.wait({acquiring, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not acquiring.done():
                acquiring.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acquiring
                logger.info("stopped while waiting for the Lease")
                return
            acquiring.result()
        holding = asyncio.create_task(elector.hold(), name="lease-renewal")
        try:
            await work(stopping)
        finally:
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
            await elector.release()
    finally:
        elector.close()
