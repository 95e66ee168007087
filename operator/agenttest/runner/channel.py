"""The private channel between the judge and its agent host: one socketpair.

Messages are JSON objects, each framed by a 4-byte big-endian length. Only these
two processes hold the sockets (the judge passes its end to nobody else, and the
agent host gets its end as an inherited descriptor), so nothing else can speak on
it. The judge treats whatever arrives as untrusted data: sizes are bounded, and a
message that is not a JSON object is a protocol error, not a crash.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

MAX_MESSAGE = 8 * 1024 * 1024  # an answer larger than this is refused
_LENGTH = struct.Struct(">I")


class ChannelClosed(Exception):
    """The other side went away (or broke the protocol); ``str()`` says which."""


class ChannelTimeout(Exception):
    """Nothing arrived before the deadline."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        return cls(socket.socket(fileno=fd))

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"message of {len(data)} bytes is over the {MAX_MESSAGE} limit")
        try:
            self.sock.sendall(_LENGTH.pack(len(data)) + data)
        except OSError as error:
            raise ChannelClosed(f"cannot send: {error}") from error

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message; ChannelTimeout when ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        (length,) = _LENGTH.unpack(self._read(_LENGTH.size, deadline))
        if length > MAX_MESSAGE:
            raise ChannelClosed(f"message of {length} bytes is over the {MAX_MESSAGE} limit")
        try:
            message = json.loads(self._read(length, deadline))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ChannelClosed(f"not a JSON message: {error}") from None
        if not isinstance(message, dict):
            raise ChannelClosed("a message is not a JSON object")
        return message

    def _read(self, size: int, deadline: float | None) -> bytes:
        chunks: list[bytes] = []
        remaining = size
        while remaining:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChannelTimeout
                self.sock.settimeout(left)
            else:
                self.sock.settimeout(None)
            try:
                chunk = self.sock.recv(min(remaining, 1 << 20))
            except TimeoutError:
                raise ChannelTimeout from None
            except OSError as error:
                raise ChannelClosed(f"connection lost: {error}") from error
            if not chunk:
                raise ChannelClosed("the agent host closed the channel")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()
