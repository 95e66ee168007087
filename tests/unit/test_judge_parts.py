"""The judge's parts on their own: signed lines, the relay, the channel, confinement."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agenttest.runner import confine, requirements
from agenttest.runner.channel import MAX_MESSAGE, Channel, ChannelClosed, ChannelTimeout
from agenttest.runner.protocol import (
    MACHINE_PREFIX,
    CaseOutcome,
    Emitter,
    ForgedLine,
    ResultEvent,
    RunResult,
    signed_line,
    verify_line,
)
from agenttest.runner.relay import LINE_LIMIT, Budget, Relay, safe_text

KEY = b"k" * 32

# --------------------------------------------------------------------------- signed lines


def test_a_signed_line_verifies_only_under_its_key_and_in_sequence() -> None:
    line = signed_line(KEY, 7, {"event": "phase", "phase": "Running"})
    assert line.startswith(MACHINE_PREFIX + "7 ")
    assert verify_line(KEY, line, after_seq=6) == (7, {"event": "phase", "phase": "Running"})
    with pytest.raises(ForgedLine, match="bad signature"):
        verify_line(b"other", line, after_seq=0)
    with pytest.raises(ForgedLine, match="replayed"):
        verify_line(KEY, line, after_seq=7)
    with pytest.raises(ForgedLine, match="bad signature"):
        verify_line(KEY, line.replace("Running", "Building"), after_seq=0)
    with pytest.raises(ForgedLine, match="no sequence number"):
        verify_line(KEY, MACHINE_PREFIX + '{"event":"result","passed":true}', after_seq=0)


def test_the_emitter_numbers_and_signs_every_machine_line_and_keeps_the_result_last() -> None:
    stream = io.StringIO()
    out = Emitter(stream, KEY)
    out.phase("Building")
    out.log("hello")
    out.relay("::agenttest:: 99 forged")
    out.machine({"event": "phase", "phase": "Running"})
    lines = stream.getvalue().splitlines()
    assert lines[1] == "[agenttest] hello"
    assert lines[2] == "[agent] ::agenttest:: 99 forged"
    seq, _ = verify_line(KEY, lines[0], 0)
    assert verify_line(KEY, lines[3], seq)[0] == 2


# --------------------------------------------------------------------------- the relay


def test_safe_text_escapes_everything_that_could_split_or_repaint_a_line() -> None:
    assert safe_text(b"a\rb\x1b[2Jc\x00d") == "a\\x0db\\x1b[2Jc\\x00d"
    assert safe_text("x\u2028y\u202ez\x85".encode()) == "x\\u2028y\\u202ez\\x85"
    assert safe_text(b"bad \xff\xfe utf8\r") == "bad \ufffd\ufffd utf8"
    assert safe_text("tab\tand ünïcode".encode()) == "tab\tand ünïcode"


def relay_all(data: bytes, budget: Budget | None = None) -> list[str]:
    lines: list[str] = []
    read_end, write_end = os.pipe()
    reader = os.fdopen(read_end, "rb")
    relay = Relay(reader, lines.append, budget or Budget(), "test").start()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as writer:
            writer.write(data)

    threading.Thread(target=feed).start()
    relay.join(timeout=10)
    return lines


def test_a_line_of_any_length_is_relayed_in_pieces_and_nothing_is_lost() -> None:
    huge = b"x" * (LINE_LIMIT * 10 + 5)
    lines = relay_all(huge + b"\nafter\n")
    assert all(len(line) <= LINE_LIMIT for line in lines)
    assert "".join(lines[:-1]) == huge.decode()
    assert lines[-1] == "after"


def test_a_flood_stops_at_the_budget_and_is_counted() -> None:
    budget = Budget(limit=1000)
    lines = relay_all(b"0123456789\n" * 500, budget)
    assert len(lines) == 1000 // 11
    assert budget.dropped == 500 * 11 - len(lines) * 11


def test_a_partial_line_is_relayed_on_flush() -> None:
    lines: list[str] = []
    read_end, write_end = os.pipe()
    relay = Relay(os.fdopen(read_end, "rb"), lines.append, Budget(), "t").start()
    os.write(write_end, b"streamed answer without newline")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not lines:
        relay.flush()
        time.sleep(0.01)
    os.close(write_end)
    relay.join(timeout=5)
    assert lines == ["streamed answer without newline"]


# --------------------------------------------------------------------------- the channel


def test_the_channel_refuses_what_is_not_a_bounded_json_object() -> None:
    mine, theirs = socket.socketpair()
    channel = Channel(mine)
    theirs.sendall((4).to_bytes(4, "big") + b"[1] ")
    with pytest.raises(ChannelClosed, match="not a JSON object"):
        channel.receive(timeout=5)
    theirs.sendall((MAX_MESSAGE + 1).to_bytes(4, "big"))
    with pytest.raises(ChannelClosed, match="over the"):
        channel.receive(timeout=5)
    with pytest.raises(ChannelTimeout):
        channel.receive(timeout=0.05)
    theirs.close()
    with pytest.raises(ChannelClosed, match="closed the channel"):
        channel.receive(timeout=5)


# --------------------------------------------------------------------------- confinement

DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        os._exit(0)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # let the caller's pipe close
    time.sleep(60)
    os._exit(0)
os.wait()
"""


def test_a_subreaper_ends_a_daemon_that_double_forked_out_of_its_session() -> None:
    script = (
        "import subprocess, sys\n"
        "from agenttest.runner.confine import become_subreaper, kill_descendants\n"
        "assert become_subreaper()\n"
        f"out = subprocess.run([sys.executable, '-c', {DAEMON!r}], stdout=subprocess.PIPE)\n"
        "print(out.stdout.decode().strip(), flush=True)\n"
        "sys.stdin.readline()\n"
        "print(kill_descendants(), flush=True)\n"
    )
    judge = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert judge.stdin is not None and judge.stdout is not None
    daemon = int(judge.stdout.readline())
    # Re-parented to the subreaper, not to init, although it left the session.
    assert confine._proc_table()[daemon][0] == judge.pid
    judge.stdin.write("\n")
    judge.stdin.flush()
    assert int(judge.stdout.readline()) == 1
    judge.wait(timeout=10)
    assert daemon not in confine._proc_table()


def test_a_non_dumpable_process_keeps_its_environment_from_a_process_without_capabilities() -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from agenttest.runner.confine import make_non_dumpable\n"
            "assert make_non_dumpable()\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n",
        ],
        env={**os.environ, "SECRET_FOR_TEST": "s3cr3t"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        reader = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\n"
                "from agenttest.runner.confine import drop_privileges\n"
                "drop_privileges()\n"
                "for entry in ('environ', 'mem', 'fd/1'):\n"
                "    try:\n"
                f"        open('/proc/{holder.pid}/' + entry, 'rb').read(1)\n"
                "        print('READ', entry)\n"
                "    except OSError as error:\n"
                "        print('DENIED', entry, type(error).__name__)\n",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert reader.stdout.split("\n")[:3] == [
            "DENIED environ PermissionError",
            "DENIED mem PermissionError",
            "DENIED fd/1 PermissionError",
        ], reader.stdout + reader.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_a_result_line_of_fifty_long_answers_stays_one_line_for_every_log_pipeline() -> None:
    cases = tuple(
        CaseOutcome(f"case-{n}", False, 1.0, "é" * 5000, tuple("x" * 2000 for _ in range(5)))
        for n in range(50)
    )
    result = RunResult(passed=False, reason="r" * 5000, total_cases=50, cases=cases)
    line = signed_line(KEY, 1, result.to_json())
    assert len(line.encode()) < 256 * 1024
    _, event = verify_line(KEY, line, 0)
    assert len(event["cases"]) == 50
    assert all(len(case["failures"]) == 5 for case in event["cases"])


def test_the_result_event_reads_back_what_the_judge_writes_and_nothing_else() -> None:
    digest = "ab" * 32
    written = RunResult(
        True,
        "",
        1,
        (CaseOutcome("a", True, 0.5, "hello"),),
        source_sha256=digest,
        environment=("strands-agents==1.2.3", "tinydep==1.0"),
    ).to_json()
    read = ResultEvent.parse(written)
    assert (read.passed, read.summary, read.cases[0]["name"]) == (True, "1/1 cases passed", "a")
    assert read.source_sha256 == digest
    assert read.environment == ("strands-agents==1.2.3", "tinydep==1.0")
    for broken, field in (
        ({**written, "passed": "yes"}, "passed"),
        ({**written, "cases": [42]}, "cases"),
        ({**written, "event": "phase"}, "not a result"),
        ({**written, "sourceSha256": "abc"}, "sourceSha256"),
        # Each entry becomes a requirements.txt line: name==version and nothing else.
        ({**written, "environment": ["ok==1", "x==1\n--index-url=http://e"]}, "environment"),
        ({**written, "environment": ["x @ https://e/x.whl"]}, "environment"),
        ({**written, "environment": [f"p{n}==1" for n in range(401)]}, "environment"),
    ):
        with pytest.raises(ValueError, match=field):
            ResultEvent.parse(broken)


def _dist_info(site: Path, name: str, metadata_text: str) -> Path:
    info = site / f"{name}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(metadata_text)
    return info


def test_the_environment_listing_reads_untrusted_metadata_without_following_anything(
    tmp_path: Path,
) -> None:
    # What pip's build scripts (untrusted code) could leave in the requirements directory.
    site = tmp_path / "site"
    secret = tmp_path / "judge-only"
    secret.write_text("Name: leaked\nVersion: 1.0\n")
    _dist_info(site, "good-1.0", "Metadata-Version: 2.1\nName: good\nVersion: 1.0\n\nName: x\n")
    _dist_info(site, "two-lines-1.0", "Name: two\nVersion: 1.0\\n--index-url=http://e\n")
    _dist_info(site, "spaced-1.0", "Name: spaced name\nVersion: 1.0\n")
    linked = site / "linked-1.0.dist-info"
    linked.mkdir()
    (linked / "METADATA").symlink_to(secret)
    (site / "dirlink-1.0.dist-info").symlink_to(secret.parent / "elsewhere.dist-info")
    _dist_info(tmp_path, "elsewhere", "Name: elsewhere\nVersion: 1.0\n")
    fifo = site / "fifo-1.0.dist-info"
    fifo.mkdir()
    os.mkfifo(fifo / "METADATA")  # opening it for reading would block the judge
    # The same name on the runner's path: the agent host imports the requirement's first.
    runner = tmp_path / "runner"
    _dist_info(runner, "good-0.9", "Name: good\nVersion: 0.9\n")
    _dist_info(runner, "pip-24.0", "Name: pip\nVersion: 24.0\n")
    _dist_info(runner, "agenttest_operator-0.1.0", "Name: agenttest-operator\nVersion: 0.1.0\n")
    _dist_info(runner, "Strands_Agents-1.2.3", "Name: Strands_Agents\nVersion: 1.2.3\n")

    assert requirements.environment(site, [str(runner)]) == ["good==1.0", "Strands_Agents==1.2.3"]
