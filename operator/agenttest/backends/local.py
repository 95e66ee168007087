"""The local backend: the runner as a process on the operator's own host.

For development and the demo only: it runs untrusted agent code with the
operator's privileges, so the operator starts it only when told to.

Each execution is a record directory named after its ExecutionKey, holding
the runner config, its output, the supervisor's pid and, at the end, the
exit code. The supervisor (`local_supervisor`) leads its own session and
process group, so it survives an operator restart, and stopping it kills
the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from agenttest.executions import (
    ExecutionKey,
    ExecutionState,
    Launched,
    LaunchRequest,
    LogChunk,
    Observation,
)
from agenttest.models import Backend
from agenttest.runner.confine import descendants
from agenttest.runner.deadline import backstop_seconds
from agenttest.runner.protocol import MODEL_CREDENTIALS_ENV, RUN_KEY_ENV

logger = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
OWNER_FILE = "owner.json"  # the AgentTest an execution belongs to, for the sweeper
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a live, non-zombie process (guards against pid reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def split_lines(data: bytes) -> list[str]:
    """Lines split at newlines only: a stray carriage return or form feed splits nothing."""
    if not data:
        return []
    text = data.decode("utf-8", errors="replace")
    return text.removesuffix("\n").split("\n")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left counts as gone: nothing of the test runs any more.
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


class LocalExecutor:
    kind = Backend.LOCAL
    log_grace_seconds = 0.0  # the output file is complete when the exit code is

    def __init__(
        self, state_dir: str | Path, pass_env: tuple[str, ...] = (), stop_grace: float = 5.0
    ) -> None:
        self.state_dir = Path(state_dir)
        self.pass_env = pass_env
        self.stop_grace = stop_grace
        # Our own children, so that finished ones are reaped, not left as zombies.
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        logger.warning(
            "The local backend is ENABLED: AgentTests with backend 'local' run untrusted "
            "agent code as processes on this host (%s). Use it for development only.",
            os.uname().nodename,
        )

    def _record(self, execution_id: str) -> Path:
        if "/" in execution_id or execution_id.startswith("."):
            raise ValueError(f"invalid local execution id {execution_id!r}")
        return self.state_dir / execution_id

    def _environment(self, record: Path, request: LaunchRequest) -> dict[str, str]:
        """Only what the judge needs: none of the operator's credentials."""
        work = str(record / "work")
        env = {
            "PATH": f"{Path(sys.executable).parent}:{SAFE_PATH}",
            "HOME": work,
            "TMPDIR": work,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.update({name: os.environ[name] for name in self.pass_env if name in os.environ})
        # The supervisor hands it to the judge and keeps it from everything else.
        env[RUN_KEY_ENV] = request.run_key
        # Likewise the models' credentials: the judge takes them out of its environment
        # before it starts the agent host, which gets a scrubbed one anyway (confine.py).
        if request.model_credentials:
            env[MODEL_CREDENTIALS_ENV] = json.dumps(request.model_credentials)
        return env

    def _pid(self, record: Path) -> tuple[int, str] | None:
        try:
            pid, started = (record / "pid").read_text().split()
        except (OSError, ValueError):
            return None
        return int(pid), started

    def _alive(self, execution_id: str, record: Path) -> bool:
        child = self._children.get(execution_id)
        if child is not None and child.poll() is not None:
            self._children.pop(execution_id, None)
        found = self._pid(record)
        return found is not None and _start_time(found[0]) == found[1]

    # -- the Executor protocol ------------------------------------------------

    async def locate(self, namespace: str, key: ExecutionKey) -> str | None:
        return key.name  # a record that does not exist observes as MISSING

    async def launch(self, request: LaunchRequest) -> str:
        execution_id = request.key.name
        record = self._record(execution_id)
        if (record / "pid").exists():
            return execution_id  # launched before (perhaps by an earlier operator)
        record.mkdir(parents=True, exist_ok=True)
        record.chmod(0o700)
        (record / "config.json").write_text(json.dumps(request.runner_config))
        owner = {"namespace": request.namespace, "name": request.test_name, "uid": request.key.uid}
        (record / OWNER_FILE).write_text(json.dumps(owner))
        # A plain Popen, not asyncio's: the child must outlive this event loop
        # (and this operator), and fork/exec does not block for long.
        child = subprocess.Popen(  # noqa: ASYNC220
            [
                sys.executable,
                "-m",
                "agenttest.backends.local_supervisor",
                str(record),
                # The supervisor's own timer: the run ends even with no operator to stop it.
                f"{backstop_seconds(request.timeout_seconds):g}",
            ],
            cwd=record,
            env=self._environment(record, request),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(record / "supervisor.log").open("wb"),
            start_new_session=True,
        )
        self._children[execution_id] = child
        started = _start_time(child.pid) or "0"
        (record / "pid.partial").write_text(f"{child.pid} {started}")
        (record / "pid.partial").replace(record / "pid")
        return execution_id

    async def observe(self, execution_id: str) -> Observation:
        record = self._record(execution_id)
        exit_file = record / "exit_code"
        if exit_file.exists():
            return Observation(ExecutionState.EXITED, exit_code=int(exit_file.read_text()))
        if self._alive(execution_id, record):
            return Observation(ExecutionState.RUNNING)
        if exit_file.exists():  # it finished between the two looks
            return Observation(ExecutionState.EXITED, exit_code=int(exit_file.read_text()))
        stopped = record / "stopped"
        if stopped.exists():
            return Observation(ExecutionState.EXITED, exit_code=-9, reason=stopped.read_text())
        return Observation(
            ExecutionState.MISSING,
            reason="the local runner process disappeared without an exit code",
            infra_failure=True,
        )

    async def read_logs(self, execution_id: str, cursor: str | None) -> LogChunk:
        path = self._record(execution_id) / "output.log"
        offset = int(cursor or 0)
        try:
            with path.open("rb") as log_file:
                # Lines carry no time here: the file's last write is the newest line's.
                written_at = os.fstat(log_file.fileno()).st_mtime
                log_file.seek(offset)
                data = log_file.read(READ_CHUNK)
        except FileNotFoundError:
            return LogChunk([], cursor)
        full = len(data) == READ_CHUNK
        finished = (path.parent / "exit_code").exists() and not full
        if finished:
            end = len(data)
        elif b"\n" in data:
            end = data.rfind(b"\n") + 1
        elif full:
            # One line longer than a whole chunk: hand it on in pieces rather than
            # wait forever for its end (the judge's own lines are far shorter).
            end = len(data)
        else:
            end = 0
        lines = split_lines(data[:end])
        newest = written_at if lines and not full else None
        return LogChunk(lines, str(offset + end), more=full, newest_at=newest)

    async def stop(self, execution_id: str, reason: str) -> None:
        record = self._record(execution_id)
        if not record.exists():
            return
        (record / "stopped").write_text(reason)
        found = self._pid(record)
        if found is None or _start_time(found[0]) != found[1]:
            return
        pgid = found[0]  # the supervisor leads its own process group
        for sig, wait in ((signal.SIGTERM, self.stop_grace), (signal.SIGKILL, 10.0)):
            if sig == signal.SIGKILL:
                # The agent host leads a session of its own, out of the group's reach:
                # end everything below the supervisor before the supervisor itself.
                for pid in descendants(pgid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self._alive(execution_id, record)  # reaps our own child
                if not _group_alive(pgid):
                    return
                await asyncio.sleep(0.05)
        logger.error("processes of %s survived SIGKILL", execution_id)

    async def cleanup(self, execution_id: str) -> None:
        await self.stop(execution_id, "cleaned up")
        shutil.rmtree(self._record(execution_id), ignore_errors=True)
        self._children.pop(execution_id, None)

    async def launched(self) -> list[Launched]:
        found = []
        for owner_file in sorted(self.state_dir.glob(f"*/{OWNER_FILE}")):
            try:
                owner = json.loads(owner_file.read_text())
                found.append(
                    Launched(
                        owner_file.parent.name, owner["namespace"], owner["name"], owner["uid"]
                    )
                )
            except (OSError, ValueError, KeyError):
                continue  # being written or removed right now: the next sweep sees it
        return found
