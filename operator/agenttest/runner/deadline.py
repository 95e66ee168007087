"""``python -m agenttest.runner --deadline SECONDS ...``: the judge under a timer it cannot lose.

The judge keeps its own deadline (judge.Deadline), but the judge shares its user
with the agent host, and a process can stop or kill any process of its own user
(non-dumpable closes /proc, not kill(2)): an agent that SIGSTOPs its judge stops
that deadline with it. This process is the backstop. It starts the judge as its
child, waits, and at SECONDS SIGKILLs the judge and everything below it, then
exits with EXIT_TIMED_OUT, which the operator reads as TimedOut.

Where it runs decides what the agent can do to it. On Fargate it is the task's
PID 1: the image's ENTRYPOINT is ``python -m agenttest.runner`` and the backend's
container override adds ``--deadline`` (RunTask cannot override an ENTRYPOINT,
only add arguments). The kernel delivers no signal to a PID namespace's init
from inside the namespace unless init handles it, and SIGKILL and SIGSTOP cannot
be handled, so the agent can neither stop nor kill this process; the only
signals it handles are SIGTERM (passed on to the judge: a stop ends the run
sooner, never later) and SIGINT (ignored). Nothing outlives it either: it is
the subreaper of every orphan below it, and when PID 1 exits the kernel kills
everything left in the namespace. A coreutils ``timeout`` as PID 1 would need
an ENTRYPOINT override, which RunTask does not offer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from agenttest.runner.confine import become_subreaper, kill_descendants, make_non_dumpable
from agenttest.runner.protocol import EXIT_TIMED_OUT, RUN_KEY_ENV

DEADLINE_FLAG = "--deadline"
# Past the run's timeout, time for the judge to end on its own clock (stop the
# agent host, print its signed result) and for startup before its clock began.
MARGIN_SECONDS = 15.0
# After a SIGTERM (StopTask), how long the judge gets before it is killed.
STOP_GRACE_SECONDS = 10.0
# How often the wait wakes to look at the clock (and run a SIGTERM's handler).
WAKE_SECONDS = 0.5


def backstop_seconds(timeout_seconds: float) -> float:
    """The deadline nothing inside the execution can switch off, for a run's timeout."""
    return timeout_seconds + MARGIN_SECONDS


def exit_status(code: int) -> int:
    """A Popen return code as a shell reports it (killed by signal N -> 128 + N)."""
    return 128 - code if code < 0 else code


def run_judge(seconds: float, judge_args: Sequence[str]) -> int:
    """Run ``python -m agenttest.runner JUDGE_ARGS`` and end it at ``seconds`` at the latest."""
    make_non_dumpable()
    become_subreaper()
    # The key goes to the judge alone (the judge drops it before the agent host starts).
    environment = dict(os.environ)
    os.environ.pop(RUN_KEY_ENV, None)
    ends_at = time.monotonic() + seconds
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal ends_at, stopping
        stopping = True
        judge.send_signal(signal.SIGTERM)
        ends_at = min(ends_at, time.monotonic() + STOP_GRACE_SECONDS)

    # Handlers, not SIG_IGN: an ignored signal stays ignored in the judge across exec.
    signal.signal(signal.SIGINT, lambda *_: None)
    judge = subprocess.Popen(
        [sys.executable, "-m", "agenttest.runner", *judge_args], env=environment
    )
    signal.signal(signal.SIGTERM, stop)
    while True:
        remaining = ends_at - time.monotonic()
        if remaining <= 0:
            break
        try:
            code = judge.wait(timeout=min(WAKE_SECONDS, remaining))
        except subprocess.TimeoutExpired:
            continue
        kill_descendants()  # whatever the judge left behind
        return exit_status(code)
    judge.kill()
    kill_descendants()
    judge.wait()
    if stopping:
        return exit_status(-signal.SIGKILL)
    print(
        f"agenttest: the run outlived its {seconds:g}s deadline; the judge and everything "
        "it started were killed",
        flush=True,
    )
    return EXIT_TIMED_OUT


def main(argv: Sequence[str]) -> int:
    """``argv`` is ``--deadline SECONDS [JUDGE ARG...]``."""
    try:
        seconds = float(argv[1])
    except (IndexError, ValueError):
        print(f"usage: python -m agenttest.runner {DEADLINE_FLAG} SECONDS [ARG...]", flush=True)
        return 2
    return run_judge(seconds, argv[2:])
