"""`make demo`: the whole loop on one machine.

Starts the local control plane, installs the CRDs, starts the scripted model
(or uses a real Ollama when AGENTTEST_DEMO_OLLAMA is set), runs the operator
with the local backend, applies manifests/samples/agenttest.yaml and shows
`kubectl get agenttests -w` until the test ends.

    AGENTTEST_DEMO_OLLAMA=http://127.0.0.1:11434  use this Ollama instead
    AGENTTEST_DEMO_MODEL=llama3.1:8b              the model to ask there
    AGENTTEST_DEMO_SAMPLE=bedrock                 the Bedrock sample instead, against the
                                                  scripted model's Converse API
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from agenttest.models import FINISHED_PHASES
from agenttest_dev import devcluster
from agenttest_dev.modelserver import ScriptedModelServer


def checkout_root() -> Path:
    """The checkout the demo runs from: the nearest directory above with crds/ and manifests/.

    Found rather than counted, so the dev kit can move within the checkout.
    """
    here = Path(__file__).resolve()
    for directory in here.parents:
        if (directory / "crds").is_dir() and (directory / "manifests" / "samples").is_dir():
            return directory
    raise RuntimeError(f"the demo needs a checkout of agenttest-operator around {here}")


ROOT = checkout_root()
SAMPLES = {
    "ollama": ROOT / "manifests" / "samples" / "agenttest.yaml",
    "bedrock": ROOT / "manifests" / "samples" / "agenttest-bedrock.yaml",
}
# The judge's credentials for the Bedrock sample: the scripted model accepts any,
# and the agent under test never sees them (the sample asserts it).
DEMO_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDDEMOJUDGE0000000",
    "AWS_SECRET_ACCESS_KEY": "demo-judge-secret",
    "AGENTTEST_LOCAL_PASS_ENV": "AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY",
}


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


@contextlib.contextmanager
def model_endpoint(provider: str) -> Iterator[tuple[str, str | None]]:
    """(endpoint, model id or None to keep the sample's)."""
    ollama = os.environ.get("AGENTTEST_DEMO_OLLAMA")
    if ollama and provider == "ollama":
        say(f"using the Ollama at {ollama}")
        yield ollama, os.environ.get("AGENTTEST_DEMO_MODEL")
        return
    with ScriptedModelServer() as server:
        say(f"scripted model (Ollama API) listening on {server.url}")
        yield server.url, None


@contextlib.contextmanager
def operator(cluster: devcluster.Cluster, extra_env: dict[str, str]) -> Iterator[Path]:
    log_path = cluster.directory / "operator.log"
    env = {
        **os.environ,
        **extra_env,
        "KUBECONFIG": str(cluster.kubeconfig),
        "AGENTTEST_LOCAL_STATE_DIR": str(cluster.directory / "runs"),
        # The signing secret lives beside the sample, in the default namespace.
        "AGENTTEST_OPERATOR_NAMESPACE": "default",
        "AGENTTEST_METRICS_PORT": "0",
        "AGENTTEST_HEALTH_PORT": "0",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agenttest.cli",
                "run",
                "--enable-local-backend",
                "--default-backend",
                "local",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    say(f"operator started (pid {process.pid}, log {log_path})")
    try:
        yield log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def watch_until_finished(
    cluster: devcluster.Cluster, name: str, timeout: float
) -> dict[str, object]:
    """Show `kubectl get agenttests -w` while polling for the end."""
    kubectl = [str(cluster.binaries.kubectl), f"--kubeconfig={cluster.kubeconfig}"]
    say("kubectl get agenttests -w")
    watch = subprocess.Popen([*kubectl, "get", "agenttests", "-w"], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            test = json.loads(cluster.kubectl("get", "agenttest", name, "-o", "json").stdout)
            if test.get("status", {}).get("phase") in FINISHED_PHASES:
                time.sleep(0.5)  # let the watch print the final line
                return dict(test)
            time.sleep(0.5)
        raise devcluster.ClusterError(f"{name} did not finish within {timeout:.0f}s")
    finally:
        watch.terminate()
        watch.wait()


def main() -> int:
    provider = os.environ.get("AGENTTEST_DEMO_SAMPLE", "ollama")
    if provider not in SAMPLES:
        print(f"error: AGENTTEST_DEMO_SAMPLE must be one of {', '.join(SAMPLES)}", file=sys.stderr)
        return 2
    sample = SAMPLES[provider]
    try:
        binaries = devcluster.find_binaries()
        say("starting the local control plane (etcd, kube-apiserver, kube-controller-manager)")
        with devcluster.Cluster(binaries) as cluster, model_endpoint(provider) as (endpoint, model):
            cluster.install_crds(ROOT / "crds")
            with operator(cluster, DEMO_AWS_ENV if provider == "bedrock" else {}) as operator_log:
                manifest = yaml.safe_load(sample.read_text())
                manifest["spec"]["model"]["endpoint"] = endpoint
                if model:
                    manifest["spec"]["model"]["modelId"] = model
                name = manifest["metadata"]["name"]
                say(f"kubectl apply -f {sample.relative_to(ROOT)}")
                print(
                    cluster.kubectl(
                        "apply", "-f", "-", input_text=yaml.safe_dump(manifest)
                    ).stdout.strip()
                )
                test = watch_until_finished(cluster, name, timeout=300)
                status = test["status"]
                assert isinstance(status, dict)
                say(f"{name}: {status['phase']} - {status.get('summary', '')}")
                print(status.get("logTail", ""))
                if status["phase"] != "Succeeded":
                    print(f"\nmessage: {status.get('message')}\noperator log: {operator_log}")
                _keep_running(cluster)
                return 0 if status["phase"] == "Succeeded" else 1
    except devcluster.ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _keep_running(cluster: devcluster.Cluster) -> None:
    """At a terminal, leave everything up for exploring; in scripts, clean up."""
    if not sys.stdin.isatty():
        say("done; stopping the control plane")
        return
    say("the control plane keeps running; in another terminal:")
    print(f"    export KUBECONFIG={cluster.kubeconfig}")
    print(f"    {cluster.binaries.kubectl} get agenttests -o yaml")
    print(f"    {cluster.binaries.kubectl} describe agenttest hello-agent")
    print("press Ctrl-C to stop everything and clean up", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
