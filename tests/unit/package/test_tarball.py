"""Layers are reproducible: the same files give the same bytes whatever their mtimes or owners."""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

import pytest

from nest.package import PackageBuildError
from nest.package.tarball import code_files, dependency_files, write_layer


def _tree(root: Path, mtime: int) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "main.py").write_text("import pkg\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "sub" / "data.bin").write_bytes(bytes(range(256)) * 64)
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o700)  # owner-executable: 0755 in the layer
    os.chmod(root / "main.py", 0o600)  # not executable: 0644 in the layer
    for path in root.rglob("*"):
        os.utime(path, (mtime, mtime))
    return root


def test_the_same_files_give_the_same_digest_twice(tmp_path: Path) -> None:
    a = write_layer(code_files(_tree(tmp_path / "a", 1_000_000)), tmp_path / "a.tar.gz")
    b = write_layer(code_files(_tree(tmp_path / "b", 2_000_000)), tmp_path / "b.tar.gz")
    assert a.digest == b.digest and a.size == b.size
    assert a.digest.startswith("sha256:") and len(a.digest) == 71
    (tmp_path / "b" / "main.py").write_text("import pkg  # changed\n")
    c = write_layer(code_files(tmp_path / "b"), tmp_path / "c.tar.gz")
    assert c.digest != a.digest


def test_entries_are_sorted_parents_first_with_fixed_metadata(tmp_path: Path) -> None:
    blob = write_layer(code_files(_tree(tmp_path / "a", 1_000_000)), tmp_path / "a.tar.gz")
    with gzip.open(blob.path) as gz:
        header = blob.path.read_bytes()[:10]
        assert header[4:8] == b"\0\0\0\0"  # gzip mtime 0
        with tarfile.open(fileobj=gz) as tar:
            members = tar.getmembers()
    names = [m.name for m in members]
    assert names == ["main.py", "pkg", "pkg/__init__.py", "pkg/sub", "pkg/sub/data.bin", "run.sh"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    modes = {m.name: m.mode for m in members}
    assert modes["run.sh"] == 0o755 and modes["main.py"] == 0o644 and modes["pkg"] == 0o755
    assert all(m.isfile() or m.isdir() for m in members)


def test_the_code_layer_leaves_out_requirements_and_caches(tmp_path: Path) -> None:
    root = _tree(tmp_path / "fn", 0)
    (root / "requirements.txt").write_text("six\n")
    (root / "pkg" / "requirements.txt").write_text("kept: only the top one stands for deps\n")
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (root / "stale.pyc").write_bytes(b"\0")
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "x.py").write_text("")
    assert sorted(code_files(root)) == [
        "main.py", "pkg/__init__.py", "pkg/requirements.txt", "pkg/sub/data.bin", "run.sh",
    ]  # fmt: skip


def test_the_dependency_layer_drops_console_scripts(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "bin").mkdir(parents=True)
    (site / "bin" / "flask").write_text("#!/this/machine/python\n")
    (site / "flask").mkdir()
    (site / "flask" / "__init__.py").write_text("")
    (site / "flask" / "bin").mkdir()
    (site / "flask" / "bin" / "kept.py").write_text("")  # only the top-level bin/ goes
    assert sorted(dependency_files(site)) == ["flask/__init__.py", "flask/bin/kept.py"]


def test_links_inside_are_followed_and_links_out_refused(tmp_path: Path) -> None:
    root = tmp_path / "fn"
    root.mkdir()
    (root / "real.py").write_text("x = 1\n")
    (root / "alias.py").symlink_to(root / "real.py")
    files = code_files(root)
    assert files["alias.py"] == (root / "real.py").resolve()
    secret = tmp_path / "secret"
    secret.write_text("key")
    (root / "leak").symlink_to(secret)
    with pytest.raises(PackageBuildError, match="link out of"):
        code_files(root)


def test_a_link_to_a_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "fn"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "a.py").write_text("")
    (root / "alias").symlink_to(root / "lib")
    with pytest.raises(PackageBuildError, match="directory"):
        code_files(root)
