"""A function's own modules, loaded once in the zygote and found without a search in each child.

Why: importing even an empty module from a new directory cost a forked sandbox about 0.7 MB of
private pages, measured — not for the module, but for the search (every meta-path finder, the
path finder, a new directory finder) and the unmarshalling, each of which writes to pages the
zygote shares. The zygote already knows which code directory a sandbox will import from, and
the runtime has compiled it into the bytecode cache (`isolation.zygote.compile_tree`). So, once
per code directory, the zygote loads the code objects of its top-level modules from that cache
— unmarshalling bytecode the runtime produced; no function code runs in the zygote — and every
child finds and executes them directly: the code objects are shared by all its sandboxes.

What stays exactly as it was: a child still executes each module itself, through the normal
import system (module locks, `sys.modules`, `__spec__`, `__file__`, `__cached__`, a
`SourceFileLoader` for `get_source`, `get_data`, `importlib.resources`). The finder answers only
for top-level names the code directory itself provides, only while that directory is still
first on `sys.path` (as the child puts it), never for a builtin or frozen name (which would win
anyway), and only when the source file is unchanged since it was compiled; otherwise it steps
aside and the ordinary path finder searches as always.
"""

from __future__ import annotations

import _imp
import contextlib
import importlib.util
import marshal
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec, SourceFileLoader
from types import CodeType, ModuleType

MAX_FILES = 256  # per code directory: a function's own modules, not a vendored tree
MAX_SOURCE_BYTES = 1 << 20  # per module
_HEADER = 16  # a .pyc: magic, flags, source mtime, source size

# code directory -> top-level module name -> (source path, is a package)
_TOPS: dict[str, dict[str, tuple[str, bool]]] = {}
# source path -> (code, source mtime in whole seconds, source size), as the bytecode cache had it
_CODE: dict[str, tuple[CodeType, int, int]] = {}


def _top_level(code_dir: str) -> dict[str, tuple[str, bool]]:
    """The importable top-level modules of `code_dir`: name -> (source path, is a package)."""
    found: dict[str, tuple[str, bool]] = {}
    try:
        entries = sorted(os.listdir(code_dir))
    except OSError:
        return found
    extensions = {
        entry.partition(".")[0]
        for entry in entries
        if any(entry.endswith(suffix) for suffix in EXTENSION_SUFFIXES)
    }
    for entry in entries[: MAX_FILES * 4]:
        path = os.path.join(code_dir, entry)
        if entry.endswith(".py") and entry[:-3].isidentifier():
            name, package = entry[:-3], False
        elif entry.isidentifier() and os.path.isfile(os.path.join(path, "__init__.py")):
            name, package, path = entry, True, os.path.join(path, "__init__.py")
        else:
            continue
        # An extension module or a builtin/frozen one of that name wins over a source file.
        if name in sys.builtin_module_names or _imp.is_frozen(name) or name in found:
            continue
        if name in extensions and not package:  # the directory finder prefers the extension
            continue
        found[name] = (path, package)
        if len(found) >= MAX_FILES:
            break
    return found


def _load_cached(source: str, pyc: str) -> tuple[CodeType, int, int] | None:
    """The code object the bytecode cache holds for `source`, if it is current."""
    try:
        stat = os.stat(source)
        if stat.st_size > MAX_SOURCE_BYTES:
            return None
        with open(pyc, "rb") as cached:
            data = cached.read()
    except OSError:
        return None
    if len(data) < _HEADER or data[:4] != importlib.util.MAGIC_NUMBER:
        return None
    flags = int.from_bytes(data[4:8], "little")
    mtime = int.from_bytes(data[8:12], "little")
    size = int.from_bytes(data[12:16], "little")
    if flags != 0 or mtime != int(stat.st_mtime) & 0xFFFFFFFF or size != stat.st_size:
        return None  # hash-based or stale: let the import system decide
    try:
        code = marshal.loads(data[_HEADER:])
    except (EOFError, ValueError, TypeError):
        return None
    return (code, mtime, size) if isinstance(code, CodeType) else None


def prepare(code_dir: str, pycache: str) -> int:
    """In the zygote: load `code_dir`'s top-level modules from the cache; how many loaded."""
    from isolation.zygote import cache_path

    if code_dir in _TOPS:
        return 0
    tops = _TOPS[code_dir] = {}
    for name, (source, package) in _top_level(code_dir).items():
        loaded = _load_cached(source, cache_path(source, pycache))
        if loaded is not None:
            _CODE[source] = loaded
            tops[name] = (source, package)
    return len(tops)


class _Loader(SourceFileLoader):
    """The ordinary source loader, handing out the zygote's code object when it is current."""

    def get_code(self, fullname: str) -> CodeType:
        entry = _CODE.get(self.path)
        if entry is not None:
            code, mtime, size = entry
            with contextlib.suppress(OSError):
                stat = os.stat(self.path)
                if int(stat.st_mtime) & 0xFFFFFFFF == mtime and stat.st_size == size:
                    return code
        return super().get_code(fullname)  # type: ignore[return-value]


class Finder:
    """A meta-path finder for one code directory's top-level modules (see the docstring)."""

    def __init__(self, code_dir: str, tops: dict[str, tuple[str, bool]]) -> None:
        self.code_dir = code_dir
        self.tops = tops

    def find_spec(
        self, name: str, path: object = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        top = self.tops.get(name) if path is None else None
        if top is None or not sys.path or sys.path[0] != self.code_dir:
            return None
        source, package = top
        locations = [os.path.dirname(source)] if package else None
        return importlib.util.spec_from_file_location(
            name, source, loader=_Loader(name, source), submodule_search_locations=locations
        )

    def invalidate_caches(self) -> None:
        pass


def install(code_dir: str) -> bool:
    """In the child, before its function is imported: find `code_dir`'s modules directly."""
    tops = _TOPS.get(code_dir)
    if not tops:
        return False
    sys.meta_path.insert(0, Finder(code_dir, tops))
    return True
