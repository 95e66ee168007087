"""The kubelet's log endpoint: ``/containerLogs`` over HTTPS, for ``pods/log`` and kubectl logs.

timestamps, sinceTime, sinceSeconds, tailLines, limitBytes and follow, as a
kubelet serves them; the API server reaches it at the Node's InternalIP and
kubeletEndpoint port (no client certificates: it has none to present).
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agenttest_dev.node.runtime import PodRuntime
from agenttest_dev.node.state import NODE_IP, Run, logger, parse_rfc3339, rfc3339nano


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("true", "1")  # type: ignore[index]


class _LogServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, kubelet: LogServing, context: ssl.SSLContext) -> None:
        self.kubelet = kubelet
        self.context = context
        super().__init__((NODE_IP, 0), _LogHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS per connection in the handler's thread, so a slow handshake
        # does not hold up the accept loop.
        request.settimeout(10)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            tls.settimeout(None)
            # typeshed types the handler's server argument as Self, which a
            # call from the server's own method cannot satisfy by inference.
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            with contextlib.suppress(OSError):
                tls.close()


class _LogHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _LogServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("kubelet https: " + format, *args)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = url.path.split("/")
        if url.path == "/healthz":
            self.reply(200, "ok")
        elif len(parts) == 5 and parts[1] == "containerLogs":
            self.server.kubelet._serve_logs(
                self, parts[2], parts[3], parts[4], parse_qs(url.query, keep_blank_values=True)
            )
        else:
            self.reply(404, "404 page not found\n")

    def reply(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _LogWriter:
    """Lines out, with limitBytes applied; chunked when following."""

    def __init__(self, handler: _LogHandler, chunked: bool, limit: int | None) -> None:
        self.handler = handler
        self.chunked = chunked
        self.limit = limit
        self.buffer: list[bytes] = []

    @property
    def full(self) -> bool:
        return self.limit is not None and self.limit <= 0

    def write(self, data: bytes) -> None:
        if self.limit is not None:
            data = data[: self.limit]
            self.limit -= len(data)
        if not data:
            return
        if self.chunked:
            self.handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.handler.wfile.flush()
        else:
            self.buffer.append(data)


class LogServing(PodRuntime):
    """Serves the output the runtime captured."""

    def _start_server(self) -> None:
        assert self._root is not None
        certs = self._root / "pki"
        certs.mkdir()
        key, cert = certs / "kubelet.key", certs / "kubelet.crt"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-subj",
                f"/CN={self.node_name}",
                "-addext",
                f"subjectAltName=IP:{NODE_IP},DNS:{self.node_name}",
            ],
            check=True,
            capture_output=True,
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        # No client certificates: the API server has no --kubelet-client-certificate.
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["http/1.1"])
        self._server = _LogServer(self, context)
        self.port = int(self._server.server_address[1])
        self._spawn(lambda: self._serve(0.05), "fake-kubelet-https")

    def _serve(self, poll_interval: float) -> None:
        server = self._server
        if server is not None:
            server.serve_forever(poll_interval=poll_interval)

    def _serve_logs(
        self,
        handler: _LogHandler,
        namespace: str,
        name: str,
        container: str,
        query: dict[str, list[str]],
    ) -> None:
        run = self._loggable(handler, namespace, name, container, query)
        if run is None:
            return
        try:
            tail = int(query.get("tailLines", ["-1"])[-1])
            limit_text = query.get("limitBytes", [""])[-1]
            limit = int(limit_text) if limit_text else None
            since: int | None = None
            if query.get("sinceTime", [""])[-1]:
                since = parse_rfc3339(query["sinceTime"][-1])
            elif query.get("sinceSeconds", [""])[-1]:
                since = time.time_ns() - int(query["sinceSeconds"][-1]) * 10**9
        except ValueError as error:
            handler.reply(400, f"{error}\n")
            return
        timestamps = _truthy(query.get("timestamps"))
        follow = _truthy(query.get("follow"))

        def render(entries: list[tuple[int, bytes]]) -> Iterator[bytes]:
            for at, raw in entries:
                if since is not None and at < since:
                    continue
                stamp = f"{rfc3339nano(at)} ".encode() if timestamps else b""
                yield stamp + raw + b"\n"

        with run.changed:
            entries = list(run.lines)
        seen = len(entries)
        if tail >= 0:
            entries = entries[len(entries) - tail :] if tail else []
        writer = _LogWriter(handler, chunked=follow, limit=limit)
        try:
            if follow:
                self._follow(handler, run, writer, render, entries, seen)
            else:
                self._send_all(handler, writer, render(entries))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            handler.close_connection = True

    def _loggable(
        self,
        handler: _LogHandler,
        namespace: str,
        name: str,
        container: str,
        query: dict[str, list[str]],
    ) -> Run | None:
        """The run whose log is asked for, or None once the error is answered."""
        with self._lock:
            run = self._by_key.get((namespace, name))
        if run is None:
            handler.reply(404, f'pod "{name}" does not exist\n')
            return None
        if container != run.container:
            handler.reply(404, f'container "{container}" not found in pod "{name}"\n')
            return None
        if _truthy(query.get("previous")):
            handler.reply(
                400, f'previous terminated container "{container}" in pod "{name}" not found\n'
            )
            return None
        if not run.started:
            handler.reply(400, f'container "{container}" in pod "{name}" is waiting to start\n')
            return None
        return run

    @staticmethod
    def _send_all(handler: _LogHandler, writer: _LogWriter, lines: Iterator[bytes]) -> None:
        for data in lines:
            writer.write(data)
        body = b"".join(writer.buffer)
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _follow(
        self,
        handler: _LogHandler,
        run: Run,
        writer: _LogWriter,
        render: Callable[[list[tuple[int, bytes]]], Iterator[bytes]],
        entries: list[tuple[int, bytes]],
        seen: int,
    ) -> None:
        """Chunked: what there is, then each new line until the container's output ends."""
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for data in render(entries):
            writer.write(data)
        while not writer.full:
            with run.changed:
                while (
                    len(run.lines) <= seen and not run.output_closed and not self._stopping.is_set()
                ):
                    run.changed.wait(0.5)
                fresh = run.lines[seen:]
                seen = len(run.lines)
                closed = run.output_closed or self._stopping.is_set()
            for data in render(fresh):
                writer.write(data)
            if closed and not fresh:
                break
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
        handler.close_connection = True
