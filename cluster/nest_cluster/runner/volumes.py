"""Pod volumes as host directories, and the bind mounts that put them at each `mountPath`.

Each volume becomes a directory under the pod's state dir (an emptyDir is just that directory,
mode 0777 as the kubelet makes it, so every container of the pod that mounts it sees the same
files whatever its user); secret, configMap, downwardAPI and projected volumes are written out
when the pod starts, file modes from `defaultMode`/`mode`, and with the pod's `fsGroup` as group
(setgid directories, group read, as the kubelet's SetVolumeOwnership). The process shim
bind-mounts them in the container's private mount namespace, which is how the service-account
token lands at /var/run/secrets/kubernetes.io/serviceaccount and in-cluster clients work unchanged.

Which token: the legacy Secret token, if admission put one in the pod (ServiceAccount admission
also applies `automountServiceAccountToken`, pod-level over the ServiceAccount's, so a pod that
opts out has no token volume at all). A projected `serviceAccountToken` source is requested from
the TokenRequest API bound to the pod (the pod-name/pod-uid claims), and `TokenFile` remembers it
so the pod worker rewrites the file, atomically, before it expires (`refresh_at`).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nest_cluster.errors import RunnerError
from nest_cluster.runner.env import PodFacts, field_ref
from nest_cluster.runner.layout import PodDir

Obj = Mapping[str, Any]


#: The kubelet refreshes a projected token at 80% of its lifetime, or once it is 24 h old.
REFRESH_FRACTION = 0.8
MAX_TOKEN_AGE = 24 * 3600.0
EMPTY_DIR_MODE = 0o777


@dataclass(frozen=True)
class Grant:
    """A token the TokenRequest API issued."""

    token: str
    expires_at: float  # epoch seconds, from status.expirationTimestamp


@dataclass(frozen=True)
class TokenFile:
    """A projected service-account token on disk, and what it takes to renew it."""

    path: Path
    service_account: str
    audiences: tuple[str, ...]
    seconds: int
    mode: int
    gid: int | None
    issued_at: float
    expires_at: float


def _no_record(_: TokenFile) -> None:
    return None


@dataclass(frozen=True)
class Fetch:
    """The API reads volumes need, injected so the file layout is testable offline."""

    config_map: Callable[[str], Obj | None]  # the ConfigMap object, or None if missing
    secret: Callable[[str], Obj | None]
    token: Callable[[str, list[str], int], Grant]  # (service account, audiences, seconds)
    issued: Callable[[TokenFile], None] = _no_record  # told of every projected token written


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def _write(root: Path, rel: str, data: bytes, mode: int, gid: int | None = None) -> Path:
    """Write one file of a volume atomically: readers (and refreshes) never see half a file."""
    path = root / rel
    if root.resolve() not in path.resolve().parents:
        raise RunnerError(f"volume item path {rel!r} escapes the volume")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    if gid is not None:
        os.chown(tmp, -1, gid)
    tmp.replace(path)
    return path


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


def fs_group(pod: Obj) -> int | None:
    value = ((pod.get("spec") or {}).get("securityContext") or {}).get("fsGroup")
    return None if value is None else int(value)


def _projected(root: Path, spec: Obj, pod: Obj, facts: PodFacts, fetch: Fetch) -> None:
    mode = spec.get("defaultMode") or 0o644
    sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    gid = fs_group(pod)
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
            audiences = (t["audience"],) if t.get("audience") else ()
            seconds = int(t.get("expirationSeconds") or 3600)
            # The kubelet writes the token 0600 when an fsGroup will widen it to group-read.
            token_mode = 0o600 if gid is not None else mode
            grant = fetch.token(sa, list(audiences), seconds)
            path = _write(root, t["path"], grant.token.encode(), token_mode)
            issued = grant.expires_at - seconds
            fetch.issued(TokenFile(path, sa, audiences, seconds, token_mode, gid, issued,
                                   grant.expires_at))  # fmt: skip


def refresh_at(token: TokenFile, jitter: float = 0.0) -> float:
    """When the kubelet's token manager would renew it: at 80% of its TTL, or at 24 h of age."""
    ttl = token.expires_at - token.issued_at
    return min(token.issued_at + REFRESH_FRACTION * ttl, token.issued_at + MAX_TOKEN_AGE) - jitter


def refresh(token: TokenFile, fetch: Fetch) -> TokenFile:
    """Request a new token and replace the file's content atomically; the renewed record."""
    grant = fetch.token(token.service_account, list(token.audiences), token.seconds)
    mode = token.mode | (0o040 if token.gid is not None else 0)
    _write(token.path.parent, token.path.name, grant.token.encode(), mode, token.gid)
    return replace(token, issued_at=grant.expires_at - token.seconds, expires_at=grant.expires_at)


def own(root: Path, gid: int, writable: bool) -> None:
    """The kubelet's SetVolumeOwnership: group `gid`, group read (and write), setgid dirs."""
    mask = 0o660 if writable else 0o440
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        os.chown(path, -1, gid)
        extra = mask | 0o2110 if path.is_dir() else mask
        os.chmod(path, path.stat().st_mode & 0o7777 | extra)


def prepare(pod: Obj, pod_dir: PodDir, facts: PodFacts, fetch: Fetch) -> dict[str, Path]:
    """Materialise every volume of the pod; returns each volume's host directory by name."""
    dirs: dict[str, Path] = {}
    gid = fs_group(pod)
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        name = volume["name"]
        if "hostPath" in volume:
            dirs[name] = Path(volume["hostPath"]["path"])
            continue
        root = pod_dir.volume(name)
        root.mkdir(parents=True, exist_ok=True)
        dirs[name] = root
        if "emptyDir" in volume:
            os.chmod(root, EMPTY_DIR_MODE)
        elif "secret" in volume:
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
        if gid is not None:
            own(root, gid, writable="emptyDir" in volume)
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
