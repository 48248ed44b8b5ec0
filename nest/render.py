"""What the function commands print: kubectl-like tables for people, JSON/YAML for scripts.

Pure functions from objects already read (and a `now` for ages) to text, so the layout is unit
tested without a cluster and `nest get` reads like `kubectl get` to anyone who knows it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from crds.constants import FUNCTION_LABEL, POOL_LABEL, REVISION_ANNOTATION
from nest.names import OUTPUTS as OUTPUTS  # the choices of -o
from nest.names import current_revision, revision_of

Obj = dict[str, Any]


def age(timestamp: str | None, now: datetime) -> str:
    """kubectl's short age: 42s, 7m, 3h, 5d; `<unknown>` without a timestamp."""
    if not timestamp:
        return "<unknown>"
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns three spaces apart, as kubectl prints them."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"


def dump(objects: Obj | list[Obj], output: str) -> str:
    """One object as is, several as a kubectl-style List, in JSON or YAML."""
    doc = (
        objects
        if isinstance(objects, dict)
        else {"apiVersion": "v1", "kind": "List", "items": objects}
    )
    if output == "yaml":
        import yaml  # only for -o yaml: its import is a good part of a table's whole cost

        return yaml.safe_dump(doc, sort_keys=False)
    return json.dumps(doc, indent=2) + "\n"


def _function(sbx: Obj) -> str:
    labels = sbx["metadata"].get("labels") or {}
    if FUNCTION_LABEL in labels:
        return str(labels[FUNCTION_LABEL])
    owners = sbx["metadata"].get("ownerReferences") or []
    # A replica set is named <deployment>-<hash>: the owner's name minus the last dash part.
    return str(owners[0]["name"]).rsplit("-", 1)[0] if owners else "<none>"


def with_namespace(text: str, objects: list[Obj]) -> str:
    """A table with kubectl's leading NAMESPACE column, for `--all-namespaces` listings."""
    namespaces = [str(o["metadata"].get("namespace", "")) for o in objects]
    width = max(len("NAMESPACE"), *(len(n) for n in namespaces))
    lines = text.splitlines()
    return "".join(
        f"{ns.ljust(width)}   {line}\n"
        for ns, line in zip(["NAMESPACE", *namespaces], lines, strict=True)
    )


def functions_table(deployments: list[Obj], now: datetime) -> str:
    rows = []
    for d in deployments:
        spec, status = d.get("spec") or {}, d.get("status") or {}
        fn = spec.get("template", {}).get("spec", {}).get("function", {})
        scaling = spec.get("autoscaling")
        bounds = f"{scaling.get('minReplicas', 0)}-{scaling['maxReplicas']}" if scaling else "-"
        rows.append(
            [
                d["metadata"]["name"],
                f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
                status.get("updatedReplicas", 0),
                status.get("availableReplicas", 0),
                fn.get("isolation", "subprocess"),
                fn.get("handler", ""),
                bounds,
                age(d["metadata"].get("creationTimestamp"), now),
            ]
        )
    headers = [
        "NAME",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "ISOLATION",
        "HANDLER",
        "AUTOSCALE",
        "AGE",
    ]
    return table(headers, rows)


def sandboxes_table(sandboxes: list[Obj], now: datetime) -> str:
    rows = []
    for s in sandboxes:
        spec, status = s.get("spec") or {}, s.get("status") or {}
        address = f"{status['podIP']}:{status['port']}" if status.get("port") else "<none>"
        pod = f"{spec.get('podNamespace')}/{spec['podName']}" if spec.get("podName") else "<none>"
        phase = status.get("phase", "Pending")
        if s["metadata"].get("deletionTimestamp"):
            phase = "Terminating"
        rows.append(
            [
                s["metadata"]["name"],
                _function(s),
                phase,
                status.get("reason") or "-",
                status.get("restartCount", 0),
                pod,
                address,
                age(s["metadata"].get("creationTimestamp"), now),
            ]
        )
    headers = ["NAME", "FUNCTION", "PHASE", "REASON", "RESTARTS", "POD", "ADDRESS", "AGE"]
    return table(headers, rows)


def pods_table(pods: list[Obj], sandboxes: list[Obj], now: datetime) -> str:
    """Pool pods with how many sandboxes each hosts (from the given sandboxes)."""
    hosted = Counter(
        (s["spec"].get("podNamespace"), s["spec"].get("podName"))
        for s in sandboxes
        if (s.get("spec") or {}).get("podName")
    )
    rows = []
    for p in pods:
        meta, status = p["metadata"], p.get("status") or {}
        containers = status.get("containerStatuses") or []
        ready = sum(1 for c in containers if c.get("ready"))
        phase = "Terminating" if meta.get("deletionTimestamp") else status.get("phase", "Unknown")
        rows.append(
            [
                meta["namespace"],
                meta["name"],
                f"{ready}/{len(containers)}",
                phase,
                status.get("podIP") or "<none>",
                (meta.get("labels") or {}).get(POOL_LABEL, ""),
                hosted[(meta["namespace"], meta["name"])],
                age(meta.get("creationTimestamp"), now),
            ]
        )
    headers = ["NAMESPACE", "NAME", "READY", "STATUS", "IP", "POOL", "SANDBOXES", "AGE"]
    return table(headers, rows)


def _indent(text: str, prefix: str = "  ") -> str:
    return "".join(prefix + line + "\n" for line in text.rstrip("\n").split("\n"))


def describe_function(
    deployment: Obj,
    replicasets: list[Obj],
    endpoints: Obj | None,
    sandboxes: list[Obj],
    events: list[Obj],
    now: datetime,
) -> str:
    """`kubectl describe`-style text: settings, replicas, revisions, endpoints, recent events."""
    meta, spec, status = deployment["metadata"], deployment["spec"], deployment.get("status") or {}
    fn = spec["template"]["spec"]["function"]
    source = fn.get("source") or {}
    kind = next(iter(source), "none")
    code = ", ".join(sorted(source["inline"])) if kind == "inline" else json.dumps(source[kind])
    scaling = spec.get("autoscaling")
    lines = [
        f"Name:           {meta['name']}",
        f"Namespace:      {meta.get('namespace', '')}",
        f"Created:        {meta.get('creationTimestamp', '<unknown>')} "
        f"({age(meta.get('creationTimestamp'), now)} ago)",
        f"Handler:        {fn['handler']}",
        f"Code:           {kind}: {code}",
        f"Isolation:      {fn.get('isolation', 'subprocess')}",
        f"Resources:      memory {fn.get('resources', {}).get('memory', '64Mi')}, "
        f"cpu {fn.get('resources', {}).get('cpu', '100m')}",
        f"Revision:       {current_revision(deployment, replicasets) or '-'}",
        f"Replicas:       {spec.get('replicas', 0)} desired | {status.get('updatedReplicas', 0)} "
        f"updated | {status.get('replicas', 0)} total | {status.get('availableReplicas', 0)} "
        f"available | {status.get('unavailableReplicas', 0)} unavailable",
        "Autoscaling:    "
        + (f"{scaling.get('minReplicas', 0)}..{scaling['maxReplicas']}" if scaling else "off"),
    ]
    out = "\n".join(lines) + "\n"
    conditions = [
        [c.get("type"), c.get("status"), c.get("reason", ""), c.get("message", "")]
        for c in status.get("conditions") or []
    ]
    if conditions:
        out += "Conditions:\n" + _indent(table(["TYPE", "STATUS", "REASON", "MESSAGE"], conditions))
    revs = [
        [
            (rs["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION, "-"),
            rs["metadata"]["name"],
            f"{(rs.get('status') or {}).get('readyReplicas', 0)}/{rs['spec'].get('replicas', 0)}",
            rs["spec"]["template"]["spec"]["function"]["handler"],
            age(rs["metadata"].get("creationTimestamp"), now),
        ]
        for rs in sorted(replicasets, key=lambda r: revision_of(r) or 0)
    ]
    out += "Revisions:\n" + (
        _indent(table(["REVISION", "REPLICA SET", "READY", "HANDLER", "AGE"], revs))
        if revs
        else "  <none>\n"
    )
    ep = (endpoints or {}).get("status") or {}
    addresses = [
        [
            ("ready" if ready else "not ready"),
            a.get("sandbox"),
            a.get("podName"),
            f"{a.get('podIP')}:{a.get('port')}",
            a.get("revision", "-"),
        ]
        for ready, key in ((True, "ready"), (False, "notReady"))
        for a in ep.get(key) or []
    ]
    out += "Endpoints:\n" + (
        _indent(table(["STATE", "SANDBOX", "POD", "ADDRESS", "REVISION"], addresses))
        if addresses
        else "  <none>\n"
    )
    out += "Sandboxes:\n" + (
        _indent(sandboxes_table(sandboxes, now)) if sandboxes else "  <none>\n"
    )
    recent = [
        [
            e.get("type", ""),
            e.get("reason", ""),
            age(e.get("lastTimestamp") or e.get("eventTime"), now),
            f"{e['involvedObject'].get('kind', '')}/{e['involvedObject'].get('name', '')}",
            e.get("message", ""),
        ]
        for e in events[-20:]
    ]
    out += "Events:\n" + (
        _indent(table(["TYPE", "REASON", "AGE", "OBJECT", "MESSAGE"], recent))
        if recent
        else "  <none>\n"
    )
    return out


def now_utc() -> datetime:
    return datetime.now(UTC)
