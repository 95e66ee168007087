"""Local ephemeral storage as a kubelet's eviction manager sees it (pure but for `disk_usage`).

A kubelet measures each pod's emptyDir volumes and each container's writable
layer every housekeeping period and evicts a pod that is over its own limits
(pkg/kubelet/eviction/eviction_manager.go, localStorageEviction), checking in
this order: an emptyDir over its ``sizeLimit``, the pod's total over the sum
of its containers' ``ephemeral-storage`` limits, one container over its own
limit. The messages are the kubelet's, word for word.
"""

from __future__ import annotations

import math
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def quantity_bytes(text: str) -> int:
    """A resource.Quantity (``16Mi``, ``1G``, ``1e9``, ``500``) in bytes, rounded up."""
    text = text.strip()
    for suffixes in (_BINARY, _DECIMAL):
        for suffix, factor in suffixes.items():
            if text.endswith(suffix):
                return math.ceil(Decimal(text[: -len(suffix)]) * factor)
    if text.endswith("m"):  # milli: a thousandth of a byte
        return math.ceil(Decimal(text[:-1]) / 1000)
    return math.ceil(Decimal(text))


def disk_usage(path: Path) -> int:
    """Bytes of disk `path` holds, as du counts them (allocated blocks, links not followed)."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue  # removed meanwhile, or unreadable: the kubelet skips it too
        for entry in entries:
            try:
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += stat.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
    return total


def limited(pod: dict[str, Any]) -> bool:
    """True if the pod sets any storage limit the eviction manager enforces."""
    spec = pod.get("spec") or {}
    return any(_size_limit(volume) is not None for volume in spec.get("volumes") or []) or any(
        "ephemeral-storage" in ((c.get("resources") or {}).get("limits") or {})
        for c in spec.get("containers") or []
    )


def _size_limit(volume: dict[str, Any]) -> str | None:
    empty_dir = volume.get("emptyDir")
    # A memory-backed emptyDir counts against memory, not the disk.
    if empty_dir is None or empty_dir.get("medium") == "Memory":
        return None
    limit = empty_dir.get("sizeLimit")
    return None if limit is None else str(limit)


def eviction_message(
    pod: dict[str, Any], volume_usage: dict[str, int], container_usage: int
) -> str | None:
    """Why the kubelet evicts this pod for its own storage use, or None.

    `volume_usage` is each emptyDir's bytes by volume name; `container_usage`
    the first container's writable layer.
    """
    spec = pod.get("spec") or {}
    for volume in spec.get("volumes") or []:
        limit = _size_limit(volume)
        if limit is not None and volume_usage.get(volume["name"], 0) > quantity_bytes(limit):
            return f'Usage of EmptyDir volume "{volume["name"]}" exceeds the limit "{limit}". '
    containers = spec.get("containers") or []
    limits = [
        ((c.get("resources") or {}).get("limits") or {}).get("ephemeral-storage")
        for c in containers
    ]
    if containers and all(limit is not None for limit in limits):
        total_limit = sum(quantity_bytes(str(limit)) for limit in limits)
        if sum(volume_usage.values()) + container_usage > total_limit:
            shown = str(limits[0]) if len(limits) == 1 else str(total_limit)
            return (
                f"Pod ephemeral local storage usage exceeds the total limit of containers {shown}. "
            )
    if containers and limits[0] is not None and container_usage > quantity_bytes(str(limits[0])):
        return (
            f"Container {containers[0]['name']} exceeded its local ephemeral storage limit "
            f'"{limits[0]}". '
        )
    return None
