"""``python -m agenttest.runner``: the judge, always ending with a signed result line.

``python -m agenttest.runner --deadline SECONDS ...`` runs the judge under deadline.py.
"""

from __future__ import annotations

import os
import secrets
import sys

from agenttest.runner.confine import become_subreaper, make_non_dumpable
from agenttest.runner.deadline import DEADLINE_FLAG
from agenttest.runner.deadline import main as run_under_deadline
from agenttest.runner.protocol import RUN_KEY_ENV, Emitter, failed_setup, parse_run_key


def _run() -> int:
    # First of all: nothing of the same user may read our key from /proc, and every
    # process our children leave behind becomes ours to end.
    make_non_dumpable()
    become_subreaper()
    if sys.argv[1:2] == [DEADLINE_FLAG]:
        # The judge as the child of a timer it cannot switch off (see deadline.py).
        return run_under_deadline(sys.argv[1:])
    # Answers may hold any Unicode; a C-locale container must not crash printing them.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        # Imported here so a broken test image still gets a result.
        from agenttest.runner.judge import main
    except ImportError as error:
        key = os.environ.pop(RUN_KEY_ENV, "")
        out = Emitter(sys.stdout, parse_run_key(key) if key else secrets.token_bytes(32))
        reason = f"the test image cannot run the judge: {error}"
        out.log(reason)
        out.result(failed_setup(reason, total_cases=0))
        return 1
    return main()


if __name__ == "__main__":
    sys.exit(_run())
