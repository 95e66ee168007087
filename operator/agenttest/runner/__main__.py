"""``python -m agenttest.runner``: run the harness, always ending with a result line."""

from __future__ import annotations

import sys

from agenttest.runner.protocol import Emitter, failed_setup


def _run() -> int:
    # Answers may hold any Unicode; a C-locale container must not crash printing them.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        # Imported here so a broken test image (e.g. strands missing) still gets a result.
        from agenttest.runner.harness import main
    except ImportError as error:
        out = Emitter(sys.stdout)
        reason = f"the test image cannot run the harness: {error}"
        out.log(reason)
        out.result(failed_setup(reason, total_cases=0))
        return 1
    return main()


if __name__ == "__main__":
    sys.exit(_run())
