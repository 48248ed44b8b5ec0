"""The pod-lifecycle rules as tables: facts evict, health waits for a calm control plane, no
mass eviction, a rate limit; and the pieces the shell feeds them (pod health, calm, the rate)."""

from __future__ import annotations

from typing import Any

import pytest

from nest_operator.lifecycle_logic import (
    Action,
    Calm,
    Grace,
    Hold,
    PodHealth,
    Policy,
    Snapshot,
    calm_since,
    decide,
    disruption,
    pod_health,
    rate_allows,
    remember,
)

T0 = 1767225600.0  # 2026-01-01T00:00:00Z
POLICY = Policy(startup_grace=50, eviction_rate=0.1, unhealthy_threshold=0.55, min_unhealthy=3)
STALE = PodHealth("p", unhealthy="its pool pod's Lease expired 5s ago", lease_seconds=40,
                  counted=True)  # fmt: skip
GONE = PodHealth("p", gone="its pool pod was deleted")
HEALTHY = PodHealth("p", lease_seconds=40, counted=True)
LONG_LEASE = PodHealth("p", unhealthy="x", lease_seconds=90, counted=True)
CALM = 1000.0  # monotonic "now" in the snapshots below; calm since 0: long enough


def snap(**kw: Any) -> Snapshot:
    return Snapshot(**{"now": CALM, "calm_since": 0.0, **kw})


@pytest.mark.parametrize(
    ("pod", "snapshot", "action", "hold"),
    [
        # Facts evict whatever the control plane looks like.
        (GONE, snap(calm_since=None), Action.EVICT, Hold.NONE),
        (GONE, snap(calm_since=CALM - 1, disrupted="all 3"), Action.EVICT, Hold.NONE),
        (HEALTHY, snap(calm_since=None), Action.KEEP, Hold.NONE),
        # Health: watches failing, then a grace after they recover or the controller starts.
        (STALE, snap(calm_since=None), Action.HOLD, Hold.WATCHES),
        (STALE, snap(calm_since=CALM - 49), Action.HOLD, Hold.GRACE),
        (STALE, snap(calm_since=CALM - 50), Action.EVICT, Hold.NONE),
        # A Lease longer than the grace gets its whole duration.
        (LONG_LEASE, snap(calm_since=CALM - 60), Action.HOLD, Hold.GRACE),
        # Mass staleness: nothing is evicted for its health.
        (STALE, snap(disrupted="all 2 pool pods"), Action.HOLD, Hold.DISRUPTION),
        # The rate: one pod per 10 s; an admitted pod stays admitted.
        (STALE, snap(recent=(CALM - 3,)), Action.HOLD, Hold.RATE),
        (STALE, snap(recent=(CALM - 3,), admitted=frozenset({"p"})), Action.EVICT, Hold.NONE),
        (STALE, snap(recent=(CALM - 10,)), Action.EVICT, Hold.NONE),
    ],
)
def test_decisions(pod: PodHealth, snapshot: Snapshot, action: Action, hold: Hold) -> None:
    decision = decide(pod, snapshot, POLICY)
    assert (decision.action, decision.hold) == (action, hold)
    if action is Action.EVICT:
        assert decision.why == (pod.gone or pod.unhealthy)
    if hold is not Hold.NONE:
        assert decision.why.startswith(str(pod.unhealthy))  # the held reason, and why held


def test_only_a_new_admission_counts_against_the_rate() -> None:
    assert decide(STALE, snap(), POLICY).admit
    assert not decide(STALE, snap(admitted=frozenset({"p"})), POLICY).admit
    assert not decide(GONE, snap(), POLICY).admit  # facts do not use the budget


def test_the_grace_message_says_how_long_and_why() -> None:
    why = decide(STALE, snap(calm_since=CALM - 7), POLICY).why
    assert "Lease expired 5s ago" in why and "healthy for only 7s of the 50s" in why


def pods(healthy: int, unhealthy: int, uncounted: int = 0) -> list[PodHealth]:
    return (
        [PodHealth(f"h{i}", counted=True) for i in range(healthy)]
        + [PodHealth(f"u{i}", unhealthy="stale", counted=True) for i in range(unhealthy)]
        + [PodHealth(f"n{i}", unhealthy="NotReady") for i in range(uncounted)]  # no Lease
    )


@pytest.mark.parametrize(
    ("healthy", "unhealthy", "uncounted", "disrupted"),
    [
        (2, 0, 0, False),
        (1, 1, 0, False),  # one of two: a dead pod, evicted
        (0, 1, 0, True),  # every pod: nowhere to move to, and likely the control plane
        (0, 2, 0, True),  # the fault study's two pool pods after etcd was down
        (2, 2, 0, False),  # 2 < the 3 pods the threshold needs
        (2, 3, 0, True),  # 3 of 5 = 60% >= 55%
        (3, 3, 0, False),  # 50%
        (6, 1, 4, False),  # pods without a Lease are not counted
        (0, 0, 2, False),  # nothing counted: nothing to blame
    ],
)
def test_mass_staleness(healthy: int, unhealthy: int, uncounted: int, disrupted: bool) -> None:
    assert (disruption(pods(healthy, unhealthy, uncounted), POLICY) is not None) == disrupted


def test_mass_staleness_says_how_many() -> None:
    assert disruption(pods(2, 3), POLICY) == "3 of 5 pool pods are unhealthy at once (at least 55%)"
    assert disruption(pods(0, 2), POLICY) == "all 2 pool pods with a Lease are unhealthy at once"


def test_calm_is_the_latest_of_start_recovery_and_the_end_of_a_disruption() -> None:
    calm = Calm(started=10.0)
    assert calm_since(calm, None) is None  # watches failing
    assert calm_since(calm, 5.0) == 10.0  # the controller started after its watches
    assert calm_since(calm, 30.0) == 30.0  # the watches recovered later
    during = remember(calm, "all 2 pool pods", 40.0)
    assert during.disrupted == "all 2 pool pods" and calm_since(during, 30.0) == 30.0
    after = remember(remember(during, "all 2 pool pods", 45.0), None, 60.0)
    assert (after.disrupted, after.disruption_ended) == (None, 60.0)
    assert calm_since(after, 30.0) == 60.0  # every sidecar gets a full grace after it
    assert remember(after, None, 99.0) == after


@pytest.mark.parametrize(
    ("recent", "policy", "allowed"),
    [
        ((), POLICY, True),
        ((95.0,), POLICY, False),  # 5 s ago, window 10 s
        ((90.0,), POLICY, True),
        ((95.0,), Policy(eviction_rate=0.1, eviction_burst=2), True),
        ((92.0, 95.0), Policy(eviction_rate=0.1, eviction_burst=2), False),
        ((99.9,), Policy(eviction_rate=0), True),  # 0: no limit
    ],
)
def test_rate(recent: tuple[float, ...], policy: Policy, allowed: bool) -> None:
    assert rate_allows(recent, 100.0, policy) == allowed


def _pod(ready: str = "True", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "namespace": "n", "uid": "p"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    condition = {"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-01T00:00:00Z"}
    return {"metadata": meta, "status": {"conditions": [condition]}}


LEASE = {"spec": {"renewTime": "2026-01-01T00:00:00.000000Z", "leaseDurationSeconds": 40}}


def test_pod_health_separates_facts_from_health() -> None:
    grace = Grace(not_ready_seconds=30)
    assert pod_health("p", None, None, T0, grace).gone == "its pool pod was deleted"
    assert pod_health("p", _pod(deleting=True), LEASE, T0, grace).gone == (
        "its pool pod is being deleted"
    )
    left = pod_health("p", _pod(), LEASE, T0, grace, "there is no SandboxPool x")
    assert left.gone == "its pod is not a node of its pool: there is no SandboxPool x"
    assert pod_health("p", _pod(), LEASE, T0 + 10, grace) == PodHealth(
        "p", lease_seconds=40, counted=True
    )
    stale = pod_health("p", _pod(), LEASE, T0 + 45, grace)
    assert (stale.gone, stale.unhealthy, stale.counted) == (
        None, "its pool pod's Lease expired 5s ago", True
    )  # fmt: skip
    not_ready = pod_health("p", _pod("False"), LEASE, T0 + 31, grace)
    assert not_ready.unhealthy == "its pool pod has been NotReady for 31s"
    no_lease = pod_health("p", _pod(), None, T0 + 1000, grace)
    assert (no_lease.unhealthy, no_lease.counted) == (None, False)
