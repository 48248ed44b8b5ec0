"""A pod's `status`, computed as a pure function of its spec and the observed container records.

The pod worker only patches the API when `compute_status` yields something different from what
the server already holds, so an idle node causes no writes; transition times are carried over from
the previous status so that recomputing an unchanged pod really yields an identical document.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nest_cluster.runner.state import START_FAILED, ContainerRecord, ContainerState, Termination

Obj = Mapping[str, Any]
HOST_IP = "127.0.0.1"


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class PodView:
    """What the runner observed of one pod."""

    pod_ip: str
    start_time: float
    records: Mapping[str, ContainerRecord]  # by container name, init containers included
    message: str = ""  # pod-level: what the node could not give the pod (no cgroups, ...)


def _terminated(term: Termination) -> dict[str, Any]:
    out: dict[str, Any] = {
        "exitCode": term.exit_code,
        "reason": term.display_reason,
        "finishedAt": rfc3339(term.finished_at),
    }
    if term.started_at is not None:
        out["startedAt"] = rfc3339(term.started_at)
    if term.signal is not None:
        out["signal"] = term.signal
    if term.message:
        out["message"] = term.message
    if term.pid is not None:
        out["containerID"] = f"nest://{term.pid}"
    return out


def backoff_message(record: ContainerRecord, pod_name: str) -> str:
    text = f"back-off {record.backoff:g}s restarting failed container={record.name} pod={pod_name}"
    if record.last is not None and record.last.reason == START_FAILED:
        text += f": {record.last.message}"
    return text


def container_status(spec: Obj, record: ContainerRecord, pod_name: str) -> dict[str, Any]:
    state: dict[str, Any]
    last_state: dict[str, Any] = {}
    if record.state is ContainerState.PENDING:
        waiting = {"reason": record.waiting_reason}
        if record.waiting_message:
            waiting["message"] = record.waiting_message
        state = {"waiting": waiting}
    elif record.state in (ContainerState.RUNNING, ContainerState.STOPPING):
        state = {"running": {"startedAt": rfc3339(record.started_at or 0)}}
        if record.last is not None:
            last_state = {"terminated": _terminated(record.last)}
    elif record.state is ContainerState.EXITED:
        assert record.last is not None
        state = {"terminated": _terminated(record.last)}
        if record.previous is not None:
            last_state = {"terminated": _terminated(record.previous)}
    else:
        failed_start = record.last is not None and record.last.reason == START_FAILED
        reason = START_FAILED if failed_start else "CrashLoopBackOff"
        state = {"waiting": {"reason": reason, "message": backoff_message(record, pod_name)}}
        if record.last is not None:
            last_state = {"terminated": _terminated(record.last)}
    running = record.state in (ContainerState.RUNNING, ContainerState.STOPPING)
    out: dict[str, Any] = {
        "name": record.name,
        "image": spec.get("image") or "",
        "imageID": "",
        "ready": running and record.ready,
        "started": running,
        "restartCount": record.restart_count,
        "state": state,
        "lastState": last_state,
    }
    if running and record.pid is not None:
        out["containerID"] = f"nest://{record.pid}"
    elif record.state is ContainerState.EXITED and record.last and record.last.pid is not None:
        out["containerID"] = f"nest://{record.last.pid}"
    return out


def _init_done(record: ContainerRecord) -> bool:
    return (
        record.state is ContainerState.EXITED and record.last is not None and record.last.succeeded
    )


def pod_phase(spec: Obj, records: Mapping[str, ContainerRecord]) -> str:
    """The kubelet's phase rules (getPhase), over our container states."""
    policy = spec.get("restartPolicy") or "Always"
    for c in spec.get("initContainers") or []:
        record = records[c["name"]]
        if _init_done(record):
            continue
        failed = record.state is ContainerState.EXITED and not _init_done(record)
        return "Failed" if failed and policy == "Never" else "Pending"
    waiting = running = stopped = succeeded = 0
    for c in spec.get("containers") or []:
        record = records[c["name"]]
        if record.state is ContainerState.PENDING:
            waiting += 1
        elif record.state in (ContainerState.RUNNING, ContainerState.STOPPING):
            running += 1
        else:
            stopped += 1
            succeeded += bool(record.last and record.last.succeeded)
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if policy == "Always":
        return "Running"
    if policy == "OnFailure":
        return "Succeeded" if stopped == succeeded else "Running"
    return "Failed" if stopped != succeeded else "Succeeded"


def _condition(
    kind: str, ok: bool, previous: Obj, now: float, reason: str = "", message: str = ""
) -> dict[str, Any]:
    status = "True" if ok else "False"
    old = previous.get(kind) or {}
    since = old.get("lastTransitionTime") if old.get("status") == status else None
    out: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since or rfc3339(now),
    }
    if not ok and reason:
        out["reason"], out["message"] = reason, message
    return out


def compute_status(pod: Obj, view: PodView, previous: Obj | None, now: float) -> dict[str, Any]:
    """The status the runner wants the API server to show for `pod`."""
    spec = pod.get("spec") or {}
    name = (pod.get("metadata") or {}).get("name", "")
    prev_conditions = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    init_specs = spec.get("initContainers") or []
    main_specs = spec.get("containers") or []
    incomplete = [c["name"] for c in init_specs if not _init_done(view.records[c["name"]])]
    unready = [
        c["name"]
        for c in main_specs
        if not container_status(c, view.records[c["name"]], name)["ready"]
    ]
    unready_msg = f"containers with unready status: [{' '.join(unready)}]"
    status: dict[str, Any] = {
        "phase": pod_phase(spec, view.records),
        "hostIP": HOST_IP,
        "podIP": view.pod_ip,
        "podIPs": [{"ip": view.pod_ip}],
        "startTime": rfc3339(view.start_time),
        "conditions": [
            _condition(
                "Initialized",
                not incomplete,
                prev_conditions,
                now,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(incomplete)}]",
            ),
            _condition(
                "Ready", not unready, prev_conditions, now, "ContainersNotReady", unready_msg
            ),
            _condition(
                "ContainersReady",
                not unready,
                prev_conditions,
                now,
                "ContainersNotReady",
                unready_msg,
            ),
            _condition("PodScheduled", True, prev_conditions, now),
        ],
        "containerStatuses": [
            container_status(c, view.records[c["name"]], name) for c in main_specs
        ],
    }
    if view.message:
        status["message"] = view.message
    if init_specs:
        status["initContainerStatuses"] = [
            container_status(c, view.records[c["name"]], name) for c in init_specs
        ]
    return status


def needs_patch(current: Obj | None, wanted: Obj) -> bool:
    """Whether the server's status differs from ours in any field the runner owns."""
    current = current or {}
    return any(current.get(key) != value for key, value in wanted.items())
