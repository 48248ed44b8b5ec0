"""Bytecode-cache directories: a runtime that died never leaves its cache behind for long."""

from __future__ import annotations

import os
import time
from pathlib import Path

from isolation.principals import sweep_scratch
from isolation.zygote import PYCACHE_PREFIX, make_pycache, sweep_pycaches


def test_a_cache_whose_runtime_is_gone_is_swept_and_a_live_one_kept(tmp_path: Path) -> None:
    live, live_lock = make_pycache(str(tmp_path))
    dead, dead_lock = make_pycache(str(tmp_path))
    os.close(dead_lock)  # its runtime died: the lock went with it
    assert Path(dead).is_dir()
    fresh, fresh_lock = make_pycache(str(tmp_path))  # the next runtime's start-up sweeps
    try:
        assert not Path(dead).exists()
        assert Path(live).is_dir() and Path(fresh).is_dir()
        assert os.path.basename(fresh).startswith(PYCACHE_PREFIX)
    finally:
        os.close(live_lock)
        os.close(fresh_lock)


def test_unowned_caches_of_older_runtimes_go_once_old(tmp_path: Path) -> None:
    old = tmp_path / f"{PYCACHE_PREFIX}old"
    young = tmp_path / f"{PYCACHE_PREFIX}young"
    for path in (old, young):
        path.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert sweep_pycaches(str(tmp_path)) == [str(old)]
    assert young.is_dir()


def test_the_sweep_follows_no_link_and_leaves_other_users_alone(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep").write_text("x")
    (tmp_path / f"{PYCACHE_PREFIX}link").symlink_to(target)
    theirs = tmp_path / f"{PYCACHE_PREFIX}theirs"
    theirs.mkdir()
    os.utime(theirs, (0, 0))
    if os.geteuid() == 0:
        os.chown(theirs, 12345, 12345)
        assert sweep_pycaches(str(tmp_path)) == []
        assert theirs.is_dir()
    assert (target / "keep").exists()


def test_a_new_runtime_sweeps_the_scratch_dirs_an_earlier_one_left(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    (root / "sandbox-a" / "deep").mkdir(parents=True)
    (root / "stray-file").write_text("x")
    held = sweep_scratch(str(root))
    try:
        assert held >= 0
        assert [p.name for p in root.iterdir()] == [".owner"]
        (root / "sandbox-b").mkdir()  # a live runtime's sandbox: a second runtime must not take it
        assert sweep_scratch(str(root)) == -1
        assert (root / "sandbox-b").is_dir()
    finally:
        os.close(held)
    again = sweep_scratch(str(root))  # its runtime gone, the root is swept again
    os.close(again)
    assert again >= 0
    assert not (root / "sandbox-b").exists()
