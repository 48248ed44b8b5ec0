"""The chaos harness's judgement, without a cluster: what counts as lost, duplicated, converged.

The harness (bench.chaos) is the measuring instrument of issue 13's fault table; a judgement
that netted a lost sandbox of one revision against a duplicate of another, or called a rollout
converged while an old sandbox was still deleting, would report a fault as harmless.
"""

from __future__ import annotations

from typing import Any

from bench import chaos
from bench.chaos_faults import SANDBOX_CGROUP
from bench.chaos_load import Outcome


def _dep(name: str, replicas: int, ready: int | None = None) -> dict[str, Any]:
    ready = replicas if ready is None else ready
    return {
        "metadata": {"name": name, "generation": 2},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": 2, "replicas": replicas, "updatedReplicas": replicas,
                   "readyReplicas": ready},
    }  # fmt: skip


def _eps(name: str, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"ready": [{"sandbox": f"s{i}"} for i in range(ready)]},
    }


def _rs(uid: str, function: str, replicas: int) -> dict[str, Any]:
    labels = {"nest.sandbox.dev/function": function}
    return {"metadata": {"name": f"{function}-{uid}", "uid": uid, "labels": labels},
            "spec": {"replicas": replicas}}  # fmt: skip


def _box(
    name: str, owner: str, pod: str, phase: str = "Running", deleting: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "ownerReferences": [{"uid": owner}]}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta, "spec": {"podName": pod}, "status": {"phase": phase}}


def test_a_converged_namespace_has_no_problem_and_reports_its_spread() -> None:
    judged = chaos.judge(
        [_dep("f", 2)], [_eps("f", 2)], [_rs("new", "f", 2), _rs("old", "f", 0)],
        [_box("a", "new", "pod-1"), _box("b", "new", "pod-2")],
    )  # fmt: skip
    assert (judged.problems, judged.lost, judged.duplicated, judged.live) == ([], 0, 0, 2)
    assert judged.spread == {"f": 2}


def test_lost_and_duplicated_are_counted_per_replica_set_not_netted() -> None:
    # The new revision lacks one sandbox, the old one (scaled to 0) still holds one.
    judged = chaos.judge(
        [_dep("f", 2)], [_eps("f", 2)], [_rs("new", "f", 2), _rs("old", "f", 0)],
        [_box("a", "new", "pod-1"), _box("c", "old", "pod-2")],
    )  # fmt: skip
    assert (judged.lost, judged.duplicated) == (1, 1)
    assert judged.problems


def test_a_sandbox_still_deleting_or_not_running_is_not_converged() -> None:
    boxes = [_box("a", "new", "pod-1"), _box("b", "new", "pod-2", phase="Starting"),
             _box("x", "new", "pod-2", deleting=True)]  # fmt: skip
    judged = chaos.judge([_dep("f", 2)], [_eps("f", 2)], [_rs("new", "f", 2)], boxes)
    assert (judged.lost, judged.duplicated) == (0, 0)
    assert any("deleting" in p for p in judged.problems)
    assert any("Starting" in p for p in judged.problems)


def test_fewer_ready_endpoints_than_replicas_is_not_converged() -> None:
    judged = chaos.judge(
        [_dep("f", 2, ready=1)], [_eps("f", 1)], [_rs("new", "f", 2)],
        [_box("a", "new", "pod-1"), _box("b", "new", "pod-1")],
    )  # fmt: skip
    assert any("ready endpoints" in p for p in judged.problems)
    assert any("readyReplicas" in p for p in judged.problems)
    assert judged.spread == {"f": 1}


def test_the_table_names_each_fault_and_its_failures() -> None:
    row = chaos.Row(
        fault="runtime-kill", detail="", requests=100, failed=2,
        failed_by_status={"502": 2}, failed_by_function={"f": 2}, failed_sent_before=1,
        retried=0, first_failure_s=0.1, last_failure_s=0.2, converged=True,
        convergence_seconds=4.25, sandboxes_before=4, sandboxes_after=4, lost=0, duplicated=0,
        orphans=0, spread_before={"chaos-sub": 2}, problems=[], failure_samples=[],
    )  # fmt: skip
    line = chaos.table([row]).splitlines()[2]
    assert line.split()[:5] == ["runtime-kill", "100", "2", "502:", "2"]
    assert "4.2" in line and line.endswith("sub:2")


def test_a_sandbox_process_is_known_by_its_cgroup() -> None:
    uid = "0868d011-9a08-439d-8d37-282cf3053c06"
    pod = "/nest/nest-local-8dff886e0b/podfaf89b02-9278-4bcd-aee8-a95d4d388ca5/runtime-0"
    text = f"8:pids:{pod}/nest-sandboxes/sbx-{uid}\n1:name=systemd:/\n"  # as seen on the host
    match = SANDBOX_CGROUP.search(text)
    assert match is not None and match.group(1) == uid
    assert SANDBOX_CGROUP.search("4:pids:/nest/pod\n") is None


def test_only_a_200_is_a_success() -> None:
    assert not Outcome(0.0, "f", 200, None, False).failed
    assert Outcome(0.0, "f", 503, None, False).failed
    assert Outcome(0.0, "f", None, "ConnectError", True).label == "ConnectError"
