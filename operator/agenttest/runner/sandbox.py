"""``python -m agenttest.runner.sandbox PROGRAM [ARG...]``: drop privileges, then exec.

For untrusted programs the judge runs that are not the agent host (pip, which runs
the build scripts of the agent's requirements): they start with no capabilities
and can never gain any, exactly like the agent host.
"""

from __future__ import annotations

import os
import sys

from agenttest.runner.confine import drop_privileges

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m agenttest.runner.sandbox PROGRAM [ARG...]")
    drop_privileges()
    os.execv(sys.argv[1], sys.argv[1:])
