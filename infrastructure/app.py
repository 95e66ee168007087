#!/usr/bin/env python3
"""The CDK app: ``cd infrastructure && ../.venv/bin/python app.py`` (``make infra-synth``).

Synthesizes the AgentTestInfra stack into ``infrastructure/cdk.out``, or into
``$CDK_OUTDIR`` when set (the cdk CLI sets it). No AWS account or credentials
are needed: the stack is environment-agnostic. Parameters are CDK context
values (see README.md): ``cdk synth -c modelProvider=bedrock`` under the cdk
CLI, or the same ``-c key=value`` arguments to this script run directly, which
then also reads the "context" object of cdk.json as the cdk CLI would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import aws_cdk as cdk  # noqa: E402
from agenttest_infra import AgentTestInfraStack  # noqa: E402

STACK_NAME = "AgentTestInfra"


def _context(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-c",
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a context value, as with `cdk synth -c` (repeatable)",
    )
    args = parser.parse_args(argv)
    context: dict[str, Any] = {}
    if "CDK_OUTDIR" not in os.environ:
        # Run directly, not by the cdk CLI (which passes cdk.json's context itself).
        cdk_json = HERE / "cdk.json"
        if cdk_json.exists():
            context.update(json.loads(cdk_json.read_text(encoding="utf-8")).get("context", {}))
    for item in args.context:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"-c {item!r}: expected KEY=VALUE")
        context[key] = value
    return context


def main(argv: list[str] | None = None) -> int:
    context = _context(sys.argv[1:] if argv is None else argv)
    # App() alone would synthesize into a temporary directory when run
    # directly; write next to this file instead.
    outdir = os.environ.get("CDK_OUTDIR") or str(HERE / "cdk.out")
    app = cdk.App(outdir=outdir, context=context)
    AgentTestInfraStack(
        app,
        STACK_NAME,
        description="agenttest-operator: ECS cluster, runner task, logs, package bucket, IAM",
    )
    assembly = app.synth()
    # The cdk CLI prints these itself; a direct run should not hide them.
    if "CDK_OUTDIR" not in os.environ:
        for message in assembly.get_stack_by_name(STACK_NAME).messages:
            level = str(message.level).rsplit(".", 1)[-1].lower()
            print(f"{level}: {message.entry.data}", file=sys.stderr)
    print(f"synthesized {STACK_NAME} into {assembly.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
