"""The operator's HTTP port, a real aiohttp server on loopback, asked by a real client.

/metrics for Prometheus, /queue for people; a busy port leaves the operator
running without it. And `agenttest queue --url`, the direct way in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from agenttest import cli, httpserver, metrics, queueview

LOOPBACK = "127.0.0.1"

ROWS = [
    queueview.QueueRow("team-a", "first", 5, 1, "2026-11-29T10:00:00Z", "next to start"),
    queueview.QueueRow(
        "team-b", "second", 0, 2, "2026-11-29T10:01:00Z", queueview.no_free_slot(3, 3), "pod"
    ),
    queueview.QueueRow(
        "team-a",
        "third",
        0,
        3,
        "2026-11-29T10:02:00Z",
        queueview.retry_backoff("2026-11-29T10:05:00Z"),
    ),
]


def view() -> dict[str, Any]:
    return queueview.to_json(ROWS, running=3, limit=3)


Scenario = Callable[[httpserver.HttpServer, aiohttp.ClientSession], Awaitable[None]]


def with_server(scenario: Scenario, queue_view: httpserver.QueueView | None = view) -> None:
    async def main() -> None:
        server = await httpserver.serve(0, queue_view, host=LOOPBACK)
        assert server is not None
        try:
            async with aiohttp.ClientSession(base_url=server.url) as session:
                await scenario(server, session)
        finally:
            await server.stop()

    asyncio.run(main())


def test_metrics_are_the_prometheus_exposition() -> None:
    metrics.STATUS_WRITES.inc()

    async def scenario(_: httpserver.HttpServer, session: aiohttp.ClientSession) -> None:
        async with session.get("/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
            text = await response.text()
        assert "# TYPE agenttest_status_writes_total counter" in text
        assert "agenttest_phase_transitions_total" in text

    with_server(scenario)


def test_metrics_come_from_the_registry_given() -> None:
    registry = CollectorRegistry()
    Counter("only_here", "a counter of this registry alone", registry=registry).inc(3)

    async def main() -> None:
        server = await httpserver.serve(0, view, host=LOOPBACK, registry=registry)
        assert server is not None
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{server.url}/metrics") as response,
            ):
                text = await response.text()
        finally:
            await server.stop()
        assert "only_here_total 3.0" in text
        assert "agenttest_status_writes_total" not in text

    asyncio.run(main())


def test_queue_is_json_in_start_order() -> None:
    async def scenario(_: httpserver.HttpServer, session: aiohttp.ClientSession) -> None:
        async with session.get("/queue") as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            document = await response.json()
        assert (document["running"], document["limit"]) == (3, 3)
        assert [row["name"] for row in document["queued"]] == ["first", "second", "third"]
        assert document["queued"][1] == {
            "namespace": "team-b",
            "name": "second",
            "priority": 0,
            "position": 2,
            "waitingSince": "2026-11-29T10:01:00Z",
            "reason": "no free slot (3/3 running)",
            "backend": "pod",
        }
        assert "backend" not in document["queued"][0]

    with_server(scenario)


def test_queue_filters_one_namespace_keeping_the_positions() -> None:
    async def scenario(_: httpserver.HttpServer, session: aiohttp.ClientSession) -> None:
        async with session.get("/queue", params={"namespace": "team-a"}) as response:
            document = await response.json()
        assert [(r["position"], r["name"]) for r in document["queued"]] == [
            (1, "first"),
            (3, "third"),
        ]
        async with session.get("/queue", params={"namespace": "nobody"}) as response:
            assert (await response.json())["queued"] == []

    with_server(scenario)


def test_queue_as_a_table_by_accept_header_or_format() -> None:
    async def scenario(_: httpserver.HttpServer, session: aiohttp.ClientSession) -> None:
        async with session.get("/queue", headers={"Accept": "text/plain"}) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            by_header = await response.text()
        async with session.get("/queue", params={"format": "table"}) as response:
            by_format = await response.text()
        assert by_header == by_format
        lines = by_header.splitlines()
        assert lines[0].split() == [
            "POSITION",
            "NAMESPACE",
            "NAME",
            "PRIORITY",
            "WAITING",
            "REASON",
        ]
        assert lines[3].split()[:4] == ["3", "team-a", "third", "0"]
        assert lines[3].endswith("retry backoff until 2026-11-29T10:05:00Z")
        # An explicit format wins over the header; an unknown one is refused.
        headers = {"Accept": "text/plain"}
        async with session.get("/queue", params={"format": "json"}, headers=headers) as response:
            assert response.content_type == "application/json"
        async with session.get("/queue", params={"format": "yaml"}) as response:
            assert response.status == 400
        async with session.get(
            "/queue", params={"format": "table", "namespace": "empty"}
        ) as response:
            assert await response.text() == "No tests waiting in namespace empty (3/3 running).\n"

    with_server(scenario)


def test_an_async_queue_view_is_awaited() -> None:
    async def later() -> dict[str, Any]:
        await asyncio.sleep(0)
        return view()

    async def scenario(_: httpserver.HttpServer, session: aiohttp.ClientSession) -> None:
        async with session.get("/queue") as response:
            assert len((await response.json())["queued"]) == 3

    with_server(scenario, later)


def test_queue_before_the_view_is_wired_and_when_it_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def not_wired(_: httpserver.HttpServer, session: aiohttp.ClientSession) -> None:
        async with session.get("/queue") as response:
            assert response.status == 503
        async with session.get("/metrics") as response:
            assert response.status == 200  # metrics do not wait for the queue

    with_server(not_wired, None)

    def broken() -> dict[str, Any]:
        raise RuntimeError("the scheduler is gone")

    async def failing(_: httpserver.HttpServer, session: aiohttp.ClientSession) -> None:
        async with session.get("/queue") as response:
            assert response.status == 500
            assert "the scheduler is gone" not in await response.text()

    with caplog.at_level(logging.WARNING, logger="agenttest.httpserver"):
        with_server(failing, broken)
    assert "the queue view failed" in caplog.text
    assert "the scheduler is gone" in caplog.text


def test_only_get_is_served() -> None:
    async def scenario(_: httpserver.HttpServer, session: aiohttp.ClientSession) -> None:
        async with session.post("/queue") as response:
            assert response.status == 405
        async with session.get("/healthz") as response:
            assert response.status == 404  # kopf's, on the health port

    with_server(scenario)


def test_a_busy_port_is_a_warning_not_a_stop(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind((LOOPBACK, 0))
            taken.listen()
            port = taken.getsockname()[1]
            with caplog.at_level(logging.WARNING, logger="agenttest.httpserver"):
                assert await httpserver.serve(port, view, host=LOOPBACK) is None
        assert f"not started on {LOOPBACK}:{port}" in caplog.text
        # ... and the loop goes on: another server starts.
        server = await httpserver.serve(0, view, host=LOOPBACK)
        assert server is not None
        await server.stop()

    asyncio.run(main())


# --------------------------------------------------------------------------
# agenttest queue --url
# --------------------------------------------------------------------------


def run_cli(server_url: str | None, *args: str, url: str | None = None) -> int:
    """`agenttest queue` in a thread while the server answers on this loop."""
    return cli.main(["queue", *(["--url", url or server_url or ""]), *args])


def test_the_command_prints_the_table_and_json_from_a_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def scenario(server: httpserver.HttpServer, _: aiohttp.ClientSession) -> None:
        code = await asyncio.to_thread(run_cli, server.url, "-A")
        assert code == 0
        table = capsys.readouterr().out.splitlines()
        assert [line.split()[:3] for line in table[1:]] == [
            ["1", "team-a", "first"],
            ["2", "team-b", "second"],
            ["3", "team-a", "third"],
        ]
        code = await asyncio.to_thread(run_cli, f"{server.url}/queue", "-n", "team-b", "-o", "json")
        assert code == 0
        document = json.loads(capsys.readouterr().out)
        assert [row["name"] for row in document["queued"]] == ["second"]
        assert document["namespace"] == "team-b"

    with_server(scenario)


def test_the_command_exits_2_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind((LOOPBACK, 0))
        url = f"http://{LOOPBACK}:{bound.getsockname()[1]}"
        assert cli.main(["queue", "-A", "--url", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cannot reach the operator" in captured.err and "is it running" in captured.err


def test_the_command_exits_2_when_the_server_is_not_the_operator(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def scenario(server: httpserver.HttpServer, _: aiohttp.ClientSession) -> None:
        code = await asyncio.to_thread(run_cli, None, "-A", url=f"{server.url}/metrics/queue")
        assert code == 2
        assert "answered 404" in capsys.readouterr().err

    with_server(scenario)
