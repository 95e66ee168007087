"""`agenttest logs|wait|results|cancel|retry NAME`: one AgentTest, through the API server.

Everything goes through the API server as the kubeconfig's user, so RBAC
decides (the ClusterRole agenttest-tester grants all of it): the log is the
operator's bounded tail in status.logTail (readable by anyone who may read the
test, on every backend), `logs -f` and `wait` watch the test rather than poll
it, `cancel` sets spec.cancel and `retry` gives the agenttest.dev/retry
annotation a new value, exactly what the README shows by hand. What the
commands make of what they read is in followview (pure).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from agenttest import clientconfig, followview
from agenttest.followview import EXIT_PASSED, EXIT_TROUBLE
from agenttest.models import AGENTTEST_PLURAL, GROUP, RETRY_ANNOTATION, VERSION

COMMANDS = ("logs", "wait", "results", "cancel", "retry")
REQUEST_SECONDS = 30  # one GET or PATCH
WATCH_SECONDS = 300  # a watch without a deadline is renewed after this
RECONNECT_SECONDS = 60  # how long a follower waits for an API server that went away

TROUBLE = """\
  2  {also}no such test, the API server refused (RBAC: see below) or could
     not be reached; the message says which"""

RBAC = """\
permissions: your kubeconfig's user needs, in the test's namespace, what the
ClusterRole agenttest-tester grants (manifests/tester-role.yaml), e.g.
  kubectl create rolebinding alice-tests -n team-a \\
    --clusterrole=agenttest-tester --user=alice"""


class Trouble(Exception):
    """The command cannot go on; the message says why (exit status 2)."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable  # the API server did not answer at all


class Session:
    """One AgentTest, read and changed as the kubeconfig's user."""

    def __init__(self, name: str, namespace: str | None) -> None:
        from kubernetes import client

        try:
            api, self.namespace = clientconfig.connect(namespace)
        except clientconfig.NotConfigured as error:
            raise Trouble(str(error)) from None
        self.name = name
        self.server = clientconfig.server(api)
        self.api = client.CustomObjectsApi(api)

    def _refused(self, error: Any, verb: str) -> Trouble:
        """An ApiException, in words."""
        detail = clientconfig.status_message(error.body) or str(error.reason)
        where = f"namespace {self.namespace}"
        if not error.status:
            return Trouble(f"cannot reach the API server at {self.server}: {detail}", True)
        if error.status == 404:
            return Trouble(f"no AgentTest {self.name} in {where}")
        if error.status == 401:
            return Trouble(
                f"the API server at {self.server} did not accept your credentials "
                f"(401: {detail}): check the kubeconfig's user"
            )
        if error.status == 403:
            return Trouble(
                f"the API server refused to {verb} agenttests in {where} (403: {detail}). "
                "You need the ClusterRole agenttest-tester bound there, e.g. `kubectl create "
                f"rolebinding NAME -n {self.namespace} --clusterrole=agenttest-tester --user=YOU`"
            )
        return Trouble(
            f"the API server answered {error.status} to {verb} agenttest {self.name} in "
            f"{where}: {detail}"
        )

    def _call(self, verb: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return function(*args, **kwargs)
        except ApiException as error:
            raise self._refused(error, verb) from None
        except Exception as error:
            if clientconfig.unreachable(error):
                message = (
                    f"cannot reach the API server at {self.server}: {clientconfig.failure(error)}"
                )
                raise Trouble(message, unreachable=True) from None
            raise

    def get(self) -> dict[str, Any]:
        found = self._call(
            "get",
            self.api.get_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            AGENTTEST_PLURAL,
            self.name,
            _request_timeout=REQUEST_SECONDS,
        )
        return dict(found)

    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        changed = self._call(
            "patch",
            self.api.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            AGENTTEST_PLURAL,
            self.name,
            body,
            _content_type="application/merge-patch+json",
            _request_timeout=REQUEST_SECONDS,
        )
        return dict(changed)

    def _reread(self, deadline: float | None) -> dict[str, Any]:
        """The test, read again after a watch dropped: a short outage of the API server
        (a restart, an upgrade) is waited out, up to RECONNECT_SECONDS."""
        give_up = time.monotonic() + RECONNECT_SECONDS
        if deadline is not None:
            give_up = min(give_up, deadline)
        while True:
            try:
                return self.get()
            except Trouble as trouble:
                if not trouble.unreachable or time.monotonic() >= give_up:
                    raise
            time.sleep(1)

    def updates(self, deadline: float | None = None) -> Iterator[dict[str, Any]]:
        """The test as read now, then as it is after each change, until ``deadline``
        (time.monotonic()) if one is given. A watch, renewed from a fresh read when
        it ends, expires (410) or drops."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        test = self.get()
        yield test
        version = test["metadata"]["resourceVersion"]
        while True:
            remaining = WATCH_SECONDS if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return
            watcher = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in watcher.stream(  # type: ignore[no-untyped-call]
                    self.api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    AGENTTEST_PLURAL,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=version,
                    timeout_seconds=max(1, math.ceil(remaining)),
                    _request_timeout=(REQUEST_SECONDS, remaining + REQUEST_SECONDS),
                ):
                    if event["type"] == "DELETED":
                        raise Trouble(f"{self.name} was deleted")
                    if event["type"] in ("ADDED", "MODIFIED"):
                        test = dict(event["object"])
                        version = test["metadata"]["resourceVersion"]
                        yield test
                continue  # the server ended the watch: renew it from where it was
            except ApiException as error:
                if error.status != 410:
                    raise self._refused(error, "watch") from None
            except Exception as error:
                if not clientconfig.unreachable(error):
                    raise
            finally:
                watcher.stop()  # type: ignore[no-untyped-call]
            # Expired or dropped: read the test again.
            test = self._reread(deadline)
            version = test["metadata"]["resourceVersion"]
            yield test


def _say(lines: list[str]) -> None:
    for line in lines:
        print(line, flush=True)


def logs(session: Session, follow: bool) -> int:
    if not follow:
        test = session.get()
        _, lines = followview.advance(followview.Following(), test)
        _say(lines)
        if not lines:
            print(f"{followview.state_line(session.name, test)} (no output yet)", file=sys.stderr)
        return EXIT_PASSED
    following = followview.Following()
    for test in session.updates():
        following, lines = followview.advance(following, test)
        _say(lines)
        code = followview.exit_code(test)
        if code is not None:
            _say([f"--- {followview.state_line(session.name, test)} ---"])
            return code
    return EXIT_TROUBLE  # updates() without a deadline never ends on its own


def wait(session: Session, timeout: float | None) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    test = None
    for test in session.updates(deadline):
        code = followview.exit_code(test)
        if code is not None:
            print(followview.state_line(session.name, test))
            return code
    state = followview.state_line(session.name, test) if test else session.name
    print(f"error: not finished after {timeout:g}s: {state}", file=sys.stderr)
    return EXIT_TROUBLE


def results(session: Session, output: str) -> int:
    test = session.get()
    if output == "json":
        print(json.dumps(followview.results_document(test), indent=2))
    else:
        print(followview.results_text(session.name, test))
    return EXIT_PASSED


def cancel(session: Session) -> int:
    test = session.get()
    phase = followview.phase_of(test)
    if followview.exit_code(test) is not None:
        print(f"{session.name} has already finished ({phase}): nothing to cancel")
        return EXIT_PASSED
    if (test.get("spec") or {}).get("cancel"):
        print(f"{session.name}: cancel was already requested (phase {phase or 'Pending'})")
        return EXIT_PASSED
    session.patch({"spec": {"cancel": True}})
    print(
        f"{session.name}: cancel requested (spec.cancel: true; phase {phase or 'Pending'}); "
        f"it ends Cancelled (`kubectl agenttest wait {session.name}` waits for that)"
    )
    return EXIT_PASSED


def retry(session: Session) -> int:
    test = session.get()
    # A new value each time (to the microsecond): the operator starts an attempt per value.
    value = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    session.patch({"metadata": {"annotations": {RETRY_ANNOTATION: value}}})
    attempt = int(followview.status_of(test).get("attempt") or 0) + 1
    print(
        f"{session.name}: retry requested ({RETRY_ANNOTATION}={value}); attempt {attempt} "
        f"starts when the operator sees it (`kubectl agenttest logs -f {session.name}`)"
    )
    if (test.get("spec") or {}).get("cancel"):
        print(
            f"note: {session.name} has spec.cancel: true, and cancel wins: the attempt starts "
            f"only once it is cleared (kubectl patch agenttest {session.name} --type=merge "
            """-p '{"spec":{"cancel":false}}')""",
            file=sys.stderr,
        )
    return EXIT_PASSED


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smh]?)$")


def seconds(text: str) -> float:
    """Seconds from '90', '1.5', '90s', '5m' or '1h'."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90, 90s, 5m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _command(
    sub: Any,
    name: str,
    help_text: str,
    description: str,
    exits: str,
    examples: str,
    also: str = "",
) -> argparse.ArgumentParser:
    trouble = TROUBLE.format(also=also)
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=f"exit status:\n{exits}\n{trouble}\n\n{RBAC}\n\nexamples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="the AgentTest")
    parser.add_argument("-n", "--namespace", help="its namespace (default: the context's)")
    return parser


def add_parsers(sub: Any) -> None:
    logs_parser = _command(
        sub,
        "logs",
        "print a test's log; -f follows it until the test finishes",
        """\
Print the log of an AgentTest's current attempt: the operator's bounded tail
of the execution's output (status.logTail, the last 8 KiB). With -f, keep
printing lines as they arrive, each once, across attempts (a retry starts
attempt N+1: a line says so), until the test finishes. When the tail slid
past lines before they were read, a line says "… (lines dropped)".""",
        """\
  0  the log was printed (without -f); with -f: the test passed (Succeeded)
  1  with -f: the test failed (Failed, TimedOut, Cancelled or Error)""",
        """\
  kubectl agenttest logs my-agent
  kubectl agenttest logs -f my-agent -n team-a && echo passed""",
    )
    logs_parser.add_argument(
        "-f", "--follow", action="store_true", help="follow the log until the test finishes"
    )

    wait_parser = _command(
        sub,
        "wait",
        "wait until a test finishes; the exit status says how (for CI)",
        """\
Wait until an AgentTest finishes (a watch on it, not polling), then print its
phase and summary. A retry or spec change the operator has not acted on yet
does not count as finished: the attempt it starts is waited for.""",
        """\
  0  the test passed (Succeeded)
  1  the test failed (Failed, TimedOut, Cancelled or Error)""",
        """\
  kubectl agenttest wait my-agent --timeout 10m
  kubectl apply -f test.yaml && kubectl agenttest wait my-agent || exit 1""",
        also="not finished within --timeout, or\n     ",
    )
    wait_parser.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="give up after this long: 600, 90s, 10m, 1h (default: no limit)",
    )

    results_parser = _command(
        sub,
        "results",
        "print a test's per-case results from its status",
        """\
Print an AgentTest's results as its status records them: its phase and
summary, a line per model (a matrix), and one row per case and model with
its verdict, passes out of trials, pass rate, 95% interval, whether it is
flaky and its first failure. The full report (every trial's answer) is
`agenttest report NAME`.""",
        "  0  the results (or that there are none yet) were printed",
        """\
  kubectl agenttest results my-agent
  kubectl agenttest results my-agent -o json | jq '.cases[] | select(.passed | not)'""",
    )
    results_parser.add_argument("-o", "--output", choices=("table", "json"), default="table")

    _command(
        sub,
        "cancel",
        "stop a test (it ends Cancelled)",
        """\
Cancel an AgentTest: set spec.cancel to true, as
  kubectl patch agenttest NAME --type=merge -p '{"spec":{"cancel":true}}'
The operator stops its execution, if any, and the test ends Cancelled. A
finished test is left alone.""",
        "  0  cancel was requested (or the test had already finished or been cancelled)",
        "  kubectl agenttest cancel my-agent && kubectl agenttest wait my-agent",
    )
    _command(
        sub,
        "retry",
        "run a test again (a new attempt)",
        f"""\
Start a new attempt of an AgentTest: give the annotation {RETRY_ANNOTATION}
a new value, as
  kubectl annotate agenttest NAME {RETRY_ANNOTATION}="$(date +%s)" --overwrite
A running attempt is stopped and superseded; a test with spec.cancel: true
starts none until cancel is cleared.""",
        "  0  the retry was requested",
        "  kubectl agenttest retry my-agent && kubectl agenttest logs -f my-agent",
    )


def run(args: argparse.Namespace) -> int:
    try:
        session = Session(args.name, args.namespace)
        if args.command == "logs":
            return logs(session, args.follow)
        if args.command == "wait":
            return wait(session, args.timeout)
        if args.command == "results":
            return results(session, args.output)
        if args.command == "cancel":
            return cancel(session)
        return retry(session)
    except Trouble as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_TROUBLE
    except KeyboardInterrupt:
        return 130
