"""What execution output looks like once the operator writes it anywhere."""

from __future__ import annotations

import json

import pytest

from agenttest import redaction
from agenttest.models import AgentTestStatus, CaseResult, Phase


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("NAME_TOKEN=ghp_abcdefgh123", "ghp_abcdefgh123"),
        ("export DB_PASSWORD=hunter2", "hunter2"),
        ('{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG"}', "wJalrXUtnFEMI/K7MDENG"),
        ("aws_secret_access_key = 'abc/def'", "abc/def"),
        ("curl -H 'Authorization: Bearer eyJhbGciOiJIUzI1'", "eyJhbGciOiJIUzI1"),
        ("sent bearer abcdefgh12345678 to the model", "abcdefgh12345678"),
        ("connecting to https://alice:s3cr3t@db.internal/x", "s3cr3t"),
        ("key AKIAIOSFODNN7EXAMPLE in use", "AKIAIOSFODNN7EXAMPLE"),
        ("apiKey: sk-live-1234", "sk-live-1234"),
    ],
)
def test_credentials_are_masked_wherever_they_appear(line: str, secret: str) -> None:
    shown = redaction.clean(line)
    assert secret not in shown
    assert redaction.REDACTED in shown


def test_ordinary_words_near_the_names_survive() -> None:
    assert redaction.clean("tokens: in=10 out=20") == "tokens: in=10 out=20"
    assert redaction.clean("https://example.com/path") == "https://example.com/path"


def test_escapes_and_invisible_characters_are_removed_newlines_and_tabs_kept() -> None:
    text = "\x1b[31mred\x1b[0m \x9b31m c1 \u202eevil\u202c \u200bzero\ttab\nnext\x07"
    assert redaction.clean(text) == "red 31m c1 evil zero\ttab\nnext"


def test_cutting_says_how_much_was_cut_and_never_splits_a_character() -> None:
    text = "é" * 1000
    cut = redaction.cut(text, 101)
    assert len(cut.encode()) <= 101
    assert cut.endswith("more bytes cut]")
    assert redaction.cut("short", 101) == "short"


def test_a_status_with_huge_execution_output_stays_small() -> None:
    huge = "Traceback: " + "x" * 600_000
    cases = [
        CaseResult(name=f"c{i}", passed=False, output=huge, failures=[huge] * 30,
                   tool_calls=["t" * 1000] * 500)
        for i in range(50)
    ]  # fmt: skip
    status = AgentTestStatus(
        phase=Phase.FAILED, message=huge, summary=huge, log_tail=huge, cases=cases
    )
    written = redaction.status(status, log_tail_bytes=8192)
    size = len(written.model_dump_json().encode())
    assert size < 400 * 1024
    assert written.message is not None and written.message.startswith("Traceback: xxx")
    assert len(written.cases[0].failures) == redaction.FAILURES_PER_CASE + 1


def test_a_status_is_redacted_in_every_field_that_shows_output() -> None:
    leak = "DB_PASSWORD=hunter2"
    status = AgentTestStatus(
        phase=Phase.FAILED,
        message=leak,
        summary=leak,
        log_tail=leak,
        cases=[CaseResult(name="c", passed=False, output=leak, failures=[leak])],
    )
    assert "hunter2" not in redaction.status(status).model_dump_json()


def test_the_largest_test_keeps_its_status_well_inside_etcd() -> None:
    """50 cases x 5 models, every string at its longest: under 512 KiB (etcd takes 1.5 MiB)."""
    from agenttest.models import Interval, JudgeScore, TokenUsage

    cases = [
        CaseResult(
            name=f"case-{i:02d}-" + "x" * 50,
            passed=False,
            latency_seconds=1.5,
            output="é" * 2000,
            failures=["f" * 1000 + f" ({k} of 20 trials)" for k in range(12)],
            model_calls=40,
            tokens=TokenUsage(input=10**9, output=10**9),
            tool_calls=["t" * 64] * 100,
            model=f"model-{m}-" + "z" * 10,
            trials=20,
            passes=13,
            pass_rate=0.65,
            interval=Interval(low=0.4, high=0.8),
            flaky=True,
            judge=JudgeScore(score=0.5, reason="r" * 2000),
        )
        for i in range(50)
        for m in range(5)
    ]
    written = redaction.status(AgentTestStatus(cases=cases, log_tail="l" * 8192))
    size = len(json.dumps(written.wire(), ensure_ascii=False).encode())
    assert size < 512 * 1024, size
    # Still readable: each case keeps an excerpt of its answer, failures and judge.
    first = written.cases[0]
    assert first.output.startswith("éé") and first.failures[0].startswith("fff")
    assert first.judge is not None and first.judge.reason.startswith("rrr")
