"""Fencing the agent host in: what the judge does to itself and to its children.

The threat is the code under test (and its requirements' build scripts): it runs in
processes the judge starts, and must not reach the judge's key, write the judge's
output, or outlive its run.

* The judge makes itself non-dumpable (PR_SET_DUMPABLE 0): /proc/<judge>/environ,
  /mem and /fd are then closed to every process without CAP_SYS_PTRACE, including
  ones of the same user.
* It becomes a child subreaper (PR_SET_CHILD_SUBREAPER): a process that double-forks
  or calls setsid is re-parented to the judge instead of to init, so the judge can
  find and kill every process its agent host started.
* Untrusted children run as the judge's user, in their own session, with a scrubbed
  environment, with no new privileges and no capabilities. Without CAP_SYS_PTRACE they
  cannot read a non-dumpable process's /proc entries; and without a superset of a
  process's capabilities they cannot read its /proc entries at all (the kernel's
  commoncap check), so even a judge running as root is closed to an agent host
  running as root. Files are another matter: a root agent host can still read root's
  files. The runner image runs as an unprivileged user, so in a pod or a Fargate task
  that is the container's own filesystem; the local backend is for development only.

Linux only, through libc's prctl and capset; elsewhere each step reports that it
could not be done, and the judge says so in its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def _prctl(option: int, value: int) -> bool:
    if _LIBC is None:
        return False
    return int(_LIBC.prctl(option, value, 0, 0, 0)) == 0


def make_non_dumpable() -> bool:
    """Close /proc/<self>/{environ,mem,fd} to processes of the same user."""
    return _prctl(PR_SET_DUMPABLE, 0)


def become_subreaper() -> bool:
    """Orphans of our descendants become our children rather than init's."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_privileges() -> None:
    """For an untrusted process, as its first act: no capabilities, never any new ones.

    Harmless when there is nothing to drop (an unprivileged user already has none).
    """
    if _LIBC is None:
        return
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = 40
    for cap in range(last + 1):
        _prctl(PR_CAPBSET_DROP, cap)  # fails without CAP_SETPCAP: then it was empty anyway
    _LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _LIBC.capset(ctypes.byref(header), ctypes.byref(data))


def scrubbed_environment(home: Path) -> dict[str, str]:
    """All an agent host (or pip) gets: no operator, cloud or Kubernetes variables."""
    return {
        "PATH": f"{Path(sys.executable).parent}:{SAFE_PATH}",
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }


def spawn(
    argv: list[str], home: Path, stderr: int, pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start untrusted code: scrubbed environment, its own directory and session.

    Its output is a pipe for the judge to relay; it drops its own capabilities as its
    first act (agenthost.py, sandbox.py), since only code running in it can.
    """
    return subprocess.Popen(
        argv,
        cwd=home,
        env=scrubbed_environment(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        pass_fds=pass_fds,
        start_new_session=True,
    )


# --------------------------------------------------------------------------- ending a run


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) for every process we can see."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as file:
                text = file.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def children(root: int | None = None) -> set[int]:
    """The direct children of ``root`` (default: us)."""
    root = os.getpid() if root is None else root
    return {pid for pid, (ppid, _) in _proc_table().items() if ppid == root}


def descendants(root: int, spare: frozenset[int] = frozenset()) -> list[int]:
    """Every live process below ``root``, leaving out the subtrees of ``spare``."""
    table = _proc_table()
    below: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        below.setdefault(ppid, []).append(pid)
    found: list[int] = []
    pending = [pid for pid in below.get(root, []) if pid not in spare]
    while pending:
        pid = pending.pop()
        if table[pid][1] not in ("Z", "X"):
            found.append(pid)
        pending.extend(below.get(pid, []))
    return found


def reap(pids: set[int]) -> None:
    """Collect the exit statuses of these children (killed orphans), so none stays a zombie."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def kill_descendants(spare: frozenset[int] = frozenset(), rounds: int = 50) -> int:
    """SIGKILL every process below us, but the subtrees of ``spare``, until none is left.

    ``spare`` holds the children we had before the run (when the judge runs inside
    another program, as in tests): they are not the agent's. Repeated because a
    process may fork between our look and our kill; SIGKILL leaves nothing to fork
    with, so a few rounds empty even a fork loop. Returns how many were killed.
    """
    me = os.getpid()
    killed = 0
    for _ in range(rounds):
        found = descendants(me, spare)
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.01)
        reap(children(me) - spare)
    reap(children(me) - spare)
    return killed
