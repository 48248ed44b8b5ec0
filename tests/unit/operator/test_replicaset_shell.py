"""The replica set controller's shell never multiplies (issue 10), driven against a fake API.

Each test runs `ReplicaSetController.reconcile` as the manager does, on a real Store, with
`FakeKube` standing in for the API server, and counts what it asked for: a replica set whose
selector would not select what it creates creates nothing and says why, what it made and can
never own is collected, creations whose outcome is unknown are expected before it creates
again, bursts are capped, and a sandbox that crashed a shared runtime is kept, not replaced.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest

from crds import constants as c
from nest_kube import ApiError
from nest_operator import adapters
from nest_operator.kube import Kube
from nest_operator.replicaset_controller import ReplicaSetController
from nest_operator.replicaset_logic import (
    BURST_REPLICAS,
    EXPECTATIONS_TTL,
    REPLICA_FAILURE,
    STATUS_REFRESH,
    OwnedSandbox,
)
from nest_operator.scheduler import SchedulerCache
from nest_operator.store import Kind, Obj, Store
from tests.unit.operator.fake_kube import FakeKube, api_error

NS = "team"
FUNCTION = {"handler": "main:handler", "source": {"inline": {"main.py": "x"}}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def kube(store: Store) -> FakeKube:
    return FakeKube(store)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def controller(store: Store, kube: FakeKube, clock: Clock) -> ReplicaSetController:
    ctl = ReplicaSetController(store, cast(Kube, kube), SchedulerCache(), clock=clock)
    ctl.requeue = lambda key, delay: requeued.append((key, delay))
    requeued.clear()
    return ctl


requeued: list[tuple[str, float]] = []


def add_replicaset(
    kube: FakeKube,
    replicas: int = 2,
    selector: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    owner: dict[str, Any] | None = None,
) -> Obj:
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.REPLICASET_KIND,
        "metadata": {"name": "w", "ownerReferences": [owner] if owner else []},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "a"}} if selector is None else selector,
            "template": {
                "metadata": {"labels": {"app": "a"} if labels is None else labels},
                "spec": {"function": FUNCTION},
            },
        },
    }
    rs = kube.stored(Kind.REPLICASET, NS, body)
    kube.store.apply(Kind.REPLICASET, "ADDED", rs)
    return rs


def add_sandbox(
    kube: FakeKube,
    name: str,
    labels: dict[str, str],
    owner: Obj | None,
    phase: str = "Running",
    reason: str | None = None,
    ready: bool = True,
) -> Obj:
    refs = []
    if owner is not None:
        meta = owner["metadata"]
        refs = [
            {"kind": owner["kind"], "name": meta["name"], "uid": meta["uid"], "controller": True}
        ]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if reason:
        status["reason"] = reason
    body = {
        "kind": c.SANDBOX_KIND,
        "metadata": {"name": name, "labels": labels, "ownerReferences": refs},
        "spec": {"function": FUNCTION},
        "status": status,
    }
    sandbox = kube.stored(Kind.SANDBOX, NS, body)
    kube.store.apply(Kind.SANDBOX, "ADDED", sandbox)
    return sandbox


def status_of(store: Store, name: str = "w") -> dict[str, Any]:
    rs = store.get(Kind.REPLICASET, f"{NS}/{name}")
    assert rs is not None
    return cast(dict[str, Any], rs.get("status") or {})


def replica_failure(store: Store) -> dict[str, Any] | None:
    conditions = status_of(store).get("conditions") or []
    return next((cond for cond in conditions if cond["type"] == REPLICA_FAILURE), None)


def warnings(kube: FakeKube) -> list[tuple[str, str]]:
    return [(e.reason, e.message) for e in kube.events if e.type == "Warning"]


# -- a selector that would not select what it creates --------------------------------------------


async def test_a_mismatching_replica_set_creates_nothing_and_says_why_once(
    store: Store, kube: FakeKube, controller: ReplicaSetController
) -> None:
    add_replicaset(kube, replicas=3, labels={"app": "b"})  # admitted before the rule
    for _ in range(5):  # every event that brings it back
        await controller.reconcile(f"{NS}/w")
    assert kube.sandbox_creates() == 0
    failure = replica_failure(store)
    assert failure is not None and failure["status"] == "True"
    assert failure["reason"] == "SelectorMismatch"
    assert 'spec.selector "app=a" does not match' in failure["message"]
    assert '{"app": "b"}' in failure["message"]
    assert [reason for reason, _ in warnings(kube)] == ["SelectorMismatch"]


async def test_the_function_label_an_owning_deployment_adds_is_counted(
    store: Store, kube: FakeKube, controller: ReplicaSetController
) -> None:
    # Admitted: the selector matches the template's labels, but the operator stamps
    # function=<deployment> on every sandbox, which the selector does not select.
    owner = {"apiVersion": c.API_VERSION, "kind": c.DEPLOYMENT_KIND, "name": "foo", "uid": "d1",
             "controller": True}  # fmt: skip
    labels = {c.FUNCTION_LABEL: "bar"}
    add_replicaset(kube, selector={"matchLabels": labels}, labels=labels, owner=owner)
    await controller.reconcile(f"{NS}/w")
    assert kube.sandbox_creates() == 0
    failure = replica_failure(store)
    assert failure is not None and failure["reason"] == "SelectorMismatch"
    assert f"({c.FUNCTION_LABEL}=foo set by the operator)" in failure["message"]


async def test_what_it_made_and_cannot_own_is_collected_and_what_was_relabelled_released(
    store: Store, kube: FakeKube, controller: ReplicaSetController
) -> None:
    rs = add_replicaset(kube, replicas=2, labels={"app": "b"})
    bound = {"app": "b", c.POD_UID_LABEL: "p1", c.POOL_LABEL: "default"}
    add_sandbox(kube, "made-bound", bound, rs)  # by an operator before this one
    add_sandbox(kube, "made", {"app": "b"}, rs)
    add_sandbox(kube, "relabelled", {"app": "debug"}, rs)  # taken out by a person
    add_sandbox(kube, "stranger", {"app": "b"}, None)  # nobody's: not ours to delete
    await controller.reconcile(f"{NS}/w")
    assert sorted(kube.deletes) == ["made", "made-bound"]
    released = store.get(Kind.SANDBOX, f"{NS}/relabelled")
    assert released is not None and not released["metadata"].get("ownerReferences")
    assert store.get(Kind.SANDBOX, f"{NS}/stranger") is not None
    assert kube.sandbox_creates() == 0
    assert [e.reason for e in kube.events if e.type == "Normal"] == ["SandboxesCollected"]


@pytest.mark.parametrize(
    "selector",
    [{}, {"matchLabels": {"app": "a"},
          "matchExpressions": [{"key": c.POOL_LABEL, "operator": "DoesNotExist"}]}],
    ids=["empty", "by-binding-label"],
)  # fmt: skip
async def test_an_unusable_selector_adopts_releases_and_collects_nothing(
    store: Store, kube: FakeKube, controller: ReplicaSetController, selector: dict[str, Any]
) -> None:
    rs = add_replicaset(kube, selector=selector)
    add_sandbox(kube, "bound", {"app": "a", c.POD_UID_LABEL: "p1", c.POOL_LABEL: "x"}, rs)
    add_sandbox(kube, "orphan", {"app": "a"}, None)
    await controller.reconcile(f"{NS}/w")
    assert (kube.sandbox_creates(), kube.deletes, kube.patches[:-1]) == (0, [], [])
    failure = replica_failure(store)
    assert failure is not None and failure["reason"] == "InvalidSelector"


# -- expectations, slow start and the burst cap --------------------------------------------------


async def test_creations_with_an_unknown_outcome_are_expected_before_creating_again(
    store: Store, kube: FakeKube, controller: ReplicaSetController, clock: Clock
) -> None:
    def time_out(kind: Kind, body: Obj) -> None:
        raise api_error(504, "Timeout: request did not complete within 60s", "Gateway Timeout")

    rs = add_replicaset(kube, replicas=2)
    kube.on_create = time_out
    with pytest.raises(RuntimeError, match="504"):
        await controller.reconcile(f"{NS}/w")
    assert kube.sandbox_creates() == 2
    kube.on_create = None
    await controller.reconcile(f"{NS}/w")  # the API server may have stored both
    assert kube.sandbox_creates() == 2
    assert requeued and requeued[-1][1] == pytest.approx(EXPECTATIONS_TTL)
    add_sandbox(kube, "arrived", {"app": "a"}, rs)  # the watch shows one of them
    await controller.reconcile(f"{NS}/w")
    assert kube.sandbox_creates() == 2
    clock.now += EXPECTATIONS_TTL  # the other never shows: counted as not made
    await controller.reconcile(f"{NS}/w")
    assert kube.sandbox_creates() == 3
    assert len(store.owned(Kind.SANDBOX, rs["metadata"]["uid"])) == 2


async def test_a_refused_creation_stops_the_slow_start_and_is_retried(
    store: Store, kube: FakeKube, controller: ReplicaSetController
) -> None:
    def quota(kind: Kind, body: Obj) -> None:
        raise api_error(403, 'sandboxes "w-x" is forbidden: exceeded quota: no-sbx')

    add_replicaset(kube, replicas=10)
    kube.on_create = quota
    with pytest.raises(RuntimeError, match="exceeded quota"):
        await controller.reconcile(f"{NS}/w")
    assert kube.sandbox_creates() == 4  # the first batch of the slow start, not ten
    failure = replica_failure(store)
    assert failure is not None and failure["reason"] == "FailedCreate"
    assert '403 Forbidden: sandboxes "w-x" is forbidden: exceeded quota' in failure["message"]
    kube.on_create = None  # refused outright: nothing to expect, so the retry creates
    await controller.reconcile(f"{NS}/w")
    assert kube.sandbox_creates() == 4 + 10
    assert replica_failure(store) is None


async def test_a_create_refused_by_a_terminating_namespace_is_no_failure(
    store: Store, kube: FakeKube, controller: ReplicaSetController
) -> None:
    def terminating(kind: Kind, body: Obj) -> None:
        message = f"unable to create new content in namespace {NS} because it is being terminated"
        cause = {
            "reason": "NamespaceTerminating",
            "message": message,
            "field": "metadata.namespace",
        }
        raise ApiError(403, "Forbidden", {"message": message, "details": {"causes": [cause]}})

    add_replicaset(kube, replicas=3)
    kube.on_create = terminating
    await controller.reconcile(f"{NS}/w")  # no RuntimeError: nothing to retry, it goes too
    assert kube.sandbox_creates() == 3
    assert replica_failure(store) is None
    assert not [w for w in warnings(kube) if w[0] == "FailedCreate"]


async def test_at_most_burst_replicas_per_sync(
    store: Store, kube: FakeKube, controller: ReplicaSetController
) -> None:
    add_replicaset(kube, replicas=BURST_REPLICAS + 100)
    await controller.reconcile(f"{NS}/w")
    assert kube.sandbox_creates() == BURST_REPLICAS
    await controller.reconcile(f"{NS}/w")
    assert kube.sandbox_creates() == BURST_REPLICAS + 100


# -- a sandbox that crashed its pod's shared runtime ---------------------------------------------


async def test_a_runtime_crash_is_kept_not_replaced_and_named(
    store: Store, kube: FakeKube, controller: ReplicaSetController
) -> None:
    rs = add_replicaset(kube, replicas=2)
    add_sandbox(kube, "fine", {"app": "a"}, rs)
    add_sandbox(kube, "culprit", {"app": "a"}, rs, phase="Failed", reason="RuntimeCrash",
                ready=True)  # fmt: skip
    for _ in range(3):
        await controller.reconcile(f"{NS}/w")
    assert (kube.sandbox_creates(), kube.deletes) == (0, [])
    status = status_of(store)
    assert (status["replicas"], status["readyReplicas"], status["availableReplicas"]) == (2, 1, 1)
    failure = replica_failure(store)
    assert failure is not None and failure["reason"] == "RuntimeCrash"
    assert '"culprit"' in failure["message"] and "isolation: subprocess" in failure["message"]
    assert [reason for reason, _ in warnings(kube)] == ["RuntimeCrash"]


async def test_an_evicted_sandbox_is_still_replaced(
    store: Store, kube: FakeKube, controller: ReplicaSetController
) -> None:
    rs = add_replicaset(kube, replicas=1)
    add_sandbox(kube, "evicted", {"app": "a"}, rs, phase="Failed", reason="Evicted", ready=False)
    await controller.reconcile(f"{NS}/w")
    assert (kube.sandbox_creates(), kube.deletes) == (1, ["evicted"])
    assert replica_failure(store) is None


def test_the_fake_merges_patches_as_the_api_server() -> None:
    from tests.unit.operator.fake_kube import merge

    base = {"metadata": {"labels": {"a": "1"}, "ownerReferences": [{"uid": "x"}]}}
    merged = merge(base, {"metadata": {"ownerReferences": None, "labels": {"b": "2"}}})
    assert merged == {"metadata": {"labels": {"a": "1", "b": "2"}}}
    assert base == copy.deepcopy(base)


# -- what a claim looks at, and coalesced status writes (issue 14) ------------------------------


async def test_a_claim_leaves_other_controllers_and_other_namespaces_alone(
    store: Store, kube: FakeKube, controller: ReplicaSetController
) -> None:
    rs = add_replicaset(kube, replicas=2)
    other = {"kind": c.REPLICASET_KIND, "metadata": {"name": "v", "uid": "uid-other"}}
    add_sandbox(kube, "theirs", {"app": "a"}, other)
    elsewhere = kube.stored(Kind.SANDBOX, "elsewhere", {
        "metadata": {"name": "far", "labels": {"app": "a"}, "ownerReferences": [
            {"kind": c.REPLICASET_KIND, "name": "w", "uid": rs["metadata"]["uid"],
             "controller": True}]},
        "spec": {"function": FUNCTION},
    })  # fmt: skip
    store.apply(Kind.SANDBOX, "ADDED", elsewhere)
    stray = kube.stored(Kind.SANDBOX, "elsewhere", {"metadata": {"name": "stray",
                        "labels": {"app": "a"}}, "spec": {"function": FUNCTION}})  # fmt: skip
    store.apply(Kind.SANDBOX, "ADDED", stray)
    add_sandbox(kube, "orphan", {"app": "a"}, None)
    await controller.reconcile(f"{NS}/w")
    # The orphan of its namespace is adopted, one more is made; nothing else is touched.
    assert [(kind, name) for kind, name, _ in kube.patches if kind == Kind.SANDBOX] == [
        (Kind.SANDBOX, "orphan")
    ]
    assert (kube.sandbox_creates(), kube.deletes) == (1, [])
    assert status_of(store)["replicas"] == 2
    assert store.orphans(Kind.SANDBOX, NS) == [] and store.orphans(Kind.SANDBOX, "elsewhere")


def status_writes(kube: FakeKube) -> int:
    return sum(1 for kind, _, body in kube.patches if kind == Kind.REPLICASET and "status" in body)


async def ready(kube: FakeKube, name: str, value: bool = True) -> None:
    condition = {"type": "Ready", "status": "True" if value else "False"}
    await kube.patch(Kind.SANDBOX, NS, name, {"status": {"conditions": [condition]}})


async def test_progress_is_written_in_steps_and_the_status_that_matters_at_once(
    store: Store, kube: FakeKube, controller: ReplicaSetController, clock: Clock
) -> None:
    rs = add_replicaset(kube, replicas=20)
    for i in range(20):
        add_sandbox(kube, f"s{i:02d}", {"app": "a"}, rs, ready=False)
    await controller.reconcile(f"{NS}/w")  # its first status is written whatever it says
    assert (status_writes(kube), status_of(store)["readyReplicas"]) == (1, 0)
    await ready(kube, "s00")
    await controller.reconcile(f"{NS}/w")  # one of twenty: held back, and a reconcile set
    assert (status_writes(kube), status_of(store)["readyReplicas"]) == (1, 0)
    assert requeued == [(f"{NS}/w", STATUS_REFRESH)]
    await controller.reconcile(f"{NS}/w")
    assert len(requeued) == 1  # one requeue per held-back status, not one per reconcile
    await ready(kube, "s01")
    await controller.reconcile(f"{NS}/w")  # a tenth of the replicas: written
    assert (status_writes(kube), status_of(store)["readyReplicas"]) == (2, 2)
    await ready(kube, "s02")
    await controller.reconcile(f"{NS}/w")
    clock.now += STATUS_REFRESH  # the requeued reconcile: the held-back status is due
    await controller.reconcile(f"{NS}/w")
    assert (status_writes(kube), status_of(store)["readyReplicas"]) == (3, 3)
    await ready(kube, "s02", False)  # fewer ready: written at once
    await controller.reconcile(f"{NS}/w")
    assert (status_writes(kube), status_of(store)["readyReplicas"]) == (4, 2)
    for i in range(2, 20):
        await ready(kube, f"s{i:02d}")
    await controller.reconcile(f"{NS}/w")  # all of spec.replicas ready: written at once
    assert (status_writes(kube), status_of(store)["readyReplicas"]) == (5, 20)


async def test_a_new_generation_is_observed_at_once(
    store: Store, kube: FakeKube, controller: ReplicaSetController
) -> None:
    rs = add_replicaset(kube, replicas=20)
    for i in range(20):
        add_sandbox(kube, f"s{i:02d}", {"app": "a"}, rs, ready=False)
    await controller.reconcile(f"{NS}/w")
    await ready(kube, "s00")
    await kube.patch(Kind.REPLICASET, NS, "w", {"metadata": {"generation": 2}})
    await controller.reconcile(f"{NS}/w")
    assert status_writes(kube) == 2
    assert (status_of(store)["observedGeneration"], status_of(store)["readyReplicas"]) == (2, 1)


async def test_a_reconcile_reads_again_only_the_sandboxes_that_changed(
    store: Store, kube: FakeKube, controller: ReplicaSetController, monkeypatch: pytest.MonkeyPatch
) -> None:
    rs = add_replicaset(kube, replicas=3)
    for i in range(3):
        add_sandbox(kube, f"s{i}", {"app": "a"}, rs)
    await controller.reconcile(f"{NS}/w")
    reads: list[str] = []
    read = adapters.owned_sandbox

    def counted(sandbox: Obj) -> OwnedSandbox:
        reads.append(sandbox["metadata"]["name"])
        return read(sandbox)

    monkeypatch.setattr(adapters, "owned_sandbox", counted)
    await ready(kube, "s1", False)
    await controller.reconcile(f"{NS}/w")
    assert reads == ["s1"]
    assert status_of(store)["readyReplicas"] == 2
