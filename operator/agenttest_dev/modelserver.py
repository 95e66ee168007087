"""A scripted model server for demos and tests, speaking Ollama and Bedrock Runtime.

Real language models are slow and non-deterministic, which makes them a poor fit for
testing the operator itself. This server speaks enough of the Ollama HTTP API for the
``ollama`` Python client (and so for strands' ``OllamaModel``), and enough of Amazon
Bedrock Runtime (``Converse`` and ``ConverseStream``, on the same port) for botocore
(and so for strands' ``BedrockModel(endpoint_url=...)``), while answering from a fixed
script: an ordered list of rules, each a regex searched in the last user message.

Run it standalone with ``python -m agenttest_dev.modelserver [--port 0] [--script rules.json]``
or embed it in tests::

    with ScriptedModelServer() as server:
        model = OllamaModel(host=server.url, model_id="scripted")
        # or: BedrockModel(model_id="any", endpoint_url=server.url, region_name="us-east-1")

Standard library only, so it can run in any container that has Python.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import signal
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

# Reported by /api/version; the suffix makes it obvious in logs that no real Ollama answered.
SERVER_VERSION = "0.0.0-scripted"
DEFAULT_MODEL_NAME = "scripted"

# The placeholder a rule's reply uses to quote the tool result it was given.
TOOL_RESULT_PLACEHOLDER = "{tool_result}"

# The script the demo runs with: enough for a greeting agent and a fact question.
DEFAULT_SCRIPT: list[dict[str, Any]] = [
    {
        "match": r"hello|hi\b|greet",
        "reply": "Hello! I am a scripted model, happy to help.",
    },
    {
        "match": r"capital of france",
        "reply": "The capital of France is Paris.",
    },
]


# --------------------------------------------------------------------------- script


@dataclass(frozen=True)
class ToolCall:
    """A tool the scripted model asks the agent to run."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """One line of the script: when ``pattern`` matches, answer with ``reply``."""

    pattern: re.Pattern[str]
    reply: str
    delay_seconds: float = 0.0
    tool_call: ToolCall | None = None


@dataclass(frozen=True)
class Reply:
    """What the server sends back for one chat request."""

    text: str
    tool_call: ToolCall | None = None
    delay_seconds: float = 0.0


def parse_rule(raw: Mapping[str, Any], index: int) -> Rule:
    """Turn one JSON rule into a Rule, naming the rule in any error."""
    where = f"rule {index}"
    match = raw.get("match")
    if not isinstance(match, str):
        raise ValueError(f"{where}: 'match' must be a string (a regular expression)")
    try:
        pattern = re.compile(match, re.IGNORECASE)
    except re.error as error:
        raise ValueError(f"{where}: 'match' {match!r} is not a valid regex: {error}") from None

    reply = raw.get("reply")
    if not isinstance(reply, str):
        raise ValueError(f"{where}: 'reply' must be a string")

    delay = raw.get("delaySeconds", 0.0)
    # bool is an int subclass; "delaySeconds": true is a typo, not one second.
    if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
        raise ValueError(f"{where}: 'delaySeconds' must be a non-negative number")

    return Rule(
        pattern=pattern,
        reply=reply,
        delay_seconds=float(delay),
        tool_call=_parse_tool_call(raw.get("toolCall"), where),
    )


def _parse_tool_call(raw: object, where: str) -> ToolCall | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise ValueError(f"{where}: 'toolCall' must be an object with a string 'name'")
    arguments = raw.get("arguments", {})
    if not isinstance(arguments, Mapping):
        raise ValueError(f"{where}: 'toolCall.arguments' must be an object")
    return ToolCall(name=raw["name"], arguments=dict(arguments))


def parse_rules(raw: object) -> list[Rule]:
    """Parse a script: a list of rules, or an object with a ``rules`` list."""
    if isinstance(raw, Mapping):
        raw = raw.get("rules")
    if not isinstance(raw, list):
        raise ValueError("a script must be a list of rules or an object with a 'rules' list")
    rules: list[Rule] = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise ValueError(f"rule {index}: must be an object")
        rules.append(parse_rule(item, index))
    return rules


def load_script(path: str | Path) -> list[Rule]:
    """Read and parse a JSON script file."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    return parse_rules(raw)


def _content_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def last_user_message(messages: Sequence[Mapping[str, Any]]) -> str:
    """The content of the most recent user message, or "" if there is none."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return _content_of(message)
    return ""


def trailing_tool_results(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Contents of the tool messages at the end of the conversation.

    Only the trailing ones count: older tool results belong to earlier turns that
    were already answered.
    """
    results: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.append(_content_of(message))
    return list(reversed(results))


def choose_reply(rules: Sequence[Rule], messages: Sequence[Mapping[str, Any]]) -> Reply:
    """Decide the answer to an Ollama conversation."""
    return reply_for(rules, last_user_message(messages), trailing_tool_results(messages))


def reply_for(rules: Sequence[Rule], question: str, tool_results: Sequence[str]) -> Reply:
    """The heart of the script semantics, shared by every wire format.

    ``question`` is the last thing the user said; ``tool_results`` are the results the
    agent sent back since the model's last turn (empty when it sent none).
    """
    rule = next((r for r in rules if r.pattern.search(question)), None)
    if rule is None:
        return Reply(text=f"I heard: {question}")

    if tool_results:
        # The agent ran the tool the rule asked for; now give the final answer.
        text = rule.reply.replace(TOOL_RESULT_PLACEHOLDER, "\n".join(tool_results))
        return Reply(text=text, delay_seconds=rule.delay_seconds)
    if rule.tool_call is not None:
        return Reply(text="", tool_call=rule.tool_call, delay_seconds=rule.delay_seconds)
    return Reply(text=rule.reply, delay_seconds=rule.delay_seconds)


# --------------------------------------------------------------------------- wire format


def _now() -> str:
    # Ollama reports RFC 3339 timestamps; "Z" keeps them short and unambiguous.
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def split_into_chunks(text: str) -> list[str]:
    """Split a reply into word-sized pieces, the way a model streams tokens."""
    return re.findall(r"\s*\S+\s*", text) or [text]


def _count_words(messages: Sequence[Mapping[str, Any]]) -> int:
    # A stand-in for prompt tokens: deterministic and roughly proportional.
    return sum(len(_content_of(m).split()) for m in messages)


def output_token_count(reply: Reply) -> int:
    """The stand-in for output tokens: one per streamed piece, one for a tool call."""
    return 1 if reply.tool_call is not None else len(split_into_chunks(reply.text))


def assistant_message(content: str, tool_call: ToolCall | None = None) -> dict[str, Any]:
    """An Ollama chat message from the assistant, optionally carrying a tool call."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_call is not None:
        message["tool_calls"] = [
            {"function": {"name": tool_call.name, "arguments": tool_call.arguments}}
        ]
    return message


def final_fields(prompt_words: int, output_chunks: int, elapsed_ns: int) -> dict[str, Any]:
    """The statistics Ollama puts on the last (``done: true``) response.

    strands reads eval counts and total_duration from it, so none may be missing.
    """
    return {
        "done": True,
        "done_reason": "stop",
        "total_duration": elapsed_ns,
        "load_duration": 0,
        "prompt_eval_count": prompt_words,
        "prompt_eval_duration": 0,
        "eval_count": output_chunks,
        "eval_duration": elapsed_ns,
    }


def stream_lines(
    model: str, reply: Reply, prompt_words: int, started_ns: int
) -> Iterator[dict[str, Any]]:
    """The NDJSON objects of a streamed chat answer: pieces, then a done line."""
    pieces = [""] if reply.tool_call is not None else split_into_chunks(reply.text)
    for piece in pieces:
        yield {
            "model": model,
            "created_at": _now(),
            "message": assistant_message(piece, reply.tool_call),
            "done": False,
        }
    yield {
        "model": model,
        "created_at": _now(),
        "message": assistant_message(""),
        **final_fields(prompt_words, len(pieces), time.monotonic_ns() - started_ns),
    }


def whole_response(model: str, reply: Reply, prompt_words: int, started_ns: int) -> dict[str, Any]:
    """A non-streamed chat answer: the full message with the done statistics."""
    return {
        "model": model,
        "created_at": _now(),
        "message": assistant_message(reply.text, reply.tool_call),
        **final_fields(prompt_words, output_token_count(reply), time.monotonic_ns() - started_ns),
    }


def show_response(model_name: str) -> dict[str, Any]:
    """The /api/show answer: enough for ``ollama.Client.show`` and capability checks."""
    return {
        "modelfile": f"FROM {model_name}",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": tags_response(model_name)["models"][0]["details"],
        "model_info": {},
        "capabilities": ["completion", "tools"],
    }


def tags_response(model_name: str) -> dict[str, Any]:
    """The /api/tags listing: the one scripted model, with plausible metadata."""
    digest = hashlib.sha256(model_name.encode()).hexdigest()
    return {
        "models": [
            {
                "name": model_name,
                "model": model_name,
                "modified_at": "2024-01-01T00:00:00Z",
                "size": 0,
                "digest": digest,
                "details": {
                    "parent_model": "",
                    "format": "scripted",
                    "family": "scripted",
                    "families": ["scripted"],
                    "parameter_size": "0B",
                    "quantization_level": "none",
                },
            }
        ]
    }


# --------------------------------------------------------------------------- Bedrock Runtime

# POST /model/{modelId}/converse[-stream]; botocore percent-encodes the model id, ':' and
# '/' included, so it is always a single path segment.
BEDROCK_PATH = re.compile(r"^/model/(?P<model_id>[^/]+)/(?P<operation>converse|converse-stream)$")
EVENT_STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
# The event-stream header value type for a UTF-8 string (types 0-9 are defined).
_STRING_HEADER_TYPE = 7


@dataclass(frozen=True)
class BedrockRequest:
    """One Converse/ConverseStream request as it arrived, for tests to inspect."""

    operation: str  # "converse" or "converse-stream"
    model_id: str  # decoded, as the caller named it
    path: str  # exactly as sent, still percent-encoded
    headers: Mapping[str, str]  # names lower-cased
    body: dict[str, Any]
    raw_body: bytes  # as received, so a test can check the signature over it

    @property
    def authorization(self) -> str:
        return self.headers.get("authorization", "")


def _text_blocks(content: object) -> list[str]:
    if not isinstance(content, list):
        return []
    return [b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of the most recent user message that has any.

    A user message that only carries tool results is the agent talking, not the
    user, so the question is the text before it.
    """
    for message in reversed(messages):
        if message.get("role") == "user":
            texts = _text_blocks(message.get("content"))
            if texts:
                return "\n".join(texts)
    return ""


def _tool_result_text(tool_result: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for block in tool_result.get("content") or []:
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif isinstance(block, dict) and "json" in block:
            parts.append(json.dumps(block["json"]))
    return "\n".join(parts)


def trailing_tool_result_texts(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Texts of the toolResult blocks ending the last message, if the user sent it."""
    if not messages or messages[-1].get("role") != "user":
        return []
    content = messages[-1].get("content")
    results: list[str] = []
    for block in reversed(content if isinstance(content, list) else []):
        if not isinstance(block, dict) or not isinstance(block.get("toolResult"), dict):
            break
        results.append(_tool_result_text(block["toolResult"]))
    return list(reversed(results))


def choose_bedrock_reply(rules: Sequence[Rule], messages: Sequence[Mapping[str, Any]]) -> Reply:
    """Decide the answer to a Bedrock Converse conversation."""
    return reply_for(rules, last_user_text(messages), trailing_tool_result_texts(messages))


def count_bedrock_words(request: Mapping[str, Any]) -> int:
    """The prompt-token stand-in for Converse: words of every text the model is shown."""
    texts = _text_blocks(request.get("system"))
    for message in request.get("messages") or []:
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            continue
        texts.extend(_text_blocks(message["content"]))
        texts.extend(
            _tool_result_text(block["toolResult"])
            for block in message["content"]
            if isinstance(block, dict) and isinstance(block.get("toolResult"), dict)
        )
    return sum(len(text.split()) for text in texts)


def tool_use_id(tool_call: ToolCall, turn: int) -> str:
    """A toolUseId that is the same for the same call at the same point of a conversation."""
    seed = f"{tool_call.name}\0{json.dumps(tool_call.arguments, sort_keys=True)}\0{turn}"
    return "tooluse_" + hashlib.sha256(seed.encode()).hexdigest()[:22]


def bedrock_usage(input_tokens: int, reply: Reply) -> dict[str, int]:
    output_tokens = output_token_count(reply)
    return {
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens,
    }


def converse_response(
    reply: Reply, input_tokens: int, turn: int, started_ns: int
) -> dict[str, Any]:
    """A Converse answer: the whole assistant message, why it stopped, usage and latency."""
    content: list[dict[str, Any]] = []
    if reply.tool_call is not None:
        content.append(
            {
                "toolUse": {
                    "toolUseId": tool_use_id(reply.tool_call, turn),
                    "name": reply.tool_call.name,
                    "input": reply.tool_call.arguments,
                }
            }
        )
    else:
        content.append({"text": reply.text})
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": "tool_use" if reply.tool_call is not None else "end_turn",
        "usage": bedrock_usage(input_tokens, reply),
        "metrics": {"latencyMs": (time.monotonic_ns() - started_ns) // 1_000_000},
    }


def converse_stream_events(
    reply: Reply, input_tokens: int, turn: int, started_ns: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The (event type, payload) pairs of a ConverseStream answer, in Bedrock's order."""
    yield "messageStart", {"role": "assistant"}
    if reply.tool_call is not None:
        tool_use = {"toolUseId": tool_use_id(reply.tool_call, turn), "name": reply.tool_call.name}
        yield "contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": tool_use}}
        # Bedrock streams a tool's input as JSON text, possibly split; one piece is enough.
        arguments = {"toolUse": {"input": json.dumps(reply.tool_call.arguments)}}
        yield "contentBlockDelta", {"contentBlockIndex": 0, "delta": arguments}
        stop_reason = "tool_use"
    else:
        for piece in split_into_chunks(reply.text):
            yield "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}}
        stop_reason = "end_turn"
    yield "contentBlockStop", {"contentBlockIndex": 0}
    yield "messageStop", {"stopReason": stop_reason}
    latency_ms = (time.monotonic_ns() - started_ns) // 1_000_000
    usage = bedrock_usage(input_tokens, reply)
    yield "metadata", {"usage": usage, "metrics": {"latencyMs": latency_ms}}


def _string_header(name: str, value: str) -> bytes:
    name_bytes, value_bytes = name.encode(), value.encode()
    return (
        struct.pack(">B", len(name_bytes))
        + name_bytes
        + struct.pack(">BH", _STRING_HEADER_TYPE, len(value_bytes))
        + value_bytes
    )


def encode_event(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """One AWS event-stream message carrying a JSON event.

    Layout: total length, headers length, CRC32 of those 8 bytes (the prelude), the
    headers, the payload, then a CRC32 of everything before it.
    """
    headers = (
        _string_header(":event-type", event_type)
        + _string_header(":content-type", "application/json")
        + _string_header(":message-type", "event")
    )
    payload_bytes = json.dumps(payload).encode()
    # 12 bytes of prelude (two lengths and their CRC) plus the trailing 4-byte CRC.
    total_length = 12 + len(headers) + len(payload_bytes) + 4
    prelude = struct.pack(">II", total_length, len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + payload_bytes
    return message + struct.pack(">I", zlib.crc32(message))


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so streamed answers can use chunked encoding, as real Ollama does.
    protocol_version = "HTTP/1.1"
    # Like Ollama and Bedrock (TCP_NODELAY), so a small write after the header block is
    # not held back ~40 ms waiting for the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.owner.log_requests:
            sys.stderr.write(f"[modelserver] {self.address_string()} {format % args}\n")

    def do_HEAD(self) -> None:
        if self.path == "/":
            self._send_bytes(HTTPStatus.OK, b"", "text/plain; charset=utf-8")
        else:
            self._send_bytes(HTTPStatus.NOT_FOUND, b"", "text/plain; charset=utf-8")

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path == "/":
            self._send_bytes(HTTPStatus.OK, b"Ollama is running", "text/plain; charset=utf-8")
        elif self.path == "/api/version":
            self._send_json(HTTPStatus.OK, {"version": SERVER_VERSION})
        elif self.path == "/api/tags":
            self._send_json(HTTPStatus.OK, tags_response(owner.model_name))
        else:
            self._send_error(HTTPStatus.NOT_FOUND, f"no route for GET {self.path}")

    def do_POST(self) -> None:
        body = self._read_body()
        path = urlsplit(self.path).path
        bedrock = BEDROCK_PATH.match(path)
        if path not in ("/api/chat", "/api/show") and bedrock is None:
            self._send_error(HTTPStatus.NOT_FOUND, f"no route for POST {self.path}")
            return
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError as error:
            self._send_error(HTTPStatus.BAD_REQUEST, f"invalid JSON: {error}")
            return
        if not isinstance(request, dict):
            self._send_error(HTTPStatus.BAD_REQUEST, "request must be a JSON object")
            return
        if bedrock is not None:
            self._converse(request, body, unquote(bedrock["model_id"]), bedrock["operation"])
        elif path == "/api/show":
            self._send_json(HTTPStatus.OK, show_response(self.server.owner.model_name))
        else:
            self._chat(request)

    def _chat(self, request: dict[str, Any]) -> None:
        owner = self.server.owner
        started_ns = time.monotonic_ns()
        owner.record(request)

        raw_messages = request.get("messages")
        messages = [m for m in raw_messages or [] if isinstance(m, dict)]
        reply = choose_reply(owner.rules, messages)
        # Waiting on the stop event rather than sleeping lets stop() end delayed answers.
        if reply.delay_seconds and owner.stopping.wait(reply.delay_seconds):
            return

        model = str(request.get("model") or owner.model_name)
        prompt_words = _count_words(messages)
        # Ollama streams unless told otherwise, so an absent "stream" means True.
        if request.get("stream", True):
            lines = stream_lines(model, reply, prompt_words, started_ns)
            chunks = (json.dumps(line).encode() + b"\n" for line in lines)
            self._send_chunked(chunks, "application/x-ndjson")
        else:
            self._send_json(HTTPStatus.OK, whole_response(model, reply, prompt_words, started_ns))

    def _converse(
        self, request: dict[str, Any], raw_body: bytes, model_id: str, operation: str
    ) -> None:
        owner = self.server.owner
        started_ns = time.monotonic_ns()
        headers = {name.lower(): value for name, value in self.headers.items()}
        recorded = BedrockRequest(operation, model_id, self.path, headers, request, raw_body)
        owner.record_bedrock(recorded)

        messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
        reply = choose_bedrock_reply(owner.rules, messages)
        if reply.delay_seconds and owner.stopping.wait(reply.delay_seconds):
            return

        input_tokens = count_bedrock_words(request)
        # The conversation's length tells turns apart, so a repeated tool call gets a new id.
        turn = len(messages)
        if operation == "converse":
            answer = converse_response(reply, input_tokens, turn, started_ns)
            self._send_json(HTTPStatus.OK, answer)
        else:
            events = converse_stream_events(reply, input_tokens, turn, started_ns)
            frames = (encode_event(event_type, payload) for event_type, payload in events)
            self._send_chunked(frames, EVENT_STREAM_CONTENT_TYPE)

    def _read_body(self) -> bytes:
        # The body must be consumed even when unused, or keep-alive would desynchronise.
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_bytes(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: HTTPStatus, payload: Mapping[str, Any]) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json; charset=utf-8")

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        # One body for both clients: ollama reads "error"; botocore reads "message" and
        # takes the error code from the x-amzn-ErrorType header.
        body = json.dumps({"error": message, "message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        code = "ValidationException" if status == HTTPStatus.BAD_REQUEST else "NotFoundException"
        self.send_header("x-amzn-ErrorType", code)
        self.end_headers()
        self.wfile.write(body)

    def _send_chunked(self, chunks: Iterator[bytes], content_type: str) -> None:
        """Send each piece as its own HTTP chunk, as soon as it is made, as a model would."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for data in chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up mid-answer (e.g. a test timed out); nothing to clean up.
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    # Handler threads must not keep the process alive or block server_close().
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: ScriptedModelServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)


@dataclass
class ScriptedModelServer:
    """An Ollama- and Bedrock-Runtime-compatible HTTP server that answers from a script.

    ``start()`` returns once the socket is listening, so a client may connect right away.
    """

    rules: list[Rule] = field(default_factory=lambda: parse_rules(DEFAULT_SCRIPT))
    host: str = "127.0.0.1"
    port: int = 0
    model_name: str = DEFAULT_MODEL_NAME
    log_requests: bool = False
    stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _requests: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)
    _bedrock_requests: list[BedrockRequest] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _server: _Server | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_script(
        cls, script: str | Path | Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> ScriptedModelServer:
        """Build a server from a JSON file path or a Python list of rule dicts."""
        rules = load_script(script) if isinstance(script, str | Path) else parse_rules(list(script))
        return cls(rules=rules, **kwargs)

    @property
    def url(self) -> str:
        """Base URL for OllamaModel(host=...), ollama.Client(host=...) or endpoint_url=."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The chat request bodies received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def bedrock_requests(self) -> list[BedrockRequest]:
        """The Converse/ConverseStream requests received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._bedrock_requests)

    def record(self, request: dict[str, Any]) -> None:
        """Called by the handler threads for every chat request."""
        with self._lock:
            self._requests.append(request)

    def record_bedrock(self, request: BedrockRequest) -> None:
        """Called by the handler threads for every Bedrock request."""
        with self._lock:
            self._bedrock_requests.append(request)

    def start(self) -> ScriptedModelServer:
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self.stopping.clear()
        # Binding and listening happen in the constructor, so connections queue from here on.
        self._server = _Server((self.host, self.port), self)
        # A short poll interval makes stop() return quickly; idle polling is cheap.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="scripted-model-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agenttest_dev.modelserver",
        description="Serve a scripted, Ollama-compatible model over HTTP.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--script", help="JSON file of rules; default: the built-in demo script")
    args = parser.parse_args(argv)

    try:
        rules = load_script(args.script) if args.script else parse_rules(DEFAULT_SCRIPT)
    except (OSError, ValueError) as error:
        print(f"cannot load script: {error}", file=sys.stderr)
        return 2

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    server = ScriptedModelServer(rules=rules, host=args.host, port=args.port, log_requests=True)
    server.start()
    # Callers parse this exact line to learn the port, so it is the only stdout output.
    print(f"listening on {server.url}", flush=True)
    try:
        # A timeout keeps the main thread waking up, so signal handlers run promptly.
        while not stop_requested.wait(timeout=1.0):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
