"""The local backend on its own: real processes, no control plane."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agenttest import lifecycle
from agenttest.backends.local import LocalExecutor
from agenttest.executions import ExecutionKey, ExecutionState, LaunchRequest, LogChunk
from agenttest.models import Phase
from agenttest.runner.protocol import EXIT_TIMED_OUT
from agenttest_dev.containers import kill_tree

from support import pid_alive


def config(source: str, endpoint: str = "http://127.0.0.1:9") -> dict[str, Any]:
    return {
        "agentSource": source,
        "model": {"provider": "ollama", "modelId": "m", "endpoint": endpoint},
        "cases": [{"name": "a", "query": "hello"}],
        "timeoutSeconds": 60,
    }


def request(source: str, attempt: int = 1) -> LaunchRequest:
    return LaunchRequest(
        key=ExecutionKey("0123456789abcdef-uid-0123456789ab", attempt),
        namespace="ns",
        test_name="t",
        runner_config=config(source),
        timeout_seconds=60,
    )


async def wait_state(executor: LocalExecutor, execution_id: str, state: ExecutionState) -> None:
    async def reached() -> None:
        while (await executor.observe(execution_id)).state != state:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(reached(), timeout=60)


async def read_everything(executor: LocalExecutor, execution_id: str) -> list[str]:
    lines: list[str] = []
    chunk = LogChunk()
    while True:
        chunk = await executor.read_logs(execution_id, chunk.cursor)
        if not chunk.lines:
            return lines
        lines += chunk.lines


def test_runs_the_harness_with_a_scrubbed_environment(tmp_path: Path) -> None:
    os.environ["AGENTTEST_FAKE_SECRET"] = "do-not-leak"
    dump = tmp_path / "env.json"
    source = f"import json, os\njson.dump(dict(os.environ), open({str(dump)!r}, 'w'))\n"

    async def scenario() -> list[str]:
        executor = LocalExecutor(tmp_path / "runs")
        execution_id = await executor.launch(request(source))
        await wait_state(executor, execution_id, ExecutionState.EXITED)
        assert (await executor.observe(execution_id)).exit_code == 1  # no entrypoint 'agent'
        return await read_everything(executor, execution_id)

    try:
        lines = asyncio.run(scenario())
    finally:
        del os.environ["AGENTTEST_FAKE_SECRET"]
    environment = json.loads(dump.read_text())
    assert "AGENTTEST_FAKE_SECRET" not in environment
    assert "KUBECONFIG" not in environment
    assert environment["HOME"].startswith(str(tmp_path / "runs"))
    assert lines[-1].startswith("::agenttest:: ")
    assert "entrypoint 'agent' not found" in lines[-1]


def test_a_second_launch_adopts_the_first_even_from_a_new_operator(tmp_path: Path) -> None:
    source = "import time\ntime.sleep(300)\n"

    async def scenario() -> None:
        first = LocalExecutor(tmp_path / "runs")
        execution_id = await first.launch(request(source))
        await wait_state(first, execution_id, ExecutionState.RUNNING)
        restarted = LocalExecutor(tmp_path / "runs")  # as after an operator restart
        assert await restarted.launch(request(source)) == execution_id
        assert len(list((tmp_path / "runs").iterdir())) == 1
        assert (await restarted.observe(execution_id)).state == ExecutionState.RUNNING
        await restarted.cleanup(execution_id)
        assert not (tmp_path / "runs" / execution_id).exists()

    asyncio.run(scenario())


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    source = (
        "import os, subprocess, time\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(300)\n"
    )

    async def scenario() -> list[int]:
        executor = LocalExecutor(tmp_path / "runs", stop_grace=1.0)
        execution_id = await executor.launch(request(source))
        while not pids.exists():
            await asyncio.sleep(0.05)
        found = [int(pid) for pid in pids.read_text().split()]
        await executor.stop(execution_id, "cancelled")
        observation = await executor.observe(execution_id)
        assert observation.state == ExecutionState.EXITED
        return found

    for pid in asyncio.run(scenario()):
        assert not pid_alive(pid)


def test_a_vanished_process_is_an_infrastructure_failure(tmp_path: Path) -> None:
    async def scenario() -> None:
        executor = LocalExecutor(tmp_path / "runs")
        execution_id = await executor.launch(request("import time\ntime.sleep(300)\n"))
        record = tmp_path / "runs" / execution_id
        pid = int((record / "pid").read_text().split()[0])
        kill_tree(pid)  # as if the host had killed it all behind our back
        while pid_alive(pid):
            await asyncio.sleep(0.05)
            await executor.observe(execution_id)  # reaps our child
        observation = await executor.observe(execution_id)
        assert observation.state == ExecutionState.MISSING
        assert observation.infra_failure

    asyncio.run(scenario())


def test_record_names_cannot_escape_the_state_directory(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "runs")
    with pytest.raises(ValueError):
        asyncio.run(executor.observe("../etc"))


def test_the_reader_moves_past_lines_longer_than_a_read_and_any_bytes(tmp_path: Path) -> None:
    record = tmp_path / "runs" / "at-long"
    record.mkdir(parents=True)
    huge = b"y" * (600 * 1024)
    (record / "output.log").write_bytes(
        b"first\n" + huge + b"\n\xff\xfebinary\rstill one line\x0cand this\nlast\n"
    )

    async def scenario() -> list[str]:
        executor = LocalExecutor(tmp_path / "runs")
        (record / "exit_code").write_text("0")
        return await read_everything(executor, "at-long")

    lines = asyncio.run(scenario())
    assert lines[0] == "first" and lines[-1] == "last"
    # The long line arrives in pieces rather than stopping the reader; only \n splits.
    assert "".join(lines[1:-2]) == huge.decode()
    assert lines[-2] == "\ufffd\ufffdbinary\rstill one line\x0cand this"


def test_a_stopped_judge_still_ends_timed_out_at_the_supervisors_deadline(
    tmp_path: Path,
) -> None:
    # The agent host's parent is its judge: stopping it stops the judge's own deadline.
    source = (
        "import os, signal, time\n"
        f"open({str(tmp_path / 'agent.pid')!r}, 'w').write(str(os.getpid()))\n"
        "os.kill(os.getppid(), signal.SIGSTOP)\n"
        "time.sleep(300)\n"
    )
    timed = LaunchRequest(
        key=ExecutionKey("0123456789abcdef-uid-0123456789ab", 1),
        namespace="ns",
        test_name="t",
        runner_config={**config(source), "timeoutSeconds": 2},
        timeout_seconds=2,
    )

    async def scenario() -> tuple[int | None, list[str]]:
        executor = LocalExecutor(tmp_path / "runs")
        execution_id = await executor.launch(timed)
        try:
            # No stop() and no operator: only the supervisor's own timer can end it.
            await wait_state(executor, execution_id, ExecutionState.EXITED)
            observation = await executor.observe(execution_id)
            return observation.exit_code, await read_everything(executor, execution_id)
        finally:
            await executor.stop(execution_id, "test over")  # only if the timer failed

    exit_code, lines = asyncio.run(scenario())
    assert exit_code == EXIT_TIMED_OUT
    assert lifecycle.outcome(None, exit_code, lines[-1])[0] == Phase.TIMED_OUT
    assert "outlived its 17s deadline" in lines[-1]
    assert not pid_alive(int((tmp_path / "agent.pid").read_text()))
