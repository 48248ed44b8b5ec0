"""The zygote's code cache: which modules it serves, and that it steps aside otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from isolation import codecache
from isolation.zygote import compile_tree


@pytest.fixture
def code_dir(tmp_path: Path) -> Iterator[tuple[str, str]]:
    code = tmp_path / "code"
    code.mkdir()
    (code / "alpha.py").write_text("VALUE = 1\n")
    (code / "pkg").mkdir()
    (code / "pkg" / "__init__.py").write_text("")
    (code / "namespace_only").mkdir()  # no __init__: the path finder's business
    (code / "native.py").write_text("")
    (code / "native.cpython-311-x86_64-linux-gnu.so").write_text("")  # extensions win
    (code / "sys.py").write_text("")  # builtin: never a source file's
    (code / "not-a-name.py").write_text("")
    pycache = tmp_path / "cache"
    pycache.mkdir()
    compile_tree(str(code), str(pycache))
    yield str(code), str(pycache)
    codecache._TOPS.pop(str(code), None)


def test_only_the_top_level_modules_the_directory_finder_would_pick(
    code_dir: tuple[str, str],
) -> None:
    code, _ = code_dir
    assert codecache._top_level(code) == {
        "alpha": (f"{code}/alpha.py", False),
        "pkg": (f"{code}/pkg/__init__.py", True),
    }


def test_the_cached_code_is_served_while_the_source_is_unchanged(
    code_dir: tuple[str, str],
) -> None:
    code, pycache = code_dir
    assert codecache.prepare(code, pycache) == 2
    finder = codecache.Finder(code, codecache._TOPS[code])
    saved = list(sys.path)
    sys.path.insert(0, code)
    try:
        spec = finder.find_spec("alpha")
        assert spec is not None and spec.origin == f"{code}/alpha.py"
        assert spec.loader is not None
        cached = codecache._CODE[f"{code}/alpha.py"][0]
        assert spec.loader.get_code("alpha") is cached  # type: ignore[attr-defined]
        package = finder.find_spec("pkg")
        assert package is not None and package.submodule_search_locations == [f"{code}/pkg"]
        assert finder.find_spec("alpha", path=[code]) is None  # submodules: not ours
        assert finder.find_spec("missing") is None
        Path(code, "alpha.py").write_text("VALUE = 22\n")  # changed: compiled afresh
        fresh = spec.loader.get_code("alpha")  # type: ignore[attr-defined]
        assert fresh is not cached and fresh is not None
    finally:
        sys.path[:] = saved


def test_the_finder_steps_aside_once_its_directory_is_not_first(
    code_dir: tuple[str, str],
) -> None:
    code, pycache = code_dir
    codecache.prepare(code, pycache)
    finder = codecache.Finder(code, codecache._TOPS[code])
    saved = list(sys.path)
    sys.path[:0] = ["/elsewhere", code]
    try:
        assert finder.find_spec("alpha") is None
    finally:
        sys.path[:] = saved


def test_a_stale_or_missing_bytecode_file_is_not_loaded(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("X = 1\n")
    assert codecache._load_cached(str(source), str(tmp_path / "absent.pyc")) is None
    bogus = tmp_path / "mod.pyc"
    bogus.write_bytes(b"\0" * 32)
    assert codecache._load_cached(str(source), str(bogus)) is None
