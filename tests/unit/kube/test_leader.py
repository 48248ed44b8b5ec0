"""Leader election: the pure rules as a table, and the shell against FakeApi (races, takeover,
loss, release). Timings in the shell tests are short but real; waits are deadlines, not sleeps."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from nest_kube import Unreachable
from nest_kube.fake import FakeApi
from nest_kube.leader import (
    Action,
    LeaderElector,
    Step,
    Timing,
    claim,
    decide,
    holder_pod,
    identity,
    released,
)
from nest_kube.resources import LEASES
from tests.unit.kube.support import eventually

T = Timing(lease_duration=15, renew_deadline=10, retry_period=2)
NOW = dt.datetime(2026, 12, 1, 21, 0, 0, 123456, tzinfo=dt.UTC)


def lease(holder: str | None, duration: int = 15, rv: str = "7", **spec: Any) -> dict[str, Any]:
    body = {"holderIdentity": holder, "leaseDurationSeconds": duration, **spec}
    return {"metadata": {"name": "op", "namespace": "ns", "resourceVersion": rv}, "spec": body}


# lease as read, observed_at, now, renewed (None: not leading) -> action, at
DECISIONS = [
    ("no Lease: create it", None, 0, 0, None, Action.ACQUIRE, 0),
    ("released (no holder): take it at once", lease(None), 0, 1, None, Action.ACQUIRE, 0),
    ("held by another, fresh: wait for expiry", lease("b"), 100, 101, None, Action.WAIT, 115),
    ("held by another, just expired", lease("b"), 100, 115, None, Action.ACQUIRE, 0),
    ("the holder's own duration counts", lease("b", duration=30), 100, 120, None, Action.WAIT,
     130),
    ("names me though I do not lead", lease("me"), 100, 100, None, Action.ACQUIRE, 0),
    ("leading, renewed recently: wait a retry period", lease("me"), 100, 101, 100, Action.WAIT,
     102),
    ("leading, retry period over: renew", lease("me"), 100, 102, 100, Action.RENEW, 0),
    ("leading, renew deadline passed: lost", lease("me"), 100, 110, 100, Action.LOST, 0),
    ("leading, another holds it: lost at once", lease("b"), 101, 101, 100, Action.LOST, 0),
    ("leading, Lease released by someone: lost", lease(None), 101, 101, 100, Action.LOST, 0),
    ("leading, Lease deleted: create it again", None, 101, 101, 100, Action.ACQUIRE, 0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("lease_", "observed", "now", "renewed", "action", "at"),
    [case[1:] for case in DECISIONS],
    ids=[case[0] for case in DECISIONS],
)
def test_decide(
    lease_: dict[str, Any] | None,
    observed: float,
    now: float,
    renewed: float | None,
    action: Action,
    at: float,
) -> None:
    step = decide(lease_, observed, now, "me", renewed, T)
    assert step.action is action, step
    if action is Action.WAIT:
        assert step.at == at


def test_timing_must_leave_room_for_retries() -> None:
    with pytest.raises(ValueError, match="renew deadline"):
        Timing(lease_duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ValueError):
        Timing(lease_duration=15, renew_deadline=2, retry_period=2)


def test_claim_takeover_counts_a_transition_and_keeps_the_version_read() -> None:
    old = lease("b", leaseTransitions=3, acquireTime="2026-01-01T00:00:00.000000Z")
    body = claim(old, "ns", "op", "me", NOW, T)
    assert body["metadata"]["resourceVersion"] == "7"  # the write is conditional on it
    assert body["spec"] == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-01T21:00:00.123456Z",
        "renewTime": "2026-12-01T21:00:00.123456Z",
        "leaseTransitions": 4,
    }


def test_claim_renewal_keeps_acquire_time_and_transitions() -> None:
    old = lease("me", leaseTransitions=3, acquireTime="2026-01-01T00:00:00.000000Z")
    spec = claim(old, "ns", "op", "me", NOW, T)["spec"]
    assert (spec["acquireTime"], spec["leaseTransitions"]) == ("2026-01-01T00:00:00.000000Z", 3)
    assert spec["renewTime"] == "2026-12-01T21:00:00.123456Z"
    fresh = claim(None, "ns", "op", "me", NOW, T)
    assert "resourceVersion" not in fresh["metadata"] and fresh["spec"]["leaseTransitions"] == 0


def test_release_names_nobody_and_expires_at_once() -> None:
    spec = released(lease("me"), NOW)["spec"]
    assert spec["holderIdentity"] is None and spec["leaseDurationSeconds"] == 1
    assert decide(released(lease("me"), NOW), 0, 0, "other", None, T).action is Action.ACQUIRE


def test_identity_is_per_process_and_names_the_pod() -> None:
    first, second = identity("nest-operator-abc"), identity("nest-operator-abc")
    assert first != second
    assert holder_pod(first) == "nest-operator-abc"


# -- the shell on FakeApi ----------------------------------------------------------------------

FAST = Timing(lease_duration=0.8, renew_deadline=0.5, retry_period=0.1)


class Candidate:
    def __init__(self, api: FakeApi, me: str, timing: Timing = FAST) -> None:
        self.stopped: list[str] = []
        self.started = 0
        self.elector = LeaderElector(
            api, "ns", "op", me, timing,
            on_started=self._started, on_stopped=self.stopped.append,
        )  # fmt: skip
        self.task = asyncio.create_task(self.elector.run())

    def _started(self) -> None:
        self.started += 1

    async def kill(self) -> None:
        """Death without a word: no release, no further renewal."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def holder(api: FakeApi) -> str | None:
    found = (await api.get(LEASES, "ns", "op"))["spec"].get("holderIdentity")
    return None if found is None else str(found)


async def test_one_candidate_creates_the_lease_leads_and_renews() -> None:
    api = FakeApi()
    a = Candidate(api, "a")
    await eventually(lambda: a.elector.is_leader, what="a to lead")
    assert a.started == 1 and await holder(api) == "a"
    first = (await api.get(LEASES, "ns", "op"))["spec"]["renewTime"]
    renewals = api.writes["replace", "leases"]
    await eventually(lambda: api.writes["replace", "leases"] >= renewals + 2, what="renewals")
    spec = (await api.get(LEASES, "ns", "op"))["spec"]
    assert spec["renewTime"] > first and spec["acquireTime"] == first
    await a.kill()


async def test_two_candidates_racing_for_an_expired_lease_make_one_leader() -> None:
    """Both read the same record and write at once: the second write is refused (409), and
    its candidate, re-reading, sees the winner and keeps waiting."""
    api = FakeApi()
    dead = lease("dead", duration=1)
    del dead["metadata"]["resourceVersion"]
    api.put(LEASES, dead)
    a, b = Candidate(api, "a"), Candidate(api, "b")
    await eventually(lambda: a.elector.informer.synced.is_set() and b.elector.informer.synced
                     .is_set(), what="both watching")  # fmt: skip
    await a.kill()  # drive both writes by hand, from the same stale view
    await b.kill()
    for c in (a, b):
        c.elector.lease = await api.get(LEASES, "ns", "op")
    step = Step(Action.ACQUIRE)
    results = await asyncio.gather(a.elector._write(step), b.elector._write(step))
    assert list(results) == [True, True]  # a wrote; b found the Lease changed and re-read it
    assert api.writes["replace", "leases"] == 2  # both tried
    assert (a.elector.is_leader, b.elector.is_leader) == (True, False)
    assert b.elector.lease is not None and b.elector.lease["spec"]["holderIdentity"] == "a"
    assert (await api.get(LEASES, "ns", "op"))["spec"]["leaseTransitions"] == 1


async def test_concurrent_candidates_elect_exactly_one() -> None:
    api = FakeApi()
    candidates = [Candidate(api, name) for name in "abc"]
    await eventually(lambda: any(c.elector.is_leader for c in candidates), what="a leader")
    assert api.writes["create", "leases"] >= 1
    leaders = [c for c in candidates if c.elector.is_leader]
    assert len(leaders) == 1 and await holder(api) == leaders[0].elector.me
    for c in candidates:
        await c.kill()


async def test_a_standby_takes_over_when_the_leader_dies() -> None:
    api = FakeApi()
    a = Candidate(api, "a")
    await eventually(lambda: a.elector.is_leader, what="a to lead")
    b = Candidate(api, "b")
    await eventually(lambda: b.elector.informer.synced.is_set(), what="b watching")
    assert not b.elector.is_leader
    await a.kill()
    await eventually(lambda: b.elector.is_leader, timeout=5, what="b to take over")
    spec = (await api.get(LEASES, "ns", "op"))["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    await b.kill()


async def test_a_leader_that_sees_another_holder_stops_at_once() -> None:
    api = FakeApi()
    a = Candidate(api, "a", Timing(lease_duration=30, renew_deadline=20, retry_period=5))
    await eventually(lambda: a.elector.is_leader, what="a to lead")
    stolen = await api.get(LEASES, "ns", "op")
    stolen["spec"]["holderIdentity"] = "thief"
    await api.replace(LEASES, "ns", "op", stolen)
    await eventually(lambda: a.task.done(), what="a's run to return")
    assert not a.elector.is_leader and a.elector.lost.is_set()
    assert a.stopped == ["the Lease is held by thief"]


async def test_a_leader_that_cannot_renew_stops_by_its_deadline() -> None:
    api = FakeApi()
    a = Candidate(api, "a")
    await eventually(lambda: a.elector.is_leader, what="a to lead")
    api.fail("replace", Unreachable("connection refused"), times=1000)
    await eventually(lambda: a.task.done(), timeout=5, what="a to give up")
    assert a.stopped == ["not renewed for 0.5s"] and not a.elector.is_leader


async def test_release_hands_over_without_waiting_for_expiry() -> None:
    api = FakeApi()
    slow = Timing(lease_duration=60, renew_deadline=40, retry_period=0.1)
    a = Candidate(api, "a", slow)
    await eventually(lambda: a.elector.is_leader, what="a to lead")
    b = Candidate(api, "b", slow)
    await eventually(lambda: b.elector.informer.synced.is_set(), what="b watching")
    await a.kill()
    await a.elector.release()
    await eventually(lambda: b.elector.is_leader, timeout=5, what="b to take the released Lease")
    await b.kill()
