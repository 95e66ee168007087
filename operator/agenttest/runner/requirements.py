"""Installing the agent's requirements, as untrusted code, before the agent host starts.

pip runs the build scripts of whatever it installs, so it runs fenced in like the
agent host: a scrubbed environment, no capabilities, its own session, killed whole
when it outlives the deadline.

Then the judge lists what the agent host will import from (`environment`): the
installed requirements first, as the agent host's sys.path has them, then the
runner's own environment. The list goes into the signed result and from there into
the deployment package's requirements.txt, so the package pins what the run had.
The requirements directory was written by untrusted build scripts, so it is read
without following links or opening anything but regular files, only two header
fields are taken from each METADATA, and anything that is not a plain
name==version is left out.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

from agenttest.runner.confine import spawn
from agenttest.runner.protocol import ENVIRONMENT_ENTRY_LIMIT, PIN

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


# Not part of what the agent needs: pip is the installer, agenttest-operator the
# harness itself (the judge and agent host), never installed where the agent deploys.
NOT_PINNED = frozenset({"pip", "agenttest-operator"})
METADATA_READ_LIMIT = 64 * 1024  # the headers come first; nobody needs more
SCAN_LIMIT = 10_000  # directory entries looked at in the requirements directory


def normalize(name: str) -> str:
    """PEP 503 normalization: how pip compares distribution names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pin(name: str | None, version: str | None) -> str | None:
    """``name==version`` when both are plain enough to write into requirements.txt."""
    text = f"{name}=={version}"
    return (
        text
        if name and version and len(text) <= ENVIRONMENT_ENTRY_LIMIT and PIN.match(text)
        else None
    )


def _headers(text: str) -> tuple[str | None, str | None]:
    name = version = None
    for line in text.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line; the description follows
        key, _, value = line.partition(":")
        if key == "Name" and name is None:
            name = value.strip()
        elif key == "Version" and version is None:
            version = value.strip()
    return name, version


def _read_regular(directory_fd: int, name: str) -> str | None:
    """A regular file in the directory, never through a link; None for anything else."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags, dir_fd=directory_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # a FIFO or a device would block or never end
        return os.read(fd, METADATA_READ_LIMIT).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


@contextlib.contextmanager
def _opened_directory(path: str | Path, directory_fd: int | None = None) -> Iterator[int | None]:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, dir_fd=directory_fd)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def untrusted_distributions(site: Path) -> list[str]:
    """name==version of each ``*.dist-info`` in a directory untrusted code wrote."""
    found: list[str] = []
    with _opened_directory(site) as site_fd:
        if site_fd is None:
            return found
        # scandir, not listdir: a directory of millions of entries is not read whole.
        with os.scandir(site_fd) as entries:
            names = [entry.name for entry in itertools.islice(entries, SCAN_LIMIT)]
        for name in names:
            if not name.endswith(".dist-info"):
                continue
            with _opened_directory(name, site_fd) as info_fd:
                text = None if info_fd is None else _read_regular(info_fd, "METADATA")
            if text is not None:
                pinned = pin(*_headers(text))
                if pinned is not None:
                    found.append(pinned)
    return found


def runner_distributions(path: Sequence[str]) -> list[str]:
    """name==version of each distribution on ``path``, the runner's own (trusted) files."""
    found: list[str] = []
    for distribution in metadata.distributions(path=[entry for entry in path if entry]):
        try:
            pinned = pin(distribution.metadata["Name"], distribution.version)
        except Exception:  # a broken METADATA must not fail every run; it is left out
            continue
        if pinned is not None:
            found.append(pinned)
    return found


def environment(site: Path | None, path: Sequence[str] | None = None) -> list[str]:
    """What the agent host imports from, as pins, sorted; the first of a name wins.

    ``site`` (the installed requirements) comes first on the agent host's sys.path,
    then ``path`` (default: the judge's own sys.path, which the agent host inherits
    from the same interpreter).
    """
    listed = (untrusted_distributions(site) if site is not None else []) + runner_distributions(
        sys.path if path is None else path
    )
    chosen: dict[str, str] = {}
    for entry in listed:
        name = normalize(entry.partition("==")[0])
        if name not in NOT_PINNED:
            chosen.setdefault(name, entry)
    return [chosen[name] for name in sorted(chosen)]
