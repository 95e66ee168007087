from __future__ import annotations

from agenttest import logtail


def test_tail_keeps_the_newest_whole_lines_within_the_limit() -> None:
    lines = [f"line {i:04d}" for i in range(2000)]
    tail = logtail.append("", lines, limit=8192)
    assert len(tail.encode()) <= 8192
    assert tail.endswith("line 1999")
    assert tail.splitlines()[0].startswith("line ")  # no cut line at the top


def test_tail_grows_across_reads() -> None:
    tail = logtail.append("", ["a", "b"], limit=100)
    assert logtail.append(tail, ["c"], limit=100) == "a\nb\nc"


def test_ansi_and_control_characters_are_stripped() -> None:
    assert logtail.clean_line("\x1b[31mred\x1b[0m done\x07\r") == "red done"


def test_secrets_are_masked() -> None:
    cleaned = logtail.clean_line(
        "key AKIAABCDEFGHIJKLMNOP aws_secret_access_key=abc/def password: 'hunter2' ok"
    )
    assert "AKIAABCDEFGHIJKLMNOP" not in cleaned
    assert "abc/def" not in cleaned and "hunter2" not in cleaned
    assert cleaned.endswith(" ok")
    assert (
        logtail.clean_line("Authorization: Bearer eyJhbGci") == "Authorization: Bearer [REDACTED]"
    )


def test_a_single_huge_line_is_cut_not_dropped() -> None:
    tail = logtail.append("", ["x" * 20000], limit=8192)
    assert tail == "x" * 8192


def test_follow_extracts_phase_and_result_and_hides_machine_lines() -> None:
    progress = logtail.Progress("exec-1")
    progress = logtail.follow(
        progress,
        [
            '::agenttest:: {"event":"phase","phase":"Running"}',
            "[agenttest] case a: PASS",
        ],
        limit=8192,
        cursor="10",
    )
    assert progress.harness_phase == "Running"
    assert progress.tail == "[agenttest] case a: PASS"
    progress = logtail.follow(
        progress,
        [
            '::agenttest:: {"event":"result","passed":true,"cases":[]}',
        ],
        limit=8192,
        cursor="20",
    )
    assert progress.result == {"event": "result", "passed": True, "cases": []}
    assert progress.cursor == "20"
    assert progress.last_line == "[agenttest] case a: PASS"


def test_malformed_machine_lines_are_ignored() -> None:
    assert logtail.parse_machine_line("::agenttest:: {not json") is None
    assert logtail.parse_machine_line("::agenttest:: [1]") is None
    assert logtail.parse_machine_line("plain") is None
