"""Leader election (leadership.py) against the real API server: one Lease, several contenders.

The contenders are Electors in this process, each with an API client of its
own, except where the point is that the process itself goes: a holder that
cannot renew really exits, so that one runs as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import config

from agenttest.leadership import Election, Elector, standby_health
from agenttest_dev import devcluster

from support import Kube, service_account_kubeconfig

T = TypeVar("T")
# A bound on waits for what must happen, so a broken build fails instead of hanging.
PATIENCE = 30.0


def lease_name() -> str:
    return f"lease-{uuid.uuid4().hex[:6]}"


class Lost:
    """Records why leadership was lost, in place of exiting the test process."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.event = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        # The watchdog calls from its own thread.
        self.loop.call_soon_threadsafe(self.event.set)


def contender(
    cluster: devcluster.Cluster,
    namespace: str,
    name: str,
    who: str,
    lost: Lost,
    duration: int = 10,
    renew: float = 2.0,
) -> Elector:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    return Elector(Election(namespace, name, who, duration, renew), api_client=api, on_lost=lost)


def read_lease(kube: Kube, name: str) -> dict[str, Any]:
    return dict(kube.get(name, kind="lease")["spec"])


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, PATIENCE)


def test_of_two_contenders_exactly_one_holds_the_lease(
    cluster: devcluster.Cluster, kube: Kube
) -> None:
    name = lease_name()

    async def contend() -> None:
        lost = Lost()
        a = contender(cluster, kube.namespace, name, "a", lost)
        b = contender(cluster, kube.namespace, name, "b", lost)
        won = await asyncio.gather(a.try_acquire(), b.try_acquire())
        assert sorted(won) == [False, True], won
        winner, loser = (a, b) if won[0] else (b, a)
        spec = read_lease(kube, name)
        assert spec["holderIdentity"] == winner.election.identity
        assert spec["leaseDurationSeconds"] == 10
        assert spec["leaseTransitions"] == 0
        assert spec["acquireTime"] == spec["renewTime"]

        holding = asyncio.create_task(winner.hold())
        first_renewal = spec["renewTime"]

        def renewed() -> bool:
            return bool(read_lease(kube, name)["renewTime"] != first_renewal)

        await asyncio.to_thread(kube.wait_for, "the holder to renew", renewed)
        # The loser keeps looking and keeps losing while the holder renews.
        for _ in range(3):
            assert not await loser.try_acquire()
        spec = read_lease(kube, name)
        assert spec["holderIdentity"] == winner.election.identity
        assert spec["acquireTime"] != spec["renewTime"], "a renewal keeps acquireTime"
        assert not lost.reasons
        holding.cancel()
        for elector in (a, b):
            elector.close()

    asyncio.run(contend())


def test_release_on_stop_hands_the_lease_over_without_waiting_it_out(
    cluster: devcluster.Cluster, kube: Kube
) -> None:
    name = lease_name()

    async def hand_over() -> None:
        lost = Lost()
        # A long duration: only a release lets the standby in within PATIENCE.
        first = contender(cluster, kube.namespace, name, "first", lost, duration=120)
        second = contender(cluster, kube.namespace, name, "second", lost, duration=120)
        assert await first.try_acquire()
        holding = asyncio.create_task(first.hold())
        waiting = asyncio.create_task(second.acquire())
        await asyncio.to_thread(
            kube.wait_for, "the standby to see the holder", lambda: second.holder() == "first"
        )
        assert not waiting.done()
        holding.cancel()
        await first.release()
        await within(waiting)
        spec = read_lease(kube, name)
        assert spec["holderIdentity"] == "second"
        assert spec["leaseTransitions"] == 1
        assert not lost.reasons
        await second.release()
        assert "holderIdentity" not in read_lease(kube, name)
        for elector in (first, second):
            elector.close()

    asyncio.run(hand_over())


def test_an_expired_lease_is_taken_over_judged_by_the_local_clock(
    cluster: devcluster.Cluster, kube: Kube
) -> None:
    name = lease_name()
    # A holder that renewed long ago by its clock: renewTime is far in the past.
    # A contender must not trust that against its own clock (skew); it waits
    # until it has itself seen the record unchanged for leaseDurationSeconds.
    kube.apply(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name},
            "spec": {
                "holderIdentity": "ghost",
                "leaseDurationSeconds": 2,
                "acquireTime": "2000-01-01T00:00:00.000000Z",
                "renewTime": "2000-01-01T00:00:00.000000Z",
                "leaseTransitions": 4,
            },
        }
    )

    async def take_over() -> None:
        lost = Lost()
        heir = contender(cluster, kube.namespace, name, "heir", lost)
        assert not await heir.try_acquire(), "taken at first sight of a live-looking record"
        assert heir.holder() == "ghost"
        await within(heir.acquire())
        spec = read_lease(kube, name)
        assert spec["holderIdentity"] == "heir"
        assert spec["leaseTransitions"] == 5
        assert spec["leaseDurationSeconds"] == 10
        assert spec["acquireTime"] == spec["renewTime"]
        assert not spec["acquireTime"].startswith("2000")
        heir.close()

    asyncio.run(take_over())


def test_a_holder_that_sees_another_holder_gives_up_at_once(
    cluster: devcluster.Cluster, kube: Kube
) -> None:
    name = lease_name()

    async def usurp() -> None:
        lost = Lost()
        holder = contender(cluster, kube.namespace, name, "holder", lost, duration=60, renew=0.5)
        assert await holder.try_acquire()
        holding = asyncio.create_task(holder.hold())
        # Someone else writes the Lease (say, after taking it over from a holder
        # whose renewals did not arrive): the next renewal conflicts, re-reads,
        # and finds it is no longer the holder.
        await asyncio.to_thread(
            kube.run,
            "patch",
            "lease",
            name,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"holderIdentity": "usurper"}}),
        )
        await within(lost.event.wait())
        assert lost.reasons == ["Lease " + name + " is now held by usurper"]
        await within(holding)
        # A holder that lost does not hand back what is no longer its own.
        await holder.release()
        assert read_lease(kube, name)["holderIdentity"] == "usurper"
        holder.close()

    asyncio.run(usurp())


HOLDER = """
import asyncio, logging, sys
from kubernetes import config
from agenttest.leadership import Election, Elector, standby_health

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

async def main() -> None:
    api = config.new_client_from_config(config_file=sys.argv[1])
    elector = Elector(Election(sys.argv[2], sys.argv[3], "holder", 8, 2.0), api_client=api)
    await elector.acquire()
    print("leading", flush=True)
    await elector.hold()
    print("hold returned", flush=True)

asyncio.run(main())
"""


def test_a_holder_that_cannot_renew_exits_and_says_why(
    cluster: devcluster.Cluster, kube: Kube, tmp_path: Path
) -> None:
    name = lease_name()
    # A ServiceAccount that may hold Leases in the namespace, until it may not.
    kube.run("create", "serviceaccount", "leaser")
    kube.run(
        "create",
        "role",
        "leaser",
        "--verb=get,create,update",
        "--resource=leases.coordination.k8s.io",
    )
    kube.run(
        "create",
        "rolebinding",
        "leaser",
        "--role=leaser",
        f"--serviceaccount={kube.namespace}:leaser",
    )
    kubeconfig = service_account_kubeconfig(
        cluster, tmp_path / "leaser.kubeconfig", kube.namespace, "leaser", kube.namespace
    )
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    process = subprocess.Popen(
        [sys.executable, str(script), str(kubeconfig), kube.namespace, name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        before: list[str] = []
        while not before or before[-1] != "leading\n":
            before.append(process.stdout.readline())
            assert before[-1], f"the holder ended before leading: {''.join(before)}"
        assert read_lease(kube, name)["holderIdentity"] == "holder"
        # Its renewals are refused from now on (403), as if the API server
        # could not be reached.
        kube.run("delete", "rolebinding", "leaser")
        output = process.communicate(timeout=PATIENCE)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, output
    assert "renewing Lease" in output and "403" in output, output
    assert f"leadership lost: Lease {name} not renewed within 6s" in output, output
    assert "hold returned" not in output


def test_a_standby_answers_its_liveness_probe_and_frees_the_port_for_kopf() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/healthz"

    def get() -> tuple[int, dict[str, Any]]:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())

    async def probe_it() -> None:
        async with standby_health(url):
            assert await asyncio.to_thread(get) == (200, {"leader": False})
        # Closed: kopf's own endpoint binds the same port next (aiohttp's way,
        # SO_REUSEADDR, past the probe's connection in TIME_WAIT).
        with socket.socket() as kopf_server:
            kopf_server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            kopf_server.bind(("127.0.0.1", port))
            kopf_server.listen()

    asyncio.run(probe_it())
