"""The model gateway: the only way the agent host reaches a model, and our record of it.

The agent host is untrusted and holds no model credential. Its model client points at
this gateway, which the judge serves on 127.0.0.1 and which forwards every call to the
real model (Ollama, or Bedrock Runtime re-signed with the judge's own credentials),
relaying the answer byte for byte while watching it go by. What the gateway saw --
tool-use requests, token usage, latency, failures -- is what the verdict rests on::

    with ModelGateway(Upstream(provider="ollama", endpoint=ollama_url)) as gateway:
        # the agent host gets OllamaModel(host=gateway.url)
        gateway.open_case("refund-policy")
        ...  # the agent host answers the case
        observed = gateway.close_case()

Standard library, botocore and urllib3 only: this runs inside the test image.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol, cast
from urllib.parse import quote, unquote, urlsplit

import botocore.session
import urllib3
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import BotoCoreError, ClientError
from botocore.httpsession import URLLib3Session
from botocore.utils import get_environ_proxies

API_OLLAMA_CHAT = "ollama.chat"
API_CONVERSE = "bedrock.converse"
API_CONVERSE_STREAM = "bedrock.converse-stream"

# Larger requests are refused (413) before they are read: no conversation is that big,
# and the judge must not be made to buffer whatever the agent host sends.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_UPSTREAM_CONNECTIONS = 16
# Between two bytes of an answer; a slow model thinking before its first token is normal.
DEFAULT_UPSTREAM_READ_TIMEOUT_SECONDS = 600.0
DEFAULT_UPSTREAM_CONNECT_TIMEOUT_SECONDS = 10.0
# How long close_case waits for calls of the case still being relayed (their client has
# usually read the last byte already; only our bookkeeping is behind).
DEFAULT_CLOSE_WAIT_SECONDS = 5.0
# Keep-alive connections idle longer than this are dropped, so their threads end.
CLIENT_IDLE_TIMEOUT_SECONDS = 300.0
_RELAY_READ_BYTES = 64 * 1024
# Enough of an upstream error body to say what went wrong, not enough to hoard it.
_ERROR_EXCERPT_CHARS = 500

# Headers that describe one hop, not the message (RFC 9110 section 7.6.1), plus those the
# gateway sets itself for its own hop.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
        "content-length",
        # Answers are observed on the way through, so they must arrive uncompressed.
        "accept-encoding",
    }
)
# The agent host signs with throwaway credentials; none of its signature may go upstream.
_AGENT_SIGNATURE_HEADERS = frozenset(
    {"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"}
)
# Set by our own HTTP server on every response; relaying the upstream's would duplicate them.
_SERVER_SET_RESPONSE_HEADERS = frozenset({"server", "date"})

# Bedrock's error codes, so botocore raises something meaningful for our own refusals.
_AWS_ERROR_CODES: Mapping[int, str] = {
    HTTPStatus.NOT_FOUND: "UnknownOperationException",
    HTTPStatus.LENGTH_REQUIRED: "ValidationException",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "ValidationException",
    HTTPStatus.BAD_GATEWAY: "BadGatewayException",
    HTTPStatus.SERVICE_UNAVAILABLE: "ServiceUnavailableException",
}

# POST /model/{modelId}/converse[-stream]; the model id is one percent-encoded segment.
_BEDROCK_PATH = re.compile(r"^/model/(?P<model_id>[^/]+)/(?P<operation>converse|converse-stream)$")
# Ollama routes forwarded without being a model call: no case needed, nothing recorded.
_OLLAMA_METADATA_ROUTES = frozenset(
    {
        ("GET", "/"),
        ("HEAD", "/"),
        ("GET", "/api/version"),
        ("GET", "/api/tags"),
        ("POST", "/api/show"),
    }
)


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class ToolUse:
    """A tool the model asked the agent to run, as the model asked for it."""

    name: str
    arguments: Any


@dataclass(frozen=True)
class ModelCall:
    """One model call as the gateway relayed it."""

    api: str  # API_OLLAMA_CHAT, API_CONVERSE or API_CONVERSE_STREAM
    # Bedrock: the model id of the path; Ollama: the model the answer named ("" if none).
    model: str
    # The upstream's HTTP status; 502 when it could not be reached, 0 when the case
    # closed before the call finished.
    status: int
    latency_seconds: float  # request received -> last byte relayed
    input_tokens: int | None  # as the model reported them; None when it did not
    output_tokens: int | None
    tool_uses: tuple[ToolUse, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and not self.error


@dataclass(frozen=True)
class Observed:
    """What the gateway saw during one case (or one trial)."""

    label: str
    calls: tuple[ModelCall, ...]
    refused: int  # requests refused because no case was open

    @property
    def model_calls(self) -> int:
        return len(self.calls)

    @property
    def input_tokens(self) -> int:
        return sum(call.input_tokens or 0 for call in self.calls)

    @property
    def output_tokens(self) -> int:
        return sum(call.output_tokens or 0 for call in self.calls)

    @property
    def tool_uses(self) -> tuple[ToolUse, ...]:
        return tuple(use for call in self.calls for use in call.tool_uses)

    @property
    def tool_calls(self) -> tuple[str, ...]:
        """Names of the tools the model asked for, in order."""
        return tuple(use.name for use in self.tool_uses)

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(call.error for call in self.calls if call.error)


@dataclass(frozen=True)
class Upstream:
    """Where the real model is."""

    provider: str  # "ollama" | "bedrock"
    endpoint: str | None = None  # Ollama's base URL; for Bedrock an optional override
    region: str | None = None  # Bedrock only; default: the judge's configured region
    # The model ids the gateway forwards calls for (empty: any). The judge's own
    # credentials sign Bedrock calls, so the agent must not pick what they pay for.
    models: tuple[str, ...] = ()
    # Ollama only: headers the gateway adds to every call it forwards (the model's
    # credential, e.g. Authorization: Bearer ...), replacing any the agent host sent.
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.provider not in ("ollama", "bedrock"):
            raise ValueError(f"unknown model provider {self.provider!r}: ollama or bedrock")
        if self.provider == "ollama" and not self.endpoint:
            raise ValueError("an ollama upstream needs an endpoint (its base URL)")


# botocore's Credentials (or None): what the judge signs Bedrock calls with.
CredentialsProvider = Callable[[], Any]


# --------------------------------------------------------------------------- answer parsing


class _Watcher(Protocol):
    """Parses an answer incrementally as it is relayed; never fails the relay."""

    def feed(self, data: bytes) -> None: ...

    def finish(self) -> _Seen: ...


@dataclass
class _Seen:
    model: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    tool_uses: list[ToolUse] = field(default_factory=list)
    error: str = ""


def _int_or_none(value: object) -> int | None:
    # bool is an int subclass, and never a token count.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# Answers come from outside; a field of an unexpected type reads as absent, never raises.
def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


# The only lines of a streamed Ollama answer that tell us more than a piece of text. Most
# lines are text pieces, and skipping their JSON parse keeps the relay fast.
_OLLAMA_LINE_WORTH_PARSING = re.compile(rb'"tool_calls"|"error"|"done"\s*:\s*true')


class _OllamaWatcher:
    """Ollama chat answers: NDJSON when streamed, one JSON object when not."""

    def __init__(self) -> None:
        self._pending = b""
        self._seen = _Seen()

    def feed(self, data: bytes) -> None:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self._take(line)

    def finish(self) -> _Seen:
        self._take(self._pending)
        self._pending = b""
        return self._seen

    def _take(self, line: bytes) -> None:
        # The first line is always read: it names the model.
        if self._seen.model and not _OLLAMA_LINE_WORTH_PARSING.search(line):
            return
        if not line.strip():
            return
        try:
            answer = json.loads(line)
        except ValueError as error:
            self._seen.error = self._seen.error or f"unreadable answer line: {error}"
            return
        answer = _mapping(answer)
        if isinstance(answer.get("error"), str):
            self._seen.error = answer["error"]
        if isinstance(answer.get("model"), str):
            self._seen.model = answer["model"]
        for tool_call in _list(_mapping(answer.get("message")).get("tool_calls")):
            function = _mapping(_mapping(tool_call).get("function"))
            if isinstance(function.get("name"), str):
                self._seen.tool_uses.append(
                    ToolUse(function["name"], function.get("arguments", {}))
                )
        if answer.get("done") is True:
            self._seen.input_tokens = _int_or_none(answer.get("prompt_eval_count"))
            self._seen.output_tokens = _int_or_none(answer.get("eval_count"))


def _bedrock_usage(seen: _Seen, usage: object) -> None:
    seen.input_tokens = _int_or_none(_mapping(usage).get("inputTokens"))
    seen.output_tokens = _int_or_none(_mapping(usage).get("outputTokens"))


class _ConverseWatcher:
    """A Converse answer: one JSON document."""

    def __init__(self, model_id: str) -> None:
        self._body = bytearray()
        self._model_id = model_id

    def feed(self, data: bytes) -> None:
        self._body += data

    def finish(self) -> _Seen:
        seen = _Seen(model=self._model_id)
        try:
            answer = json.loads(self._body)
        except ValueError as error:
            seen.error = f"unreadable Converse answer: {error}"
            return seen
        answer = _mapping(answer)
        _bedrock_usage(seen, answer.get("usage"))
        message = _mapping(_mapping(answer.get("output")).get("message"))
        for block in _list(message.get("content")):
            tool_use = _mapping(_mapping(block).get("toolUse"))
            if isinstance(tool_use.get("name"), str):
                seen.tool_uses.append(ToolUse(tool_use["name"], tool_use.get("input")))
        return seen


class _ConverseStreamWatcher:
    """A ConverseStream answer: AWS event-stream frames, parsed by botocore's own parser."""

    def __init__(self, model_id: str) -> None:
        self._frames = EventStreamBuffer()
        self._seen = _Seen(model=model_id)
        # A tool's input arrives as JSON text in pieces, keyed by content block.
        self._tool_names: dict[int, str] = {}
        self._tool_inputs: dict[int, list[str]] = {}
        self._broken = False

    def feed(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._frames.add_data(data)
            for frame in self._frames:
                self._take(frame.headers, frame.payload)
        except Exception as error:  # a bad frame must not stop the relay
            self._broken = True
            self._seen.error = f"unreadable event stream: {error}"

    def finish(self) -> _Seen:
        # Blocks never stopped (a cut-off stream) still show what the model asked for.
        for index in sorted(self._tool_names):
            self._end_tool_use(index)
        return self._seen

    def _take(self, headers: Mapping[str, Any], payload: bytes) -> None:
        message_type = headers.get(":message-type")
        if message_type != "event":
            kind = headers.get(":exception-type") or headers.get(":error-code") or message_type
            self._seen.error = f"{kind}: {payload.decode(errors='replace')[:_ERROR_EXCERPT_CHARS]}"
            return
        event_type = headers.get(":event-type")
        # Text pieces are most of a stream and tell us nothing; leave their JSON unparsed.
        if event_type in ("contentBlockDelta", "contentBlockStop") and not self._tool_names:
            return
        event = _mapping(json.loads(payload) if payload else {})
        index = _int_or_none(event.get("contentBlockIndex")) or 0
        if event_type == "contentBlockStart":
            tool_use = _mapping(_mapping(event.get("start")).get("toolUse"))
            if isinstance(tool_use.get("name"), str):
                self._tool_names[index] = tool_use["name"]
                self._tool_inputs[index] = []
        elif event_type == "contentBlockDelta":
            tool_delta = _mapping(event.get("delta")).get("toolUse")
            if index in self._tool_names and isinstance(tool_delta, dict):
                self._tool_inputs[index].append(str(tool_delta.get("input", "")))
        elif event_type == "contentBlockStop":
            self._end_tool_use(index)
        elif event_type == "metadata":
            _bedrock_usage(self._seen, event.get("usage"))

    def _end_tool_use(self, index: int) -> None:
        name = self._tool_names.pop(index, None)
        if name is None:
            return
        text = "".join(self._tool_inputs.pop(index, []))
        arguments: Any
        try:
            arguments = json.loads(text) if text else {}
        except ValueError:
            arguments = text  # as the model sent it; the verdict can still see it
        self._seen.tool_uses.append(ToolUse(name, arguments))


# --------------------------------------------------------------------------- cases


@dataclass
class _Ticket:
    """A call in flight, so close_case can tell what it waited for."""

    api: str
    model: str
    started: float


@dataclass
class _Case:
    label: str
    calls: list[ModelCall] = field(default_factory=list)
    in_flight: list[_Ticket] = field(default_factory=list)
    closed: bool = False


# --------------------------------------------------------------------------- HTTP


class _GatewayServer(ThreadingHTTPServer):
    # Handler threads must not keep the judge alive or block server_close().
    daemon_threads = True
    # Agents may open several connections at once; the default backlog of 5 is tight.
    request_queue_size = 64

    def __init__(self, gateway: ModelGateway) -> None:
        self.gateway = gateway
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1: keep-alive towards the agent host, and chunked relays of streamed answers.
    protocol_version = "HTTP/1.1"
    # Small writes (a header block, one token's chunk) must go out now, not after an ACK.
    disable_nagle_algorithm = True
    timeout = CLIENT_IDLE_TIMEOUT_SECONDS
    server: _GatewayServer

    def log_message(self, format: str, *args: Any) -> None:
        # The judge owns stdout and stderr carries the agent host's output; stay quiet.
        pass

    def do_GET(self) -> None:
        self.server.gateway._handle(self)

    def do_HEAD(self) -> None:
        self.server.gateway._handle(self)

    def do_POST(self) -> None:
        self.server.gateway._handle(self)

    def send_json_error(self, status: int, message: str) -> None:
        """An error both clients read: ollama takes "error", botocore "message" + header."""
        body = json.dumps({"error": message, "message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        code = _AWS_ERROR_CODES.get(status)
        if code is not None:
            self.send_header("x-amzn-ErrorType", code)
        try:
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            # The agent host hung up first; whatever we were refusing is recorded already.
            self.close_connection = True


@dataclass
class _Relayed:
    status: int
    error: str = ""


class _ClientGone(Exception):
    """The agent host closed its connection while we were answering."""


class ModelGateway:
    """Serves the model API on 127.0.0.1, forwards to the real model, records each call.

    ``start()`` returns once the socket listens. Model calls are accepted only while a
    case is open (``open_case`` .. ``close_case``); others are refused with 503 and
    counted. Calls belong to the case that was open when they started.
    """

    def __init__(
        self,
        upstream: Upstream,
        *,
        credentials_provider: CredentialsProvider | None = None,
        max_upstream_connections: int = DEFAULT_MAX_UPSTREAM_CONNECTIONS,
        upstream_read_timeout_seconds: float = DEFAULT_UPSTREAM_READ_TIMEOUT_SECONDS,
    ) -> None:
        if max_upstream_connections < 1:
            raise ValueError("max_upstream_connections must be at least 1")
        self.upstream = upstream
        self._timeout = urllib3.Timeout(
            connect=DEFAULT_UPSTREAM_CONNECT_TIMEOUT_SECONDS, read=upstream_read_timeout_seconds
        )
        # At most this many upstream connections are busy at once; the pools keep as
        # many alive for reuse, which is most of the latency budget on loopback.
        self._upstream_slots = threading.BoundedSemaphore(max_upstream_connections)
        self._lock = threading.Lock()
        self._case_ended = threading.Condition(self._lock)
        self._case: _Case | None = None
        self._refused = 0
        self._server: _GatewayServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

        self._ollama_pool: urllib3.HTTPConnectionPool | None = None
        self._ollama_prefix = ""
        self._bedrock_http: Any = None
        self._bedrock_endpoint = ""
        self._region = ""
        self._credentials_provider: CredentialsProvider = credentials_provider or (lambda: None)
        if upstream.provider == "ollama":
            assert upstream.endpoint is not None  # checked by Upstream
            self._ollama_prefix = urlsplit(upstream.endpoint).path.rstrip("/")
            self._ollama_pool = urllib3.connection_from_url(
                upstream.endpoint,
                maxsize=max_upstream_connections,
                timeout=self._timeout,
                retries=False,
            )
            self.upstream_url = upstream.endpoint.rstrip("/")
        else:
            self._setup_bedrock(upstream, credentials_provider, max_upstream_connections)
            self.upstream_url = self._bedrock_endpoint

    def _setup_bedrock(
        self,
        upstream: Upstream,
        credentials_provider: CredentialsProvider | None,
        max_upstream_connections: int,
    ) -> None:
        session = botocore.session.get_session()
        region = upstream.region or session.get_config_variable("region")
        if not region:
            raise ValueError("a bedrock upstream needs a region (Upstream.region or AWS_REGION)")
        self._region = str(region)
        # botocore resolves the endpoint exactly as the SDK would: an explicit override,
        # then AWS_ENDPOINT_URL_BEDROCK_RUNTIME, AWS_ENDPOINT_URL, config files, and the
        # partition's regional endpoint. UNSIGNED: no credential lookup just for this.
        resolver = session.create_client(
            "bedrock-runtime",
            region_name=self._region,
            endpoint_url=upstream.endpoint or None,
            config=Config(signature_version=UNSIGNED),
        )
        self._bedrock_endpoint = str(resolver.meta.endpoint_url).rstrip("/")
        # botocore's own HTTP session: the SDK's proxies and CA bundle, and it sends the
        # URL it is given unaltered, so the path signed is the path sent.
        self._bedrock_http = URLLib3Session(
            verify=session.get_config_variable("ca_bundle") or True,
            proxies=get_environ_proxies(self._bedrock_endpoint),
            timeout=(self._timeout.connect_timeout, self._timeout.read_timeout),
            max_pool_connections=max_upstream_connections,
            # What botocore's clients set, and URLLib3Session alone does not: without it
            # the body, written after the headers, waits ~40 ms for a delayed ACK.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        self._credentials_provider = credentials_provider or _default_chain(session)

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """The base URL the agent host's model client is pointed at."""
        if self._server is None:
            raise RuntimeError("the gateway is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ModelGateway:
        if self._server is not None:
            raise RuntimeError("the gateway is already started")
        if self._stopped:
            # stop() closed the upstream connection pools for good.
            raise RuntimeError("a stopped gateway cannot be started again")
        self._server = _GatewayServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="model-gateway",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()
        self._server = None
        self._thread = None
        self._stopped = True
        if self._ollama_pool is not None:
            self._ollama_pool.close()
        if self._bedrock_http is not None:
            self._bedrock_http.close()

    def __enter__(self) -> ModelGateway:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- cases

    def open_case(self, label: str) -> None:
        """Start recording; model calls are accepted from now on."""
        with self._lock:
            if self._case is not None:
                raise RuntimeError(f"case {self._case.label!r} is still open")
            self._case = _Case(label)

    def close_case(self, wait_seconds: float = DEFAULT_CLOSE_WAIT_SECONDS) -> Observed:
        """Stop accepting calls and return what was seen since ``open_case``.

        Calls of the case still being relayed are waited for up to ``wait_seconds``;
        any still running then are reported with status 0 and an error.
        """
        deadline = time.monotonic() + wait_seconds
        with self._lock:
            case = self._case
            if case is None:
                raise RuntimeError("no case is open")
            self._case = None
            while case.in_flight and (remaining := deadline - time.monotonic()) > 0:
                self._case_ended.wait(remaining)
            case.closed = True
            now = time.perf_counter()
            unfinished = [
                ModelCall(
                    api=ticket.api,
                    model=ticket.model,
                    status=0,
                    latency_seconds=now - ticket.started,
                    input_tokens=None,
                    output_tokens=None,
                    error="still running when the case closed",
                )
                for ticket in case.in_flight
            ]
            refused, self._refused = self._refused, 0
            return Observed(case.label, tuple(case.calls + unfinished), refused)

    def _begin_call(self, api: str, model: str, started: float) -> tuple[_Case, _Ticket] | None:
        with self._lock:
            if self._case is None:
                self._refused += 1
                return None
            ticket = _Ticket(api, model, started)
            self._case.in_flight.append(ticket)
            return self._case, ticket

    def _end_call(self, case: _Case, ticket: _Ticket, call: ModelCall) -> None:
        with self._lock:
            case.in_flight.remove(ticket)
            # A call that outlived its case's close_case was already reported as unfinished.
            if not case.closed:
                case.calls.append(call)
            self._case_ended.notify_all()

    # ----------------------------------------------------------------- requests

    def _handle(self, handler: _Handler) -> None:
        started = time.perf_counter()
        # Read even when unused: an unread body would be taken for the next request on
        # this keep-alive connection.
        body = self._read_body(handler)
        if body is None:
            return
        method = handler.command
        target = urlsplit(handler.path)
        if self.upstream.provider == "ollama":
            if (method, target.path) in _OLLAMA_METADATA_ROUTES:
                self._forward_metadata(handler, body)
                return
            if (method, target.path) == ("POST", "/api/chat"):
                self._model_call(handler, body, started, API_OLLAMA_CHAT, "")
                return
        elif method == "POST" and (match := _BEDROCK_PATH.match(target.path)):
            api = API_CONVERSE if match["operation"] == "converse" else API_CONVERSE_STREAM
            self._model_call(handler, body, started, api, unquote(match["model_id"]))
            return
        handler.send_json_error(
            HTTPStatus.NOT_FOUND, f"the model gateway has no route for {method} {handler.path}"
        )

    def _read_body(self, handler: _Handler) -> bytes | None:
        """The request body, or None after answering why it cannot be read."""
        if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
            handler.close_connection = True
            handler.send_json_error(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length")
            return None
        try:
            length = int(handler.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REQUEST_BYTES:
            # Not reading it leaves the connection out of step, so it ends with this answer.
            handler.close_connection = True
            handler.send_json_error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request bodies are limited to {MAX_REQUEST_BYTES} bytes",
            )
            return None
        body = handler.rfile.read(length) if length else b""
        if len(body) < length:
            handler.close_connection = True
            return None
        return body

    def _forward_metadata(self, handler: _Handler, body: bytes) -> None:
        with self._upstream_slots:
            try:
                response = self._send_ollama(handler, body)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                handler.send_json_error(HTTPStatus.BAD_GATEWAY, self._unreachable(error))
                return
            try:
                self._relay(handler, response, None)
            except _ClientGone:
                handler.close_connection = True

    def _model_call(
        self, handler: _Handler, body: bytes, started: float, api: str, model: str
    ) -> None:
        if api == API_OLLAMA_CHAT:
            model = _requested_ollama_model(body)
        if self.upstream.models and model not in self.upstream.models:
            self._refuse_model(handler, started, api, model)
            return
        begun = self._begin_call(api, model, started)
        if begun is None:
            handler.send_json_error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "no case is running: the model gateway accepts calls only during a case",
            )
            return
        case, ticket = begun
        try:
            call = self._forward_model_call(handler, body, api, model, started)
        except BaseException as error:
            # Still recorded: a call the gateway fumbled must not vanish from the verdict.
            latency = time.perf_counter() - started
            reason = f"the model gateway failed: {error!r}"
            self._end_call(case, ticket, ModelCall(api, model, 0, latency, None, None, (), reason))
            raise
        self._end_call(case, ticket, call)

    def _refuse_model(self, handler: _Handler, started: float, api: str, model: str) -> None:
        """403 for a model the test did not name; recorded when a case is running."""
        allowed = ", ".join(self.upstream.models)
        reason = f"the model gateway forwards calls for {allowed} only, not {model!r}"
        begun = self._begin_call(api, model, started)
        handler.send_json_error(HTTPStatus.FORBIDDEN, reason)
        if begun is not None:
            case, ticket = begun
            latency = time.perf_counter() - started
            self._end_call(
                case, ticket, ModelCall(api, model, 403, latency, None, None, (), reason)
            )

    def _forward_model_call(
        self, handler: _Handler, body: bytes, api: str, model: str, started: float
    ) -> ModelCall:
        watcher: _Watcher
        if api == API_OLLAMA_CHAT:
            watcher = _OllamaWatcher()
        elif api == API_CONVERSE:
            watcher = _ConverseWatcher(model)
        else:
            watcher = _ConverseStreamWatcher(model)

        with self._upstream_slots:
            try:
                if api == API_OLLAMA_CHAT:
                    response = self._send_ollama(handler, body)
                else:
                    response = self._send_bedrock(handler, body, model, api)
            except (
                urllib3.exceptions.HTTPError,
                BotoCoreError,
                ClientError,
                OSError,
                _NoCredentials,
            ) as error:
                reason = self._unreachable(error)
                handler.send_json_error(HTTPStatus.BAD_GATEWAY, reason)
                latency = time.perf_counter() - started
                return ModelCall(api, model, 502, latency, None, None, (), reason)
            try:
                relayed = self._relay(handler, response, watcher)
            except _ClientGone:
                handler.close_connection = True
                relayed = _Relayed(response.status, "the agent host disconnected mid-answer")

        seen = watcher.finish()
        return ModelCall(
            api=api,
            model=seen.model or model,
            status=relayed.status,
            latency_seconds=time.perf_counter() - started,
            input_tokens=seen.input_tokens,
            output_tokens=seen.output_tokens,
            tool_uses=tuple(seen.tool_uses),
            error=relayed.error or seen.error,
        )

    def _unreachable(self, error: BaseException) -> str:
        if isinstance(error, _NoCredentials):
            return str(error)
        return f"the model gateway could not reach {self.upstream_url}: {error}"

    def _forwarded_headers(self, handler: _Handler, drop: frozenset[str]) -> dict[str, str]:
        headers = {
            name: value
            for name, value in handler.headers.items()
            if name.lower() not in _HOP_BY_HOP and name.lower() not in drop
        }
        headers["Accept-Encoding"] = "identity"
        return headers

    def _send_ollama(self, handler: _Handler, body: bytes) -> urllib3.BaseHTTPResponse:
        assert self._ollama_pool is not None
        # Path and query only: a request line may also carry an absolute URL.
        target = urlsplit(handler.path)
        query = f"?{target.query}" if target.query else ""
        added = dict(self.upstream.headers)
        headers = self._forwarded_headers(handler, frozenset(name.lower() for name in added))
        headers.update(added)
        return self._ollama_pool.urlopen(
            handler.command,
            self._ollama_prefix + target.path + query,
            body=body if handler.command == "POST" else None,
            headers=headers,
            preload_content=False,
            decode_content=False,
            redirect=False,
            retries=False,
            assert_same_host=False,
        )

    def _send_bedrock(
        self, handler: _Handler, body: bytes, model_id: str, api: str
    ) -> urllib3.BaseHTTPResponse:
        credentials = self._credentials_provider()
        if credentials is None:
            raise _NoCredentials("the judge has no AWS credentials to call Bedrock with")
        operation = "converse" if api == API_CONVERSE else "converse-stream"
        # Re-encoded from the decoded id the way botocore encodes a path label, so the
        # string signed and the string sent are one and the same.
        path = f"/model/{quote(model_id, safe='')}/{operation}"
        request = AWSRequest(
            method="POST",
            url=self._bedrock_endpoint + path,
            data=body,
            headers=self._forwarded_headers(handler, _AGENT_SIGNATURE_HEADERS),
        )
        SigV4Auth(credentials.get_frozen_credentials(), "bedrock", self._region).add_auth(request)
        prepared = request.prepare()
        prepared.stream_output = True
        return cast(urllib3.BaseHTTPResponse, self._bedrock_http.send(prepared).raw)

    def _relay(
        self, handler: _Handler, response: urllib3.BaseHTTPResponse, watcher: _Watcher | None
    ) -> _Relayed:
        """Send the upstream's answer on as it arrives, showing each piece to the watcher.

        Raises _ClientGone when the agent host stops listening.
        """
        relayed = _Relayed(response.status)
        ok = 200 <= response.status < 300
        error_excerpt = bytearray()
        length = response.headers.get("Content-Length")
        # HEAD answers and these statuses never carry a body (RFC 9110 section 6.4.1).
        bodiless = handler.command == "HEAD" or response.status in (204, 304)
        chunked = length is None and not bodiless
        complete = False
        try:
            handler.send_response(response.status)
            for name, value in response.headers.items():
                lowered = name.lower()
                if lowered not in _HOP_BY_HOP and lowered not in _SERVER_SET_RESPONSE_HEADERS:
                    handler.send_header(name, value)
            if chunked:
                handler.send_header("Transfer-Encoding", "chunked")
            elif length is not None:
                handler.send_header("Content-Length", length)
            _end_headers(handler)
            for data in _pieces(response):
                # Relayed first, watched after: the answer never waits for our bookkeeping.
                _write(handler, b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                if not ok:
                    if len(error_excerpt) < _ERROR_EXCERPT_CHARS:
                        error_excerpt += data[:_ERROR_EXCERPT_CHARS]
                elif watcher is not None:
                    watcher.feed(data)
            if chunked:
                _write(handler, b"0\r\n\r\n")
            complete = True
        except (urllib3.exceptions.HTTPError, OSError) as error:
            # Headers are out already, so the status cannot change; ending the connection
            # without the final chunk tells the client the answer is incomplete.
            handler.close_connection = True
            relayed.error = f"the upstream failed mid-answer: {error}"
        finally:
            if not complete:
                # A half-read connection must not go back to the pool for reuse.
                response.close()
            response.release_conn()
        if not ok and not relayed.error:
            excerpt = error_excerpt.decode(errors="replace")[:_ERROR_EXCERPT_CHARS]
            relayed.error = f"the upstream answered {response.status}: {excerpt}"
        return relayed


class _NoCredentials(Exception):
    """The judge has nothing to sign Bedrock calls with."""


def _default_chain(session: Any) -> CredentialsProvider:
    """The SDK's default credential chain, resolved once, on the first Bedrock call.

    Lazily, because resolving may mean a metadata-service round trip; once, under a
    lock, so concurrent first calls do not each walk the chain. Refreshable credentials
    (container, web identity, SSO) renew themselves from then on.
    """
    lock = threading.Lock()
    resolved: list[Any] = []

    def credentials() -> Any:
        with lock:
            # None (nothing found) is not kept: credentials may be provided later.
            if not resolved and (found := session.get_credentials()) is not None:
                resolved.append(found)
            return resolved[0] if resolved else None

    return credentials


def static_credentials(
    access_key_id: str, secret_access_key: str, session_token: str | None = None
) -> CredentialsProvider:
    """Bedrock calls signed with these keys (a credentialsSecretRef's)."""
    from botocore.credentials import Credentials

    credentials = Credentials(access_key_id, secret_access_key, session_token)
    return lambda: credentials


def assumed_role(
    role_arn: str, region: str | None, external_id: str | None = None
) -> CredentialsProvider:
    """Bedrock calls signed as ``role_arn``, assumed with the judge's own credentials.

    Assumed on the first call (STS is asked only when a model call needs it) and again
    before the temporary credentials expire. botocore resolves STS's endpoint as the
    SDK would (AWS_ENDPOINT_URL_STS, AWS_ENDPOINT_URL, the regional endpoint).
    """
    from botocore.credentials import RefreshableCredentials

    session = botocore.session.get_session()
    lock = threading.Lock()
    held: list[Any] = []

    def assume() -> dict[str, str]:
        sts = session.create_client("sts", region_name=region or None)
        arguments = {"RoleArn": role_arn, "RoleSessionName": "agenttest-model-gateway"}
        if external_id:
            arguments["ExternalId"] = external_id
        answer = sts.assume_role(**arguments)["Credentials"]
        return {
            "access_key": answer["AccessKeyId"],
            "secret_key": answer["SecretAccessKey"],
            "token": answer["SessionToken"],
            "expiry_time": answer["Expiration"].isoformat(),
        }

    def credentials() -> Any:
        with lock:
            if not held:
                try:
                    metadata = assume()
                except (BotoCoreError, ClientError) as error:
                    raise _NoCredentials(f"cannot assume role {role_arn}: {error}") from None
                held.append(
                    RefreshableCredentials.create_from_metadata(metadata, assume, "assume-role")
                )
            return held[0]

    return credentials


def _requested_ollama_model(body: bytes) -> str:
    try:
        request = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ""
    model = request.get("model") if isinstance(request, dict) else None
    return model if isinstance(model, str) else ""


def _pieces(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    # read1: whatever has arrived (at most one chunk), without waiting to fill a buffer,
    # so a streamed answer keeps streaming.
    while data := response.read1(_RELAY_READ_BYTES, decode_content=False):
        yield data


def _end_headers(handler: _Handler) -> None:
    try:
        handler.end_headers()
    except OSError as error:
        raise _ClientGone() from error


def _write(handler: _Handler, data: bytes) -> None:
    try:
        handler.wfile.write(data)
    except OSError as error:
        raise _ClientGone() from error
