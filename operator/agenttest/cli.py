"""The `agenttest` command.

agenttest run [flags]      run the operator (flags override AGENTTEST_* variables)
agenttest crds [--check]   write or check the CRDs in crds/
agenttest package download|url NAME   fetch a DeploymentPackage
agenttest report NAME      print a finished test's report (exit 0 passed, 1 failed, 2 none)
agenttest queue [-n NS|-A] the waiting tests, in order, and why they wait (asks the operator)
agenttest logs NAME [-f]   a test's log; -f follows it to the end (exit 0 passed, 1 failed)
agenttest wait NAME        wait until a test finishes (exit 0 passed, 1 failed, 2 timed out)
agenttest results NAME     a test's per-case results, from its status
agenttest cancel|retry NAME   stop a test; start a new attempt
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys

from agenttest import follow_cli, leadership, package_cli, queue_cli, report_cli
from agenttest.settings import Settings, activate


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; a flag overrides the setting's AGENTTEST_* variable."""
    for item in dataclasses.fields(Settings):
        flag = "--" + item.name.replace("_", "-")
        if item.type == "bool":
            parser.add_argument(
                flag,
                action="store_const",
                const="true",
                dest=item.name,
                help=f"overrides AGENTTEST_{item.name.upper()}",
            )
        else:
            parser.add_argument(
                flag,
                dest=item.name,
                metavar=item.name.upper(),
                help=f"overrides AGENTTEST_{item.name.upper()}",
            )


def run(args: argparse.Namespace) -> int:
    flags = {item.name: getattr(args, item.name) for item in dataclasses.fields(Settings)}
    try:
        settings = Settings.from_flags(flags)
        if settings.leader_election:
            leadership.check(settings.lease_duration_seconds, settings.lease_renew_seconds)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    activate(settings)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import kopf

    import agenttest.handlers  # noqa: F401  (registers the handlers)

    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None

    async def operate(stop_flag: asyncio.Event | None = None) -> None:
        await kopf.operator(
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=liveness,
            memo=kopf.Memo(settings=settings),
            stop_flag=stop_flag,
        )

    if not settings.leader_election:
        asyncio.run(operate())
        return 0
    # kopf starts (watches, handlers, timers) only once this replica holds the Lease.
    asyncio.run(leadership.run_as_leader(settings, operate, liveness))
    return 0


def main(argv: list[str] | None = None, prog: str = "agenttest") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run the operator")
    run_parser.add_argument("-v", "--verbose", action="store_true")
    _add_setting_flags(run_parser)
    sub.add_parser("crds", help="generate the CRDs (python -m agenttest.crdgen)")
    package_cli.add_parser(sub)
    report_cli.add_parser(sub)
    queue_cli.add_parser(sub)
    follow_cli.add_parsers(sub)
    args, rest = parser.parse_known_args(argv)
    commands = {"package": package_cli.run, "report": report_cli.run, "queue": queue_cli.run}
    commands.update({command: follow_cli.run for command in follow_cli.COMMANDS})
    if args.command in commands:
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return commands[args.command](args)
    if args.command == "run":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return run(args)
    from agenttest import crdgen

    return crdgen.main(rest)


PACKAGE_VERBS = ("download", "url")


def kubectl_plugin() -> int:
    """`kubectl agenttest download|url NAME` (the package verbs, without `package`), and
    every other command as `agenttest` has it: `kubectl agenttest logs -f NAME`, ...

    kubectl finds `kubectl-agenttest` on PATH.
    """
    args = sys.argv[1:]
    if args[:1] and args[0] in PACKAGE_VERBS:
        args = ["package", *args]
    return main(args, prog="kubectl agenttest")


if __name__ == "__main__":
    sys.exit(main())
