"""AWS's bad days on demand: an HTTP proxy in front of moto that fails chosen operations.

Point a process's ``AWS_ENDPOINT_URL`` at `AwsFaults.endpoint` and every call
it makes goes through here to the moto server behind it, unchanged, until a
test switches a fault on, at run time and in process::

    faults.throttle("ecs", "RunTask", times=3)          # the next 3 RunTask calls
    faults.throttle("logs", "GetLogEvents", seconds=10)  # every call for 10 s
    faults.server_error("s3", "PutObject", times=2, after=True)

A fault answers as AWS does when it is overloaded, in the protocol of the
service: ECS and CloudWatch Logs (JSON protocol) answer HTTP 400
``ThrottlingException`` "Rate exceeded", or a 500 ``ServerException`` /
``ServiceUnavailableException``; S3 (REST-XML) answers 503 ``SlowDown`` or 500
``InternalError``. With ``after=True`` the request reaches moto first and only
its answer is lost, as when AWS did the work and the connection failed: a
caller that retries must not do it twice.

The operation is read from the request as AWS reads it: the ``X-Amz-Target``
header (JSON protocols), the ``Action`` parameter (query protocols), or the
method and path (S3, path-style as boto3 uses for an IP endpoint); the service
from the SigV4 credential scope. `answered` records every request and the
status it got, so a test can count what reached AWS and what was refused.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """A request's body, whether sent with a length or in chunks (boto3 streams some)."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def forward(
    upstream: SplitResult, handler: BaseHTTPRequestHandler, body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send the request on to ``upstream`` (moto) as it came; its status, headers and body."""
    connection = http.client.HTTPConnection(
        upstream.hostname or "127.0.0.1", upstream.port, timeout=60
    )
    headers = {
        name: value
        for name, value in handler.headers.items()
        if name.lower() not in HOP_BY_HOP and name.lower() != "content-length"
    }
    headers["Content-Length"] = str(len(body))
    try:
        connection.request(handler.command, handler.path, body=body, headers=headers)
        response = connection.getresponse()
        content = response.read()
        kept = [(n, v) for n, v in response.getheaders() if n.lower() not in HOP_BY_HOP]
        return response.status, kept, content
    finally:
        connection.close()


CREDENTIAL_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")

# What each service answers when it is overloaded or failing, per protocol.
THROTTLE = {
    "s3": (503, "SlowDown", "Please reduce your request rate."),
}
THROTTLE_DEFAULT = (400, "ThrottlingException", "Rate exceeded")
SERVER_ERROR = {
    "s3": (500, "InternalError", "We encountered an internal error. Please try again."),
    "ecs": (500, "ServerException", "Service unavailable, please try again."),
    "logs": (500, "ServiceUnavailableException", "The service is unavailable."),
}
SERVER_ERROR_DEFAULT = (500, "InternalFailure", "The request processing has failed.")
XML_SERVICES = frozenset({"s3"})


@dataclass
class Fault:
    """Answer `status`/`code` to (service, operation) for `times` calls or until `until`."""

    service: str
    operation: str
    status: int
    code: str
    message: str
    times: int | None
    until: float | None
    after: bool

    def active(self, now: float) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        return self.until is None or now < self.until


@dataclass(frozen=True)
class Request:
    service: str
    operation: str
    method: str
    path: str


def service_of(headers: Any, query: dict[str, list[str]]) -> str:
    """The service a SigV4-signed request is for (its credential scope), else ''."""
    found = CREDENTIAL_SCOPE.search(str(headers.get("Authorization") or ""))
    if found:
        return found.group(1)
    # A presigned URL: X-Amz-Credential=AKID/date/region/service/aws4_request.
    parts = (query.get("X-Amz-Credential") or [""])[0].split("/")
    return parts[3] if len(parts) == 5 else ""


def s3_operation(method: str, path: str, query: dict[str, list[str]], headers: Any) -> str:
    """The S3 operation of a path-style request, for the operations the operator uses."""
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return "ListBuckets"
    if key:
        if method == "PUT":
            if headers.get("x-amz-copy-source"):
                return "CopyObject"
            return "UploadPart" if "partNumber" in query else "PutObject"
        if method == "POST":
            return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
        return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
            method, method
        )
    if method == "GET":
        return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
    return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(
        method, method
    )


def identify(method: str, raw_path: str, headers: Any, body: bytes) -> Request:
    url = urlsplit(raw_path)
    query = parse_qs(url.query, keep_blank_values=True)
    service = service_of(headers, query)
    target = str(headers.get("X-Amz-Target") or "")
    if target:
        operation = target.rsplit(".", 1)[-1]
    elif "Action" in query:
        operation = query["Action"][0]
    elif body and "x-www-form-urlencoded" in str(headers.get("Content-Type") or ""):
        operation = (parse_qs(body.decode("utf-8", "replace")).get("Action") or [""])[0]
    elif service == "s3":
        operation = s3_operation(method, url.path, query, headers)
    else:
        operation = ""
    return Request(service, operation, method, url.path)


def error_answer(service: str, status: int, code: str, message: str) -> tuple[bytes, str]:
    """The body and content type of an AWS error in the service's protocol."""
    request_id = uuid.uuid4().hex[:16].upper()
    if service in XML_SERVICES:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        )
        return body.encode(), "application/xml"
    return json.dumps({"__type": code, "message": message}).encode(), "application/x-amz-json-1.1"


class AwsFaults:
    """The proxy: start it (or use it as a context manager), then switch faults on and off."""

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self.upstream = urlsplit(upstream)
        self.host = host
        self.endpoint = ""
        # (service, operation, status answered), in order.
        self.answered: list[tuple[str, str, int]] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> AwsFaults:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{self.host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="aws-faults", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> AwsFaults:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- switching faults -----------------------------------------------------

    def fail(
        self,
        service: str,
        operation: str,
        status: int,
        code: str,
        message: str = "injected",
        *,
        times: int | None = None,
        seconds: float | None = None,
        after: bool = False,
    ) -> None:
        """Answer the next `times` calls, or every call for `seconds`, with this error.

        Give one of `times` and `seconds` (both: whichever ends first). With
        `after`, the call reaches moto first and only its answer is replaced.
        """
        if times is None and seconds is None:
            raise ValueError("a fault needs times= or seconds=, or it never ends")
        until = None if seconds is None else time.monotonic() + seconds
        with self._lock:
            self._faults.append(
                Fault(service, operation, status, code, message, times, until, after)
            )

    def throttle(
        self,
        service: str,
        operation: str,
        *,
        times: int | None = None,
        seconds: float | None = None,
        after: bool = False,
    ) -> None:
        """Throttled as the service throttles: 400 ThrottlingException, S3 503 SlowDown."""
        status, code, message = THROTTLE.get(service, THROTTLE_DEFAULT)
        self.fail(
            service, operation, status, code, message, times=times, seconds=seconds, after=after
        )

    def server_error(
        self,
        service: str,
        operation: str,
        *,
        times: int | None = None,
        seconds: float | None = None,
        after: bool = False,
    ) -> None:
        """A 5xx as the service sends it (ECS ServerException, S3 InternalError, ...)."""
        status, code, message = SERVER_ERROR.get(service, SERVER_ERROR_DEFAULT)
        self.fail(
            service, operation, status, code, message, times=times, seconds=seconds, after=after
        )

    def clear(self) -> None:
        """Every fault off."""
        with self._lock:
            self._faults.clear()

    def count(self, service: str, operation: str, status: int | None = None) -> int:
        """Requests for (service, operation) so far, or only those answered `status`."""
        with self._lock:
            return sum(
                1
                for s, o, answered in self.answered
                if (s, o) == (service, operation) and status in (None, answered)
            )

    # -- one request ----------------------------------------------------------

    def _fault_for(self, request: Request) -> Fault | None:
        now = time.monotonic()
        with self._lock:
            self._faults = [fault for fault in self._faults if fault.active(now)]
            for fault in self._faults:
                if (fault.service, fault.operation) == (request.service, request.operation):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = read_body(handler)
        request = identify(handler.command, handler.path, handler.headers, body)
        fault = self._fault_for(request)
        if fault is None or fault.after:
            status, headers, content = forward(self.upstream, handler, body)
        if fault is not None:
            status = fault.status
            content, content_type = error_answer(
                request.service, fault.status, fault.code, fault.message
            )
            headers = [
                ("Content-Type", content_type),
                ("x-amzn-RequestId", uuid.uuid4().hex),
            ]
            if request.service not in XML_SERVICES:
                headers.append(("x-amzn-ErrorType", fault.code))
        with self._lock:
            self.answered.append((request.service, request.operation, status))
        self._answer(handler, status, headers, content)

    @staticmethod
    def _answer(
        handler: BaseHTTPRequestHandler,
        status: int,
        headers: list[tuple[str, str]],
        content: bytes,
    ) -> None:
        head = handler.command == "HEAD"
        handler.send_response(status)
        for name, value in headers:
            if name.lower() == "content-length" and not head:
                continue  # sent below, for the body as it is now
            handler.send_header(name, value)
        if not head:
            handler.send_header("Content-Length", str(len(content)))
        elif not any(name.lower() == "content-length" for name, _ in headers):
            handler.send_header("Content-Length", "0")
        handler.end_headers()
        if not head:
            handler.wfile.write(content)
