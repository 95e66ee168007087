"""Installing the agent's requirements, as untrusted code, before the agent host starts.

pip runs the build scripts of whatever it installs, so it runs fenced in like the
agent host: a scrubbed environment, no capabilities, its own session, killed whole
when it outlives the deadline.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from agenttest.runner.confine import spawn

PIP_ERROR_LINES = 3  # how much of pip's output makes it into the reason


class InstallFailed(Exception):
    """``reason`` is the readable one-liner for the status."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _project_name(requirement: str) -> str:
    # "Foo-Bar[x]>=1 ; python_version>'3'" -> "foo-bar": enough to spot it in pip's output.
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return match.group(1).lower() if match else requirement.strip().lower()


def blamed_requirements(requirements: Sequence[str], pip_output: str) -> list[str]:
    """The requirements pip's output mentions; all of them when it names none."""
    lowered = pip_output.lower()
    named = [r for r in requirements if _project_name(r) in lowered]
    return named or list(requirements)


def pip_error_summary(output: str, count: int = PIP_ERROR_LINES) -> str:
    """pip's last few ERROR lines (or last lines), joined to fit on one line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return " | ".join((errors or lines)[-count:])


def install_requirements(
    requirements: Sequence[str], site_dir: Path, home: Path, timeout: float
) -> None:
    """pip-install into ``site_dir`` (the agent host puts it first on sys.path).

    --target keeps the image's own site-packages untouched, so a bad requirement
    cannot break strands itself for the rest of the run.
    """
    options = [r for r in requirements if r.lstrip().startswith("-")]
    if options:
        # Requirements come from the CRD; pip options there could redirect indexes.
        raise InstallFailed(
            f"requirement install failed: {options[0]!r} is a pip option, not a requirement"
        )
    command = [
        sys.executable, "-m", "agenttest.runner.sandbox",
        sys.executable, "-m", "pip", "install",
        "--disable-pip-version-check", "--no-input", "--quiet",
        "--target", str(site_dir),
        *requirements,
    ]  # fmt: skip
    process = spawn(command, home, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as error:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        # The builtin type lets callers handle it without knowing pip runs in a subprocess.
        raise TimeoutError(f"pip install did not finish within {timeout:.0f}s") from error
    if process.returncode != 0:
        text = output.decode("utf-8", errors="replace").strip()
        blamed = ", ".join(blamed_requirements(requirements, text))
        details = pip_error_summary(text) or f"pip exited with {process.returncode}"
        raise InstallFailed(f"requirement install failed: {blamed}: {details}")
