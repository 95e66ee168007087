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

A script is a JSON list of rules (or ``{"rules": [...]}``). The first rule whose
``match`` is found (case-insensitive ``re.search``) in the last user message, and whose
``models`` (if given) names the requested model, answers; no rule: "I heard: <question>".

``match`` (required)
    A regular expression.
``reply``
    The text answer; ``{tool_result}`` is replaced by the results of the rule's tool
    calls, newline-joined, in order. Required unless ``structuredOutput`` is given (it
    then defaults to that document as JSON).
``toolCall`` / ``toolCalls``
    ``{"name", "arguments"}`` or a list of them. The model asks for them one per turn,
    in order: the step is the number of tool-call turns since the last user message
    (Ollama: assistant messages with ``tool_calls`` / runs of ``tool`` messages;
    Bedrock: messages with ``toolUse`` / ``toolResult`` blocks; the larger count). Once
    all were asked and answered, the rule gives its reply.
``models``
    A list of model ids (Ollama: the body's ``model``; Bedrock: the path's model id,
    decoded); the rule applies to requests for those models only.
``correct`` + ``wrongReply``
    ``{"k", "n", "seed"}`` (integers, ``0 <= k <= n``, ``n >= 1``): of every n
    consecutive conversations the rule answers, counted per rule and per model id at a
    conversation's first call (one with no trailing tool results), exactly k get
    ``reply`` and the others ``wrongReply``; the positions are
    ``random.Random(seed).sample(range(n), k)``, the same in every block of n, so the
    sequence is the same in every run and process. ``ScriptedModelServer.reset_counters()``
    starts the counts again.
``structuredOutput`` (+ ``structuredOutputTool``)
    A JSON object the model hands over as structured output, after any tool calls: it
    calls the structured-output tool the request offers (see ``structured_output_tool``
    for how it is picked by name) with the object as arguments. strands validates it
    and ends the turn without another model call. When the request asks for JSON text
    instead (Bedrock ``outputConfig``, Ollama ``format``) or offers no such tool, the
    object is the text answer.
``delaySeconds``
    Hold each answer back this long.

Order matters. strands_evals' ``OutputEvaluator`` sends one user message holding the
case's input, the answer under judgement and the rubric (``<Input>...</Input>
<Output>...</Output><Rubric>...</Rubric>``), so an agent rule matching the input or the
answer would answer the judge too; put judge rules, matched on ``<Rubric>`` and the
output, before the agent rules, as ``DEFAULT_SCRIPT`` does.

Standard library only, so it can run in any container that has Python.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import signal
import struct
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

# Reported by /api/version; the suffix makes it obvious in logs that no real Ollama answered.
SERVER_VERSION = "0.0.0-scripted"
DEFAULT_MODEL_NAME = "scripted"

# The placeholder a rule's reply uses to quote the tool results it was given.
TOOL_RESULT_PLACEHOLDER = "{tool_result}"

# strands describes the tool it adds for ``structured_output_model`` as "IMPORTANT: This
# StructuredOutputTool should only be invoked as the last and final tool ...".
STRUCTURED_OUTPUT_TOOL_MARKER = "StructuredOutputTool"

# Only strands_evals' OutputEvaluator prompt carries this tag (compose_test_prompt ends
# every judge prompt with "<Rubric>...</Rubric>"); questions to an agent never do.
JUDGE_PROMPT_MARKER = "<Rubric>"

# The demo's answers, so its judge rule vouches for them and for nothing else.
_DEMO_ANSWERS = (
    r"Hello! I am a scripted model|The capital of France is Paris|The weather in Paris is"
)

# The script the demo runs with: a greeting agent, a fact question, a weather agent with a
# tool, and a judge (OutputEvaluator) that passes those answers and fails any other. The
# judge rules come first because a judge prompt quotes the case's input and answer, which
# the agent rules below would match too.
DEFAULT_SCRIPT: list[dict[str, Any]] = [
    {
        "match": rf"(?s)<Output>\s*(?:{_DEMO_ANSWERS}).*<Rubric>",
        "structuredOutput": {
            "score": 1.0,
            "test_pass": True,
            "reason": "The output is the expected answer and meets the rubric.",
        },
    },
    {
        "match": re.escape(JUDGE_PROMPT_MARKER),
        "structuredOutput": {
            "score": 0.0,
            "test_pass": False,
            "reason": "The output is not one of the answers this scripted judge knows to be right.",
        },
    },
    {
        "match": r"hello|hi\b|greet",
        "reply": "Hello! I am a scripted model, happy to help.",
    },
    {
        "match": r"capital of france",
        "reply": "The capital of France is Paris.",
    },
    {
        "match": r"weather in paris",
        "toolCalls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
        "reply": "The weather in Paris is {tool_result}.",
    },
]


# --------------------------------------------------------------------------- script


@dataclass(frozen=True)
class ToolCall:
    """A tool the scripted model asks the agent to run."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class KOfN:
    """Of every ``n`` consecutive conversations, exactly ``k`` are answered correctly.

    Which ones is fixed by a permutation drawn with ``random.Random(seed)``: the same
    positions in every block of n, so any n consecutive conversations hold exactly k.
    """

    k: int
    n: int
    seed: int

    @cached_property
    def correct_positions(self) -> frozenset[int]:
        return frozenset(random.Random(self.seed).sample(range(self.n), self.k))

    def is_correct(self, conversation: int) -> bool:
        """Whether the conversation with this 0-based count gets the right answer."""
        return conversation % self.n in self.correct_positions


@dataclass(frozen=True)
class Rule:
    """One line of the script: when ``pattern`` matches, answer with ``reply``."""

    pattern: re.Pattern[str]
    reply: str
    delay_seconds: float = 0.0
    tool_calls: tuple[ToolCall, ...] = ()
    # None: every model; otherwise only requests for one of these model ids.
    models: frozenset[str] | None = None
    correct: KOfN | None = None
    wrong_reply: str = ""
    structured_output: dict[str, Any] | None = None
    # None: the tool strands marks as its structured-output tool (see structured_output_tool).
    structured_output_tool: str | None = None

    @property
    def tool_call(self) -> ToolCall | None:
        """The first tool the rule asks for, if any."""
        return self.tool_calls[0] if self.tool_calls else None

    def applies_to(self, question: str, model_id: str) -> bool:
        if self.models is not None and model_id not in self.models:
            return False
        return self.pattern.search(question) is not None


@dataclass(frozen=True)
class Reply:
    """What the server sends back for one chat request."""

    text: str
    tool_call: ToolCall | None = None
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class OfferedTool:
    """A tool the request lets the model call."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class Turn:
    """One request, as the script sees it, whatever the wire format.

    ``step`` counts the model's tool-call turns since ``question`` (the last thing the
    user said); ``tool_results`` are the results of all of them, in order, and
    ``trailing_results`` says whether the request ends with results the agent just sent
    (no trailing results means the request opens a conversation).
    """

    question: str
    model_id: str = ""
    step: int = 0
    tool_results: tuple[str, ...] = ()
    trailing_results: bool = False
    tools: tuple[OfferedTool, ...] = ()
    # The tool the request forces the model to call (Bedrock toolChoice {"tool": ...}).
    forced_tool: str | None = None
    # The request asks for a JSON document as text (Bedrock outputConfig, Ollama "format").
    wants_json: bool = False

    @property
    def opens_conversation(self) -> bool:
        return not self.trailing_results


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

    structured_output = raw.get("structuredOutput")
    if structured_output is not None and not isinstance(structured_output, Mapping):
        raise ValueError(f"{where}: 'structuredOutput' must be an object")
    structured_tool = raw.get("structuredOutputTool")
    if structured_tool is not None and (
        not isinstance(structured_tool, str) or not structured_tool
    ):
        raise ValueError(f"{where}: 'structuredOutputTool' must be a non-empty string")
    if structured_tool is not None and structured_output is None:
        raise ValueError(f"{where}: 'structuredOutputTool' needs 'structuredOutput'")

    # A structured-output rule's text answer is its document, unless it says otherwise.
    reply = raw.get("reply", None if structured_output is None else json.dumps(structured_output))
    if not isinstance(reply, str):
        raise ValueError(f"{where}: 'reply' must be a string")

    delay = raw.get("delaySeconds", 0.0)
    # bool is an int subclass; "delaySeconds": true is a typo, not one second.
    if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
        raise ValueError(f"{where}: 'delaySeconds' must be a non-negative number")

    correct = _parse_k_of_n(raw.get("correct"), where)
    wrong_reply = raw.get("wrongReply")
    if correct is not None and not isinstance(wrong_reply, str):
        raise ValueError(f"{where}: 'correct' needs 'wrongReply', a string")
    if correct is None and wrong_reply is not None:
        raise ValueError(f"{where}: 'wrongReply' needs 'correct'")

    return Rule(
        pattern=pattern,
        reply=reply,
        delay_seconds=float(delay),
        tool_calls=_parse_tool_calls(raw, where),
        models=_parse_models(raw.get("models"), where),
        correct=correct,
        wrong_reply=wrong_reply or "",
        structured_output=None if structured_output is None else dict(structured_output),
        structured_output_tool=structured_tool,
    )


def _parse_tool_calls(raw: Mapping[str, Any], where: str) -> tuple[ToolCall, ...]:
    single, sequence = raw.get("toolCall"), raw.get("toolCalls")
    if single is not None and sequence is not None:
        raise ValueError(f"{where}: give 'toolCall' or 'toolCalls', not both")
    if single is not None:
        return (_parse_tool_call(single, f"{where}: 'toolCall'"),)
    if sequence is None:
        return ()
    if not isinstance(sequence, list) or not sequence:
        raise ValueError(f"{where}: 'toolCalls' must be a non-empty list")
    return tuple(
        _parse_tool_call(item, f"{where}: 'toolCalls[{position}]'")
        for position, item in enumerate(sequence)
    )


def _parse_tool_call(raw: object, where: str) -> ToolCall:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise ValueError(f"{where} must be an object with a string 'name'")
    arguments = raw.get("arguments", {})
    if not isinstance(arguments, Mapping):
        raise ValueError(f"{where}.arguments must be an object")
    return ToolCall(name=raw["name"], arguments=dict(arguments))


def _parse_models(raw: object, where: str) -> frozenset[str] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(model, str) and model for model in raw)
    ):
        raise ValueError(f"{where}: 'models' must be a non-empty list of model ids")
    return frozenset(raw)


def _is_int(value: object) -> bool:
    # bool is an int subclass, and "k": true is a typo.
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_k_of_n(raw: object, where: str) -> KOfN | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: 'correct' must be an object with integers k, n and seed")
    for key in ("k", "n", "seed"):
        if not _is_int(raw.get(key)):
            raise ValueError(f"{where}: 'correct.{key}' must be an integer")
    k, n, seed = raw["k"], raw["n"], raw["seed"]
    if n < 1:
        raise ValueError(f"{where}: 'correct.n' must be at least 1")
    if not 0 <= k <= n:
        raise ValueError(f"{where}: 'correct.k' must be between 0 and n ({n})")
    return KOfN(k=k, n=n, seed=seed)


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


def find_rule(rules: Sequence[Rule], turn: Turn) -> tuple[int, Rule] | None:
    """The first rule that applies to the turn's question and model, with its index."""
    return next(
        (
            (index, rule)
            for index, rule in enumerate(rules)
            if rule.applies_to(turn.question, turn.model_id)
        ),
        None,
    )


def structured_output_tool(rule: Rule, turn: Turn) -> str | None:
    """The name of the tool to call with the rule's structured output, or None for text.

    By name, from the request's tools: the rule's ``structuredOutputTool`` if the request
    offers it; else the tool the request forces (Bedrock ``toolChoice.tool.name``, which
    strands sends on its forced retry); else the first offered tool whose description
    carries strands' "StructuredOutputTool" marker (strands names that tool after the
    output model, e.g. ``EvaluationOutput``). None when the request asks for JSON text
    or offers no such tool: then the document is answered as JSON text.
    """
    if turn.wants_json:
        return None
    offered = {tool.name for tool in turn.tools}
    if rule.structured_output_tool is not None:
        return rule.structured_output_tool if rule.structured_output_tool in offered else None
    if turn.forced_tool is not None:
        return turn.forced_tool
    marked = (tool.name for tool in turn.tools if STRUCTURED_OUTPUT_TOOL_MARKER in tool.description)
    return next(marked, None)


def answer(rule: Rule, turn: Turn, correct: bool = True) -> Reply:
    """What a rule says at this point of a conversation; the heart of the script semantics.

    The rule's tool calls are asked one per turn, in order (``turn.step`` is how many were
    asked so far); then a structured-output rule calls the structured-output tool with its
    document (or answers it as JSON text); then the text reply follows, with the tool
    results quoted. ``correct`` picks ``reply`` or ``wrongReply`` for k-of-n rules.
    """
    delay = rule.delay_seconds
    if turn.step < len(rule.tool_calls):
        return Reply(text="", tool_call=rule.tool_calls[turn.step], delay_seconds=delay)
    if rule.structured_output is not None and turn.step == len(rule.tool_calls):
        tool_name = structured_output_tool(rule, turn)
        if tool_name is None:
            return Reply(text=json.dumps(rule.structured_output), delay_seconds=delay)
        call = ToolCall(name=tool_name, arguments=dict(rule.structured_output))
        return Reply(text="", tool_call=call, delay_seconds=delay)
    template = rule.reply if correct or rule.correct is None else rule.wrong_reply
    text = template.replace(TOOL_RESULT_PLACEHOLDER, "\n".join(turn.tool_results))
    return Reply(text=text, delay_seconds=delay)


def gives_final_answer(rule: Rule, turn: Turn) -> bool:
    """Whether the rule answers with text now (where k-of-n picks reply or wrongReply)."""
    structured = 0 if rule.structured_output is None else 1
    return turn.step >= len(rule.tool_calls) + structured


def reply_for_turn(rules: Sequence[Rule], turn: Turn, correct: bool = True) -> Reply:
    """The answer to a turn: the first applicable rule's, or an echo of the question."""
    found = find_rule(rules, turn)
    if found is None:
        return Reply(text=f"I heard: {turn.question}")
    return answer(found[1], turn, correct)


class Outcomes:
    """The k-of-n counters: which conversations a rule answers correctly.

    Counted per rule and per model id, once per conversation, at its first model call (a
    request with no trailing tool results). A rule with tool calls gives its answer some
    calls later, so the draw waits, first in first out, under the rule, model and
    question; two identical conversations running at once may swap draws, which keeps
    the k of every n exact. A final answer whose first call this server never saw is
    counted then. Thread-safe: the server answers on many threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, str], int] = {}
        self._pending: dict[tuple[int, str, str], deque[bool]] = {}

    def decide(self, index: int, rule: Rule, turn: Turn) -> bool:
        """Whether this turn of a rule with ``correct`` gets the right answer."""
        if rule.correct is None:
            return True
        final = gives_final_answer(rule, turn)
        pending_key = (index, turn.model_id, turn.question)
        with self._lock:
            if turn.opens_conversation:
                correct = self._draw(index, rule.correct, turn.model_id)
                if not final:
                    self._pending.setdefault(pending_key, deque()).append(correct)
                return correct
            if not final:
                return True  # a middle step: nothing to decide yet
            waiting = self._pending.get(pending_key)
            if not waiting:
                return self._draw(index, rule.correct, turn.model_id)
            correct = waiting.popleft()
            if not waiting:
                del self._pending[pending_key]
            return correct

    def _draw(self, index: int, k_of_n: KOfN, model_id: str) -> bool:
        key = (index, model_id)
        count = self._counts.get(key, 0)
        self._counts[key] = count + 1
        return k_of_n.is_correct(count)

    def count(self, index: int, model_id: str) -> int:
        """How many conversations of rule ``index`` for ``model_id`` were counted."""
        with self._lock:
            return self._counts.get((index, model_id), 0)

    def reset(self) -> None:
        """Start every count from zero again."""
        with self._lock:
            self._counts.clear()
            self._pending.clear()


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


def _since_last_user(messages: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    for position in range(len(messages) - 1, -1, -1):
        if messages[position].get("role") == "user":
            return messages[position + 1 :]
    return messages


def ollama_turn(
    messages: Sequence[Mapping[str, Any]], request: Mapping[str, Any] | None = None
) -> Turn:
    """Read a turn from Ollama chat messages (and the request's model and tools).

    Since the last user message, an assistant message with ``tool_calls`` is a tool-call
    turn and a run of ``tool`` messages is a result turn; the step is the larger count,
    so a hand-made conversation that only carries results still counts.
    """
    request = request or {}
    since = _since_last_user(messages)
    calls = sum(1 for m in since if m.get("role") == "assistant" and m.get("tool_calls"))
    result_turns = sum(
        1
        for position, m in enumerate(since)
        if m.get("role") == "tool" and (position == 0 or since[position - 1].get("role") != "tool")
    )
    tools: list[OfferedTool] = []
    for offered in request.get("tools") or []:
        function = offered.get("function") if isinstance(offered, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            tools.append(OfferedTool(function["name"], str(function.get("description") or "")))
    return Turn(
        question=last_user_message(messages),
        model_id=str(request.get("model") or ""),
        step=max(calls, result_turns),
        tool_results=tuple(_content_of(m) for m in since if m.get("role") == "tool"),
        trailing_results=bool(messages) and messages[-1].get("role") == "tool",
        tools=tuple(tools),
        wants_json=bool(request.get("format")),
    )


def choose_reply(
    rules: Sequence[Rule],
    messages: Sequence[Mapping[str, Any]],
    request: Mapping[str, Any] | None = None,
) -> Reply:
    """Decide the answer to an Ollama conversation (k-of-n rules answer correctly)."""
    return reply_for_turn(rules, ollama_turn(messages, request))


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


def _tool_uses(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(block, dict) and isinstance(block.get("toolUse"), dict) for block in content
    )


def _tool_result_blocks(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list):
        return []
    return [
        block["toolResult"]
        for block in content
        if isinstance(block, dict) and isinstance(block.get("toolResult"), dict)
    ]


def bedrock_turn(
    messages: Sequence[Mapping[str, Any]],
    request: Mapping[str, Any] | None = None,
    model_id: str = "",
) -> Turn:
    """Read a turn from Converse messages (and the request's tools, tool choice and output).

    Since the last user message with text, an assistant message with ``toolUse`` blocks
    is a tool-call turn and a user message with ``toolResult`` blocks a result turn; the
    step is the larger count, so a hand-made conversation that only carries results
    still counts.
    """
    request = request or {}
    question_at = -1
    for position in range(len(messages) - 1, -1, -1):
        message = messages[position]
        if message.get("role") == "user" and _text_blocks(message.get("content")):
            question_at = position
            break
    since = messages[question_at + 1 :]
    calls = sum(1 for m in since if m.get("role") == "assistant" and _tool_uses(m))
    result_turns = sum(1 for m in since if _tool_result_blocks(m))
    tool_config = request.get("toolConfig")
    tool_config = tool_config if isinstance(tool_config, Mapping) else {}
    tools: list[OfferedTool] = []
    for offered in tool_config.get("tools") or []:
        spec = offered.get("toolSpec") if isinstance(offered, Mapping) else None
        if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
            tools.append(OfferedTool(spec["name"], str(spec.get("description") or "")))
    choice = tool_config.get("toolChoice")
    forced = choice.get("tool") if isinstance(choice, Mapping) else None
    output_config = request.get("outputConfig")
    return Turn(
        question=last_user_text(messages),
        model_id=model_id,
        step=max(calls, result_turns),
        tool_results=tuple(
            _tool_result_text(result) for m in since for result in _tool_result_blocks(m)
        ),
        trailing_results=bool(trailing_tool_result_texts(messages)),
        tools=tuple(tools),
        forced_tool=(
            forced["name"]
            if isinstance(forced, Mapping) and isinstance(forced.get("name"), str)
            else None
        ),
        wants_json=isinstance(output_config, Mapping) and "textFormat" in output_config,
    )


def choose_bedrock_reply(
    rules: Sequence[Rule],
    messages: Sequence[Mapping[str, Any]],
    request: Mapping[str, Any] | None = None,
    model_id: str = "",
) -> Reply:
    """Decide the answer to a Bedrock Converse conversation (k-of-n rules answer correctly)."""
    return reply_for_turn(rules, bedrock_turn(messages, request, model_id))


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


# The access key id in a SigV4 Authorization header.
_SIGV4_CREDENTIAL = re.compile(r"Credential=(?P<key_id>[^/,\s]+)/")


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

    def _refused(self) -> bool:
        """Answer 401/403 (and True) when the server's credential requirement is not met."""
        owner = self.server.owner
        for name, value in owner.required_headers.items():
            if self.headers.get(name) != value:
                self._send_error(HTTPStatus.UNAUTHORIZED, f"missing or wrong {name} header")
                return True
        if owner.required_access_key_id and BEDROCK_PATH.match(urlsplit(self.path).path):
            credential = _SIGV4_CREDENTIAL.search(self.headers.get("Authorization", ""))
            if credential is None or credential["key_id"] != owner.required_access_key_id:
                self._send_error(HTTPStatus.FORBIDDEN, "not signed with the expected access key")
                return True
        return False

    def do_GET(self) -> None:
        owner = self.server.owner
        if self._refused():
            return
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
        if self._refused():
            return
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
        reply = owner.reply(ollama_turn(messages, request))
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
        reply = owner.reply(bedrock_turn(messages, request, model_id))
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
        code = {
            HTTPStatus.BAD_REQUEST: "ValidationException",
            HTTPStatus.UNAUTHORIZED: "AccessDeniedException",
            HTTPStatus.FORBIDDEN: "AccessDeniedException",
        }.get(status, "NotFoundException")
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
    # Like a model behind an authenticating proxy: every request must carry these
    # headers (else 401), and Bedrock calls must be SigV4-signed with this access key
    # id (else 403; the signature itself is not checked).
    required_headers: Mapping[str, str] = field(default_factory=dict)
    required_access_key_id: str = ""
    stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _requests: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)
    _bedrock_requests: list[BedrockRequest] = field(default_factory=list, init=False, repr=False)
    outcomes: Outcomes = field(default_factory=Outcomes, init=False, repr=False)
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

    def reply(self, turn: Turn) -> Reply:
        """Answer a turn from the script, drawing k-of-n outcomes from this server's counts."""
        found = find_rule(self.rules, turn)
        if found is None:
            return reply_for_turn((), turn)
        index, rule = found
        return answer(rule, turn, self.outcomes.decide(index, rule, turn))

    def reset_counters(self) -> None:
        """Start the k-of-n counts from zero, as a freshly started server would."""
        self.outcomes.reset()

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
