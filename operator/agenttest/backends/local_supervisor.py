"""Runs the judge for the local backend and records how it ended.

Started by the local backend as the leader of a new session, so it outlives
an operator restart. It writes the runner's exit code into the record
directory (the operator may no longer be its parent to collect it) and
removes the runner's work directory afterwards.

It is also the run's backstop: the judge keeps its own deadline, but an agent
that stops its judge (SIGSTOP) stops that deadline with it. At the run's
timeout plus a margin (runner/deadline.py) the supervisor kills the judge and
everything below it and records EXIT_TIMED_OUT, which the operator reads as
TimedOut, whether or not an operator is still there to stop the run. The agent
runs as this process's user, so it could signal the supervisor too: the local
backend runs untrusted code with the operator's own rights, and is for
development only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from agenttest.runner.confine import become_subreaper, kill_descendants, make_non_dumpable
from agenttest.runner.protocol import EXIT_TIMED_OUT, RUN_KEY_ENV


def supervise(record: Path, deadline: float | None = None) -> int:
    """Run the judge; at ``deadline`` seconds (if given) kill it and record a time-out."""
    # The judge's key is in our environment: close /proc/<self> to the agent host,
    # and pass the key on to the judge alone.
    make_non_dumpable()
    # Whatever the judge's children leave behind (the judge itself killed) is ours
    # to end, as the kernel ends a container's processes with its init.
    become_subreaper()
    run_key = os.environ.pop(RUN_KEY_ENV, "")
    work = record / "work"
    work.mkdir(exist_ok=True)
    # A SIGTERM sent to the process group reaches the runner too; outliving
    # it for a moment lets this process record the exit code.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with (record / "output.log").open("ab", buffering=0) as output:
        runner = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agenttest.runner",
                "--config",
                str(record / "config.json"),
                "--workdir",
                str(work),
            ],
            cwd=work,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, RUN_KEY_ENV: run_key},
        )
        try:
            code = runner.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            runner.kill()
            kill_descendants()
            runner.wait()
            output.write(
                f"agenttest: the run outlived its {deadline:g}s deadline; the judge and "
                "everything it started were killed\n".encode()
            )
            code = EXIT_TIMED_OUT
    kill_descendants()
    partial = record / "exit_code.partial"
    partial.write_text(str(code))
    partial.replace(record / "exit_code")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m agenttest.backends.local_supervisor RECORD_DIR [DEADLINE]")
    os.umask(0o077)
    sys.exit(supervise(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) == 3 else None))
