"""Child-first import namespaces: how many sandboxes share one interpreter without sharing code.

Why: namespace mode loads each sandbox's code under its own synthetic package
(`_nest_ns_<n>`), the Python analogue of a Java class loader. Inside a sandbox, `import utils`
must find *that sandbox's* `utils.py` (child-first), while `import json` or `import requests`
must delegate to the shared interpreter (parent delegation) so the standard library and
installed packages are loaded once for everyone.

How: every module of a sandbox is executed with a private `__builtins__` whose `__import__`
rewrites absolute imports of the sandbox's own top-level names (the `.py` files and folders in
its code directory) to `_nest_ns_<n>.<name>`; everything else goes to the real `__import__`.
A meta-path finder hands out loaders that install that `__builtins__` before a module runs.
Relative imports work unchanged because the modules really are submodules of the package.

Limits (see docs/isolation.md): `importlib.import_module("utils")` called from sandbox code is
not rewritten, and module `__name__`s carry the synthetic prefix.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import itertools
import linecache
import os
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

PREFIX = "_nest_ns_"
_real_import = builtins.__import__
_serial = itertools.count(1)


def own_top_level_names(code_dir: str) -> frozenset[str]:
    """The importable names a code directory ships: `x.py` files and package folders."""
    names = set()
    with os.scandir(code_dir) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext == ".py" and stem.isidentifier():
                names.add(stem)
            elif entry.is_dir() and entry.name.isidentifier() and entry.name != "__pycache__":
                names.add(entry.name)
    return frozenset(names)


class Namespace:
    """One sandbox's synthetic package and its import rewriting."""

    def __init__(self, code_dir: str) -> None:
        self.code_dir = os.path.abspath(code_dir)
        self.package = f"{PREFIX}{next(_serial)}"
        self.own_names = own_top_level_names(self.code_dir)
        self.builtins: dict[str, Any] = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import

    def _import(
        self,
        name: str,
        globals: Mapping[str, object] | None = None,
        locals: Mapping[str, object] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> ModuleType:
        if level == 0:
            top = name.partition(".")[0]
            if top in self.own_names:
                module = _real_import(f"{self.package}.{name}", globals, locals, fromlist, 0)
                # Without a fromlist `import a.b` binds `a`: ours, not the synthetic package.
                return module if fromlist else sys.modules[f"{self.package}.{top}"]
        return _real_import(name, globals, locals, fromlist, level)

    def import_module(self, dotted: str) -> ModuleType:
        """Import one of the sandbox's own modules (e.g. the handler's) by its plain name."""
        return importlib.import_module(f"{self.package}.{dotted}")


class _SandboxSourceLoader(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname: str, path: str, sandbox_builtins: dict[str, Any]) -> None:
        super().__init__(fullname, path)
        self._builtins = sandbox_builtins

    def exec_module(self, module: ModuleType) -> None:
        module.__dict__["__builtins__"] = self._builtins
        super().exec_module(module)


class NamespaceFinder(importlib.abc.MetaPathFinder):
    """Resolves `_nest_ns_<n>.*` names inside the owning sandbox's code directory."""

    def __init__(self) -> None:
        self._namespaces: dict[str, Namespace] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PREFIX):
            return None
        ns = self._namespaces.get(fullname.partition(".")[0])
        if ns is None or path is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            assert spec.origin is not None
            spec.loader = _SandboxSourceLoader(fullname, spec.origin, ns.builtins)
        return spec

    def load(self, code_dir: str) -> Namespace:
        """Create the synthetic package for a code directory; its modules import lazily."""
        ns = Namespace(code_dir)
        package = ModuleType(ns.package)
        package.__path__ = [ns.code_dir]
        package.__spec__ = importlib.machinery.ModuleSpec(ns.package, None, is_package=True)
        package.__spec__.submodule_search_locations = [ns.code_dir]
        self._namespaces[ns.package] = ns
        sys.modules[ns.package] = package
        return ns

    def unload(self, ns: Namespace) -> None:
        """Drop every module and cache entry of the sandbox so its memory can be freed."""
        self._namespaces.pop(ns.package, None)
        inside = ns.package + "."
        # Snapshots (list() is atomic under the GIL): a thread of the sandbox's may still be
        # importing while it is unloaded (an import that overran its timeout).
        for name in [n for n in list(sys.modules) if n == ns.package or n.startswith(inside)]:
            module = sys.modules.pop(name, None)
            if module is None:
                continue
            # Break the module <-> function-globals cycles now rather than at the next GC.
            if name != ns.package:
                module.__dict__.clear()
        below = ns.code_dir + os.sep
        cached = list(sys.path_importer_cache)
        for key in [k for k in cached if k == ns.code_dir or k.startswith(below)]:
            sys.path_importer_cache.pop(key, None)
        for key in [k for k in list(linecache.cache) if k.startswith(below)]:
            linecache.cache.pop(key, None)


_finder: NamespaceFinder | None = None


def install() -> NamespaceFinder:
    """The process-wide finder, put first on `sys.meta_path` on first use."""
    global _finder
    if _finder is None:
        _finder = NamespaceFinder()
        sys.meta_path.insert(0, _finder)
    return _finder
