"""The fake kubelet itself, through the real API server, kubectl and the Python client.

No operator here: if these pass, pods created through the API server get
scheduled, run, reported and cleaned up as on a real node, and `kubectl logs`
reaches the node through the API server's pods/log proxy. The pod backend's
tests can then trust the fixture.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, config

from agenttest.backends import pod
from agenttest_dev import devcluster
from agenttest_dev.modelserver import ScriptedModelServer
from agenttest_dev.node import (
    DEADLINE_MESSAGE,
    IMAGE_NOT_KNOWN,
    UNSCHEDULABLE_MESSAGE,
    UNSUPPORTED,
    FakeKubelet,
)

from support import Kube, pid_alive

GREETER = "from strands import Agent\ndef agent(model):\n    return Agent(model=model)\n"
RFC3339NANO = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.\d{9}Z$")
IMAGES = {"busybox": ["sleep"], "python": [sys.executable]}


@pytest.fixture
def kubelet(cluster: devcluster.Cluster, kube: Kube) -> Iterator[FakeKubelet]:
    with FakeKubelet(cluster.kubeconfig, namespaces=[kube.namespace], images=IMAGES) as node:
        yield node


def pod_manifest(
    name: str,
    image: str = "busybox:1.36",
    args: list[str] | None = None,
    command: list[str] | None = None,
    container: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "main", "image": image, **(container or {})}
    if args is not None:
        body["args"] = args
    if command is not None:
        body["command"] = command
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [body], **spec},
    }


def get_pod(kube: Kube, name: str) -> dict[str, Any]:
    return kube.get(name, "pod")


def wait_pod(
    kube: Kube,
    name: str,
    description: str,
    condition: Callable[[dict[str, Any]], Any],
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Poll the pod until `condition(pod)`; on timeout, fail showing its last status."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = get_pod(kube, name)
        except devcluster.ClusterError as error:
            last = error
        else:
            if condition(last):
                return dict(last)
        time.sleep(0.1)
    seen = last.get("status") if isinstance(last, dict) else last
    pytest.fail(f"pod {name}: timed out after {timeout}s waiting for {description}; last: {seen}")


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda pod: pod.get("status", {}).get("phase") in phases


def condition_of(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = pod.get("status", {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def container_state(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return dict(statuses[0].get("state") or {})


def pod_gone(kube: Kube, name: str) -> bool:
    result = kube.run("get", "pod", name, "-o", "name", check=False)
    return result.returncode != 0 and "NotFound" in result.stderr


def log_lines(kube: Kube, name: str, *flags: str) -> list[str]:
    return kube.run("logs", name, *flags).stdout.splitlines()


# --------------------------------------------------------------------------- the node


def test_node_is_registered_ready_with_its_endpoint(
    cluster: devcluster.Cluster, kubelet: FakeKubelet
) -> None:
    node = json.loads(cluster.kubectl("get", "node", "fake-node", "-o", "json").stdout)
    status = node["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert status["addresses"] == [
        {"type": "InternalIP", "address": "127.0.0.1"},
        {"type": "Hostname", "address": "fake-node"},
    ]
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == kubelet.port
    for resources in (status["capacity"], status["allocatable"]):
        assert (resources["cpu"], resources["memory"], resources["pods"]) == ("8", "32Gi", "110")
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert status["nodeInfo"]["kubeletVersion"] == server["gitVersion"]
    # The not-ready taint admission adds to a new node is gone once it is Ready.
    assert not [t for t in node["spec"].get("taints") or [] if "not-ready" in t["key"]]
    # The Python client (what the operator uses) reads the node without complaint.
    api = python_client(cluster)
    assert api.read_node("fake-node").status.node_info.kubelet_version == server["gitVersion"]


def test_heartbeat_and_node_deleted_on_stop(cluster: devcluster.Cluster) -> None:
    def heartbeat() -> str:
        node = json.loads(cluster.kubectl("get", "node", "other-node", "-o", "json").stdout)
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        return str(ready["lastHeartbeatTime"])

    with FakeKubelet(
        cluster.kubeconfig, namespaces=[], node_name="other-node", heartbeat_interval=0.2
    ):
        first = heartbeat()
        Kube(cluster, "default").wait_for(
            "a newer heartbeat", lambda: heartbeat() > first, timeout=10
        )
    result = cluster.kubectl("get", "node", "other-node", check=False)
    assert result.returncode != 0 and "NotFound" in result.stderr


def test_kubelet_endpoint_answers_404_for_unknown_pods(kubelet: FakeKubelet) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    url = f"https://127.0.0.1:{kubelet.port}/containerLogs/nowhere/nothing/main"
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(url, context=context, timeout=10)
    assert raised.value.code == 404


# --------------------------------------------------------------------------- the harness


def python_client(cluster: devcluster.Cluster) -> Any:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    return client.CoreV1Api(client.ApiClient(configuration))


def test_harness_pod_succeeds_and_its_logs_come_through_the_api_server(
    cluster: devcluster.Cluster,
    kube: Kube,
    kubelet: FakeKubelet,
    model_server: ScriptedModelServer,
) -> None:
    harness_config = json.dumps(
        {
            "agentSource": GREETER,
            "model": {"provider": "ollama", "modelId": "m", "endpoint": model_server.url},
            "cases": [{"name": "greets", "query": "Say hello", "expect": {"contains": ["hello"]}}],
            "timeoutSeconds": 60,
        }
    )
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {"config.json": harness_config},
    }
    pod = pod_manifest(
        "harness",
        image="agenttest/runner:0.1.0",
        args=["--config", "/etc/agenttest/config.json"],
        container={
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/agenttest", "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ]
        },
        volumes=[
            {"name": "config", "configMap": {"name": "cfg"}},
            {"name": "tmp", "emptyDir": {}},
        ],
    )
    kube.apply(config_map, pod)
    done = wait_pod(kube, "harness", "Succeeded", phase_is("Succeeded", "Failed"), timeout=120)
    namespace = kube.namespace
    output = kubelet.output(namespace, "harness")
    assert done["status"]["phase"] == "Succeeded", output
    terminated = container_state(done)["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert done["spec"]["nodeName"] == "fake-node"
    assert done["status"]["podIP"] == done["status"]["hostIP"] == "127.0.0.1"
    assert condition_of(done, "PodScheduled")["status"] == "True"
    assert condition_of(done, "Initialized")["status"] == "True"
    assert condition_of(done, "Ready")["reason"] == "PodCompleted"

    # The container saw its own filesystem: the config file at the mount.
    command = kubelet.command(namespace, "harness")
    config_path = kubelet.host_path(namespace, "harness", "/etc/agenttest/config.json")
    assert command[-2:] == ["--config", str(config_path)]
    assert config_path.read_text() == harness_config
    environment = kubelet.environment(namespace, "harness")
    assert environment["TMPDIR"] == str(kubelet.host_path(namespace, "harness", "/tmp"))
    assert environment["PYTHONUNBUFFERED"] == "1"
    assert "KUBECONFIG" not in environment

    # kubectl logs: the API server asks the node over HTTPS.
    lines = log_lines(kube, "harness")
    assert lines == output
    assert lines[-1].startswith("::agenttest:: ")

    stamped = log_lines(kube, "harness", "--timestamps")
    split = [line.split(" ", 1) for line in stamped]
    assert [text for _, text in split] == output
    assert all(RFC3339NANO.match(stamp) for stamp, _ in split), stamped[:3]
    stamps = [stamp for stamp, _ in split]
    assert stamps == sorted(stamps)

    # --since-time has whole seconds: at or after it, as the kubelet filters.
    def seconds(stamp: str) -> str:
        match = RFC3339NANO.match(stamp)
        assert match is not None
        return match.group(1) + "Z"

    for since in {seconds(stamps[0]), seconds(stamps[-1])}:
        expected = [text for stamp, text in split if seconds(stamp) >= since]
        assert log_lines(kube, "harness", f"--since-time={since}") == expected
    assert log_lines(kube, "harness", "--since-time=2999-01-01T00:00:00Z") == []
    assert log_lines(kube, "harness", "--tail=1") == output[-1:]
    limited = kube.run("logs", "harness", "--limit-bytes=5").stdout
    assert limited == "\n".join(output)[:5]

    # The operator's way: the typed Python client, pod status and pods/log.
    api = python_client(cluster)
    typed = api.read_namespaced_pod("harness", namespace)
    assert typed.status.container_statuses[0].state.terminated.exit_code == 0
    text = api.read_namespaced_pod_log(
        "harness", namespace, container="main", timestamps=True, since_seconds=3600
    )
    assert text.splitlines() == stamped


def test_follow_streams_until_the_container_exits(
    cluster: devcluster.Cluster, kube: Kube, kubelet: FakeKubelet
) -> None:
    script = (
        "import os, time\n"
        "print('waiting', flush=True)\n"
        "while not os.path.exists('/data/go'):\n"
        "    time.sleep(0.02)\n"
        "print('done', flush=True)\n"
    )
    kube.apply(
        pod_manifest(
            "follower",
            image="python:3.11-slim",
            args=["-c", script],
            container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            volumes=[{"name": "data", "emptyDir": {}}],
        )
    )
    kubelet.wait_for_pods(1)
    kube.wait_for(
        "the first line", lambda: kubelet.output(kube.namespace, "follower") == ["waiting"]
    )
    follower = subprocess.Popen(
        [
            *(str(cluster.binaries.kubectl), f"--kubeconfig={cluster.kubeconfig}"),
            *("-n", kube.namespace, "logs", "-f", "follower"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert lines.get(timeout=30) == "waiting"
        assert follower.poll() is None  # still following
        kubelet.host_path(kube.namespace, "follower", "/data/go").touch()
        assert lines.get(timeout=30) == "done"
        assert follower.wait(timeout=30) == 0  # ends when the container does
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    wait_pod(kube, "follower", "Succeeded", phase_is("Succeeded"))


def test_logs_are_served_as_the_bytes_the_container_wrote(
    cluster: devcluster.Cluster, kube: Kube, kubelet: FakeKubelet
) -> None:
    """A kubelet does not decode: invalid UTF-8 reaches `pods/log` as it was written."""
    script = "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')"
    kube.apply(
        pod_manifest(
            "binary",
            image="python:3.11-slim",
            args=["-c", script],
            container={"name": pod.CONTAINER},
        )
    )
    wait_pod(kube, "binary", "Succeeded", phase_is("Succeeded"))
    raw = subprocess.run(
        [
            *(str(cluster.binaries.kubectl), f"--kubeconfig={cluster.kubeconfig}"),
            *("-n", kube.namespace, "logs", "binary"),
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert raw == b"ok \xff\xfe end\n"
    # And the pod backend reads it without failing on it.
    config.load_kube_config(str(cluster.kubeconfig))
    executor = pod.PodExecutor("unused")
    chunk = asyncio.run(executor.read_logs(f"{kube.namespace}/binary", None))
    assert chunk.lines == ["ok \ufffd\ufffd end"]


# --------------------------------------------------------------------------- stopping pods


def test_deleted_sleeper_is_killed_and_the_pod_disappears(kube: Kube, kubelet: FakeKubelet) -> None:
    kube.apply(pod_manifest("sleeper", args=["300"]))
    running = wait_pod(kube, "sleeper", "Running", phase_is("Running"))
    state = container_state(running)["running"]
    assert state["startedAt"] and running["status"]["startTime"]
    assert running["status"]["containerStatuses"][0]["ready"] is True
    assert condition_of(running, "Ready")["status"] == "True"
    assert kubelet.command(kube.namespace, "sleeper") == ["sleep", "300"]
    pid = kubelet.pid(kube.namespace, "sleeper")
    assert pid is not None and pid_alive(pid)

    kube.run("delete", "pod", "sleeper", "--grace-period=2", "--wait=false")
    kube.wait_for("the pod to disappear", lambda: pod_gone(kube, "sleeper"), timeout=20)
    assert kubelet.killed(kube.namespace, "sleeper")
    assert kubelet.kill_reason(kube.namespace, "sleeper") == "Deleted"
    assert not pid_alive(pid)


def test_sigterm_ignored_means_sigkill_after_the_grace_period(
    kube: Kube, kubelet: FakeKubelet
) -> None:
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"
    )
    kube.apply(pod_manifest("stubborn", image="python:3.11", args=["-c", script]))
    kubelet.wait_for_pods(1)
    kube.wait_for("ready", lambda: kubelet.output(kube.namespace, "stubborn") == ["ready"])
    pid = kubelet.pid(kube.namespace, "stubborn")
    assert pid is not None
    started = time.monotonic()
    kube.run("delete", "pod", "stubborn", "--grace-period=1", "--wait=false")
    kube.wait_for("the pod to disappear", lambda: pod_gone(kube, "stubborn"), timeout=20)
    assert time.monotonic() - started >= 0.9  # it waited for the grace period
    assert kubelet.killed(kube.namespace, "stubborn")
    assert not pid_alive(pid)


def test_active_deadline_fails_the_pod(kube: Kube, kubelet: FakeKubelet) -> None:
    kube.apply(pod_manifest("late", args=["300"], activeDeadlineSeconds=2))
    failed = wait_pod(kube, "late", "Failed", phase_is("Failed", "Succeeded"), timeout=20)
    status = failed["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded")
    assert status["message"] == DEADLINE_MESSAGE
    terminated = container_state(failed)["terminated"]
    assert terminated["reason"] == "Error" and terminated["exitCode"] == 143  # SIGTERM
    assert kubelet.kill_reason(kube.namespace, "late") == "DeadlineExceeded"


def test_oom_kill_next(kube: Kube, kubelet: FakeKubelet) -> None:
    kubelet.oom_kill_next()
    kube.apply(pod_manifest("hungry", args=["300"]))
    failed = wait_pod(kube, "hungry", "Failed", phase_is("Failed", "Succeeded"))
    assert failed["status"]["phase"] == "Failed"
    terminated = container_state(failed)["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)
    # Only the next container: the one after runs normally.
    kube.apply(pod_manifest("fed", command=["true"]))
    wait_pod(kube, "fed", "Succeeded", phase_is("Succeeded"))


# --------------------------------------------------------------------------- scheduling


def test_hold_pending_reports_unschedulable_until_release(kube: Kube, kubelet: FakeKubelet) -> None:
    kubelet.hold_pending()
    kube.apply(pod_manifest("waiting", command=["true"]))
    held = wait_pod(
        kube,
        "waiting",
        "Unschedulable",
        lambda pod: condition_of(pod, "PodScheduled").get("reason") == "Unschedulable",
    )
    scheduled = condition_of(held, "PodScheduled")
    assert (scheduled["status"], scheduled["message"]) == ("False", UNSCHEDULABLE_MESSAGE)
    assert held["status"]["phase"] == "Pending"
    assert "nodeName" not in held["spec"]
    assert kubelet.pods() == []

    kubelet.release()
    done = wait_pod(kube, "waiting", "Succeeded", phase_is("Succeeded"))
    assert condition_of(done, "PodScheduled")["status"] == "True"
    assert done["spec"]["nodeName"] == "fake-node"


def test_unknown_image_is_bound_then_fails_to_pull(kube: Kube, kubelet: FakeKubelet) -> None:
    kube.apply(pod_manifest("nosuch", image="example/nosuch:1"))

    def waiting(pod: dict[str, Any]) -> dict[str, Any]:
        return dict(container_state(pod).get("waiting") or {})

    pulling = wait_pod(
        kube,
        "nosuch",
        "ErrImagePull",
        lambda pod: waiting(pod).get("reason") in ("ErrImagePull", "ImagePullBackOff"),
    )
    assert pulling["spec"]["nodeName"] == "fake-node"
    assert IMAGE_NOT_KNOWN in waiting(pulling)["message"]
    backoff = wait_pod(
        kube,
        "nosuch",
        "ImagePullBackOff",
        lambda pod: waiting(pod).get("reason") == "ImagePullBackOff",
    )
    assert backoff["status"]["phase"] == "Pending"
    result = kube.run("logs", "nosuch", check=False)
    assert result.returncode != 0 and "waiting to start" in result.stderr
    kube.run("delete", "pod", "nosuch", "--wait=false")
    kube.wait_for("the pod to disappear", lambda: pod_gone(kube, "nosuch"), timeout=20)


def test_job_controller_pods_run_to_completion(kube: Kube, kubelet: FakeKubelet) -> None:
    template = pod_manifest("unused", command=["true"])["spec"]
    kube.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once"},
            "spec": {"backoffLimit": 0, "template": {"spec": template}},
        }
    )

    def complete() -> bool:
        conditions = kube.get("once", "job").get("status", {}).get("conditions") or []
        return any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)

    kube.wait_for("the Job to complete", complete, timeout=30)
    ((namespace, name),) = kubelet.pods()
    assert namespace == kube.namespace and name.startswith("once-")


# --------------------------------------------------------------------------- containers


def test_environment_volumes_and_working_dir(kube: Kube, kubelet: FakeKubelet) -> None:
    script = (
        "import os\n"
        "print(open(os.environ['SETTINGS']).read())\n"
        "print(open('/etc/creds/token').read())\n"
        "print(os.getcwd())\n"
    )
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "data": {"a": "alpha", "b": "beta"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "stringData": {"token": "s3cret"},
        },
        pod_manifest(
            "envpod",
            image="python:3.11-slim",
            args=["-c", script],
            container={
                "workingDir": "/work/sub",
                "env": [
                    {"name": "WHO", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "GREETING", "value": "hello $(WHO), $$(WHO)"},
                    {
                        "name": "FROM_MAP",
                        "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "b"}},
                    },
                    {
                        "name": "TOKEN",
                        "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
                    },
                    {"name": "SETTINGS", "value": "/etc/settings/renamed.txt"},
                ],
                "volumeMounts": [
                    {"name": "settings", "mountPath": "/etc/settings", "readOnly": True},
                    {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                    {"name": "work", "mountPath": "/work"},
                ],
            },
            volumes=[
                {
                    "name": "settings",
                    "configMap": {
                        "name": "settings",
                        "items": [{"key": "a", "path": "renamed.txt"}],
                    },
                },
                {"name": "creds", "secret": {"secretName": "creds"}},
                {"name": "work", "emptyDir": {}},
            ],
        ),
    )
    wait_pod(kube, "envpod", "Succeeded", phase_is("Succeeded"))
    namespace = kube.namespace
    environment = kubelet.environment(namespace, "envpod")
    assert environment["GREETING"] == "hello envpod, $(WHO)"
    assert (environment["FROM_MAP"], environment["TOKEN"]) == ("beta", "s3cret")
    settings = kubelet.host_path(namespace, "envpod", "/etc/settings")
    assert environment["SETTINGS"] == str(settings / "renamed.txt")
    assert sorted(path.name for path in settings.iterdir()) == ["renamed.txt"]  # items only
    # Nothing of the test process's environment leaks into the container.
    assert set(environment) == {
        *("PATH", "HOSTNAME", "LANG", "PYTHONUNBUFFERED", "HOME", "TMPDIR"),
        *("WHO", "GREETING", "FROM_MAP", "TOKEN", "SETTINGS"),
    }
    work = kubelet.host_path(namespace, "envpod", "/work/sub")
    assert kubelet.output(namespace, "envpod") == ["alpha", "s3cret", str(work)]
    assert log_lines(kube, "envpod") == ["alpha", "s3cret", str(work)]


def test_unsupported_value_from_fails_the_pod_clearly(kube: Kube, kubelet: FakeKubelet) -> None:
    kube.apply(
        pod_manifest(
            "limits",
            command=["true"],
            container={
                "env": [
                    {
                        "name": "CPU",
                        "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}},
                    }
                ]
            },
        )
    )
    failed = wait_pod(kube, "limits", "Failed", phase_is("Failed", "Succeeded"))
    status = failed["status"]
    assert (status["phase"], status["reason"]) == ("Failed", UNSUPPORTED)
    assert "resourceFieldRef" in status["message"]
    terminated = container_state(failed)["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("StartError", 128)


def test_restricted_namespace_admits_a_compliant_pod(kube: Kube, kubelet: FakeKubelet) -> None:
    kube.run("label", "namespace", kube.namespace, "pod-security.kubernetes.io/enforce=restricted")
    rejected = kube.apply(pod_manifest("lax", command=["true"]), check=False)
    assert rejected.returncode != 0 and "violates PodSecurity" in rejected.stderr
    compliant = pod_manifest(
        "strict",
        command=["true"],
        container={
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }
        },
        securityContext={
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    )
    kube.apply(compliant)
    wait_pod(kube, "strict", "Succeeded", phase_is("Succeeded"))
