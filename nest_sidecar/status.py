"""What a Sandbox's status should say, computed from what the sidecar observed: pure functions.

This is the sidecar's `status/generate.go`: the worker reports an `Observed` snapshot, and these
functions turn it into the status the API should show and decide whether a patch is needed at all.
Keeping it pure makes the rules (condition transitions keep their time, nothing is written when
nothing changed) testable without an API server, and lets the status manager coalesce writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crds.sandbox import SandboxConditionType, SandboxPhase

# The one limit on a message the sidecar writes (status, conditions, Events): a user reads it in
# `kubectl get/describe`, and a runtime's message can be a whole traceback.
MESSAGE_LIMIT = 1024
ELLIPSIS = "…"


@dataclass(frozen=True)
class Observed:
    """The worker's view of one sandbox at one moment."""

    phase: SandboxPhase
    generation: int
    code_ready: bool | None = None  # None: not tried yet
    code_message: str | None = None
    ready: bool = False
    reason: str | None = None
    message: str | None = None
    restart_count: int = 0
    start_time: datetime | None = None
    pod_name: str | None = None
    pod_ip: str | None = None
    port: int | None = None
    isolated: bool | None = None  # None: not known yet (the condition is left out)
    isolation_reason: str = ""
    isolation_message: str | None = None


def brief(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """`message` cut to `limit` characters, its start kept (where the cause is named), with an
    ellipsis saying that something was cut."""
    if len(message) <= limit:
        return message
    return message[: limit - len(ELLIPSIS)].rstrip() + ELLIPSIS


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    type_: SandboxConditionType, ok: bool | None, reason: str, message: str | None
) -> dict[str, Any]:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    cond: dict[str, Any] = {"type": type_.value, "status": status, "reason": reason}
    if message:
        cond["message"] = brief(message)
    return cond


def _conditions(observed: Observed) -> list[dict[str, Any]]:
    failed_code = observed.code_ready is False
    ready_reason = "SandboxReady" if observed.ready else (observed.reason or observed.phase.value)
    conditions = [
        _condition(
            SandboxConditionType.SCHEDULED,
            True,
            "Bound",
            f"bound to pod {observed.pod_name}" if observed.pod_name else None,
        ),
        _condition(
            SandboxConditionType.CODE_READY,
            observed.code_ready,
            (observed.reason or "FetchFailed") if failed_code else "CodeFetched",
            observed.code_message,
        ),
        _condition(
            SandboxConditionType.READY,
            observed.ready,
            ready_reason,
            None if observed.ready else observed.message,
        ),
    ]
    if observed.isolated is not None:
        conditions.append(
            _condition(
                SandboxConditionType.ISOLATED,
                observed.isolated,
                observed.isolation_reason,
                observed.isolation_message,
            )
        )
    return conditions


def desired_status(current: Mapping[str, Any], observed: Observed, now: datetime) -> dict[str, Any]:
    """The status to show; conditions keep their lastTransitionTime while their status holds."""
    previous = {c.get("type"): c for c in current.get("conditions") or []}
    conditions = []
    for cond in _conditions(observed):
        before = previous.get(cond["type"])
        unchanged = before is not None and before.get("status") == cond["status"]
        cond["lastTransitionTime"] = (
            before.get("lastTransitionTime", rfc3339(now)) if unchanged and before else rfc3339(now)
        )
        cond["observedGeneration"] = observed.generation
        conditions.append(cond)
    status: dict[str, Any] = {
        "phase": observed.phase.value,
        "conditions": conditions,
        "restartCount": observed.restart_count,
        "observedGeneration": observed.generation,
    }
    optional = {
        "podIP": observed.pod_ip,
        "port": observed.port,
        "reason": observed.reason,
        "message": brief(observed.message) if observed.message else None,
        "startTime": rfc3339(observed.start_time) if observed.start_time else None,
    }
    status.update({k: v for k, v in optional.items() if v is not None})
    return status


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch taking `current` to `desired`, or None when they already agree.

    Fields that disappear (a cleared reason) are set to null so the merge removes them;
    conditions go as a whole list, which is how a merge patch replaces lists.
    """
    if dict(current) == dict(desired):
        return None
    patch: dict[str, Any] = {k: v for k, v in desired.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in desired})
    return {"status": patch}
