"""Layers as reproducible tarballs: the same files always give the same bytes, hence digest.

Content addressing only pays if nothing but content reaches the bytes (layers, and the build
contexts `nest deploy --build-in-cluster` uploads): entries are sorted (parents
before children), owners are root, modes are 0644 or 0755 (executable or not), mtimes are 0, the
gzip header has no name and no time, and only regular files and directories are written (the
format sandbox.layers states). Two functions with the same requirements then share one blob in
the registry and one unpacked copy per pod, and redeploying unchanged code changes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nest.functions import SKIPPED_DIRS, SKIPPED_SUFFIXES
from nest.package import PackageBuildError
from nest.package.requirements import REQUIREMENTS_FILE

COMPRESS_LEVEL = 6
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Blob:
    """A written layer: where, its digest (`sha256:<hex>`) and its size in bytes."""

    path: Path
    digest: str
    size: int


def _skipped(parts: tuple[str, ...]) -> bool:
    return any(p in SKIPPED_DIRS for p in parts[:-1]) or parts[-1].endswith(SKIPPED_SUFFIXES)


def select_files(root: Path, exclude_top: Iterable[str] = (), drop_dirs: Iterable[str] = ()) -> (
    dict[str, Path]
):  # fmt: skip
    """The files of a layer by relative POSIX name: caches, version control and virtualenvs
    left out (as `nest deploy` leaves them out of inline code), and `exclude_top` names and
    `drop_dirs` top-level directories too. Symbolic links are followed inside `root` and refused
    when they lead out of it (a layer must not carry files from elsewhere on this machine)."""
    root = root.resolve()
    excluded, dropped = set(exclude_top), set(drop_dirs)
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).parts
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in SKIPPED_DIRS and not (not rel_dir and d in dropped)
        )  # fmt: skip
        entries = list(filenames) + [d for d in dirnames if (here / d).is_symlink()]
        for name in sorted(entries):
            parts = (*rel_dir, name)
            if (not rel_dir and name in excluded) or _skipped(parts):
                continue
            path = here / name
            real = path.resolve()
            if path.is_symlink() and not real.is_relative_to(root):
                raise PackageBuildError(f"{path}: a symbolic link out of {root} cannot be packaged")
            if real.is_dir():
                raise PackageBuildError(
                    f"{path}: a symbolic link to a directory cannot be packaged"
                )
            if real.is_file():
                found["/".join(parts)] = real
    return found


def code_files(root: Path) -> dict[str, Path]:
    """A function directory's code layer: its files minus requirements.txt (which the
    dependency layer stands for) and the usual caches."""
    return select_files(root, exclude_top={REQUIREMENTS_FILE})


def dependency_files(site: Path) -> dict[str, Path]:
    """What `pip install --target` wrote, minus `bin/`: console scripts carry this machine's
    interpreter path in their shebang and functions import packages, they do not exec them."""
    return select_files(site, drop_dirs={"bin"})


def _entries(files: Mapping[str, Path]) -> list[tuple[str, Path | None]]:
    """Sorted tar entries: every parent directory (None) before what it holds."""
    dirs: set[str] = set()
    for name in files:
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts:
            raise PackageBuildError(f"{name!r} would escape the layer")
        dirs.update(str(p) for p in pure.parents if str(p) != ".")
    entries: list[tuple[str, Path | None]] = [(d, None) for d in dirs]
    entries += list(files.items())
    return sorted(entries, key=lambda e: PurePosixPath(e[0]).parts)


def _info(name: str, path: Path | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if path is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        st = path.stat()
        info.type, info.size = tarfile.REGTYPE, st.st_size
        info.mode = 0o755 if st.st_mode & 0o100 else 0o644
    return info


def write_layer(files: Mapping[str, Path], out: Path) -> Blob:
    """Write `files` (relative name -> file) as a reproducible .tar.gz at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        out.open("wb") as raw,
        gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=COMPRESS_LEVEL
        ) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, path in _entries(files):
            info = _info(name, path)
            if path is None:
                tar.addfile(info)
                continue
            with path.open("rb") as src:
                tar.addfile(info, src)
    return Blob(out, file_digest(out), out.stat().st_size)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def context_archive(root: Path, out: Path) -> Blob:
    """A function directory as a build context (`sandbox.context`): every file a package would
    be built from, requirements.txt included (the in-cluster build reads it), caches left out,
    written reproducibly to `out`: unchanged code uploads as the same digest."""
    files = select_files(root)
    if not files:
        raise PackageBuildError(f"{root}: the directory holds no code")
    return write_layer(files, out)
