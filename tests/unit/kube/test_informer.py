"""The informer's decisions (relist, backoff, list version) and its loop against the fake API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from nest_kube import ApiError, Delta, Informer, Unreachable
from nest_kube.fake import FakeApi
from nest_kube.informer import Backoff, Next, handler_funcs, list_version, next_step
from nest_kube.resources import CONFIGMAPS
from nest_kube.store import by_label
from tests.unit.kube.support import eventually

NO_PAUSE = Backoff(initial=0.001, cap=0.001, jitter=0.0)


def test_after_a_watch_410_relist_at_once_and_other_failures_back_off() -> None:
    assert next_step(None, listing=False) == Next(relist=False, backoff=False)
    assert next_step(None, listing=False, short=True) == Next(relist=False, backoff=True)
    assert next_step(ApiError(410), listing=False) == Next(relist=True, backoff=False)
    for transient in (Unreachable("reset"), ApiError(429), ApiError(500), ApiError(401)):
        assert next_step(transient, listing=False) == Next(relist=False, backoff=True)
    assert next_step(ApiError(400), listing=False) == Next(relist=True, backoff=True)


def test_a_list_410_relists_consistently_and_other_list_failures_back_off() -> None:
    assert next_step(ApiError(410), listing=True) == Next(True, False, consistent=True)
    too_large = ApiError(
        504,
        "Timeout",
        {
            "details": {
                "causes": [
                    {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
                ]
            }
        },
    )
    assert next_step(too_large, listing=True) == Next(True, False, consistent=True)
    assert next_step(ApiError(504), listing=True) == Next(relist=True, backoff=True)
    assert next_step(Unreachable("refused"), listing=True) == Next(relist=True, backoff=True)


def test_list_versions_follow_the_reflector() -> None:
    assert list_version(None, consistent=False) == "0"  # first list: from the watch cache
    assert list_version("42", consistent=False) == "42"
    assert list_version("42", consistent=True) == ""


def test_backoff_doubles_to_its_cap_and_resets_after_a_quiet_spell() -> None:
    now = [0.0]
    backoff = Backoff(
        initial=1, cap=4, reset_after=120, jitter=1.0, clock=lambda: now[0], rand=lambda: 0.5
    )
    assert [backoff.next() for _ in range(4)] == [1.5, 3.0, 6.0, 6.0]
    now[0] = 121.0
    assert backoff.next() == 1.5


def cm(name: str, **data: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "a", "labels": {"app": "x"}}, "data": data}


@pytest.fixture
async def informer() -> AsyncIterator[tuple[FakeApi, Informer, list[Delta]]]:
    api = FakeApi()
    api.put(CONFIGMAPS, cm("before"))
    informer = Informer(
        api,
        CONFIGMAPS,
        namespace="a",
        label_selector="app=x",
        indexers={"app": by_label("app")},
        backoff=NO_PAUSE,
    )
    seen: list[Delta] = []
    informer.add_handler(seen.append)
    informer.start()
    await eventually(informer.synced.is_set, what="the first list")
    yield api, informer, seen
    await informer.stop()


def kinds(seen: list[Delta]) -> list[tuple[str, str]]:
    return [(d.type, d.obj["metadata"]["name"]) for d in seen]


async def test_adds_updates_and_deletes_reach_the_handlers_and_the_store(
    informer: tuple[FakeApi, Informer, list[Delta]],
) -> None:
    api, inf, seen = informer
    assert kinds(seen) == [("ADDED", "before")]
    await api.create(CONFIGMAPS, "a", cm("new"))
    await api.patch(CONFIGMAPS, "a", "new", {"data": {"k": "v"}})
    await api.create(CONFIGMAPS, "a", {"metadata": {"name": "unlabelled"}})  # not selected
    await api.delete(CONFIGMAPS, "a", "before")
    await eventually(lambda: len(seen) == 4, what="four deltas")
    assert kinds(seen)[1:] == [("ADDED", "new"), ("MODIFIED", "new"), ("DELETED", "before")]
    assert inf.store.keys() == ["a/new"] and inf.get("a", "new") is not None
    assert [o["metadata"]["name"] for o in inf.store.by_index("app", "x")] == ["new"]
    assert seen[2].old is not None and seen[2].old.get("data") == {}


async def test_a_compacted_version_relists_and_reports_what_changed_meanwhile(
    informer: tuple[FakeApi, Informer, list[Delta]],
) -> None:
    api, inf, seen = informer
    await api.create(CONFIGMAPS, "a", cm("x"))
    await eventually(lambda: len(seen) == 2, what="the add of x")
    await inf.stop()  # paused while history is compacted and things change
    await api.delete(CONFIGMAPS, "a", "x")
    await api.create(CONFIGMAPS, "a", cm("y"))
    api.compact()
    inf.start()
    await eventually(lambda: inf.lists == 2, what="a relist after 410 Gone")
    assert sorted(kinds(seen)[2:]) == [("ADDED", "y"), ("DELETED", "x")]
    assert inf.store.keys() == ["a/before", "a/y"]
    await api.patch(CONFIGMAPS, "a", "y", {"data": {"k": "v"}})  # and it watches again
    await eventually(lambda: len(seen) == 5, what="watching after the relist")


async def test_a_paused_informer_resumes_its_watch_without_a_list(
    informer: tuple[FakeApi, Informer, list[Delta]],
) -> None:
    api, inf, seen = informer
    await inf.stop()
    await api.create(CONFIGMAPS, "a", cm("while-paused"))
    inf.start()
    await eventually(lambda: len(seen) == 2, what="the missed add")
    assert inf.lists == 1 and kinds(seen)[1] == ("ADDED", "while-paused")


async def test_failures_back_off_and_resume_without_losing_events() -> None:
    api = FakeApi()
    api.fail("list", Unreachable("refused"), times=2)
    api.fail("watch", ApiError(500, "InternalError"), times=2)
    informer = Informer(api, CONFIGMAPS, backoff=NO_PAUSE)
    seen: list[Delta] = []

    def flaky(delta: Delta) -> None:
        raise RuntimeError("a handler bug")

    informer.add_handler(flaky)  # runs first and fails: the next handler still gets every delta
    informer.add_handler(seen.append)
    informer.start()
    try:
        await eventually(informer.synced.is_set, what="a list after two failures")
        assert informer.lists == 1
        await api.create(CONFIGMAPS, "a", cm("z"))
        await eventually(lambda: kinds(seen) == [("ADDED", "z")], what="the add after 500s")
    finally:
        await informer.stop()


def test_handler_funcs_split_deltas_by_kind() -> None:
    calls: list[tuple[str, ...]] = []
    handle = handler_funcs(
        on_add=lambda o: calls.append(("add", o["v"])),
        on_update=lambda old, new: calls.append(("update", old["v"], new["v"])),
    )
    handle(Delta("ADDED", {"v": "1"}))
    handle(Delta("MODIFIED", {"v": "2"}, {"v": "1"}))
    handle(Delta("DELETED", {"v": "2"}))  # no on_delete: ignored
    assert calls == [("add", "1"), ("update", "1", "2")]


async def test_a_handler_added_late_is_sent_the_store(
    informer: tuple[FakeApi, Informer, list[Delta]],
) -> None:
    _, inf, _ = informer
    late: list[Delta] = []
    inf.add_handler(late.append)
    assert kinds(late) == [("ADDED", "before")]
