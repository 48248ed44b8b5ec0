"""Pod volumes as host directories, and the bind mounts that put them at each `mountPath`.

Each volume becomes a directory under the pod's state dir (an emptyDir is just that directory, so
every container of the pod that mounts it sees the same files); secret, configMap, downwardAPI and
projected volumes are written out once when the pod starts. The process shim bind-mounts them in
the container's private mount namespace, which is how the service-account token lands at
/var/run/secrets/kubernetes.io/serviceaccount and in-cluster clients work unchanged.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nest.cluster.runner.env import PodFacts, field_ref
from nest.cluster.runner.layout import PodDir
from nest.errors import RunnerError

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Fetch:
    """The API reads volumes need, injected so the file layout is testable offline."""

    config_map: Callable[[str], Obj | None]  # the ConfigMap object, or None if missing
    secret: Callable[[str], Obj | None]
    token: Callable[[str, list[str], int], str]  # (service account, audiences, seconds) -> JWT


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def _write(root: Path, rel: str, data: bytes, mode: int) -> None:
    path = root / rel
    if root.resolve() not in path.resolve().parents:
        raise RunnerError(f"volume item path {rel!r} escapes the volume")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def object_files(obj: Obj, binary: bool) -> dict[str, bytes]:
    if binary:  # Secret: everything is base64
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    files = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return files


def _keyed(
    root: Path, source: Obj, name: str, kind: str, obj: Obj | None, default_mode: int
) -> None:
    if obj is None:
        if source.get("optional"):
            return
        raise RunnerError(f'{kind} "{name}" not found')
    files = object_files(obj, binary=kind == "secret")
    items = source.get("items")
    for item in items or [{"key": k, "path": k} for k in files]:
        if item["key"] not in files:
            if source.get("optional"):
                continue
            raise RunnerError(f'{kind} "{name}" has no key {item["key"]!r}')
        _write(root, item["path"], files[item["key"]], item.get("mode") or default_mode)


def _downward(root: Path, items: list[Obj], pod: Obj, facts: PodFacts, default_mode: int) -> None:
    for item in items:
        if "fieldRef" not in item:
            raise RunnerError(f"downwardAPI item {item.get('path')}: only fieldRef is supported")
        path = item["fieldRef"]["fieldPath"]
        meta = pod.get("metadata") or {}
        if path in ("metadata.labels", "metadata.annotations"):
            pairs = (meta.get(path.split(".")[1]) or {}).items()
            value = "\n".join(f'{k}="{v}"' for k, v in sorted(pairs))
        else:
            value = field_ref(path, pod, facts)
        _write(root, item["path"], value.encode(), item.get("mode") or default_mode)


def _projected(root: Path, spec: Obj, pod: Obj, facts: PodFacts, fetch: Fetch) -> None:
    mode = spec.get("defaultMode") or 0o644
    sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    for source in spec.get("sources") or []:
        if "secret" in source:
            s = source["secret"]
            _keyed(root, s, s["name"], "secret", fetch.secret(s["name"]), mode)
        elif "configMap" in source:
            c = source["configMap"]
            _keyed(root, c, c["name"], "configmap", fetch.config_map(c["name"]), mode)
        elif "downwardAPI" in source:
            _downward(root, source["downwardAPI"].get("items") or [], pod, facts, mode)
        elif "serviceAccountToken" in source:
            t = source["serviceAccountToken"]
            audiences = [t["audience"]] if t.get("audience") else []
            jwt = fetch.token(sa, audiences, t.get("expirationSeconds") or 3600)
            _write(root, t["path"], jwt.encode(), mode)


def prepare(pod: Obj, pod_dir: PodDir, facts: PodFacts, fetch: Fetch) -> dict[str, Path]:
    """Materialise every volume of the pod; returns each volume's host directory by name."""
    dirs: dict[str, Path] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        name = volume["name"]
        if "hostPath" in volume:
            dirs[name] = Path(volume["hostPath"]["path"])
            continue
        root = pod_dir.volume(name)
        root.mkdir(parents=True, exist_ok=True)
        dirs[name] = root
        if "emptyDir" in volume:
            continue
        if "secret" in volume:
            s = volume["secret"]
            mode = s.get("defaultMode") or 0o644
            _keyed(root, s, s["secretName"], "secret", fetch.secret(s["secretName"]), mode)
        elif "configMap" in volume:
            c = volume["configMap"]
            mode = c.get("defaultMode") or 0o644
            _keyed(root, c, c["name"], "configmap", fetch.config_map(c["name"]), mode)
        elif "downwardAPI" in volume:
            d = volume["downwardAPI"]
            _downward(root, d.get("items") or [], pod, facts, d.get("defaultMode") or 0o644)
        elif "projected" in volume:
            _projected(root, volume["projected"], pod, facts, fetch)
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise RunnerError(f"volume {name}: unsupported kind {kinds} on the local node")
    return dirs


def mounts(container: Obj, dirs: Mapping[str, Path]) -> list[Mount]:
    """The container's bind mounts, parents before children so nested mountPaths stack."""
    out = []
    for vm in container.get("volumeMounts") or []:
        if vm["name"] not in dirs:
            raise RunnerError(f"volumeMount {vm['name']}: no such volume in the pod")
        source = dirs[vm["name"]]
        if vm.get("subPath"):
            source = source / vm["subPath"]
            if dirs[vm["name"]].resolve() not in [source.resolve(), *source.resolve().parents]:
                raise RunnerError(f"subPath {vm['subPath']!r} escapes volume {vm['name']}")
            if not source.exists():
                source.mkdir(parents=True)
        out.append(Mount(str(source), vm["mountPath"], bool(vm.get("readOnly"))))
    return sorted(out, key=lambda m: len(Path(m.target).parts))
