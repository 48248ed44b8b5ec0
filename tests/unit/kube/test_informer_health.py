"""The informer's `healthy_since`: since when its list+watch has worked, for consumers that
must not judge others by what nobody could write while it failed (the operator's evictions)."""

from __future__ import annotations

from nest_kube import ApiError, Informer, Unreachable
from nest_kube.fake import FakeApi
from nest_kube.informer import Backoff
from nest_kube.resources import CONFIGMAPS
from tests.unit.kube.support import eventually


class Ticks:
    """A clock that moves one second per reading: every reading is distinguishable."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class Watching(Backoff):
    """A back-off without pauses that records the informer's health when each pause starts,
    that is right after a failure."""

    def __init__(self) -> None:
        super().__init__(initial=0.0, cap=0.0, jitter=0.0)
        self.informer: Informer | None = None
        self.seen: list[float | None] = []

    def next(self) -> float:
        assert self.informer is not None
        self.seen.append(self.informer.healthy_since)
        return 0.0


def informer(api: FakeApi) -> tuple[Informer, Watching, Ticks]:
    backoff, clock = Watching(), Ticks()
    inf = Informer(api, CONFIGMAPS, backoff=backoff, clock=clock)
    backoff.informer = inf
    return inf, backoff, clock


async def test_unhealthy_until_the_first_list_answers() -> None:
    api = FakeApi()
    api.fail("list", Unreachable("refused"), times=2)
    inf, backoff, _ = informer(api)
    assert inf.healthy_since is None
    inf.start()
    try:
        await eventually(inf.synced.is_set, what="the list after two failures")
        assert backoff.seen == [None, None]  # unhealthy through both pauses
        assert inf.healthy_since is not None
    finally:
        await inf.stop()
    assert inf.healthy_since is None  # stopped: not watching


async def test_a_failed_watch_resets_it_and_the_next_watch_sets_it_later() -> None:
    api = FakeApi()
    api.fail("watch", ApiError(500, "InternalError"), times=2)
    inf, backoff, _ = informer(api)
    first: list[float | None] = []
    inf.add_handler(lambda _: first.append(inf.healthy_since))
    api.put(CONFIGMAPS, {"metadata": {"name": "a", "namespace": "n"}})
    inf.start()
    try:
        await eventually(lambda: len(backoff.seen) == 2, what="two failed watches")
        await eventually(lambda: inf.healthy_since is not None, what="a watch that works")
        assert backoff.seen == [None, None]
        listed = first[0]  # as the list's delta was handed out: healthy since that list
        assert listed is not None and inf.healthy_since is not None
        assert inf.healthy_since > listed
        await api.create(CONFIGMAPS, "n", {"metadata": {"name": "b"}})
        await eventually(lambda: len(first) == 2, what="the watch delivering again")
    finally:
        await inf.stop()


async def test_a_compacted_history_is_no_failure() -> None:
    api = FakeApi()
    inf, backoff, _ = informer(api)
    inf.start()
    await eventually(inf.synced.is_set, what="the first list")
    await inf.stop()
    api.put(CONFIGMAPS, {"metadata": {"name": "a", "namespace": "n"}})
    api.compact()  # the resumed watch gets 410 Gone and relists at once, without a pause
    inf.start()
    try:
        await eventually(lambda: inf.lists == 2, what="the relist after 410 Gone")
        assert backoff.seen == [] and inf.healthy_since is not None
    finally:
        await inf.stop()
