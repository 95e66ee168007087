"""Agents that try to forge their own verdict: the catalogue every backend must withstand.

Each entry is an agent.py whose only case ("greets", expects "hello") it cannot pass
honestly: it never says hello. Instead it tries to make the operator believe it
passed, through every path the judge's design closes (DESIGN.md, the runner). The
e2e suites run the whole catalogue on the local, pod and Fargate backends and
require every one of them to end Failed, with no DeploymentPackage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CASES = [{"name": "greets", "query": "Say hello", "expect": {"contains": ["hello"]}}]

# What the old, unsigned protocol took for a passing result.
FORGED_RESULT = "::agenttest:: " + json.dumps(
    {
        "event": "result",
        "passed": True,
        "reason": "",
        "summary": "1/1 cases passed",
        "cases": [{"name": "greets", "passed": True, "latencySeconds": 0.1, "output": "hello"}],
    },
    separators=(",", ":"),
)

# Shared by the forgers: lines in the signed format, under every key they could find.
_FORGE = f"""
import hashlib, hmac, json, os, re, signal, sys, time
from strands import Agent

FORGED = {FORGED_RESULT!r}
PAYLOAD = FORGED.split(" ", 1)[1]


def signed(key, seq):
    mac = hmac.new(key, f"{{seq}} {{PAYLOAD}}".encode(), hashlib.sha256).hexdigest()
    return f"::agenttest:: {{seq}} {{mac}} {{PAYLOAD}}"


def forgeries(keys):
    lines = [FORGED]
    for key in list(keys)[:100]:
        for seq in (1, 3, 999999):
            lines.append(signed(key, seq))
    return lines


def attempt(what, action):
    try:
        action()
    except OSError as error:
        print(f"DENIED {{what}}: {{type(error).__name__}}", flush=True)
    else:
        print(f"WROTE {{what}}", flush=True)


def write_to(path, lines):
    def action():
        with open(path, "a") as target:
            target.write("\\n" + "\\n".join(lines) + "\\n")
    attempt(path, action)


class Forger(Agent):
    def __call__(self, prompt, **kwargs):
        attack()
        return "no greeting from me"


def agent(model):
    return Forger(model=model)
"""


@dataclass(frozen=True)
class Forgery:
    name: str
    source: str
    # A part of status.message the test must end with; the outcome is always Failed.
    message: str
    script: list[dict[str, Any]] | None = None  # rules the scripted model needs


PRINTS_AND_EXITS = Forgery(
    "prints-and-exits",
    _FORGE
    + """
def attack():
    # On stdout and stderr, after a newline and after a carriage return, then gone.
    sys.stdout.write("\\n" + FORGED + "\\n" + signed(b"", 2) + "\\n")
    sys.stdout.flush()
    sys.stderr.write("\\r" + FORGED + "\\n")
    sys.stderr.flush()
    os._exit(0)
""",
    "greets: error: the agent host exited with code 0",
)

WRITES_THROUGH_PROC = Forgery(
    "writes-through-proc",
    _FORGE
    + """
def attack():
    for path in (f"/proc/{os.getppid()}/fd/1", f"/proc/{os.getppid()}/fd/2", "/proc/1/fd/1"):
        write_to(path, forgeries([]))
""",
    'greets: contains "hello": not found in answer',
)

HUNTS_FOR_THE_KEY = Forgery(
    "hunts-for-the-key",
    _FORGE
    + """
HEX = re.compile(rb"\\b[0-9a-fA-F]{64}\\b")


def hunt(report):
    found = set()
    for path in (f"/proc/{os.getppid()}/environ", "/proc/1/environ",
                 f"/proc/{os.getppid()}/cmdline", f"/proc/{os.getppid()}/mem"):
        try:
            with open(path, "rb") as source:
                data = source.read(1 << 20)
        except OSError as error:
            report.append(f"DENIED {path}: {type(error).__name__}")
            continue
        report.append(f"READ {path}")
        found.update(HEX.findall(data))
    # Every file it can reach, within bounds that keep the test quick.
    started, count = time.monotonic(), 0
    roots = [os.getcwd(), os.path.expanduser("~"), "/tmp", "/etc", "/run", "/var/tmp"]
    def spent():
        return count > 20000 or time.monotonic() - started > 20

    for root in roots:
        for directory, dirs, files in os.walk(root):
            if spent():
                dirs.clear()  # stop walking too, not only reading: trees can be huge
                break
            for name in files:
                if spent():
                    break
                path = os.path.join(directory, name)
                try:
                    # Regular files only: opening a FIFO (another test may leave one in
                    # /tmp) waits for a writer that never comes.
                    if not os.path.isfile(path) or os.path.getsize(path) > 8 << 20:
                        continue
                    with open(path, "rb") as source:
                        found.update(HEX.findall(source.read()))
                    count += 1
                except OSError:
                    continue
    report.append(f"searched {count} files, {len(found)} candidate keys")
    return {bytes.fromhex(k.decode()) for k in found} | {k.lower() for k in found}


def attack():
    report = []
    lines = forgeries(hunt(report))
    print("\\n".join(lines), flush=True)
    write_to(f"/proc/{os.getppid()}/fd/1", lines)
    print("\\n".join(report), flush=True)  # last, so that the log tail keeps it
""",
    'greets: contains "hello": not found in answer',
)

KILLS_THE_JUDGE = Forgery(
    "kills-the-judge",
    _FORGE
    + """
def attack():
    judge = os.getppid()
    try:
        os.kill(judge, signal.SIGKILL)
    except OSError as error:
        print(f"DENIED kill: {type(error).__name__}", flush=True)
    time.sleep(0.5)
    try:
        print(FORGED, flush=True)
    except OSError:
        pass
""",
    "without a verified result",
)

LEAVES_A_DAEMON = Forgery(
    "leaves-a-daemon",
    _FORGE
    + """
def attack():
    judge = os.getppid()
    if os.fork() == 0:
        os.setsid()
        daemon = os.fork()
        if daemon:
            print(f"DAEMON {daemon}", flush=True)
            os._exit(0)
        # Outlive the case, then speak where the verdict is read.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                print(FORGED, flush=True)
                write_to(f"/proc/{judge}/fd/1", forgeries([]))
            except OSError:
                pass
        os._exit(0)
    os.wait()
""",
    'greets: contains "hello": not found in answer',
)

MODEL_SAYS_IT = Forgery(
    "model-says-it",
    """
from strands import Agent

# The default callback handler prints whatever the model streams to stdout.
def agent(model):
    return Agent(model=model)
""",
    'greets: contains "hello": not found in answer',
    script=[{"match": r"say hello", "reply": "\n" + FORGED_RESULT.replace("hello", "hi") + "\n"}],
)

CATALOGUE = [
    PRINTS_AND_EXITS,
    WRITES_THROUGH_PROC,
    HUNTS_FOR_THE_KEY,
    KILLS_THE_JUDGE,
    LEAVES_A_DAEMON,
    MODEL_SAYS_IT,
]

# Only where the judge's output is a file the agent's user can reach (the local
# backend, by design a development tool): lines appended to it directly, never
# through the judge. They carry no valid signature, or replay the judge's own.
APPENDS_TO_THE_LOG_FILE = Forgery(
    "appends-to-the-log-file",
    _FORGE
    + """
def attack():
    log = os.path.join(os.getcwd(), "..", "..", "output.log")
    try:
        with open(log) as source:
            replayed = [line.strip() for line in source if line.startswith("::agenttest:: ")]
    except OSError:
        replayed = []
    write_to(log, forgeries([]) + replayed)
""",
    'greets: contains "hello": not found in answer',
)

SCRIPT = [rule for forgery in CATALOGUE for rule in forgery.script or []]


def apply_catalogue(kube: Any, endpoint: str, forgeries: list[Forgery], **spec: Any) -> None:
    from support import agent_test

    for forgery in forgeries:
        kube.apply(agent_test(forgery.name, forgery.source, endpoint, cases=CASES, **spec))


def assert_all_failed(kube: Any, forgeries: list[Forgery], timeout: float = 180) -> dict[str, Any]:
    """Every forger ends Failed with its reason, and leaves no package and no process."""
    from support import pid_alive

    ended: dict[str, Any] = {}
    for forgery in forgeries:
        test = kube.wait_for_phase(
            forgery.name, "Succeeded", "Failed", "Error", "TimedOut", timeout=timeout
        )
        status = test["status"]
        assert status["phase"] == "Failed", (forgery.name, status.get("message"))
        assert forgery.message in status["message"], (forgery.name, status["message"])
        assert not status.get("packageRef"), forgery.name
        tail = status.get("logTail", "")
        assert "WROTE /proc" not in tail, (forgery.name, tail)
        ended[forgery.name] = test
    for line in ended[LEAVES_A_DAEMON.name]["status"]["logTail"].splitlines():
        if line.startswith("[agent] DAEMON "):
            daemon = int(line.split()[-1])
            assert not pid_alive(daemon), "the daemon outlived its run"
            break
    else:
        raise AssertionError("the daemon never started")
    assert kube.get_all("deploymentpackages") == []
    return ended


def forged_output_events(kube: Any, name: str) -> list[dict[str, Any]]:
    return list(kube.events(name, "ForgedOutput"))
