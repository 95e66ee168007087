"""What an execution's output may look like wherever the operator writes it.

Everything an execution produced (log lines, its answers, the judge's failure
texts and reasons, messages built from them) passes through here before it
reaches status, an Event or a package: credentials masked, terminal escapes
and invisible control characters removed, and every string cut to a bound, so
that neither a leaked token nor a 600 KB exception message gets written.
`status` applies it to a whole AgentTestStatus at the one place statuses are
written (handlers), so a new field cannot slip past it unnoticed.

Pure functions, no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from agenttest.models import AgentTestStatus, CaseResult, Condition

REDACTED = "[REDACTED]"

# CSI, OSC and two-byte ESC sequences (colours, titles, cursor movement).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
# C0 except tab and newline, DEL, C1, and the characters that reorder or hide
# text when shown (bidirectional overrides and isolates, marks, zero widths).
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)

# Names that hold a credential: DB_PASSWORD, GITHUB_TOKEN, apiKey, SecretAccessKey...
_SECRET_NAME = (
    r"[A-Za-z0-9_.-]*"
    r"(?:secret|passw(?:or)?d|passwd|token(?!s)|api[_-]?key|access[_-]?key|credential"
    r"|private[_-]?key)"
    r"[A-Za-z0-9_.-]*"
)
_ASSIGNED = re.compile(
    # NAME=value, NAME: value, "Name": "value", 'name': 'value'
    r"(?i)(?P<name>[\"']?\b" + _SECRET_NAME + r"[\"']?)(?P<sep>\s*[=:]\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&}\]]+)"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # AWS access key ids
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
    # Authorization: Bearer/Basic <token>, anywhere in a line
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1\2" + REDACTED),
    # user:password@ in URLs
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^/\s@]+@"), r"\1:" + REDACTED + "@"),
)


def _mask_assignment(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('name')}{match.group('sep')}{quote}{REDACTED}{quote}"


def redact(text: str) -> str:
    """Mask anything that looks like a credential."""
    text = _ASSIGNED.sub(_mask_assignment, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def strip_controls(text: str) -> str:
    """No terminal escapes and no invisible or reordering characters; tabs and newlines stay."""
    return _INVISIBLE.sub("", _ANSI.sub("", text))


def clean(text: str) -> str:
    return redact(strip_controls(text))


def cut(text: str, limit: int) -> str:
    """At most `limit` UTF-8 bytes, saying how much was cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    note = f"… [{len(data) - limit} more bytes cut]"
    keep = max(0, limit - len(note.encode()))
    return data[:keep].decode(errors="ignore") + note


def shown(text: str, limit: int) -> str:
    """Cleaned, then cut. (Cut first and a secret split at the edge could leak half of itself.)"""
    return cut(clean(text), limit)


def newest(text: str, limit: int) -> str:
    """The end of a log within `limit` UTF-8 bytes: whole lines where there is more than one."""
    data = text.encode()
    if len(data) <= limit:
        return text
    kept = data[-limit:].decode(errors="ignore")
    newline = kept.find("\n")
    return kept[newline + 1 :] if 0 <= newline < len(kept) - 1 else kept


# Bounds on what one status holds. A test has at most 50 cases; their share
# is divided among them, so the worst status stays far below etcd's 1.5 MiB.
MESSAGE_BYTES = 2048
EVENT_BYTES = 1024  # the API server refuses an Event whose note is longer
SUMMARY_BYTES = 1024
LOG_LINE_BYTES = 4096
CASES_BYTES = 256 * 1024
FAILURES_PER_CASE = 10
TOOL_CALLS_PER_CASE = 50
NAME_BYTES = 256


def case(result: CaseResult, budget: int) -> CaseResult:
    """One case within about `budget` bytes: a third for the answer, the rest for failures,
    tools and the judge's reasoning; with many cases, fewer of each are kept."""
    failures_kept = min(FAILURES_PER_CASE, max(3, budget // 256))
    tools_kept = min(TOOL_CALLS_PER_CASE, max(5, budget // 128))
    per_failure = max(96, budget // 4 // failures_kept)
    per_tool = max(24, budget // 8 // tools_kept)
    failures = [shown(text, per_failure) for text in result.failures[:failures_kept]]
    if len(result.failures) > failures_kept:
        failures.append(f"… and {len(result.failures) - failures_kept} more failures")
    judge = result.judge
    if judge is not None:
        # The judge model's reasoning may quote the answer, secrets and all.
        judge = judge.model_copy(update={"reason": shown(judge.reason, max(96, budget // 8))})
    tools = [cut(strip_controls(name), per_tool) for name in result.tool_calls[:tools_kept]]
    if len(result.tool_calls) > tools_kept:
        tools.append(f"… {len(result.tool_calls) - tools_kept} more")
    return result.model_copy(
        update={
            "name": cut(strip_controls(result.name), NAME_BYTES),
            "model": cut(strip_controls(result.model), NAME_BYTES) if result.model else None,
            "judge": judge,
            "output": shown(result.output, max(128, budget // 3)),
            "failures": failures,
            "tool_calls": tools,
        }
    )


def _condition(condition: Condition) -> Condition:
    return condition.model_copy(update={"message": shown(condition.message, MESSAGE_BYTES)})


def status(written: AgentTestStatus, log_tail_bytes: int = 8192) -> AgentTestStatus:
    """The status as it may be written: every string that can carry output, clean and bounded."""
    budget = CASES_BYTES // max(1, len(written.cases))
    message, summary, tail = written.message, written.summary, written.log_tail
    return written.model_copy(
        update={
            "message": shown(message, MESSAGE_BYTES) if message else message,
            "summary": shown(summary, SUMMARY_BYTES) if summary else summary,
            "log_tail": newest(clean(tail), log_tail_bytes) if tail else tail,
            "cases": [case(result, budget) for result in written.cases],
            "conditions": [_condition(condition) for condition in written.conditions],
        }
    )


# One string of a stored report (an answer, a reason): the judge already bounds the
# report as a whole (runner/reports.py), this only keeps one string from being absurd.
REPORT_STRING_BYTES = 256 * 1024


def document(value: Any) -> Any:
    """A JSON value with every string in it (keys too) cleaned and bounded."""
    if isinstance(value, str):
        return shown(value, REPORT_STRING_BYTES)
    if isinstance(value, dict):
        return {document(str(key)): document(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [document(item) for item in value]
    return value
