"""TenantIsolation alone, then within the Scheduler: who may share a pool pod.

Tenants are Kubernetes namespaces. Namespace-mode sandboxes share a pod only with their own
namespace's, whatever the pool says; a Dedicated pool gives each pod to one namespace at a time;
a pool restricts modes and namespaces for every pod alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nest_operator.scheduler import (
    BoundSandbox,
    Code,
    PodInfo,
    PoolPod,
    PoolPolicy,
    SandboxRequest,
    Scheduler,
    SchedulerCache,
    Status,
)
from nest_operator.scheduler.plugins import (
    DEDICATED_TO_OTHER,
    HOLDS_OTHER_NAMESPACE,
    HOLDS_OTHER_NAMESPACE_MODE,
    TENANT_ISOLATION,
    TOO_MANY_SANDBOXES,
    TenantIsolation,
    mode_not_offered,
    namespace_not_allowed,
)

NOW = 1000.0
MI = 1024 * 1024
SUB, NS = "subprocess", "namespace"
SHARED = PoolPolicy("default", frozenset({SUB, NS}))
DEDICATED = dataclasses.replace(SHARED, dedicated=True)


def pod(name: str = "p0", **changes: object) -> PoolPod:
    base = PoolPod(
        name=name, namespace="nest", uid=f"uid-{name}", pool="default", ready=True,
        lease_renewed_at=NOW - 1, cordoned=False, memory=1024 * MI, cpu=1000,
        max_sandboxes=10, isolation=frozenset({SUB, NS}),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def request(uid: str = "s0", namespace: str = "a", isolation: str = SUB) -> SandboxRequest:
    return SandboxRequest(uid, namespace, uid, "default", 64 * MI, 100, isolation, "d", "rs")


def held(*sandboxes: tuple[str, str], policy: PoolPolicy | None = SHARED) -> PodInfo:
    """A pod holding one sandbox per (namespace, isolation)."""
    info = PodInfo(pod(), policy=policy)
    for n, (namespace, isolation) in enumerate(sandboxes):
        info.add(BoundSandbox(f"b{n}", "uid-p0", MI, 1, None, None, namespace, isolation))
    return info


def fits(req: SandboxRequest, info: PodInfo) -> Status | None:
    return TenantIsolation().filter(req, info, NOW)


# --- the per-pod rules --------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", [SUB, NS])
@pytest.mark.parametrize("policy", [SHARED, DEDICATED, None])
def test_an_empty_pod_or_one_holding_only_the_same_namespace_fits(
    isolation: str, policy: PoolPolicy | None
) -> None:
    assert fits(request(isolation=isolation), held(policy=policy)) is None
    own = held(("a", SUB), ("a", NS), policy=policy)
    assert fits(request(isolation=isolation), own) is None


@pytest.mark.parametrize("policy", [SHARED, DEDICATED])
def test_namespace_mode_never_joins_another_namespace(policy: PoolPolicy) -> None:
    assert fits(request(isolation=NS), held(("b", SUB), policy=policy)) == HOLDS_OTHER_NAMESPACE
    mixed = held(("a", SUB), ("b", SUB), policy=policy)
    assert fits(request(isolation=NS), mixed) == HOLDS_OTHER_NAMESPACE


@pytest.mark.parametrize("isolation", [SUB, NS])
@pytest.mark.parametrize("policy", [SHARED, DEDICATED])
def test_nothing_joins_another_namespace_s_namespace_mode(
    isolation: str, policy: PoolPolicy
) -> None:
    assert fits(request(isolation=isolation), held(("b", NS), policy=policy)) == (
        HOLDS_OTHER_NAMESPACE_MODE
    )
    # Even when the pod also holds the request's own namespace (a state only a pool edit or a
    # manual binding can produce): the other tenant's interpreter is still there.
    both = held(("a", NS), ("b", NS), policy=policy)
    assert fits(request(isolation=isolation), both) == HOLDS_OTHER_NAMESPACE_MODE


def test_shared_pools_let_subprocess_sandboxes_of_namespaces_mix() -> None:
    assert fits(request(), held(("b", SUB), ("c", SUB))) is None
    assert fits(request(), held(("a", NS), ("b", SUB))) is None  # a's own interpreter only


def test_dedicated_pools_give_a_pod_to_one_namespace_at_a_time() -> None:
    assert fits(request(), held(("b", SUB), policy=DEDICATED)) == DEDICATED_TO_OTHER
    assert fits(request(), held(("a", SUB), ("b", SUB), policy=DEDICATED)) == DEDICATED_TO_OTHER
    info = held(("b", SUB), policy=DEDICATED)
    info.remove("b0")  # the other tenant left: the pod is free again
    assert fits(request(), info) is None


def test_every_reason_names_the_plugin_and_only_the_pool_s_rules_are_unresolvable() -> None:
    per_pod = [HOLDS_OTHER_NAMESPACE, HOLDS_OTHER_NAMESPACE_MODE, DEDICATED_TO_OTHER]
    per_pool = [mode_not_offered("p", NS), namespace_not_allowed("p", "a")]
    assert all(s.message.startswith(f"{TENANT_ISOLATION}: ") for s in per_pod + per_pool)
    assert TenantIsolation.name == TENANT_ISOLATION
    # The other tenant's sandboxes may leave; the pool's rules change only with the pool.
    assert {s.code for s in per_pod} == {Code.UNSCHEDULABLE}
    assert {s.code for s in per_pool} == {Code.UNRESOLVABLE}


def test_aggregates_follow_add_and_remove() -> None:
    info = held(("a", NS), ("a", SUB), ("b", SUB))
    assert (info.namespaces, info.namespace_mode) == ({"a": 2, "b": 1}, {"a": 1})
    info.remove("b0")
    assert (info.namespaces, info.namespace_mode) == ({"a": 1, "b": 1}, {})
    info.remove("b1")
    info.remove("b2")
    assert (info.namespaces, info.namespace_mode) == ({}, {})


# --- the pool-wide rules (pre-filter) -----------------------------------------------------------


def cache_with(
    policy: PoolPolicy | None, *pods: PoolPod, **namespaces: Mapping[str, str]
) -> SchedulerCache:
    cache = SchedulerCache()
    if policy is not None:
        cache.set_pool(policy)
    for p in pods:
        cache.set_pod(p)
    for name, labels in namespaces.items():
        cache.set_namespace(name, labels)
    return cache


def team_a(labels: Mapping[str, str]) -> bool:
    return labels.get("team") == "a"


def test_pre_filter_checks_the_pool_s_modes_and_namespace_selector() -> None:
    plugin = TenantIsolation()
    only_sub = PoolPolicy("default", frozenset({SUB}), allows_namespace=team_a)
    cache = cache_with(only_sub, a={"team": "a"}, b={"team": "b"})
    assert plugin.pre_filter(request(namespace="a"), cache) is None
    assert str(plugin.pre_filter(request(namespace="a", isolation=NS), cache)) == (
        "TenantIsolation: SandboxPool default does not offer namespace isolation"
    )
    assert str(plugin.pre_filter(request(namespace="b"), cache)) == (
        "TenantIsolation: namespace b may not use SandboxPool default"
    )
    # A namespace not seen yet has no labels: refused until its labels say otherwise.
    assert plugin.pre_filter(request(namespace="new"), cache) is not None
    cache.set_namespace("new", {"team": "a"})
    assert plugin.pre_filter(request(namespace="new"), cache) is None
    assert plugin.pre_filter(request(), cache_with(None)) is None  # no pool: no pods either


# --- within the Scheduler -----------------------------------------------------------------------


def test_failed_scheduling_names_tenant_isolation_for_every_pod_of_the_pool() -> None:
    cache = cache_with(PoolPolicy("default", frozenset({SUB}), allows_namespace=team_a),
                       pod("p0"), pod("p1"), pod("x", pool="other"), b={"team": "b"})  # fmt: skip
    decision = Scheduler().schedule(request(namespace="b"), cache, NOW)
    assert decision.message == (
        "0/3 pods available: 2 TenantIsolation: namespace b may not use SandboxPool default, "
        "1 PoolMatch: in another pool."
    )


def test_namespace_mode_tenants_end_on_separate_pods_and_the_excess_waits() -> None:
    cache = cache_with(SHARED, pod("p0"), pod("p1"))
    scheduler = Scheduler(feasible_pods_to_score=None)
    placed: dict[str, set[str]] = {"a": set(), "b": set()}
    for n in range(3):
        for namespace in ("a", "b"):
            r = dataclasses.replace(
                request(f"{namespace}{n}", namespace, NS), replica_set=namespace
            )
            decision = scheduler.schedule_and_assume(r, cache, NOW)
            assert decision.pod is not None, decision.message
            placed[namespace].add(decision.pod.name)
    assert placed["a"].isdisjoint(placed["b"]) and len(placed["a"]) == len(placed["b"]) == 1
    third = scheduler.schedule(request("c0", "c", NS), cache, NOW)
    assert third.message == f"0/2 pods available: 2 {HOLDS_OTHER_NAMESPACE_MODE}."
    sub = scheduler.schedule(request("c1", "c", SUB), cache, NOW)
    assert sub.reasons == ((HOLDS_OTHER_NAMESPACE_MODE, 2),)


def test_tenancy_is_reported_before_resources() -> None:
    cache = cache_with(DEDICATED, pod("p0", max_sandboxes=1))
    Scheduler().schedule_and_assume(request("s1", "a"), cache, NOW)
    assert Scheduler().schedule(request("s2", "b"), cache, NOW).reasons == (
        (DEDICATED_TO_OTHER, 1),
    )
    assert Scheduler().schedule(request("s3", "a"), cache, NOW).reasons == (
        (TOO_MANY_SANDBOXES, 1),
    )


def test_a_pool_edit_reaches_its_pods_at_once() -> None:
    cache = cache_with(SHARED, pod("p0"))
    Scheduler().schedule_and_assume(request("s1", "a"), cache, NOW)
    assert Scheduler().schedule(request("s2", "b"), cache, NOW).scheduled
    cache.set_pool(DEDICATED)
    assert Scheduler().schedule(request("s2", "b"), cache, NOW).reasons == (
        (DEDICATED_TO_OTHER, 1),
    )
    cache.remove_pool("default")
    assert cache.pod("uid-p0").policy is None
    cache.set_pod(pod("p1"))  # a pod added after its pool gets the pool's policy
    cache.set_pool(SHARED)
    assert {i.policy for i in cache.pods()} == {SHARED}


tenants = st.lists(
    st.tuples(st.sampled_from("abc"), st.sampled_from([SUB, NS]), st.booleans()), max_size=50
)


@settings(max_examples=80, deadline=None)
@given(steps=tenants, dedicated=st.booleans(), window=st.sampled_from([None, 1, 2]))
def test_no_pod_ever_holds_a_namespace_mode_sandbox_beside_another_namespace(
    steps: list[tuple[str, str, bool]], dedicated: bool, window: int | None
) -> None:
    cache = cache_with(DEDICATED if dedicated else SHARED, *(pod(f"p{i}") for i in range(3)))
    scheduler = Scheduler(feasible_pods_to_score=window)
    placed: list[str] = []
    for n, (namespace, isolation, remove) in enumerate(steps):
        if remove and placed:
            cache.remove_sandbox(placed.pop(0))
        r = request(f"s{n}", namespace, isolation)
        if scheduler.schedule_and_assume(r, cache, NOW).scheduled:
            placed.append(r.uid)
        for info in cache.pods():
            namespaces = {s.namespace for s in info.sandboxes.values()}
            modes = {s.isolation for s in info.sandboxes.values()}
            if NS in modes or dedicated:
                assert len(namespaces) <= 1, (namespaces, modes)
            assert info.namespaces == {
                ns: sum(1 for s in info.sandboxes.values() if s.namespace == ns)
                for ns in namespaces
            }
