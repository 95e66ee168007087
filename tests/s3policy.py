"""S3 as the operator's role sees it: a proxy in front of moto that applies the role's policy.

The infrastructure (infrastructure/agenttest_infra/stack.py) grants the operator
s3:GetObject and s3:PutObject under the packages prefix (and the reports prefix),
and s3:ListBucket only for listings under the packages prefix. S3 then answers a
HeadObject of a missing key with 403, not 404: without s3:ListBucket on the bucket,
a caller may not learn whether a key exists. moto can enforce IAM, but it authorizes HeadObject as
s3:GetObject alone and answers a missing key 404 whatever the caller may list,
so it cannot show that answer; this proxy applies the policy in front of it.

It also records what it answered, and can answer the next requests of a method
with an error (throttling, a 5xx) before passing them on again.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agenttest_dev.awsfaults import forward, read_body


def error_body(code: str, message: str) -> bytes:
    request_id = uuid.uuid4().hex[:16].upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    ).encode()


class S3PolicyProxy:
    """Path-style S3 on loopback (what boto3 uses for an IP endpoint), policed by prefix."""

    def __init__(
        self,
        upstream: str,
        bucket: str,
        prefix: str = "packages/",
        objects_also: tuple[str, ...] = ("reports/",),
    ) -> None:
        self.upstream = urlsplit(upstream)
        self.bucket = bucket
        self.prefix = prefix
        # Other prefixes whose objects (not listings) the role may get and put.
        self.objects_also = objects_also
        self.endpoint = ""
        # (method, key, status answered), in order.
        self.answered: list[tuple[str, str, int]] = []
        self._failures: dict[str, deque[tuple[int, str]]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> S3PolicyProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def fail_next(self, method: str, count: int, status: int, code: str) -> None:
        """The next `count` `method` requests on objects answer `status` with S3 error `code`."""
        with self._lock:
            self._failures.setdefault(method, deque()).extend([(status, code)] * count)

    def count(self, method: str, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for m, _, s in self.answered if m == method and status in (None, s))

    # -- one request -----------------------------------------------------------

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        bucket, _, key = url.path.lstrip("/").partition("/")
        body = read_body(request)
        method = request.command
        refused = self._refusal(method, bucket, key, parse_qs(url.query))
        if refused is not None:
            self._answer(request, method, key, refused[0], error_body(*refused[1:]))
            return
        status, headers, content = forward(self.upstream, request, body)
        if status == 404 and key and method in ("HEAD", "GET"):
            # A missing key, to a caller without s3:ListBucket on the bucket.
            self._answer(request, method, key, 403, error_body("AccessDenied", "Access Denied"))
            return
        self._answer(request, method, key, status, content, headers)

    def _refusal(
        self, method: str, bucket: str, key: str, query: dict[str, list[str]]
    ) -> tuple[int, str, str] | None:
        if bucket != self.bucket:
            return None  # not the policed bucket: moto answers as it would
        if key:
            if not key.startswith((self.prefix, *self.objects_also)):
                return 403, "AccessDenied", "Access Denied"
            with self._lock:
                queued = self._failures.get(method)
                if queued:
                    status, code = queued.popleft()
                    return status, code, "injected by the test"
            return None
        if method == "GET" and any(p.startswith(self.prefix) for p in query.get("prefix", [])):
            return None  # ListBucket with s3:prefix under the packages prefix
        return 403, "AccessDenied", "Access Denied"

    def _answer(
        self,
        request: BaseHTTPRequestHandler,
        method: str,
        key: str,
        status: int,
        content: bytes,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        with self._lock:
            self.answered.append((method, key, status))
        request.send_response(status)
        sent_length = False
        for name, value in headers or [("Content-Type", "application/xml")]:
            if name.lower() == "content-length":
                sent_length = True
                if method == "HEAD":
                    request.send_header(name, value)
                    continue
                value = str(len(content))
            request.send_header(name, value)
        if not sent_length:
            request.send_header("Content-Length", "0" if method == "HEAD" else str(len(content)))
        request.end_headers()
        if method != "HEAD":
            request.wfile.write(content)
