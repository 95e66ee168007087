"""The operator's one HTTP port: Prometheus metrics and the queue view.

    GET /metrics   the Prometheus exposition (prometheus_client's default registry)
    GET /queue     the waiting tests, in the order they will start, and why they
                   wait (queueview.to_json); ?namespace=NS keeps one namespace;
                   ?format=table or `Accept: text/plain` gives the table
                   `agenttest queue` prints

It runs on the operator's own event loop (aiohttp, which kopf already uses), so
the queue view is read where the scheduler keeps it, without a lock. People
reach it through the API server's service proxy (`agenttest queue`), which
checks their RBAC; Prometheus scrapes it directly. kopf's /healthz stays on
its own port (settings.health_port).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from agenttest import queueview

logger = logging.getLogger(__name__)

# What the operator hands the server: the queue document (queueview.to_json) as
# the scheduler sees it now. A coroutine function works too.
QueueView = Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]]

TEXT = "text/plain; charset=utf-8"


@dataclass
class HttpServer:
    """A started server; `stop` it on shutdown."""

    runner: web.AppRunner
    host: str
    port: int  # the bound port (the one asked for, or the kernel's pick for 0)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


def _wants_table(request: web.Request) -> bool:
    asked = request.query.get("format", "")
    if asked:
        return asked == "table"
    accept = request.headers.get("Accept", "")
    return "text/plain" in accept and "application/json" not in accept


def application(
    queue_view: QueueView | None, registry: CollectorRegistry = REGISTRY
) -> web.Application:
    """The routes; `queue_view` None answers /queue with 503 (not wired yet)."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def queue(request: web.Request) -> web.Response:
        asked = request.query.get("format", "")
        if asked not in ("", "json", "table"):
            return web.Response(
                status=400,
                text=f"format must be json or table, not {asked!r}\n",
                headers={"Content-Type": TEXT},
            )
        if queue_view is None:
            return web.Response(
                status=503, text="the queue view is not ready yet\n", headers={"Content-Type": TEXT}
            )
        try:
            answer = queue_view()
            document = await answer if inspect.isawaitable(answer) else answer
        except Exception:
            logger.warning("the queue view failed", exc_info=True)
            return web.Response(
                status=500,
                text="the queue view failed; see the operator's log\n",
                headers={"Content-Type": TEXT},
            )
        document = queueview.only_namespace(document, request.query.get("namespace"))
        if _wants_table(request):
            return web.Response(
                text=queueview.render_table(document) + "\n", headers={"Content-Type": TEXT}
            )
        return web.Response(
            text=json.dumps(document, indent=2) + "\n",
            headers={"Content-Type": "application/json"},
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/queue", queue)
    return app


async def serve(
    port: int,
    queue_view: QueueView | None,
    host: str = "0.0.0.0",
    registry: CollectorRegistry = REGISTRY,
) -> HttpServer | None:
    """Serve /metrics and /queue on host:port until `stop`; None if it cannot listen.

    Port 0 asks the kernel for a free one (`HttpServer.port` says which); the
    setting's "0 is off" is the caller's to honour. A busy port must not stop
    the operator: it logs a warning and runs without the endpoint.
    """
    # No access log: Prometheus scrapes every few seconds.
    runner = web.AppRunner(application(queue_view, registry), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        logger.warning(
            "HTTP endpoint (/metrics, /queue) not started on %s:%d: %s", host, port, error
        )
        return None
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    logger.info("serving /metrics and /queue on %s:%d", host, bound)
    return HttpServer(runner, host, bound)
