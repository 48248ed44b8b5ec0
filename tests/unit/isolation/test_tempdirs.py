"""Bytecode-cache directories: a runtime that died never leaves its cache behind for long."""

from __future__ import annotations

import os
import time
from pathlib import Path

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
