"""The code cache's collection: the pure eviction plan; the shell's pins, recovery, removal."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from nest_sidecar.code_cache import (
    PARTIAL_PREFIX,
    PINS_DIR,
    TRASH_PREFIX,
    CodeCache,
    Entry,
    next_expiry,
    plan_eviction,
)

# -- the plan ------------------------------------------------------------------------------------


def test_unused_entries_go_once_idle_and_used_ones_never() -> None:
    entries = [Entry("old", 10, 100.0), Entry("fresh", 10, 195.0), Entry("busy", 10, 0.0)]
    victims = plan_eviction(entries, {"busy"}, budget=1000, idle=30, now=200.0)
    assert victims == ["old"]


def test_over_budget_evicts_least_recently_used_first_until_it_fits() -> None:
    entries = [Entry("c", 40, 3.0), Entry("a", 40, 1.0), Entry("b", 40, 2.0)]
    assert plan_eviction(entries, set(), budget=80, idle=1e9, now=4.0) == ["a"]
    assert plan_eviction(entries, set(), budget=40, idle=1e9, now=4.0) == ["a", "b"]
    assert plan_eviction(entries, set(), budget=0, idle=1e9, now=4.0) == ["a", "b", "c"]


def test_an_entry_in_use_stays_even_beyond_the_budget() -> None:
    entries = [Entry("big", 500, 1.0), Entry("small", 10, 2.0)]
    assert plan_eviction(entries, {"big"}, budget=100, idle=1e9, now=3.0) == ["small"]
    assert plan_eviction(entries, {"big", "small"}, budget=0, idle=0, now=3.0) == []


def test_ties_in_last_use_are_broken_by_digest_so_the_plan_is_stable() -> None:
    entries = [Entry("y", 10, 1.0), Entry("x", 10, 1.0)]
    assert plan_eviction(entries, set(), budget=10, idle=1e9, now=2.0) == ["x"]


def test_next_expiry_is_the_first_unused_entry_to_idle_out() -> None:
    entries = [Entry("a", 1, 50.0), Entry("b", 1, 10.0), Entry("c", 1, 20.0)]
    assert next_expiry(entries, {"b"}, idle=30) == 50.0
    assert next_expiry(entries, {"a", "b", "c"}, idle=30) is None


# -- the shell -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _put(cache: CodeCache, digest: str, data: bytes, user: str | None = None) -> Path:
    return cache.put(digest, lambda d: (d / "main.py").write_bytes(data), user)


async def test_released_code_is_removed_after_the_idle_time_and_used_code_stays(
    tmp_path: Path,
) -> None:
    clock = Clock()
    cache = CodeCache(tmp_path, idle_seconds=30, clock=clock)
    cache.recover()
    kept = _put(cache, "kept", b"k", user="sandbox-1")
    gone = _put(cache, "gone", b"g", user="sandbox-2")
    cache.release("sandbox-2")
    assert await cache.collect() == []  # released just now: kept for a while
    clock.now += 31
    assert await cache.collect() == ["gone"]
    assert not gone.exists() and kept.is_dir()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(TRASH_PREFIX)] == []


async def test_the_budget_evicts_unused_code_before_it_idles_out(tmp_path: Path) -> None:
    clock = Clock()
    cache = CodeCache(tmp_path, budget_bytes=1500, idle_seconds=3600, clock=clock)
    _put(cache, "first", b"x" * 1000)
    clock.now += 1
    _put(cache, "second", b"y" * 1000, user="s")
    assert await cache.collect() == ["first"]
    assert {e.digest for e in cache.entries} == {"second"}


async def test_a_lookup_pins_and_refreshes_an_entry(tmp_path: Path) -> None:
    clock = Clock()
    cache = CodeCache(tmp_path, idle_seconds=30, clock=clock)
    _put(cache, "d", b"1")
    clock.now += 29
    assert cache.lookup("d", user="s") == tmp_path / "d"
    clock.now += 29
    assert await cache.collect() == []  # in use
    cache.release("s")
    clock.now += 29
    assert await cache.collect() == []  # released 29 s ago
    assert cache.lookup("absent") is None


async def test_pins_survive_a_sidecar_restart_and_retain_drops_the_departed(
    tmp_path: Path,
) -> None:
    clock = Clock()
    first = CodeCache(tmp_path, idle_seconds=0, clock=clock)
    first.recover()
    _put(first, "adopted", b"a", user="running")
    _put(first, "orphan", b"o", user="deleted-meanwhile")
    # The sidecar is killed; the next one adopts `running` without fetching its code again.
    second = CodeCache(tmp_path, idle_seconds=0, clock=clock)
    second.recover()
    assert second.in_use() == {"adopted", "orphan"}
    second.retain({"running"})
    clock.now += 1
    assert await second.collect() == ["orphan"]
    assert (tmp_path / "adopted").is_dir()
    assert sorted(p.name for p in (tmp_path / PINS_DIR).iterdir()) == ["running"]


def test_recover_removes_what_a_crashed_fetch_or_collection_left(tmp_path: Path) -> None:
    for leftover in (f"{PARTIAL_PREFIX}abc", f"{TRASH_PREFIX}def-1234"):
        (tmp_path / leftover / "sub").mkdir(parents=True)
        (tmp_path / leftover / "sub" / "f.py").write_text("x")
    (tmp_path / "entry").mkdir()
    (tmp_path / "entry" / "main.py").write_bytes(b"12345")
    cache = CodeCache(tmp_path)
    cache.recover()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
    assert [(e.digest, e.size) for e in cache.entries] == [("entry", 5)]


def test_a_failed_write_leaves_no_partial_directory(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path)

    def populate(directory: Path) -> None:
        (directory / "half.py").write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        cache.put("d", populate)
    assert list(tmp_path.iterdir()) == []
    assert cache.entries == []


async def test_a_full_disk_collects_everything_unused_at_once(tmp_path: Path) -> None:
    clock = Clock()
    cache = CodeCache(tmp_path, idle_seconds=3600, clock=clock)
    _put(cache, "unused", b"u")
    _put(cache, "used", b"x", user="s")

    def full(directory: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        cache.put("new", full)
    assert await cache.collect() == ["unused"]
    assert await cache.collect() == []  # the pressure was for one collection


async def test_the_collector_removes_released_code_without_being_asked(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path, idle_seconds=0.2)
    cache.recover()
    path = _put(cache, "d", b"x", user="s")
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.sleep(0)  # let it run its first (empty) collection
        assert path.is_dir()
        cache.release("s")
        async with asyncio.timeout(10):
            while path.exists():
                await asyncio.sleep(0.02)  # polling the file system, with a deadline
    finally:
        task.cancel()
    assert cache.entries == []
