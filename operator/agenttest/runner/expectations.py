"""Pure checks of an answer against a case's expectation.

Every failure is a sentence a person can act on, naming the expectation that failed,
because these strings are shown as-is in the AgentTest status.
"""

from __future__ import annotations

import json
import re

from agenttest.runner.config import Expectation


def _normalise(text: str, case_sensitive: bool) -> str:
    # casefold, not lower: it also equates e.g. German "ß" and "ss".
    return text if case_sensitive else text.casefold()


def check_contains(answer: str, needles: tuple[str, ...], case_sensitive: bool) -> list[str]:
    haystack = _normalise(answer, case_sensitive)
    return [
        f"contains {_quote(needle)}: not found in answer"
        for needle in needles
        if _normalise(needle, case_sensitive) not in haystack
    ]


def check_not_contains(answer: str, needles: tuple[str, ...], case_sensitive: bool) -> list[str]:
    haystack = _normalise(answer, case_sensitive)
    return [
        f"notContains {_quote(needle)}: found in answer"
        for needle in needles
        if _normalise(needle, case_sensitive) in haystack
    ]


def check_regex(answer: str, pattern: str | None) -> list[str]:
    """The regex is used exactly as written; authors can add (?i) themselves."""
    if pattern is None:
        return []
    try:
        matched = re.search(pattern, answer) is not None
    except re.error as error:
        return [f"regex {_quote_regex(pattern)}: invalid regex: {error}"]
    return [] if matched else [f"regex {_quote_regex(pattern)}: no match in answer"]


def check_latency(latency_seconds: float, limit_seconds: float | None) -> list[str]:
    if limit_seconds is None or latency_seconds <= limit_seconds:
        return []
    return [f"maxLatencySeconds {limit_seconds}: took {latency_seconds:.2f}s"]


def check_answer(answer: str, latency_seconds: float, expect: Expectation) -> list[str]:
    """All failed expectations for one answer, in a stable order; [] means the case passed."""
    return [
        *check_contains(answer, expect.contains, expect.case_sensitive),
        *check_not_contains(answer, expect.not_contains, expect.case_sensitive),
        *check_regex(answer, expect.regex),
        *check_latency(latency_seconds, expect.max_latency_seconds),
    ]


def _quote(text: str) -> str:
    # JSON quoting keeps quotes and newlines inside the needle unambiguous on one line.
    return json.dumps(text, ensure_ascii=False)


def _quote_regex(pattern: str) -> str:
    # Backslashes are the regex's own syntax; JSON-escaping them would double every one.
    return '"' + pattern.replace("\n", "\\n") + '"'
