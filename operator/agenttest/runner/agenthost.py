"""``python -m agenttest.runner.agenthost``: the user's agent, apart from the judge.

The judge starts this process for the user's code and talks to it over a private
channel (an inherited socket). It holds no key and no credential: its model is
pointed at the judge's gateway, its environment is scrubbed, and its first act is
to give up every privilege. It imports agent.py, builds the Strands agent, and
answers each question the judge sends with the agent's answer. What it prints goes
to pipes the judge relays into the log behind a prefix; what it answers is data
the judge evaluates, never a verdict.

Messages (JSON objects, see channel.py)::

    judge -> host  {"op": "setup", "agentSource", "entrypoint", "models": {name: {...}}}
    host -> judge  {"op": "ready"} | {"op": "setup-failed", "reason"}
    judge -> host  {"op": "ask", "query", "model": name}
    host -> judge  {"op": "answer", "text"} | {"op": "error", "message"}
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agenttest.runner.channel import Channel, ChannelClosed
from agenttest.runner.confine import drop_privileges

ERROR_LIMIT = 2000  # characters of an exception message sent back


def _model_config(raw: dict[str, Any]) -> Any:
    from agenttest.runner.config import ModelConfig

    return ModelConfig(
        provider=str(raw["provider"]),
        model_id=str(raw["modelId"]),
        endpoint=raw.get("endpoint"),
        region=raw.get("region"),
        temperature=raw.get("temperature"),
    )


def serve(channel: Channel, workdir: Path) -> int:
    from agenttest.runner.agentloader import (
        AgentSupplier,
        SetupError,
        build_model,
        load_agent_module,
    )

    setup = channel.receive()
    try:
        module = load_agent_module(str(setup["agentSource"]), workdir)
        models = {
            str(name): build_model(_model_config(raw)) for name, raw in setup["models"].items()
        }
        supplier = AgentSupplier(module, str(setup.get("entrypoint") or "agent"), models)
    except SetupError as error:
        channel.send({"op": "setup-failed", "reason": error.reason})
        return 1
    channel.send({"op": "ready"})

    while True:
        try:
            message = channel.receive()
        except ChannelClosed:
            return 0  # the judge is done with us
        if message.get("op") != "ask":
            continue
        try:
            agent = supplier.fresh(str(message.get("model") or supplier.first))
            answer = str(agent(str(message.get("query", "")))).strip()
        except SetupError as error:
            channel.send({"op": "error", "message": error.reason})
        except Exception as error:
            text = f"{type(error).__name__}: {error}"
            channel.send({"op": "error", "message": text[:ERROR_LIMIT]})
        else:
            channel.send({"op": "answer", "text": answer})


def main(argv: Sequence[str] | None = None) -> int:
    drop_privileges()
    parser = argparse.ArgumentParser(prog="python -m agenttest.runner.agenthost")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--site", help="the agent's installed requirements, first on sys.path")
    args = parser.parse_args(argv)
    # Strands first, while the judge is still setting up: it takes most of the start-up
    # time, and it must load the image's own dependencies, not versions the agent's
    # requirements would put ahead of them.
    import agenttest.runner.agentloader  # noqa: F401

    if args.site:
        sys.path.insert(0, args.site)
        importlib.invalidate_caches()
    channel = Channel.from_fd(args.channel_fd)
    try:
        return serve(channel, Path(args.workdir))
    except ChannelClosed:
        return 0


if __name__ == "__main__":
    sys.exit(main())
