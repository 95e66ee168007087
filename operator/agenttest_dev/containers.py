"""What both stand-ins (the node and the Fargate player) do to run a "container".

Without a container runtime, a container here is a process: in a new session
and process group, under the container's init (`containershim`), with an
environment built from nothing (none of this process's own variables), its
output read line by line. This module holds that once: the image table (an
image is its ENTRYPOINT, CMD and ENV), the spawn, the output capture and the
signals, SIGKILL ending the whole tree however it detached.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from agenttest.runner.confine import descendants

SHIM = Path(__file__).resolve().with_name("containershim.py")

# The docker default PATH, after this interpreter's own bin directory (the
# runner image's Python comes first on its PATH, too).
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Image:
    """What the stand-ins know of a container image: its ENTRYPOINT, CMD and ENV."""

    entrypoint: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()


# The runner image's ENTRYPOINT is `python -m agenttest.runner`; here, this
# interpreter, which has agenttest installed.
RUNNER_IMAGE = Image(
    entrypoint=(sys.executable, "-m", "agenttest.runner"),
    # runner.Dockerfile's ENV (HOME and TMPDIR are the container's own directories).
    environment=(
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PIP_NO_CACHE_DIR", "1"),
        ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
    ),
)
RUNNER_REPOSITORY = "agenttest/runner"

T = TypeVar("T")


def repository_of(image: str) -> str:
    """``host:5000/a/b:tag`` or ``a/b@sha256:...`` -> ``a/b`` (``library/`` dropped)."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    if name.rfind(":") > last_slash:
        name = name[: name.rfind(":")]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        name = rest
    return name.removeprefix("library/")


def find_image(reference: str, images: Mapping[str, T]) -> T | None:
    """The table's entry for an image: the full reference first, then its repository."""
    if reference in images:
        return images[reference]
    repository = repository_of(reference)
    return next((v for k, v in images.items() if repository_of(k) == repository), None)


def container_path() -> str:
    """PATH inside a container: this interpreter's bin directory, then docker's default."""
    return f"{Path(sys.executable).parent}:{CONTAINER_PATH}"


def container_command(argv: list[str], environment: dict[str, str]) -> list[str]:
    """The command run under the shim; OSError as exec would raise for a missing program.

    Checked here because the runtimes report a program that cannot start apart from
    one that starts and fails, and the shim itself always starts. The shim runs by
    its path: it needs nothing of the development kit on the container's path.
    """
    if shutil.which(argv[0], path=environment.get("PATH")) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    return [sys.executable, str(SHIM), *argv]


def spawn(
    argv: list[str], environment: dict[str, str], cwd: Path, *, merge_stderr: bool
) -> subprocess.Popen[bytes]:
    """Start a container's process under the shim: own session and group, only `environment`.

    A kubelet's container log is stdout and stderr in one stream (`merge_stderr`);
    the awslogs driver reads both pipes.
    """
    return subprocess.Popen(
        container_command(argv, environment),
        env=environment,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        start_new_session=True,
    )


def capture(stream: IO[bytes], on_line: Callable[[bytes], None], name: str) -> threading.Thread:
    """A daemon thread handing each raw line (newline kept) to `on_line` until EOF."""

    def read() -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                on_line(raw)

    thread = threading.Thread(target=read, name=name, daemon=True)
    thread.start()
    return thread


def kill_tree(pid: int) -> None:
    """SIGKILL a shim and everything below it: the container is gone at once.

    The shim is stopped first, so that it cannot notice its children dying and do
    anything about it in the moment before it dies too.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGSTOP)
    for _ in range(10):
        found = descendants(pid)
        for child in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        if not found:
            break
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """SIGTERM the container's group; SIGKILL ends it whole, detached processes included."""
    if sig == signal.SIGKILL:
        kill_tree(pgid)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
