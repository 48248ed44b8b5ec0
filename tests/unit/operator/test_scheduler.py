"""The scheduler's plugins one by one, the cycle, the unschedulable message and the assume cache."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nest_operator.errors import AlreadyBound, UnknownPod
from nest_operator.scheduler import (
    BoundSandbox,
    Code,
    PodInfo,
    PoolPod,
    Profile,
    Rejection,
    SandboxRequest,
    Scheduler,
    SchedulerCache,
    parse_cpu,
    parse_memory,
)
from nest_operator.scheduler.plugins import (
    CORDONED,
    CPU_ABOVE_CAPACITY,
    INSUFFICIENT_CPU,
    INSUFFICIENT_MEMORY,
    ISOLATION_UNSUPPORTED,
    LEASE_EXPIRED,
    MEMORY_ABOVE_CAPACITY,
    NOT_IN_POOL,
    NOT_READY,
    TAKES_NO_SANDBOXES,
    TOO_MANY_SANDBOXES,
    CodeLocality,
    IsolationSupported,
    MostAllocated,
    PodReady,
    PoolMatch,
    ReplicaSpread,
    ResourcesFit,
)

NOW = 1000.0
MI = 1024 * 1024


def pod(name: str = "p0", **changes: object) -> PoolPod:
    base = PoolPod(
        name=name,
        namespace="nest",
        uid=f"uid-{name}",
        pool="default",
        ready=True,
        lease_renewed_at=NOW - 1,
        cordoned=False,
        memory=1024 * MI,
        cpu=1000,
        max_sandboxes=10,
        isolation=frozenset({"subprocess", "namespace"}),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def request(uid: str = "s0", **changes: object) -> SandboxRequest:
    base = SandboxRequest(
        name=uid,
        namespace="default",
        uid=uid,
        pool="default",
        memory=64 * MI,
        cpu=100,
        isolation="subprocess",
        code_digest="d1",
        replica_set="rs1",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def info(p: PoolPod | None = None, *sandboxes: BoundSandbox) -> PodInfo:
    result = PodInfo(p or pod())
    for sandbox in sandboxes:
        result.add(sandbox)
    return result


def cache_of(*pods: PoolPod) -> SchedulerCache:
    cache = SchedulerCache(assume_ttl=30)
    for p in pods:
        cache.set_pod(p)
    return cache


def test_quantities() -> None:
    assert parse_memory("64Mi") == 64 * MI
    assert parse_memory("1G") == 10**9
    assert parse_cpu("100m") == 100
    assert parse_cpu("1.5") == 1500
    assert parse_cpu("1m") == 1


def test_pool_match_returns_only_the_pool_sorted_by_name() -> None:
    cache = cache_of(pod("b"), pod("a"), pod("c", pool="other"))
    names = [i.pod.name for i in PoolMatch().candidates(request(), cache)]
    assert names == ["a", "b"]
    assert PoolMatch().candidates(request(pool="none"), cache) == ()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"ready": False}, NOT_READY),
        ({"lease_renewed_at": None}, LEASE_EXPIRED),
        ({"lease_renewed_at": NOW - 41}, LEASE_EXPIRED),
        ({"lease_renewed_at": NOW - 40}, None),
        ({"cordoned": True}, CORDONED),
    ],
)
def test_pod_ready(changes: dict[str, object], reason: str | None) -> None:
    candidate = dataclasses.replace(pod(), **changes)  # type: ignore[arg-type]
    assert PodReady(lease_ttl=40).filter(request(), info(candidate), NOW) == reason


def test_isolation_supported() -> None:
    only_ns = info(pod(isolation=frozenset({"namespace"})))
    assert IsolationSupported().filter(request(), only_ns, NOW) == ISOLATION_UNSUPPORTED
    assert IsolationSupported().filter(request(isolation="namespace"), only_ns, NOW) is None


def bound(uid: str, memory: int = 64 * MI, cpu: int = 100, rs: str | None = "rs1") -> BoundSandbox:
    return BoundSandbox(uid, "uid-p0", memory, cpu, rs, "d1")


def test_resources_fit_each_resource() -> None:
    fit = ResourcesFit()
    assert fit.filter(request(memory=1024 * MI), info(), NOW) is None
    assert fit.filter(request(memory=961 * MI), info(pod(), bound("a")), NOW) == (
        INSUFFICIENT_MEMORY
    )
    assert fit.filter(request(cpu=901), info(pod(), bound("a")), NOW) == INSUFFICIENT_CPU
    assert fit.filter(request(cpu=900), info(pod(), bound("a")), NOW) is None
    full = info(pod(max_sandboxes=2), bound("a"), bound("b"))
    assert fit.filter(request(memory=1), full, NOW) == TOO_MANY_SANDBOXES
    for status in (INSUFFICIENT_MEMORY, INSUFFICIENT_CPU, TOO_MANY_SANDBOXES):
        assert status.code == Code.UNSCHEDULABLE and status.plugin == "ResourcesFit"


def test_resources_fit_says_when_no_sandbox_leaving_would_make_room() -> None:
    fit = ResourcesFit()
    too_big = fit.filter(request(memory=1024 * MI + 1), info(pod(), bound("a")), NOW)
    assert too_big == MEMORY_ABOVE_CAPACITY and too_big.code == Code.UNRESOLVABLE
    assert fit.filter(request(cpu=1001), info(), NOW) == CPU_ABOVE_CAPACITY
    assert fit.filter(request(), info(pod(max_sandboxes=0)), NOW) == TAKES_NO_SANDBOXES


def test_most_allocated_prefers_fuller_pods() -> None:
    empty, used = info(), info(pod(), bound("a", memory=512 * MI, cpu=500))
    assert MostAllocated().score(request(), used) > MostAllocated().score(request(), empty)
    whole = request(memory=1024 * MI, cpu=1000)
    assert MostAllocated().score(whole, info(pod(max_sandboxes=1))) == 100


def test_replica_spread_prefers_pods_without_the_replica_set() -> None:
    spread = ReplicaSpread()
    assert spread.score(request(), info()) == 100
    assert spread.score(request(), info(pod(), bound("a"))) == 50
    assert spread.score(request(), info(pod(), bound("a", rs="other"))) == 100
    assert spread.score(request(replica_set=None), info(pod(), bound("a"))) == 100


def test_code_locality() -> None:
    assert CodeLocality().score(request(), info()) == 0
    assert CodeLocality().score(request(), info(pod(cached_digests=frozenset({"d1"})))) == 100
    assert CodeLocality().score(request(), info(pod(), bound("a"))) == 100
    assert CodeLocality().score(request(code_digest=None), info(pod(), bound("a"))) == 0


def test_pod_info_aggregates_follow_add_and_remove() -> None:
    i = info(pod(), bound("a"), bound("b", rs="rs2"))
    assert (i.count, i.memory_requested, i.cpu_requested) == (2, 128 * MI, 200)
    assert i.replica_sets == {"rs1": 1, "rs2": 1}
    assert i.remove("a") is not None and i.remove("a") is None
    assert (i.count, i.memory_requested, i.replica_sets, i.digests) == (
        1,
        64 * MI,
        {"rs2": 1},
        {"d1": 1},
    )


def test_unschedulable_message_counts_reasons_deterministically() -> None:
    cache = cache_of(
        pod("a", memory=10),
        pod("b", memory=10),
        pod("c", ready=False),
        pod("d", pool="other"),
    )
    decision = Scheduler().schedule(request(), cache, NOW)
    assert not decision.scheduled
    assert decision.reasons == ((MEMORY_ABOVE_CAPACITY, 2), (NOT_READY, 1), (NOT_IN_POOL, 1))
    assert decision.message == (
        "0/4 pods available: 2 ResourcesFit: memory above the pod's capacity, "
        "1 PodReady: not ready, 1 PoolMatch: in another pool."
    )
    assert decision.rejection == Rejection(
        frozenset({"PoolMatch", "PodReady", "ResourcesFit"}), frozenset()
    )
    empty = Scheduler().schedule(request(), cache_of(), NOW)
    assert empty.message == "0/0 pods available."
    assert empty.rejection == Rejection(frozenset({"PoolMatch"}), frozenset())


def test_a_rejection_names_the_plugins_whose_refusals_waiting_may_resolve() -> None:
    cache = cache_of(pod("a", max_sandboxes=1), pod("b", cordoned=True))
    cache.assume(request("s1"), "uid-a", NOW)
    decision = Scheduler().schedule(request("s2"), cache, NOW)
    assert decision.rejection == Rejection(
        frozenset({"PoolMatch", "PodReady", "ResourcesFit"}), frozenset({"ResourcesFit"})
    )


def test_profiles_name_plugins_from_the_registry() -> None:
    scheduler = Scheduler.from_profile(Profile(filters=("ResourcesFit",), scores=()))
    assert list(scheduler.plugins) == ["PoolMatch", "ResourcesFit"]
    assert [p.name for p in Scheduler.from_profile().filters] == [
        "PodDraining", "PodReady", "IsolationSupported", "TenantIsolation", "NativeDependencies",
        "ResourcesFit",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown filter plugin 'Nope'"):
        Scheduler.from_profile(Profile(filters=("Nope",)))
    with pytest.raises(ValueError, match="share a name"):
        Scheduler(filters=[ResourcesFit(), ResourcesFit()])


def test_bin_packing_prefers_the_fuller_pod_and_ties_go_to_the_smallest_name() -> None:
    cache = cache_of(pod("c"), pod("b"), pod("a"))
    first = Scheduler().schedule(request(replica_set=None, code_digest=None), cache, NOW)
    assert first.pod is not None and first.pod.name == "a"
    cache.add_sandbox(BoundSandbox("x", "uid-c", 512 * MI, 500, None, None))
    second = Scheduler().schedule(request(replica_set=None, code_digest=None), cache, NOW)
    assert second.pod is not None and second.pod.name == "c"


def test_spread_puts_a_replica_set_on_two_pods_before_packing_and_code_locality() -> None:
    """The second replica goes to the other pod although the first pod is fuller and already
    holds the code: one pod's loss must not take every replica (issue 13)."""
    cache = cache_of(pod("a"), pod("b"))
    scheduler = Scheduler(feasible_pods_to_score=None)
    chosen = []
    for n in range(4):
        decision = scheduler.schedule_and_assume(request(f"s{n}"), cache, NOW)
        assert decision.pod is not None
        chosen.append(decision.pod.name)
    assert chosen[0] != chosen[1] and sorted(chosen) == ["a", "a", "b", "b"]


def test_assume_counts_at_once_and_forget_undoes_it() -> None:
    cache = cache_of(pod("a", max_sandboxes=1))
    scheduler = Scheduler()
    assert scheduler.schedule_and_assume(request("s1"), cache, NOW).scheduled
    assert cache.is_assumed("s1")
    assert scheduler.schedule(request("s2"), cache, NOW).reasons == ((TOO_MANY_SANDBOXES, 1),)
    cache.forget("s1")
    assert cache.pod("uid-a").count == 0
    assert scheduler.schedule(request("s2"), cache, NOW).scheduled


def test_watch_confirms_and_expiry_spares_confirmed() -> None:
    cache = cache_of(pod("a"), pod("b"))
    cache.assume(request("s1"), "uid-a", NOW)
    cache.assume(request("s2"), "uid-a", NOW)
    cache.add_sandbox(request("s1").bound_to("uid-a"))
    assert not cache.is_assumed("s1")
    cache.forget("s1")  # confirmed: a late bind failure report must not drop it
    assert cache.expire(NOW + 29) == []
    assert [s.uid for s in cache.expire(NOW + 30)] == ["s2"]
    assert set(cache.pod("uid-a").sandboxes) == {"s1"}


def test_watch_moves_a_sandbox_assumed_elsewhere() -> None:
    cache = cache_of(pod("a"), pod("b"))
    cache.assume(request("s1"), "uid-a", NOW)
    cache.add_sandbox(request("s1").bound_to("uid-b"))
    assert cache.pod("uid-a").count == 0 and cache.pod("uid-b").count == 1


def test_cache_errors_and_pod_removal() -> None:
    cache = cache_of(pod("a"))
    cache.assume(request("s1"), "uid-a", NOW)
    with pytest.raises(AlreadyBound):
        cache.assume(request("s1"), "uid-a", NOW)
    with pytest.raises(UnknownPod):
        cache.assume(request("s2"), "uid-zzz", NOW)
    with pytest.raises(UnknownPod):
        cache.add_sandbox(request("s1").bound_to("uid-zzz"))
    assert cache.pod("uid-a").count == 1  # the failed add left it where it was
    assert cache.remove_pod("uid-a") == ["s1"]
    assert not cache.is_assumed("s1") and cache.pod_count == 0


def test_renaming_or_moving_a_pod_keeps_the_index_sorted() -> None:
    cache = cache_of(pod("a"), pod("b"))
    cache.set_pod(dataclasses.replace(pod("b"), name="0"))
    cache.set_pod(pod("a", pool="other"))
    assert [i.pod.name for i in cache.pool("default")] == ["0"]
    assert [i.pod.name for i in cache.pool("other")] == ["a"]


sizes = st.tuples(st.integers(1, 400), st.integers(1, 400), st.sampled_from(["r1", "r2", None]))


@settings(max_examples=60, deadline=None)
@given(
    pods=st.lists(
        st.tuples(st.integers(0, 1200), st.integers(0, 1200), st.integers(0, 6)), max_size=8
    ),
    requests=st.lists(sizes, max_size=60),
    window=st.sampled_from([None, 1, 3]),
)
def test_never_overbooks_and_fails_only_when_nothing_fits(
    pods: list[tuple[int, int, int]],
    requests: list[tuple[int, int, str | None]],
    window: int | None,
) -> None:
    cache = cache_of(
        *(pod(f"p{i}", memory=m, cpu=c, max_sandboxes=k) for i, (m, c, k) in enumerate(pods))
    )
    scheduler = Scheduler(feasible_pods_to_score=window)
    for n, (memory, cpu, rs) in enumerate(requests):
        r = request(f"s{n}", memory=memory, cpu=cpu, replica_set=rs)
        decision = scheduler.schedule_and_assume(r, cache, NOW)
        fits = [ResourcesFit().filter(r, i, NOW) is None for i in cache.pods()]
        if decision.pod is None:
            assert not any(fits)
            assert sum(count for _, count in decision.reasons) == len(pods)
    for i in cache.pods():
        assert i.memory_requested <= i.pod.memory
        assert i.cpu_requested <= i.pod.cpu
        assert i.count <= i.pod.max_sandboxes


@settings(max_examples=30, deadline=None)
@given(requests=st.lists(sizes, min_size=1, max_size=40))
def test_decisions_are_reproducible(requests: list[tuple[int, int, str | None]]) -> None:
    def run() -> list[str | None]:
        cache = cache_of(*(pod(f"p{i}", memory=1000, cpu=1000) for i in range(5)))
        scheduler = Scheduler(feasible_pods_to_score=2)
        out = []
        for n, (memory, cpu, rs) in enumerate(requests):
            d = scheduler.schedule_and_assume(
                request(f"s{n}", memory=memory, cpu=cpu, replica_set=rs), cache, NOW
            )
            out.append(d.pod.name if d.pod else None)
        return out

    assert run() == run()
