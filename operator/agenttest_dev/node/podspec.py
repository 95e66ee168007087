"""A pod's container spec -> what its process gets: volumes, mounts, environment, argv, cwd.

See the package's docstring for the rules (Docker's entrypoint and command,
``$(VAR)`` expansion, mount paths rewritten to per-pod host directories).
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agenttest_dev.containers import (
    RUNNER_IMAGE,
    container_path,
    find_image,
    repository_of,
)
from agenttest_dev.node.registration import NodeRegistration
from agenttest_dev.node.state import NODE_IP, KubeError, NotYet, Run, Unsupported

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, variables: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` escapes, unknown references stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return variables.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


def _safe_relative(path: str) -> Path:
    relative = Path(path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise Unsupported(f"invalid volume item path {path!r}")
    return relative


class PodSpec(NodeRegistration):
    """Turns the first container of a pod into a process's argv, environment and cwd."""

    def _entrypoint(self, image: str) -> list[str] | None:
        found = find_image(image, self.images)
        if found is not None:
            return list(found)
        # Any runner image (``agenttest/runner:0.1.0``, a registry's copy) is the runner.
        if repository_of(image).endswith("runner"):
            return list(RUNNER_IMAGE.entrypoint)
        return None

    def _object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._request(
                "GET", f"/api/v1/namespaces/{namespace}/{kind}/{quote(name)}"
            )
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return found

    def _source_data(
        self, kind: str, namespace: str, name: str, optional: bool
    ) -> dict[str, bytes] | None:
        """A ConfigMap's or Secret's keys as bytes; None if optional and missing."""
        found = self._object("configmaps" if kind == "configMap" else "secrets", namespace, name)
        if found is None:
            if optional:
                return None
            label = "configmap" if kind == "configMap" else "secret"
            raise NotYet("CreateContainerConfigError", f'{label} "{name}" not found')
        data: dict[str, bytes] = {}
        if kind == "configMap":
            data.update({k: v.encode() for k, v in (found.get("data") or {}).items()})
            data.update(
                {k: base64.b64decode(v) for k, v in (found.get("binaryData") or {}).items()}
            )
        else:
            data.update({k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()})
        return data

    def _project(
        self, kind: str, source: dict[str, Any], namespace: str, target: Path, volume: str
    ) -> None:
        name = source.get("name") if kind == "configMap" else source.get("secretName")
        if kind != "configMap" and name is None:
            name = source.get("name")  # projected secret sources use `name`
        optional = bool(source.get("optional"))
        try:
            data = self._source_data(kind, namespace, str(name), optional)
        except NotYet as error:
            raise NotYet(
                "ContainerCreating",
                f'MountVolume.SetUp failed for volume "{volume}" : {error.message}',
            ) from None
        if data is None:
            return
        items = source.get("items")
        pairs = [(item["key"], item["path"]) for item in items] if items else [(k, k) for k in data]
        for key, path in pairs:
            if key not in data:
                if optional:
                    continue
                raise NotYet(
                    "ContainerCreating",
                    f'MountVolume.SetUp failed for volume "{volume}" : configmap references '
                    f"non-existent config key: {key}",
                )
            destination = target / _safe_relative(path)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data[key])
            destination.chmod(0o444)

    def _volumes(self, run: Run) -> dict[str, Path]:
        directories: dict[str, Path] = {}
        base = run.directory / "volumes"
        for volume in run.pod["spec"].get("volumes") or []:
            name = volume["name"]
            target = base / name
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            directories[name] = target
            if "emptyDir" in volume:
                continue
            if "configMap" in volume:
                self._project("configMap", volume["configMap"], run.namespace, target, name)
            elif "secret" in volume:
                self._project("secret", volume["secret"], run.namespace, target, name)
            elif "projected" in volume:
                for source in volume["projected"].get("sources") or []:
                    kind = next(iter(source), "")
                    if kind not in ("configMap", "secret"):
                        raise Unsupported(
                            f'volume "{name}": projected {kind} sources are not supported '
                            "by the fake kubelet"
                        )
                    self._project(kind, source[kind], run.namespace, target, name)
            else:
                kind = next((k for k in volume if k != "name"), "?")
                raise Unsupported(
                    f'volume "{name}": {kind} volumes are not supported by the fake kubelet'
                )
        return directories

    def _field(self, run: Run, path: str) -> str:
        metadata = run.pod["metadata"]
        simple = {
            "metadata.name": metadata["name"],
            "metadata.namespace": metadata["namespace"],
            "metadata.uid": metadata["uid"],
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": run.pod["spec"].get("serviceAccountName", "default"),
            "status.hostIP": NODE_IP,
            "status.hostIPs": NODE_IP,
            "status.podIP": NODE_IP,
            "status.podIPs": NODE_IP,
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
        raise Unsupported(f"env fieldRef {path!r} is not supported by the fake kubelet")

    def _container_env(self, run: Run, container: dict[str, Any]) -> dict[str, str]:
        values: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, ref in (("configMap", "configMapRef"), ("secret", "secretRef")):
                if ref in source:
                    reference = source[ref]
                    data = self._source_data(
                        kind, run.namespace, reference["name"], bool(reference.get("optional"))
                    )
                    for key, value in (data or {}).items():
                        values[prefix + key] = value.decode(errors="replace")
        for item in container.get("env") or []:
            name = item["name"]
            source = item.get("valueFrom")
            if source is None:
                values[name] = expand(item.get("value", ""), values)
            elif "fieldRef" in source:
                values[name] = self._field(run, source["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in source or "secretKeyRef" in source:
                kind, ref = (
                    ("configMap", source["configMapKeyRef"])
                    if "configMapKeyRef" in source
                    else ("secret", source["secretKeyRef"])
                )
                optional = bool(ref.get("optional"))
                data = self._source_data(kind, run.namespace, ref["name"], optional)
                if data is None:
                    continue
                if ref["key"] not in data:
                    if optional:
                        continue
                    label = "ConfigMap" if kind == "configMap" else "Secret"
                    raise NotYet(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in {label} {run.namespace}/{ref['name']}",
                    )
                values[name] = data[ref["key"]].decode(errors="replace")
            else:
                kind = next(iter(source), "?")
                raise Unsupported(
                    f'env "{name}": valueFrom.{kind} is not supported by the fake kubelet'
                )
        return values

    @staticmethod
    def _rewrite(text: str, mounts: list[tuple[str, Path]]) -> str:
        """Every mount path that starts a path in `text` -> its host directory."""
        if not mounts:
            return text
        by_path = {mount: str(host) for mount, host in mounts}
        alternatives = "|".join(re.escape(m) for m in sorted(by_path, key=len, reverse=True))
        pattern = re.compile(rf"(?<![\w.~/-])(?:{alternatives})(?=/|$|[^\w.-])")
        return pattern.sub(lambda match: by_path[match.group(0)], text)

    def _prepare(self, run: Run, container: dict[str, Any], entrypoint: list[str]) -> None:
        """Volumes, mounts, environment, argv and cwd of the container's process."""
        volumes = self._volumes(run)
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in volumes:
                raise Unsupported(f'volumeMount "{mount["name"]}" names no volume of the pod')
            host = volumes[mount["name"]]
            if mount.get("subPath"):
                host = host / _safe_relative(mount["subPath"])
                host.mkdir(parents=True, exist_ok=True)
            path = mount["mountPath"].rstrip("/") or "/"
            if path == "/":
                raise Unsupported("a volume mounted at / is not supported by the fake kubelet")
            mounts.append((path, host))
        run.mounts = mounts

        declared = self._container_env(run, container)
        # The image's entrypoint is already a host command; only what the pod
        # says is in container paths.
        own = [expand(part, declared) for part in container.get("command") or []]
        own += [expand(part, declared) for part in container.get("args") or []]
        own = [self._rewrite(part, mounts) for part in own]
        argv = own if container.get("command") else list(entrypoint) + own
        if not argv:
            raise Unsupported("no command specified")

        home = run.directory / "home"
        home.mkdir(exist_ok=True)
        scratch = dict(mounts).get("/tmp")
        if scratch is None:
            scratch = run.directory / "tmp"
            scratch.mkdir(exist_ok=True)
        environment = {
            "PATH": container_path(),
            "HOSTNAME": run.name,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "HOME": str(home),
            "TMPDIR": str(scratch),
        }
        environment.update({k: self._rewrite(v, mounts) for k, v in declared.items()})

        rootfs = run.directory / "rootfs"
        rootfs.mkdir(exist_ok=True)
        working = container.get("workingDir")
        if working:
            rewritten = self._rewrite(working, mounts)
            cwd = Path(rewritten) if rewritten != working else rootfs / working.lstrip("/")
        else:
            cwd = rootfs
        cwd.mkdir(parents=True, exist_ok=True)

        run.argv, run.environment, run.cwd = argv, environment, cwd
        run.image_id = (
            f"{repository_of(run.image)}@sha256:"
            + hashlib.sha256(" ".join(entrypoint).encode()).hexdigest()
        )
