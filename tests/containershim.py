"""A container's init, as the stand-in node (kubelet.py) and the Fargate player run it.

Without a container runtime, a "container" here is a process group on this host.
What a real runtime guarantees and a process group does not: when the container's
main process ends, everything else in the container ends with it, however it
detached (setsid, double fork), because the whole PID namespace or cgroup goes.
This shim plays that part: it runs the command as its child, is a child subreaper
(orphans of the command's descendants become its children instead of init's),
and when the command exits, kills every process left below it, then ends the
way the command ended. It is non-dumpable, as the container's own processes
would not even be visible from outside.

    python tests/containershim.py COMMAND [ARG...]
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from agenttest.runner.confine import (
    become_subreaper,
    descendants,
    kill_descendants,
    make_non_dumpable,
)

SHIM = Path(__file__).resolve()


def container_command(argv: list[str], environment: dict[str, str]) -> list[str]:
    """The command run under the shim; OSError as exec would raise for a missing program.

    Checked here because the runtimes report a program that cannot start apart from
    one that starts and fails, and the shim itself always starts.
    """
    if shutil.which(argv[0], path=environment.get("PATH")) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    return [sys.executable, str(SHIM), *argv]


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


def main(argv: list[str]) -> int:
    make_non_dumpable()
    become_subreaper()
    # A handler, not SIG_IGN: ignoring would be inherited by the command across exec.
    # The runtime's SIGTERM goes to the whole group; the command decides what it means.
    signal.signal(signal.SIGTERM, lambda *_: None)
    child = subprocess.Popen(argv)
    code = child.wait()
    kill_descendants()
    if code < 0:
        # Die of the same signal, so whoever waits for us sees what the command saw.
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
