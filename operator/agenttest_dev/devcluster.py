"""A real local Kubernetes control plane for development, the demo and tests.

It runs the genuine `etcd`, `kube-apiserver` and `kube-controller-manager`
on loopback, on free ports, in a temporary directory, and removes all of it
on stop. There is no kubelet: `agenttest_dev.node` plays the node where pods must run.

Binaries are looked up, in order:
  1. `KUBEBUILDER_ASSETS` (the envtest layout: etcd, kube-apiserver, kubectl),
  2. the per-user cache (`~/.cache/agenttest/kubernetes-<version>/bin`),
  3. built once from the pinned Kubernetes Go modules into that cache.
etcd comes from PATH / `/usr/bin/etcd` (Debian's `etcd-server`), which the
project's `make cluster` target installs when running as root. `build` also
builds the pinned helm (`~/.cache/agenttest/helm-<version>/bin`), which the
chart's tests use.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# Pinned so every machine builds and tests against the same API server.
# 1.34 has everything the CRDs use (CEL messageExpression, fieldPath, reason).
KUBERNETES_VERSION = os.environ.get("AGENTTEST_K8S_VERSION", "v1.34.4")
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kubectl")
# Helm, for the chart in manifests/helm (its lint and render tests); built the
# same way, once, into a cache directory of its own beside Kubernetes'.
HELM_VERSION = os.environ.get("AGENTTEST_HELM_VERSION", "v3.22.0")
HELM_MODULE = "helm.sh/helm/v3"


class ClusterError(RuntimeError):
    """The control plane cannot be provided; the message says what to do."""


def log(message: str) -> None:
    print(f"[devcluster] {message}", file=sys.stderr, flush=True)


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agenttest"


def cache_dir(version: str = KUBERNETES_VERSION) -> Path:
    return _cache_root() / f"kubernetes-{version}"


def helm_cache_dir(version: str = HELM_VERSION) -> Path:
    return _cache_root() / f"helm-{version}"


# --------------------------------------------------------------------------
# Finding or building the binaries
# --------------------------------------------------------------------------


def staging_replaces(kubernetes_go_mod: str, version: str) -> list[str]:
    """The `replace` lines that map each staging module to its published tag.

    k8s.io/kubernetes points its staging modules at `./staging/...`, which do
    not exist in the module zip; each has a matching tag v0.<minor>.<patch>.
    """
    staging_version = "v0." + version.removeprefix("v1.")
    modules = re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", kubernetes_go_mod, re.M)
    return [f"\t{module} => {module} {staging_version}" for module in modules]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    log("$ " + " ".join(cmd))
    result = subprocess.run(cmd, cwd=cwd, env=env, check=False)
    if result.returncode != 0:
        raise ClusterError(f"command failed ({result.returncode}): {' '.join(cmd)}")


def _write_build_module(go: str, work: Path, env: dict[str, str], version: str) -> None:
    """A go.mod requiring k8s.io/kubernetes at `version`, its staging modules replaced."""
    download = subprocess.run(
        [go, "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if download.returncode != 0:
        raise ClusterError(f"cannot download k8s.io/kubernetes@{version}: {download.stderr}")
    go_mod_path = re.search(r'"GoMod":\s*"([^"]+)"', download.stdout)
    if go_mod_path is None:
        raise ClusterError(f"go mod download gave no go.mod for k8s.io/kubernetes@{version}")
    replaces = staging_replaces(Path(go_mod_path.group(1)).read_text(), version)
    (work / "go.mod").write_text(
        "module agenttest.dev/kubernetes-build\n\ngo 1.24.0\n\n"
        f"require k8s.io/kubernetes {version}\n\nreplace (\n" + "\n".join(replaces) + "\n)\n"
    )


def build_kubernetes(version: str = KUBERNETES_VERSION) -> Path:
    """Build kube-apiserver, kube-controller-manager and kubectl into the cache."""
    go = shutil.which("go")
    if go is None:
        raise ClusterError(
            "Kubernetes binaries are not cached and Go is not installed: install Go "
            "(https://go.dev/doc/install) or set KUBEBUILDER_ASSETS to a directory "
            "holding kube-apiserver, kube-controller-manager, kubectl and etcd."
        )
    target = cache_dir(version)
    work = target / "build"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    log(f"building Kubernetes {version} from its Go modules (first time only, takes minutes)")
    _write_build_module(go, work, env, version)
    packages = [f"k8s.io/kubernetes/cmd/{name}" for name in KUBE_BINARIES]
    # `@version` on each package keeps `go get` from upgrading to the newest release.
    _run([go, "get", *(f"{package}@{version}" for package in packages)], work, env)
    minor = version.removeprefix("v").split(".")[1]
    stamp = " ".join(
        f"-X {pkg}.{key}={value}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in (
            ("gitVersion", version),
            ("gitMajor", "1"),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        )
    )
    bin_dir = target / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, package in zip(KUBE_BINARIES, packages, strict=True):
        log(f"building {name} ...")
        _run(
            [
                go,
                "build",
                "-trimpath",
                "-ldflags",
                f"-s -w {stamp}",
                "-o",
                str(bin_dir / name),
                package,
            ],
            work,
            env,
        )
    log(f"Kubernetes {version} binaries cached in {bin_dir}")
    return bin_dir


def _require_go(what: str) -> str:
    go = shutil.which("go")
    if go is None:
        raise ClusterError(
            f"{what} is not cached and Go is not installed: install Go "
            "(https://go.dev/doc/install), then run `make tools`."
        )
    return go


def build_helm(version: str = HELM_VERSION) -> Path:
    """`go install` the pinned Helm into its cache directory; the binary's path."""
    go = _require_go(f"helm {version}")
    bin_dir = helm_cache_dir(version) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    # GOBIN: the binary lands in the cache, not in ~/go/bin. The version is
    # stamped the way Helm's own release build does (`helm version` shows it).
    env = {**os.environ, "CGO_ENABLED": "0", "GOBIN": str(bin_dir)}
    stamp = f"-X {HELM_MODULE}/internal/version.version={version}"
    log(f"building helm {version} from its Go module (first time only, takes minutes)")
    _run(
        [
            go,
            "install",
            "-trimpath",
            "-ldflags",
            f"-s -w {stamp}",
            f"{HELM_MODULE}/cmd/helm@{version}",
        ],
        bin_dir,
        env,
    )
    log(f"helm {version} cached in {bin_dir}")
    return bin_dir / "helm"


def find_helm(build: bool = True) -> Path:
    """The pinned helm from the cache, built once if allowed (never one from PATH:
    the chart's tests must not depend on whichever Helm a machine happens to have)."""
    hit = _executable(helm_cache_dir() / "bin", "helm")
    if hit:
        return hit
    if not build:
        raise ClusterError(f"helm {HELM_VERSION} is missing: run `make tools` to build it")
    return build_helm()


def _executable(directory: Path | str | None, name: str) -> Path | None:
    if directory is None:
        return None
    candidate = Path(directory) / name
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def find_etcd() -> Path:
    for candidate in (
        _executable(os.environ.get("KUBEBUILDER_ASSETS"), "etcd"),
        shutil.which("etcd"),
        _executable("/usr/bin", "etcd"),
    ):
        if candidate:
            return Path(candidate)
    raise ClusterError(
        "etcd is not installed: run `make tools` as root (it installs the Debian package "
        "etcd-server), or `apt-get install etcd-server`, or set KUBEBUILDER_ASSETS to a "
        "directory that holds etcd."
    )


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path


def find_binaries(build: bool = True) -> Binaries:
    """Locate every binary, building the Kubernetes ones once if allowed."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    found: dict[str, Path] = {}
    for name in KUBE_BINARIES:
        hit = _executable(assets, name) or _executable(cache_dir() / "bin", name)
        if hit:
            found[name] = hit
    if len(found) < len(KUBE_BINARIES):
        if not build:
            missing = sorted(set(KUBE_BINARIES) - set(found))
            raise ClusterError(f"missing {', '.join(missing)}: run `make tools` to build them")
        bin_dir = build_kubernetes()
        found = {name: found.get(name) or bin_dir / name for name in KUBE_BINARIES}
    return Binaries(
        etcd=find_etcd(),
        kube_apiserver=found["kube-apiserver"],
        kube_controller_manager=found["kube-controller-manager"],
        kubectl=found["kubectl"],
    )


# --------------------------------------------------------------------------
# Running the control plane
# --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    """etcd + kube-apiserver + kube-controller-manager on loopback."""

    binaries: Binaries
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="agenttest-")))
    keep: bool = False
    api_port: int = 0
    token: str = field(default_factory=lambda: base64.b32encode(os.urandom(20)).decode().lower())
    # More kube-apiserver flags (e.g. an --egress-selector-config-file for a test
    # that plays the pod network), and the controllers kube-controller-manager runs.
    apiserver_args: tuple[str, ...] = ()
    controllers: tuple[str, ...] = ("garbagecollector", "namespace", "serviceaccount", "job")
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    # -- lifecycle ----------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Cluster:
        try:
            self._start_etcd()
            self._prepare_apiserver()
            self._start_apiserver()
            self._wait_ready(timeout)
            self._write_kubeconfig()
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in reversed(list(self._processes)):
            process = self._processes.pop(name)
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver alone, as an outage or an upgrade does; etcd keeps the state.

        Until `start_apiserver`, every client (the operator, kubectl, the controller
        manager) finds nothing listening at `url`.
        """
        process = self._processes.pop("kube-apiserver")
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def start_apiserver(self, timeout: float = 90.0) -> None:
        """Start kube-apiserver again: same etcd, port, certificates, keys and tokens."""
        if "kube-apiserver" in self._processes:
            raise ClusterError("kube-apiserver is running already")
        self._start_apiserver()
        self._wait_ready(timeout)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- components ---------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        log_path = self.directory / f"{name}.log"
        # Appended: a component started again (start_apiserver) keeps its earlier log.
        with log_path.open("ab") as log_file:
            self._processes[name] = subprocess.Popen(
                args,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                start_new_session=True,
            )

    def _log_tail(self, name: str, lines: int = 25) -> str:
        path = self.directory / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=agenttest",
                f"--data-dir={self.directory / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=agenttest=http://127.0.0.1:{peer}",
                "--log-level=warn",
            ],
        )

    def _prepare_apiserver(self) -> None:
        """What every start of kube-apiserver shares: its port, keys, tokens, encryption.

        Made once, so that an API server started again (`start_apiserver`) still
        accepts the tokens it issued and still reads the secrets it encrypted; its
        serving certificate, generated into the cert dir at the first start, is
        reused from there.
        """
        self.api_port = self.api_port or free_port()
        certs = self.directory / "certs"
        certs.mkdir(exist_ok=True)
        key = certs / "service-account.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
        tokens = self.directory / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin,"system:masters"\n')
        # Secrets encrypted at rest, as a production cluster keeps them: the signing
        # keys of runner pods must not lie in etcd's files in the clear, where any
        # process of this host's user could read them.
        encryption = self.directory / "encryption.yaml"
        secret = base64.b64encode(os.urandom(32)).decode()
        encryption.write_text(
            "apiVersion: apiserver.config.k8s.io/v1\n"
            "kind: EncryptionConfiguration\n"
            "resources:\n"
            "  - resources: [secrets]\n"
            "    providers:\n"
            f"      - aescbc: {{keys: [{{name: k1, secret: {secret}}}]}}\n"
            "      - identity: {}\n"
        )
        encryption.chmod(0o600)

    def _start_apiserver(self) -> None:
        certs = self.directory / "certs"
        key = certs / "service-account.key"
        tokens = self.directory / "tokens.csv"
        encryption = self.directory / "encryption.yaml"
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--cert-dir={certs}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={key}",
                f"--service-account-signing-key-file={key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                f"--encryption-provider-config={encryption}",
                # pods/log and kubectl logs reach a node (the tests' stand-in kubelet)
                # at its InternalIP; no kubelet CA is configured, so its serving
                # certificate is not verified.
                "--kubelet-preferred-address-types=InternalIP",
                "--profiling=false",
                "--v=0",
                *self.apiserver_args,
            ],
        )

    def _start_controller_manager(self) -> None:
        # The garbage collector deletes what an owner reference ties to a
        # deleted owner (DeploymentPackages, pods, config maps); namespace
        # deletion needs the namespace controller.
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={self.kubeconfig}",
                # job: the benchmark compares pod creation with the Job controller's.
                f"--controllers={','.join(self.controllers)}",
                "--leader-elect=false",
                "--secure-port=0",
                "--v=0",
            ],
        )

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise ClusterError(
                        f"{name} exited with {process.returncode}:\n{self._log_tail(name)}"
                    )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(request, context=context, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise ClusterError(
            f"kube-apiserver not ready after {timeout:.0f}s:\n{self._log_tail('kube-apiserver')}"
        )

    def _write_kubeconfig(self) -> None:
        ca = (self.directory / "certs" / "apiserver.crt").read_bytes()
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            "clusters:\n- name: agenttest\n  cluster:\n"
            f"    server: {self.url}\n"
            f"    certificate-authority-data: {base64.b64encode(ca).decode()}\n"
            "users:\n- name: admin\n  user:\n"
            f"    token: {self.token}\n"
            "contexts:\n- name: agenttest\n  context:\n    cluster: agenttest\n    user: admin\n"
            "    namespace: default\n"
            "current-context: agenttest\n"
        )
        self.kubeconfig.chmod(0o600)

    # -- conveniences -------------------------------------------------------

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the cluster's own kubectl against it."""
        result = subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def install_crds(self, directory: Path) -> None:
        self.kubectl("apply", "--server-side", "-f", str(directory))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(directory))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The local Kubernetes control plane.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="find or build the binaries (helm too), print where they are")
    up = sub.add_parser("up", help="start a control plane and keep it running until Ctrl-C")
    up.add_argument("--crds", type=Path, help="install the CRDs from this directory")
    up.add_argument("--kubeconfig-link", type=Path, help="also copy the kubeconfig here")
    args = parser.parse_args(argv)
    try:
        binaries = find_binaries()
        if args.command == "build":
            for name, path in vars(binaries).items():
                print(f"{name}: {path}")
            print(f"helm: {find_helm()}")
            return 0
        with Cluster(binaries) as cluster:
            if args.crds:
                cluster.install_crds(args.crds)
            if args.kubeconfig_link:
                args.kubeconfig_link.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(cluster.kubeconfig, args.kubeconfig_link)
            print(f"control plane ready at {cluster.url} ({datetime.datetime.now():%H:%M:%S})")
            print(f"export KUBECONFIG={args.kubeconfig_link or cluster.kubeconfig}", flush=True)
            print("press Ctrl-C to stop and clean up", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        return 0
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
