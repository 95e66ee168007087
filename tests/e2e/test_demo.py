"""`make demo` stays true: the demo module takes the sample to Succeeded."""

from __future__ import annotations

import os
import subprocess
import sys


def run_demo(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agenttest_dev.demo"],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_demo_reaches_succeeded() -> None:
    result = run_demo()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "hello-agent: Succeeded - 2/2 cases passed" in result.stdout
    assert "case greets: PASS" in result.stdout
    assert "stopping the control plane" in result.stdout


def test_the_bedrock_sample_runs_the_same_way() -> None:
    result = run_demo(AGENTTEST_DEMO_SAMPLE="bedrock")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "hello-bedrock: Succeeded - 2/2 cases passed" in result.stdout
    assert "through the judge's gateway" in result.stdout
