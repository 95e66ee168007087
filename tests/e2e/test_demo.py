"""`make demo` stays true: the demo module takes the sample to Succeeded."""

from __future__ import annotations

import subprocess
import sys


def test_demo_reaches_succeeded() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agenttest.demo"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "hello-agent: Succeeded - 2/2 cases passed" in result.stdout
    assert "case greets: PASS" in result.stdout
    assert "stopping the control plane" in result.stdout
