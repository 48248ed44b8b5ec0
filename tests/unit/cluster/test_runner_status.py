"""Pod status is a pure function of spec and container records, stable when nothing changed."""

from nest_cluster.runner.state import ContainerRecord, ContainerState, Termination
from nest_cluster.runner.status import PodView, compute_status, needs_patch, pod_phase

T0 = 1_700_000_000.0


def _pod(policy: str = "Always", init: bool = False) -> dict:
    spec: dict = {"restartPolicy": policy, "containers": [{"name": "a", "image": "img"}]}
    if init:
        spec["initContainers"] = [{"name": "setup", "image": "img"}]
    return {"metadata": {"name": "p"}, "spec": spec}


def _view(**records: ContainerRecord) -> PodView:
    return PodView("127.0.0.2", T0, records)


RUNNING = ContainerRecord("a", state=ContainerState.RUNNING, pid=42, started_at=T0, ready=True)


def test_running_and_ready() -> None:
    status = compute_status(_pod(), _view(a=RUNNING), None, T0 + 1)
    assert status["phase"] == "Running"
    assert status["podIP"] == "127.0.0.2" and status["podIPs"] == [{"ip": "127.0.0.2"}]
    assert status["hostIP"] == "127.0.0.1"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "Initialized": "True", "Ready": "True", "ContainersReady": "True", "PodScheduled": "True",
    }  # fmt: skip
    (container,) = status["containerStatuses"]
    assert container["containerID"] == "nest://42"
    assert container["state"] == {"running": {"startedAt": "2023-11-14T22:13:20Z"}}
    assert container["ready"] and container["started"]


def test_unchanged_pod_needs_no_patch_and_transition_times_are_kept() -> None:
    first = compute_status(_pod(), _view(a=RUNNING), None, T0 + 1)
    again = compute_status(_pod(), _view(a=RUNNING), first, T0 + 100)
    assert again == first
    assert not needs_patch({**first, "qosClass": "BestEffort"}, again)
    unready = compute_status(
        _pod(), _view(a=RUNNING.__class__(**{**RUNNING.__dict__, "ready": False})), first, T0 + 200
    )
    assert needs_patch(first, unready)
    ready_cond = next(c for c in unready["conditions"] if c["type"] == "Ready")
    assert ready_cond["status"] == "False" and ready_cond["reason"] == "ContainersNotReady"
    assert ready_cond["lastTransitionTime"] == "2023-11-14T22:16:40Z"


def test_crash_loop_shows_backoff_and_last_state() -> None:
    crash = Termination(exit_code=3, finished_at=T0 + 5, started_at=T0, pid=42)
    record = ContainerRecord(
        "a", state=ContainerState.BACKOFF, restart_count=2, last=crash, backoff=4.0
    )
    status = compute_status(_pod(), _view(a=record), None, T0 + 6)
    (container,) = status["containerStatuses"]
    assert status["phase"] == "Running"
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert "back-off 4s" in container["state"]["waiting"]["message"]
    assert container["lastState"]["terminated"]["exitCode"] == 3
    assert container["lastState"]["terminated"]["reason"] == "Error"
    assert container["restartCount"] == 2 and not container["ready"]


def test_start_failure_reason_and_phases() -> None:
    failed = Termination(127, T0, reason="RunContainerError", message='exec: "nope": not found')
    exited = ContainerRecord("a", state=ContainerState.EXITED, last=failed)
    status = compute_status(_pod("Never"), _view(a=exited), None, T0)
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "RunContainerError" and "nope" in terminated["message"]
    assert status["phase"] == "Failed"
    backoff = ContainerRecord("a", state=ContainerState.BACKOFF, last=failed, backoff=1.0)
    waiting = compute_status(_pod(), _view(a=backoff), None, T0)["containerStatuses"][0]
    assert waiting["state"]["waiting"]["reason"] == "RunContainerError"
    assert "nope" in waiting["state"]["waiting"]["message"]


def test_phase_rules() -> None:
    done = ContainerRecord("a", state=ContainerState.EXITED, last=Termination(0, T0))
    failed = ContainerRecord("a", state=ContainerState.EXITED, last=Termination(1, T0))
    pending = ContainerRecord("a")
    spec = _pod("OnFailure")["spec"]
    assert pod_phase(spec, {"a": done}) == "Succeeded"
    assert pod_phase(spec, {"a": failed}) == "Running"  # about to be restarted
    assert pod_phase(_pod("Never")["spec"], {"a": failed}) == "Failed"
    assert pod_phase(spec, {"a": pending}) == "Pending"


def test_init_containers_gate_the_pod() -> None:
    setup_running = ContainerRecord(
        "setup", init=True, state=ContainerState.RUNNING, pid=1, started_at=T0
    )
    waiting = ContainerRecord("a", waiting_reason="PodInitializing")
    status = compute_status(_pod(init=True), _view(setup=setup_running, a=waiting), None, T0)
    assert status["phase"] == "Pending"
    init_cond = next(c for c in status["conditions"] if c["type"] == "Initialized")
    assert init_cond["status"] == "False" and "setup" in init_cond["message"]
    assert status["initContainerStatuses"][0]["state"]["running"]
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    setup_failed = ContainerRecord(
        "setup", init=True, state=ContainerState.EXITED, last=Termination(1, T0)
    )
    assert (
        pod_phase(_pod("Never", init=True)["spec"], {"setup": setup_failed, "a": waiting})
        == "Failed"
    )


def test_what_the_node_cannot_give_is_the_pods_message() -> None:
    message = "the local node runs containers without cgroups: ...; limits are not enforced"
    view = PodView("127.0.0.2", T0, {"a": RUNNING}, message)
    assert compute_status(_pod(), view, None, T0)["message"] == message
    assert "message" not in compute_status(_pod(), _view(a=RUNNING), None, T0)


def test_oom_killed_and_config_errors_keep_their_reasons() -> None:
    oom = Termination(137, T0, signal=9, reason="OOMKilled")
    exited = ContainerRecord("a", state=ContainerState.EXITED, last=oom)
    status = compute_status(_pod("Never"), _view(a=exited), None, T0)
    assert status["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
    reason = "CreateContainerConfigError"
    waiting = ContainerRecord("a", waiting_reason=reason, waiting_message="no")
    status = compute_status(_pod(), _view(a=waiting), None, T0)
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"]["waiting"] == {
        "reason": "CreateContainerConfigError", "message": "no"
    }  # fmt: skip
