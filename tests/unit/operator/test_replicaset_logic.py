"""ReplicaSet decisions: creations, the scale-down order, and status."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nest_operator.conditions import Condition
from nest_operator.replicaset_logic import (
    REPLICA_FAILURE,
    OwnedSandbox,
    ReplicaSetDecision,
    reconcile,
    status,
)


def sbx(
    name: str, pod: str | None = "p1", ready: bool = True, t: float = 0, **kw: object
) -> OwnedSandbox:
    return OwnedSandbox(name, kw.pop("phase", "Running"), ready, pod, t, **kw)  # type: ignore[arg-type]


def test_creates_the_missing_and_ignores_finished_and_deleting() -> None:
    owned = [sbx("a"), sbx("b", phase="Failed"), sbx("c", deleting=True)]
    assert reconcile(3, owned).create == 2
    assert reconcile(1, owned).delete == ()
    assert reconcile(900, []).create == 500  # burst limit


def test_scale_down_order() -> None:
    owned = [
        sbx("newest-on-busy", pod="busy", t=9),
        sbx("old-on-busy", pod="busy", t=1),
        sbx("on-quiet", pod="quiet", t=1),
        sbx("not-ready", pod="busy", ready=False, t=1),
        sbx("unscheduled", pod=None, ready=False, t=0),
    ]
    load = {"busy": 20, "quiet": 2}
    order = reconcile(0, owned, load).delete
    assert order == ("unscheduled", "not-ready", "on-quiet", "newest-on-busy", "old-on-busy")
    assert reconcile(3, owned, load).delete == ("unscheduled", "not-ready")


def test_without_load_its_own_sandboxes_per_pod_count() -> None:
    owned = [sbx("a1", pod="a"), sbx("a2", pod="a"), sbx("b1", pod="b")]
    assert reconcile(2, owned).delete == ("b1",)


sandboxes = st.lists(
    st.builds(
        OwnedSandbox,
        name=st.uuids().map(str),
        phase=st.sampled_from(["Pending", "Running", "Failed", "Succeeded"]),
        ready=st.booleans(),
        pod_uid=st.sampled_from([None, "p1", "p2", "p3"]),
        created_at=st.floats(0, 100),
        deleting=st.booleans(),
    ),
    max_size=30,
)


@given(owned=sandboxes, desired=st.integers(0, 40))
def test_removes_or_adds_exactly_the_difference(owned: list[OwnedSandbox], desired: int) -> None:
    decision = reconcile(desired, owned)
    active = {s.name for s in owned if s.active}
    assert set(decision.delete) <= active
    assert len(active) + decision.create - len(decision.delete) == desired
    assert not (decision.create and decision.delete)


def test_status_counts_and_failure_condition() -> None:
    owned = [
        sbx("a", labels={"app": "x"}),
        sbx("b", ready=False, labels={"app": "x", "more": "1"}),
        sbx("c", labels={}),
        sbx("gone", deleting=True, labels={"app": "x"}),
    ]
    s = status(owned, {"app": "x"}, generation=4, conditions=(), now=10, failure="quota")
    assert (s.replicas, s.fully_labeled_replicas, s.ready_replicas, s.available_replicas) == (
        3,
        2,
        2,
        2,
    )
    assert s.observed_generation == 4
    assert [(c.type, c.reason, c.message, c.last_transition_time) for c in s.conditions] == [
        (REPLICA_FAILURE, "FailedCreate", "quota", 10)
    ]
    again = status(owned, {"app": "x"}, 4, s.conditions, now=20, failure="quota")
    assert again.conditions == s.conditions
    cleared = status(owned, {"app": "x"}, 4, (*s.conditions, Condition("Other", "True", "X")), 30)
    assert [c.type for c in cleared.conditions] == ["Other"]


def test_broken_code_is_not_replaced_but_evicted_and_completed_are() -> None:
    broken = OwnedSandbox("broken", "Failed", False, "p1", 1.0, reason="ImportError")
    evicted = OwnedSandbox("evicted", "Failed", False, "p1", 1.0, reason="Evicted")
    completed = OwnedSandbox("done", "Succeeded", False, "p1", 1.0)
    assert broken.active and not broken.finished
    assert evicted.finished and not evicted.active
    assert completed.finished
    assert reconcile(3, [broken, evicted, completed]) == ReplicaSetDecision(create=2)
