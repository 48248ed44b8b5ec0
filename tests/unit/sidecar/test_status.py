"""Status generation: conditions, transition times, and patches only when something changed."""

from datetime import UTC, datetime, timedelta

from crds.sandbox import SandboxPhase
from nest_sidecar.status import Observed, desired_status, status_patch

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _cond(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_running_sandbox_is_ready_with_address_and_no_reason() -> None:
    obs = Observed(
        SandboxPhase.RUNNING, 3, code_ready=True, ready=True, pod_name="pool-a",
        pod_ip="127.0.0.5", port=8080, start_time=T0,
    )  # fmt: skip
    status = desired_status({}, obs, T0)
    assert status["phase"] == "Running"
    assert status["podIP"] == "127.0.0.5" and status["port"] == 8080
    assert status["startTime"] == "2026-01-01T12:00:00Z"
    assert status["observedGeneration"] == 3
    assert "reason" not in status
    assert _cond(status, "Ready")["status"] == "True"
    assert _cond(status, "CodeReady")["status"] == "True"
    assert _cond(status, "Scheduled")["message"] == "bound to pod pool-a"


def test_failed_code_names_the_reason_in_conditions_and_status() -> None:
    obs = Observed(
        SandboxPhase.FAILED, 1, code_ready=False, reason="ChecksumMismatch",
        message="sha256 differs", code_message="sha256 differs",
    )  # fmt: skip
    status = desired_status({}, obs, T0)
    assert status["reason"] == "ChecksumMismatch"
    assert _cond(status, "CodeReady") == {
        "type": "CodeReady", "status": "False", "reason": "ChecksumMismatch",
        "message": "sha256 differs", "lastTransitionTime": "2026-01-01T12:00:00Z",
        "observedGeneration": 1,
    }  # fmt: skip
    assert _cond(status, "Ready")["reason"] == "ChecksumMismatch"


def test_unknown_code_state_before_fetch() -> None:
    status = desired_status({}, Observed(SandboxPhase.SCHEDULED, 1), T0)
    assert _cond(status, "CodeReady")["status"] == "Unknown"


def test_transition_time_kept_while_status_holds_and_moved_when_it_flips() -> None:
    first = desired_status({}, Observed(SandboxPhase.STARTING, 1, code_ready=True), T0)
    later = T0 + timedelta(seconds=30)
    same = desired_status(first, Observed(SandboxPhase.STARTING, 1, code_ready=True), later)
    assert _cond(same, "CodeReady")["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    ready = desired_status(
        same, Observed(SandboxPhase.RUNNING, 1, code_ready=True, ready=True), later
    )
    assert _cond(ready, "Ready")["lastTransitionTime"] == "2026-01-01T12:00:30Z"
    assert _cond(ready, "CodeReady")["lastTransitionTime"] == "2026-01-01T12:00:00Z"


def test_no_patch_when_nothing_changed() -> None:
    status = desired_status({}, Observed(SandboxPhase.RUNNING, 1, code_ready=True, ready=True), T0)
    again = desired_status(
        status, Observed(SandboxPhase.RUNNING, 1, code_ready=True, ready=True), T0
    )
    assert status_patch(status, again) is None


def test_patch_clears_reason_once_recovered() -> None:
    failed = desired_status(
        {}, Observed(SandboxPhase.FAILED, 1, reason="OOMKilled", message="over 64Mi"), T0
    )
    running = desired_status(
        failed, Observed(SandboxPhase.RUNNING, 1, code_ready=True, ready=True, restart_count=1), T0
    )
    patch = status_patch(failed, running)
    assert patch is not None
    assert patch["status"]["reason"] is None and patch["status"]["message"] is None
    assert patch["status"]["phase"] == "Running"
    assert patch["status"]["restartCount"] == 1


def test_the_isolated_condition_says_what_the_boundary_is_or_lacks() -> None:
    from nest_sidecar.worker import boundary
    from sandbox.api import SandboxInfo

    base = {
        "id": "x", "state": "Running", "reason": "", "message": "", "pid": 1, "exit_code": None,
        "signal": None, "created_at": 0.0, "started_at": 0.0,
        "finished_at": None,
    }  # fmt: skip
    full = SandboxInfo(isolation="subprocess", confined=True, confinement="uid 200001", **base)
    reduced = SandboxInfo(
        isolation="subprocess", confined=False, confinement="Landlock unavailable", **base
    )
    in_process = SandboxInfo(isolation="namespace", **base)
    assert boundary(None) == (None, "", None)
    for info, status, reason in (
        (full, "True", "Confined"),
        (reduced, "False", "BoundaryReduced"),
        (in_process, "False", "InProcess"),
    ):
        isolated, why, message = boundary(info)
        observed = Observed(
            SandboxPhase.RUNNING, 1, isolated=isolated, isolation_reason=why,
            isolation_message=message,
        )  # fmt: skip
        cond = next(
            c for c in desired_status({}, observed, T0)["conditions"] if c["type"] == "Isolated"
        )
        assert (cond["status"], cond["reason"]) == (status, reason)
        assert cond["message"]
    plain = desired_status({}, Observed(SandboxPhase.RUNNING, 1), T0)["conditions"]
    assert "Isolated" not in {c["type"] for c in plain}
