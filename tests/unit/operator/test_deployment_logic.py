"""Rollout math: hashing, fenceposts, rolling and recreate steps, history, status."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crds.constants import TEMPLATE_HASH_LABEL
from nest_operator.conditions import find
from nest_operator.deployment_logic import (
    AVAILABLE,
    PROGRESSING,
    RECREATE,
    DeploymentInfo,
    DeploymentPlan,
    DeploymentStatus,
    ReplicaSetInfo,
    find_new_and_old,
    resolve_fenceposts,
    sync,
    template_hash,
    with_hash,
)
from nest_operator.errors import InvalidRolloutStrategy


def template(version: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "f"}}, "spec": {"function": {"handler": version}}}


def rs(
    version: str, revision: int, replicas: int, available: int | None = None, t: float = 0
) -> ReplicaSetInfo:
    h = template_hash(template(version))
    ready = replicas if available is None else available
    return ReplicaSetInfo(
        f"f-{h}", revision, replicas, with_hash(template(version), h), t, replicas, ready, ready
    )


def test_template_hash_is_stable_short_and_ignores_key_order_and_its_own_label() -> None:
    h = template_hash(template("v1"))
    assert h == template_hash(
        {"spec": {"function": {"handler": "v1"}}, "metadata": {"labels": {"app": "f"}}}
    )
    assert h == template_hash(with_hash(template("v1"), "zzz"))
    assert h != template_hash(template("v2"))
    assert h != template_hash(template("v1"), collision_count=1)
    assert 1 <= len(h) <= 10 and set(h) <= set("bcdfghjklmnpqrstvwxz2456789")


def test_fenceposts_round_as_kubernetes() -> None:
    assert resolve_fenceposts("25%", "25%", 10) == (3, 2)
    assert resolve_fenceposts(2, "0%", 3) == (2, 0)
    assert resolve_fenceposts("0%", "10%", 5) == (0, 1)  # rounds to 0: one may go
    with pytest.raises(InvalidRolloutStrategy):
        resolve_fenceposts(0, "0%", 10)


def test_new_and_old_by_template() -> None:
    v1, v2 = rs("v1", 1, 3), rs("v2", 2, 0)
    assert find_new_and_old(template("v2"), [v1, v2]) == (v2, [v1])
    assert find_new_and_old(template("v3"), [v1, v2]) == (None, [v1, v2])


def test_first_rolling_step_creates_the_new_set_with_the_next_revision() -> None:
    steady = DeploymentStatus(1, 4, 4, 4, 4)
    d = DeploymentInfo("f", 2, 4, template("v2"), max_surge=1, max_unavailable=1, status=steady)
    plan = sync(d, [rs("v1", 3, 4)], now=100)
    assert plan.create is not None
    assert plan.create.revision == 4 and plan.create.replicas == 1
    assert (
        plan.create.template["metadata"]["labels"][TEMPLATE_HASH_LABEL] == plan.create.template_hash
    )
    assert plan.scale == ((rs("v1", 3, 4).name, 3),)  # one may be unavailable
    assert find(plan.status.conditions, PROGRESSING).reason == "NewReplicaSetCreated"  # type: ignore[union-attr]


def test_reviving_an_old_template_bumps_its_revision() -> None:
    d = DeploymentInfo("f", 3, replicas=2, template=template("v1"))
    plan = sync(d, [rs("v1", 1, 0), rs("v2", 2, 2)], now=0)
    assert plan.create is None and plan.revisions == ((rs("v1", 1, 0).name, 3),)


def apply(sets: list[ReplicaSetInfo], plan: DeploymentPlan) -> list[ReplicaSetInfo]:
    """The replica set controller, instantly: scaled-down sets lose unavailable sandboxes first."""
    scale = dict(plan.scale)
    out = []
    for s in sets:
        n = scale.get(s.name, s.replicas)
        avail = min(s.available_replicas, n)
        out.append(
            dataclasses.replace(
                s, replicas=n, status_replicas=n, ready_replicas=avail, available_replicas=avail
            )
        )
    if plan.create is not None:
        c = plan.create
        out.append(
            ReplicaSetInfo(c.name, c.revision, c.replicas, c.template, 1000, c.replicas, 0, 0)
        )
    return [s for s in out if s.name not in plan.delete]


@settings(max_examples=80, deadline=None)
@given(
    replicas=st.integers(1, 12),
    surge=st.one_of(st.integers(0, 4), st.sampled_from(["0%", "25%", "50%", "100%"])),
    unavailable=st.one_of(st.integers(0, 4), st.sampled_from(["0%", "25%", "50%"])),
    data=st.data(),
)
def test_rolling_update_respects_surge_and_availability_and_finishes(
    replicas: int, surge: int | str, unavailable: int | str, data: st.DataObject
) -> None:
    if surge in (0, "0%") and unavailable in (0, "0%"):
        return
    max_surge, max_unavail = resolve_fenceposts(surge, unavailable, replicas)
    d = DeploymentInfo(
        "f", 2, replicas, template("v2"), max_surge=surge, max_unavailable=unavailable
    )
    sets = [rs("v1", 1, replicas)]
    for step in range(200):
        plan = sync(d, sets, now=float(step))
        d = dataclasses.replace(d, status=plan.status)
        sets = apply(sets, plan)
        assert sum(s.replicas for s in sets) <= replicas + max_surge
        assert sum(s.available_replicas for s in sets) >= min(replicas, replicas - max_unavail)
        # Some new sandboxes become ready; force it late so the rollout must finish.
        new = next((s for s in sets if s.template["spec"] == template("v2")["spec"]), None)
        if new is not None and new.available_replicas < new.replicas:
            k = (
                new.replicas - new.available_replicas
                if step > 100
                else data.draw(st.integers(0, new.replicas - new.available_replicas))
            )
            ready = new.available_replicas + k
            sets = [
                dataclasses.replace(s, ready_replicas=ready, available_replicas=ready)
                if s is new
                else s
                for s in sets
            ]
    final = {s.template["spec"]["function"]["handler"]: s.replicas for s in sets}
    assert final == {"v1": 0, "v2": replicas}
    assert find(d.status.conditions, PROGRESSING).reason == "NewReplicaSetAvailable"  # type: ignore[union-attr]
    assert find(d.status.conditions, AVAILABLE).status == "True"  # type: ignore[union-attr]


def test_recreate_scales_old_to_zero_then_waits_then_creates() -> None:
    d = DeploymentInfo("f", 2, 3, template("v2"), strategy=RECREATE)
    old = rs("v1", 1, 3)
    first = sync(d, [old], now=0)
    assert first.create is None and first.scale == ((old.name, 0),)
    draining = dataclasses.replace(old, replicas=0)  # sandboxes still running
    assert sync(d, [draining], now=1).create is None
    gone = dataclasses.replace(draining, status_replicas=0, ready_replicas=0, available_replicas=0)
    created = sync(d, [gone], now=2).create
    assert created is not None and created.replicas == 3 and created.revision == 2


def test_paused_creates_nothing_and_says_so() -> None:
    d = DeploymentInfo("f", 2, 5, template("v2"), paused=True)
    plan = sync(d, [rs("v1", 1, 3)], now=0)
    assert plan.create is None and plan.scale == ((rs("v1", 1, 3).name, 5),)
    cond = find(plan.status.conditions, PROGRESSING)
    assert cond is not None and (cond.status, cond.reason) == ("Unknown", "DeploymentPaused")
    resumed = sync(
        dataclasses.replace(d, paused=False, status=plan.status), [rs("v1", 1, 3)], now=1
    )
    assert resumed.create is not None


def test_history_beyond_the_limit_is_deleted_once_complete_and_only_if_scaled_to_zero() -> None:
    olds = [rs(f"v{i}", i, 0) for i in range(1, 5)]
    running_old = dataclasses.replace(olds[0], status_replicas=1)
    # Paused: cleanup runs although the old set's last sandbox still runs.
    d = DeploymentInfo("f", 2, 2, template("v9"), revision_history_limit=2, paused=True)
    current = rs("v9", 9, 2)
    plan = sync(d, [running_old, *olds[1:], current], now=0)
    assert plan.delete == (olds[1].name,)


def test_progress_deadline_exceeded_without_progress() -> None:
    d = DeploymentInfo("f", 2, 2, template("v2"), progress_deadline_seconds=60)
    stuck = [rs("v1", 1, 2), rs("v2", 2, 1, available=0)]
    plan = sync(d, stuck, now=0)
    d = dataclasses.replace(d, status=plan.status)
    assert find(plan.status.conditions, PROGRESSING).reason == "ReplicaSetUpdated"  # type: ignore[union-attr]
    assert find(sync(d, stuck, now=50).status.conditions, PROGRESSING).status == "True"  # type: ignore[union-attr]
    late = sync(d, stuck, now=61).status
    cond = find(late.conditions, PROGRESSING)
    assert cond is not None and (cond.status, cond.reason) == ("False", "ProgressDeadlineExceeded")
    assert late.updated_replicas == 1 and late.replicas == 3 and late.available_replicas == 2
