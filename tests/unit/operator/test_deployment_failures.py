"""A replica set the API server refuses shows on its deployment, with back-off (issue 10).

The pure part (`deployment_failures`): the status while creation fails, the back-off, and the
replica sets' `ReplicaFailure` shown on the deployment. The shell (`DeploymentController`) is
driven against `FakeKube` as the manager drives it, counting requests, so "no hot loop" is a
count of attempts per back-off period, not a timing.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from crds import constants as c
from nest_operator import deployment_failures as df
from nest_operator.conditions import TRUE, Condition, find
from nest_operator.deployment_controller import DeploymentController
from nest_operator.deployment_logic import (
    PROGRESSING,
    DeploymentInfo,
    ReplicaSetInfo,
    template_hash,
    with_hash,
)
from nest_operator.kube import Kube
from nest_operator.store import Kind, Obj, Store
from tests.unit.operator.fake_kube import FakeKube, api_error

NS = "team"
QUOTA = (
    'sandboxreplicasets.nest.sandbox.dev "w-x" is forbidden: exceeded quota: no-rs, '
    "requested: count/sandboxreplicasets.nest.sandbox.dev=1"
)


def template(handler: str = "main:handler") -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "w"}},
        "spec": {"function": {"handler": handler, "source": {"inline": {"main.py": "x"}}}},
    }


# -- pure ----------------------------------------------------------------------------------------


def test_back_off_doubles_per_name_up_to_a_cap_and_restarts_for_a_new_name() -> None:
    assert [df.backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert df.backoff(100) == df.BACKOFF_MAX
    first = df.refused(None, "w-a", "quota", now=10)
    again = df.refused(first, "w-a", "quota", now=11)
    assert (first.attempts, first.retry_at, again.attempts, again.retry_at) == (1, 11, 2, 13)
    other = df.refused(again, "w-b", "quota", now=12)
    assert (other.attempts, other.retry_at) == (1, 13)


def test_a_held_creation_does_nothing_else_and_shows_the_servers_message() -> None:
    d = DeploymentInfo("w", 1, 2, template())
    planned, wait = df.plan(d, [], now=0)
    assert planned.create is not None and wait == 0
    failure = df.refused(None, planned.create.name, QUOTA, now=0)
    held, wait = df.plan(d, [], now=0.5, failure=failure)
    assert held.create is None and (held.scale, held.delete) == ((), ())
    assert wait == 0.5
    failed = find(held.status.conditions, df.REPLICA_FAILURE)
    assert failed is not None and (failed.status, failed.reason) == (TRUE, df.FAILED_CREATE)
    assert failed.message == QUOTA
    progressing = find(held.status.conditions, PROGRESSING)
    assert progressing is not None and progressing.reason == df.CREATE_ERROR
    assert progressing.message == f'Failed to create new replica set "{failure.name}": {QUOTA}'
    retried, wait = df.plan(d, [], now=1, failure=failure)
    assert retried.create is not None and wait == 0


def test_the_same_failure_again_does_not_change_the_written_conditions() -> None:
    d = DeploymentInfo("w", 1, 2, template())
    planned, _ = df.plan(d, [], now=0)
    failure = df.refused(None, "w-x", QUOTA, now=0)
    first = df.failed_status(d, planned.status, failure, now=0)
    written = DeploymentInfo("w", 1, 2, template(), status=first)
    again = df.failed_status(written, planned.status, df.refused(failure, "w-x", QUOTA, 1), 1)
    assert again.conditions == first.conditions


def test_a_replica_sets_failure_shows_on_the_deployment_the_new_sets_first() -> None:
    h = template_hash(template())
    crash = Condition(df.REPLICA_FAILURE, TRUE, "RuntimeCrash", 'Sandbox "c" crashed ...')
    quota = Condition(df.REPLICA_FAILURE, TRUE, "FailedCreate", "quota")
    new = ReplicaSetInfo(f"w-{h}", 2, 2, with_hash(template(), h), 1.0, 2, 1, 1, (crash,))
    old_t = template("main:old")
    h_old = template_hash(old_t)
    old = ReplicaSetInfo(f"w-{h_old}", 1, 0, with_hash(old_t, h_old), 0.0, 0, 0, 0, (quota,))
    d = DeploymentInfo("w", 1, 2, template())
    shown, _ = df.plan(d, [new, old], now=5)
    failed = find(shown.status.conditions, df.REPLICA_FAILURE)
    assert failed is not None and (failed.reason, failed.message) == (crash.reason, crash.message)
    healthy = ReplicaSetInfo(f"w-{h}", 2, 2, with_hash(template(), h), 1.0, 2, 2, 2)
    only_old, _ = df.plan(d, [healthy, old], now=5)
    failed = find(only_old.status.conditions, df.REPLICA_FAILURE)
    assert failed is not None and failed.reason == "FailedCreate"
    cleared, _ = df.plan(d, [healthy], now=6)
    assert find(cleared.status.conditions, df.REPLICA_FAILURE) is None


# -- the shell -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def add_deployment(kube: FakeKube, handler: str = "main:handler") -> Obj:
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.DEPLOYMENT_KIND,
        "metadata": {"name": "w"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "w"}},
                 "template": template(handler)},
    }  # fmt: skip
    d = kube.stored(Kind.DEPLOYMENT, NS, body)
    kube.store.apply(Kind.DEPLOYMENT, "ADDED", d)
    return d


def conditions(store: Store) -> dict[str, dict[str, Any]]:
    d = store.get(Kind.DEPLOYMENT, f"{NS}/w")
    assert d is not None
    return {cond["type"]: cond for cond in (d.get("status") or {}).get("conditions") or []}


@pytest.fixture
def setup() -> tuple[Store, FakeKube, Clock, DeploymentController, list[float]]:
    store = Store()
    kube = FakeKube(store)
    clock = Clock()
    controller = DeploymentController(store, cast(Kube, kube), clock=clock)
    requeued: list[float] = []
    controller.requeue = lambda key, delay: requeued.append(delay)
    return store, kube, clock, controller, requeued


async def test_a_refused_replica_set_shows_on_the_deployment_and_is_retried_with_back_off(
    setup: tuple[Store, FakeKube, Clock, DeploymentController, list[float]],
) -> None:
    store, kube, clock, controller, requeued = setup

    def quota(kind: Kind, body: Obj) -> None:
        raise api_error(403, QUOTA)

    kube.on_create = quota
    add_deployment(kube)
    await controller.reconcile(f"{NS}/w")
    assert len(kube.creates) == 1
    shown = conditions(store)
    assert shown["ReplicaFailure"]["status"] == "True"
    assert shown["ReplicaFailure"]["reason"] == "FailedCreate"
    assert shown["ReplicaFailure"]["message"] == f"403 Forbidden: {QUOTA}"
    assert shown["Progressing"]["status"] == "False"
    assert shown["Progressing"]["reason"] == "ReplicaSetCreateError"
    assert [(e.type, e.reason) for e in kube.events] == [("Warning", "FailedCreate")]
    assert QUOTA in kube.events[0].message and requeued == [1.0]
    patches = len(kube.patches)
    for _ in range(50):  # every replica set or sandbox event of the deployment
        await controller.reconcile(f"{NS}/w")
    assert (len(kube.creates), len(kube.events), len(kube.patches)) == (1, 1, patches)
    assert requeued == [1.0]  # one timer for the retry, however many events
    clock.now += 1.0
    await controller.reconcile(f"{NS}/w")
    assert len(kube.creates) == 2 and requeued[-1] == 2.0
    clock.now += 1.0  # half of the next back-off
    await controller.reconcile(f"{NS}/w")
    assert len(kube.creates) == 2
    kube.on_create = None  # the quota is raised
    clock.now += 1.0
    await controller.reconcile(f"{NS}/w")
    assert len(kube.creates) == 3 and len(store.all(Kind.REPLICASET)) == 1
    shown = conditions(store)
    assert "ReplicaFailure" not in shown
    assert (shown["Progressing"]["status"], shown["Progressing"]["reason"]) == (
        "True",
        "NewReplicaSetCreated",
    )


async def test_a_new_template_is_tried_at_once_despite_the_back_off(
    setup: tuple[Store, FakeKube, Clock, DeploymentController, list[float]],
) -> None:
    store, kube, _, controller, _ = setup

    def too_large(kind: Kind, body: Obj) -> None:
        if body["spec"]["template"]["spec"]["function"]["handler"] == "main:big":
            raise api_error(500, "etcdserver: request is too large", "Internal Server Error")

    kube.on_create = too_large
    add_deployment(kube, handler="main:big")
    await controller.reconcile(f"{NS}/w")
    assert "etcdserver: request is too large" in conditions(store)["ReplicaFailure"]["message"]
    await kube.patch(Kind.DEPLOYMENT, NS, "w", {"spec": {"template": template("main:small")}})
    await controller.reconcile(f"{NS}/w")  # same clock: no back-off for the new name
    assert len(kube.creates) == 2 and len(store.all(Kind.REPLICASET)) == 1
    assert "ReplicaFailure" not in conditions(store)


async def test_a_replica_set_is_scaled_through_its_scale_subresource(
    setup: tuple[Store, FakeKube, Clock, DeploymentController, list[float]],
) -> None:
    """Not a PATCH of the object: /scale is not asked of the admission webhook (issue 14: its
    round trip was on the path of every start from zero)."""
    store, kube, _, controller, _ = setup
    add_deployment(kube)
    await controller.reconcile(f"{NS}/w")  # creates the set with 2 replicas
    (rs,) = store.all(Kind.REPLICASET)
    await kube.scale(Kind.DEPLOYMENT, NS, "w", 0)
    kube.scales.clear()
    await controller.reconcile(f"{NS}/w")
    assert kube.scales == [(Kind.REPLICASET, rs["metadata"]["name"], 0)]
    scaled = store.get(Kind.REPLICASET, f"{NS}/{rs['metadata']['name']}")
    assert scaled is not None and scaled["spec"]["replicas"] == 0
