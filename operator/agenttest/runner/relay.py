"""Relaying what the agent host prints into the judge's log, made harmless.

The agent host's stdout and stderr are pipes the judge reads. Every line comes out
as one line of the judge's output behind AGENT_PREFIX, so nothing the agent or its
model prints can begin a line (and so can never look like a machine line). On the
way, the bytes become readable text:

* invalid UTF-8 is replaced, and control characters (escape sequences, carriage
  returns, C1 controls, Unicode line and paragraph separators, bidirectional
  overrides) are shown as ``\\xNN`` / ``\\uNNNN`` escapes, so no log reader splits
  or repaints a line;
* a line longer than LINE_LIMIT is cut into several relayed lines;
* after BUDGET_BYTES of agent output the rest is counted, not relayed, so a flood
  cannot bury the judge's own lines or the operator's reader.
"""

from __future__ import annotations

import fcntl
import re
import sys
import termios
import threading
import time
from collections.abc import Callable
from typing import IO

LINE_LIMIT = 4096  # characters of one relayed line
BUDGET_BYTES = 1024 * 1024  # agent output relayed per run; the rest is dropped
READ_SIZE = 64 * 1024

# C0 (but tab), DEL, C1, line/paragraph separators, bidi embeddings/overrides/isolates.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(data: bytes) -> str:
    """Bytes of one line as text that is safe to print on one line."""
    text = data.decode("utf-8", errors="replace")
    return _UNSAFE.sub(_escape, text.removesuffix("\r"))


def split_long(text: str, limit: int = LINE_LIMIT) -> list[str]:
    return [text[i : i + limit] for i in range(0, len(text), limit)] or [""]


class Relay:
    """Reads one stream in a thread and hands safe lines to ``emit``.

    Two relays (stdout, stderr) share one budget, kept under ``lock``.
    """

    def __init__(
        self,
        stream: IO[bytes],
        emit: Callable[[str], None],
        budget: Budget,
        name: str,
        redact: Callable[[bytes], bytes] | None = None,
        hold: int = 0,
    ) -> None:
        self._stream = stream
        self._emit = emit
        # Masks secrets (the models' credentials) in what was read, before any cut, so
        # no cut splits one unmasked; ``hold`` is the longest one's length: that much of
        # a line with no end in sight stays pending, in case a secret is arriving.
        self._redact = redact or (lambda data: data)
        self._hold = hold
        self._budget = budget
        self._pending = b""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"relay-{name}", daemon=True)

    def start(self) -> Relay:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def flush(self, drain_seconds: float = 0.2) -> None:
        """Relay what was printed so far now, a started line included.

        First lets the reader take what is already in the pipe (briefly: the
        agent may still be printing), so that an answer streamed to stdout shows
        before the judge's verdict on it rather than after.
        """
        deadline = time.monotonic() + drain_seconds
        while _waiting_bytes(self._stream) and time.monotonic() < deadline:
            time.sleep(0.002)
        with self._lock:
            pending, self._pending = self._pending, b""
            if pending:
                self._line(pending)

    def _run(self) -> None:
        while True:
            try:
                # read1: whatever is there now, so lines reach the log as they are printed.
                chunk = self._stream.read1(READ_SIZE)  # type: ignore[attr-defined]
            except (OSError, ValueError):
                break  # the stream was closed under us: the run is over
            if not chunk:
                break
            with self._lock:
                *lines, self._pending = (self._pending + chunk).split(b"\n")
                for line in lines:
                    self._line(line)
                # A line with no end in sight is relayed in pieces, not held forever.
                while len(self._pending) >= LINE_LIMIT * 4 + self._hold:
                    self._pending = self._redact(self._pending)
                    if len(self._pending) < LINE_LIMIT * 4 + self._hold:
                        break
                    self._line(self._pending[: LINE_LIMIT * 4])
                    self._pending = self._pending[LINE_LIMIT * 4 :]
        self.flush()

    def _line(self, data: bytes) -> None:
        if not self._budget.take(len(data) + 1):
            return
        for piece in split_long(safe_text(self._redact(data))):
            self._emit(piece)


def _waiting_bytes(stream: IO[bytes]) -> int:
    """Bytes in the pipe not read yet (0 when it cannot tell)."""
    try:
        answer = fcntl.ioctl(stream.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int.from_bytes(answer, sys.byteorder)


class Budget:
    """Bytes of agent output still to relay; what is over is counted."""

    def __init__(self, limit: int = BUDGET_BYTES) -> None:
        self._left = limit
        self.dropped = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if size <= self._left:
                self._left -= size
                return True
            self._left = 0
            self.dropped += size
            return False
