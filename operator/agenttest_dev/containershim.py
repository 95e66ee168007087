"""A container's init, as the stand-in node (`node`) and the Fargate player (`fargate`) run it.

Without a container runtime, a "container" here is a process group on this host.
What a real runtime guarantees and a process group does not: when the container's
main process ends, everything else in the container ends with it, however it
detached (setsid, double fork), because the whole PID namespace or cgroup goes.
This shim plays that part: it runs the command as its child, is a child subreaper
(orphans of the command's descendants become its children instead of init's),
and when the command exits, kills every process left below it, then ends the
way the command ended. It is non-dumpable, as the container's own processes
would not even be visible from outside.

    python operator/agenttest_dev/containershim.py COMMAND [ARG...]

Run by its path, not with -m (see `containers.container_command`), and so
importing nothing of the development kit: only the runner's confinement.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from agenttest.runner.confine import become_subreaper, kill_descendants, make_non_dumpable


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
