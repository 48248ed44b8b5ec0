"""A container's environment and command line, resolved from the pod spec like the kubelet does.

Pure functions only: the pod worker fetches the ConfigMaps and Secrets a container refers to (see
`referenced_objects`) and hands their data in, so the rules - `valueFrom`, `envFrom`, `$(VAR)`
expansion, the variables every local container gets - are testable without an API server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nest_cluster.errors import RunnerError

Obj = Mapping[str, Any]

#: Env marking a process as started by the runner of one node dir: `nest cluster down` kills
#: every process carrying it, even if the runner itself died.
NODE_MARKER = "NEST_LOCAL_NODE"


@dataclass(frozen=True)
class PodFacts:
    """What the downward API may expose about a pod besides its spec."""

    pod_ip: str
    host_ip: str = "127.0.0.1"


@dataclass(frozen=True)
class Sources:
    """ConfigMap and Secret data (already decoded) by name, in the pod's namespace."""

    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def expand(text: str, mapping: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: `$$` escapes, unknown or unterminated refs stay verbatim."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(mapping.get(name, text[i : end + 1]))
            i = end + 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def referenced_objects(container: Obj) -> tuple[set[str], set[str]]:
    """Names of the ConfigMaps and Secrets whose data a container's env needs."""
    config_maps: set[str] = set()
    secrets: set[str] = set()
    for var in container.get("env") or []:
        source = var.get("valueFrom") or {}
        if "configMapKeyRef" in source:
            config_maps.add(source["configMapKeyRef"]["name"])
        if "secretKeyRef" in source:
            secrets.add(source["secretKeyRef"]["name"])
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            config_maps.add(source["configMapRef"]["name"])
        if "secretRef" in source:
            secrets.add(source["secretRef"]["name"])
    return config_maps, secrets


def field_ref(path: str, pod: Obj, facts: PodFacts) -> str:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": facts.pod_ip,
        "status.podIPs": facts.pod_ip,
        "status.hostIP": facts.host_ip,
    }
    if path in simple:
        return str(simple[path])
    for prefix in ("labels", "annotations"):
        head = f"metadata.{prefix}['"
        if path.startswith(head) and path.endswith("']"):
            return str((meta.get(prefix) or {}).get(path[len(head) : -2], ""))
    raise RunnerError(f"unsupported fieldRef {path!r}")


def _quantity(text: str) -> float:
    suffixes = {
        "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    }  # fmt: skip
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


def _resource_ref(ref: Obj, pod: Obj, container: Obj) -> str:
    named = ref.get("containerName")
    if named:
        containers = (pod.get("spec") or {}).get("containers") or []
        container = next((c for c in containers if c.get("name") == named), container)
    kind, _, resource = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
    # The API server stores an unset divisor as "0"; it means 1.
    divisor = _quantity(str(ref.get("divisor") or "1")) or 1.0
    if value is None:
        # The kubelet falls back to node allocatable; "unlimited" is the honest answer locally.
        return "0"
    amount = _quantity(str(value)) / divisor
    return str(int(-(-amount // 1)))  # the kubelet rounds up


def _key_ref(ref: Obj, data: Mapping[str, Mapping[str, str]], kind: str) -> str | None:
    name, key = ref["name"], ref["key"]
    if name not in data:
        if ref.get("optional"):
            return None
        raise RunnerError(f'{kind} "{name}" not found')
    if key not in data[name]:
        if ref.get("optional"):
            return None
        raise RunnerError(f'couldn\'t find key {key} in {kind} "{name}"')
    return data[name][key]


def container_env(
    pod: Obj,
    container: Obj,
    facts: PodFacts,
    sources: Sources,
    base: Mapping[str, str],
) -> dict[str, str]:
    """The full process environment: `base`, then envFrom, then env (expanded in order)."""
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, data in (("configMapRef", sources.config_maps), ("secretRef", sources.secrets)):
            if kind in source:
                name = source[kind]["name"]
                if name not in data:
                    if source[kind].get("optional"):
                        continue
                    raise RunnerError(f'{kind[: -len("Ref")]} "{name}" not found')
                env.update({prefix + k: v for k, v in data[name].items()})
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        value: str | None
        if source is None:
            value = expand(var.get("value") or "", env)
        elif "fieldRef" in source:
            value = field_ref(source["fieldRef"]["fieldPath"], pod, facts)
        elif "resourceFieldRef" in source:
            value = _resource_ref(source["resourceFieldRef"], pod, container)
        elif "configMapKeyRef" in source:
            value = _key_ref(source["configMapKeyRef"], sources.config_maps, "configmap")
        elif "secretKeyRef" in source:
            value = _key_ref(source["secretKeyRef"], sources.secrets, "secret")
        else:
            raise RunnerError(f"env {var['name']}: unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[var["name"]] = value
    return env


def command_line(container: Obj, env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded; the image's entrypoint is unknown locally."""
    command: Sequence[str] = container.get("command") or []
    args: Sequence[str] = container.get("args") or []
    if not command:
        raise RunnerError(
            "no command: the local node ignores images, so it cannot know the image's"
            " entrypoint; set `command` in the container spec"
        )
    return [expand(part, env) for part in [*command, *args]]


def base_env(
    pod: Obj, api_port: int, node_dir: str, inherited: Mapping[str, str]
) -> dict[str, str]:
    """What every local container starts from, before its own spec."""
    env = {k: inherited[k] for k in ("PATH", "HOME", "LANG", "TZ") if k in inherited}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(
        {
            "HOSTNAME": str((pod.get("metadata") or {}).get("name", "")),
            # In-cluster clients reach the real API server; its certificate names 127.0.0.1.
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
            "KUBERNETES_PORT": f"tcp://127.0.0.1:{api_port}",
            NODE_MARKER: node_dir,
        }
    )
    return env
