"""ReplicaSet decisions: creations, the scale-down order, and status."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crds.common import LabelSelector
from crds.constants import POD_UID_LABEL, POOL_LABEL
from nest_operator.conditions import Condition
from nest_operator.replicaset_logic import (
    INVALID_SELECTOR,
    REPLICA_FAILURE,
    RUNTIME_CRASH,
    SELECTOR_MISMATCH,
    STATUS_REFRESH,
    Expectations,
    OwnedSandbox,
    ReplicaSetDecision,
    is_stamped,
    reconcile,
    runtime_crash_failure,
    selector_failure,
    status,
    status_wait,
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


# -- never multiply (issue 10) -------------------------------------------------------------------


def test_a_selector_that_would_not_select_what_it_creates_blocks_creation() -> None:
    selector = LabelSelector(match_labels={"app": "a"})
    assert selector_failure(selector, None, {"app": "a", "x": "1"}, {"app": "a"}) is None
    mismatch = selector_failure(selector, None, {"app": "b"}, {"app": "b"})
    assert mismatch is not None and mismatch.reason == SELECTOR_MISMATCH
    assert '"app=a"' in mismatch.message and '{"app": "b"}' in mismatch.message
    assert "set by the operator" not in mismatch.message
    stamped = selector_failure(
        LabelSelector(match_labels={"f": "bar"}), None, {"f": "foo"}, {"f": "bar"}
    )
    assert stamped is not None and "(f=foo set by the operator)" in stamped.message
    for unusable in (LabelSelector(), LabelSelector(match_labels={POOL_LABEL: "x"})):
        failure = selector_failure(unusable, None, {}, {})
        assert failure is not None and failure.reason == INVALID_SELECTOR
    invalid = selector_failure(None, "operator In needs at least one value", {}, {})
    assert invalid is not None and invalid.reason == INVALID_SELECTOR
    assert "operator In needs" in invalid.message
    assert reconcile(3, [], may_create=False) == ReplicaSetDecision()
    assert reconcile(0, [sbx("a")], may_create=False).delete == ("a",)


def test_stamped_means_the_labels_it_was_created_with_plus_binding_labels() -> None:
    stamped = {"app": "b"}
    assert is_stamped({"app": "b"}, stamped)
    assert is_stamped({"app": "b", POD_UID_LABEL: "u", POOL_LABEL: "p"}, stamped)
    assert not is_stamped({"app": "debug"}, stamped)
    assert not is_stamped({"app": "b", "debug": "1"}, stamped)
    assert not is_stamped({}, stamped)


def test_runtime_crashes_are_named_and_counted_as_not_ready() -> None:
    crashed = [
        OwnedSandbox(f"c{i}", "Failed", True, "p1", 1.0, reason=RUNTIME_CRASH) for i in range(5)
    ]
    assert all(s.active for s in crashed)  # kept: a replacement would crash the runtime again
    failure = runtime_crash_failure([*crashed, sbx("ok")])
    assert failure is not None and failure.reason == RUNTIME_CRASH
    assert failure.message.startswith('Sandboxes "c0", "c1", "c2" and 2 more crashed')
    one = runtime_crash_failure(crashed[:1])
    assert one is not None and one.message.startswith('Sandbox "c0" crashed')
    assert runtime_crash_failure([sbx("ok")]) is None
    s = status([*crashed, sbx("ok")], {}, 1, (), 0.0)
    assert (s.replicas, s.ready_replicas, s.available_replicas) == (6, 1, 1)
    assert reconcile(6, [*crashed, sbx("ok")]) == ReplicaSetDecision()


def test_expectations_wait_for_what_was_created_or_expire() -> None:
    exp = Expectations(ttl=60)
    assert exp.pending("k", 0) == 0
    exp.expect("k", 3, known={"old"}, now=0)
    exp.lower("k")  # one refused
    exp.observe("k", {"old", "new1"})
    assert exp.pending("k", 10) == 50
    exp.observe("k", {"old"})  # a seen creation deleted since still counts as seen
    exp.observe("k", {"old", "new2"})
    assert exp.pending("k", 10) == 0
    exp.expect("k", 1, known=(), now=0)
    assert exp.pending("k", 59) == 1
    assert exp.pending("k", 60) == 0  # expired: counted as not made
    exp.expect("k", 1, known=(), now=0)
    exp.forget("k")
    assert exp.pending("k", 1) == 0


def _counts(replicas: int, ready: int, generation: int = 1) -> dict[str, object]:
    return {
        "replicas": replicas,
        "fullyLabeledReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": generation,
        "conditions": [],
    }


def test_only_small_progress_waits_for_its_status_write() -> None:
    written = _counts(100, 40)
    assert status_wait(written, _counts(100, 45), 100, since_write=2.0) == STATUS_REFRESH - 2.0
    assert status_wait(written, _counts(100, 45), 100, since_write=STATUS_REFRESH) == 0
    assert status_wait(written, _counts(100, 50), 100, since_write=2.0) == 0  # a tenth gained
    assert status_wait(written, _counts(100, 39), 100, since_write=2.0) == 0  # fewer ready
    assert status_wait(written, _counts(100, 41, generation=2), 100, since_write=2.0) == 0
    assert status_wait(written, _counts(100, 41), 100, since_write=None) == 0  # not written yet
    assert status_wait(_counts(5, 4), _counts(5, 5), 5, since_write=0.1) == 0  # spec reached
    assert status_wait(_counts(30, 1), _counts(30, 2), 30, since_write=0.1) > 0
    assert status_wait(_counts(3, 1), _counts(3, 2), 3, since_write=0.1) == 0  # a step is one
    scaled_up = {**_counts(100, 40), "conditions": [{"type": "ReplicaFailure"}]}
    assert status_wait(written, scaled_up, 100, since_write=2.0) == 0
