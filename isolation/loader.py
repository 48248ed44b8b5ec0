"""Child-first import namespaces: how many sandboxes share one interpreter without sharing code.

Why: namespace mode loads each sandbox's code under its own synthetic package
(`_nest_ns_<n>`), the Python analogue of a Java class loader. Inside a sandbox, `import utils`
must find *that sandbox's* `utils.py` (child-first), and `import requests` the `requests` of
*its* dependency layers (two sandboxes may bring two versions), while `import json` must
delegate to the shared interpreter (parent delegation) so the standard library and the
runtime's packages are loaded once for everyone. Compiled extensions cannot be loaded twice in
one process: a layer's native distributions load once, under their real names
(isolation.natives keeps which, and refuses a second version).

How: every module of a sandbox is executed with a private `__builtins__` whose `__import__`
rewrites absolute imports of the sandbox's own top-level names (the `.py` files and folders in
its code directory and in its pure-Python layers) to `_nest_ns_<n>.<name>`; everything else
goes to the real `__import__`. The package's `__path__` is the code directory, then the layers,
so the first that ships a name wins. A meta-path finder hands out loaders that install that
`__builtins__` before a module runs. Relative imports work unchanged because the modules really
are submodules of the package. `import sys` and `import importlib` give a sandbox's modules
views of their own (a `sys.path` of the sandbox's, an `import_module` that rewrites too), so a
sandbox that edits `sys.path` changes its own search path, not the pod's.

Limits (see docs/isolation.md): module `__name__`s carry the synthetic prefix; code that looks
modules up in `sys.modules` by their plain names does not find the sandbox's own.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import itertools
import linecache
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from types import FrameType, ModuleType
from typing import Any

from isolation import natives

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


def dependency_names(root: str) -> tuple[frozenset[str], frozenset[str]]:
    """(pure, compiled): the top-level names an import root ships — `.py` files and package
    folders, and extension modules (`x.cpython-311-....so`) found at its top."""
    pure: set[str] = set()
    compiled: set[str] = set()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return frozenset(), frozenset()
    for entry in entries:
        if entry.is_dir():
            if entry.name.isidentifier() and entry.name != "__pycache__":
                pure.add(entry.name)
            continue
        stem = natives.module_stem(entry.name)
        if stem is not None:
            (pure if entry.name.endswith(".py") else compiled).add(stem)
    return frozenset(pure), frozenset(compiled)


class _SysView(ModuleType):
    """`sys` as one sandbox's modules see it: everything is the real `sys` except `path`,
    which is the sandbox's own list (its code, its dependency layers, then the interpreter's).

    Why: code that does `sys.path.insert(0, vendor_dir)` then `import vendored` would otherwise
    change where every sandbox (and the runtime) imports from, for the life of the pod. Here the
    edit stays in this list, and names found only in the entries the sandbox added are loaded
    child-first into its own package, like its dependencies."""

    def __init__(self, path: list[str]) -> None:
        super().__init__("sys", sys.__doc__)
        self.__dict__["path"] = path

    def __getattr__(self, name: str) -> Any:
        return getattr(sys, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "path":
            self.__dict__["path"] = value
        else:
            setattr(sys, name, value)

    def __dir__(self) -> list[str]:
        return dir(sys)


class _ImportlibView(ModuleType):
    """`importlib` as one sandbox's modules see it: `import_module` resolves the sandbox's own
    and dependency names as its `import` statements do (libraries import plugins this way)."""

    _ns: Namespace

    def __init__(self, ns: Namespace) -> None:
        super().__init__("importlib", importlib.__doc__)
        self.__dict__["_ns"] = ns

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib, name)

    def import_module(self, name: str, package: str | None = None) -> ModuleType:
        if name == "sys":
            return self._ns.sys_view()
        if not name.startswith(".") and self._ns.rewrites(name.partition(".")[0]):
            return importlib.import_module(f"{self._ns.package}.{name}")
        return importlib.import_module(name, package)


class Namespace:
    """One sandbox's synthetic package and its import rewriting.

    The package's search path is the sandbox's code directory, then its dependency layers in
    order: an `import x` of a name any of them ships (its own modules, its pure-Python
    dependencies) becomes `import _nest_ns_<n>.x`, found in the first of them that has it, so
    two sandboxes may use two versions of one package. Names of its compiled distributions
    (`native`) are not rewritten: they load once per runtime under their real names
    (isolation.natives) from the import roots `native_roots` says."""

    def __init__(
        self,
        code_dir: str,
        dependency_paths: Sequence[str] = (),
        native: frozenset[str] = frozenset(),
    ) -> None:
        self.code_dir = os.path.abspath(code_dir)
        self.dependency_paths = tuple(os.path.abspath(p) for p in dependency_paths)
        self.package = f"{PREFIX}{next(_serial)}"
        self.own_names = own_top_level_names(self.code_dir)
        dependencies: set[str] = set()
        compiled: set[str] = set(native)
        for root in self.dependency_paths:
            pure, ext = dependency_names(root)
            dependencies |= pure
            compiled |= ext
        self.native = frozenset(compiled)
        self.names = self.own_names | (frozenset(dependencies) - self.native)
        self._roots = [self.code_dir, *self.dependency_paths]
        # What the sandbox sees as sys.path; what it adds there is its own (see _SysView).
        self._interpreter_path = tuple(sys.path)
        self._interpreter_list = list(sys.path)
        self.sys_path: list[str] = [*self._roots, *self._interpreter_path]
        self._seen: list[str] = list(self.sys_path)
        self._extra: list[str] = []  # entries the sandbox added to its sys.path
        self._added: dict[str, bool] = {}  # names looked up in them
        self.module = ModuleType(self.package)
        self.module.__path__ = list(self._roots)
        self.module.__spec__ = importlib.machinery.ModuleSpec(self.package, None, is_package=True)
        self.module.__spec__.submodule_search_locations = self.module.__path__
        self.builtins: dict[str, Any] = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import
        self._sys = _SysView(self.sys_path)
        self._importlib = _ImportlibView(self)

    def rewrites(self, top: str) -> bool:
        """Whether `import top` from this sandbox means its own copy of `top`."""
        if top in self.names:
            return True
        view = self._sys.__dict__["path"]
        # The sandbox edited its sys.path, or something it called edited the real one (list
        # compares of identical strings: cheap); the backend puts the real one back afterwards.
        if view != self._seen or sys.path != self._interpreter_list:
            self._path_changed([*view, *sys.path] if isinstance(view, list) else sys.path)
        if not self._extra:
            return False
        found = self._added.get(top)
        if found is None:
            spec = importlib.machinery.PathFinder.find_spec(top, self._extra)
            found = self._added[top] = spec is not None
        return found

    def _path_changed(self, view: object) -> None:
        """Its package now also searches the entries the sandbox added, in the order its list
        has them (interpreter entries stay the shared interpreter's; its roots stay searched)."""
        entries = [p for p in view if isinstance(p, str)] if isinstance(view, list | tuple) else []
        own = self._sys.__dict__["path"]
        self._seen = list(own) if isinstance(own, list | tuple) else []
        self._added.clear()
        shared = set(self._interpreter_path)
        unique = list(dict.fromkeys(entries))
        self._extra = [p for p in unique if p not in shared and p not in self._roots]
        ordered = [p for p in unique if p in self._roots or p in self._extra]
        self.module.__path__[:] = ordered + [p for p in self._roots if p not in ordered]

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
            if top in self.names or (top not in self.native and self.rewrites(top)):
                module = _real_import(f"{self.package}.{name}", globals, locals, fromlist, 0)
                # Without a fromlist `import a.b` binds `a`: ours, not the synthetic package.
                return module if fromlist else sys.modules[f"{self.package}.{top}"]
            if top in _VIEWS:
                module = _real_import(name, globals, locals, fromlist, level)
                if module is sys:
                    return self._sys
                return self._importlib if module is importlib else module
        return _real_import(name, globals, locals, fromlist, level)

    def adopt_path_entries(self, entries: Sequence[str]) -> None:
        """Entries that were added to the real sys.path while this sandbox's code ran (and have
        been taken out again): they become entries of its own sys.path."""
        view = self._sys.__dict__["path"]
        if isinstance(view, list):
            view.extend(p for p in entries if p not in view)
            self._path_changed(view)

    def roots(self) -> list[str]:
        """Where its package's modules come from: its code, its layers, the entries it added."""
        return list(self.module.__path__)

    def sys_view(self) -> ModuleType:
        return self._sys

    def import_module(self, dotted: str) -> ModuleType:
        """Import one of the sandbox's own modules (e.g. the handler's) by its plain name."""
        return importlib.import_module(f"{self.package}.{dotted}")


_VIEWS = frozenset({"sys", "importlib"})
_DEFAULT_CONTEXT = importlib.metadata.DistributionFinder.Context()


class _SandboxSourceLoader(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname: str, path: str, sandbox_builtins: dict[str, Any]) -> None:
        super().__init__(fullname, path)
        self._builtins = sandbox_builtins

    def exec_module(self, module: ModuleType) -> None:
        module.__dict__["__builtins__"] = self._builtins
        super().exec_module(module)


class NamespaceFinder(importlib.abc.MetaPathFinder):
    """Resolves `_nest_ns_<n>.*` names inside the owning sandbox's code directory and layers;
    the top-level names of native distributions loaded from layers in their import roots; and
    `importlib.metadata` lookups made by sandbox code in that sandbox's layers."""

    def __init__(self) -> None:
        self._namespaces: dict[str, Namespace] = {}
        self._by_builtins: dict[int, Namespace] = {}
        self.natives = natives.Ledger()
        self._native_roots: dict[str, str] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PREFIX):
            root = self._native_roots.get(fullname) if path is None else None
            if root is None:
                return None
            return importlib.machinery.PathFinder.find_spec(fullname, [root])
        ns = self._namespaces.get(fullname.partition(".")[0])
        if ns is None or path is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            assert spec.origin is not None
            spec.loader = _SandboxSourceLoader(fullname, spec.origin, ns.builtins)
        return spec

    def find_distributions(
        self, context: importlib.metadata.DistributionFinder.Context = _DEFAULT_CONTEXT
    ) -> Iterable[importlib.metadata.Distribution]:
        """Sandbox code asking for metadata (`importlib.metadata.version("x")`) finds its own
        layers' distributions first; the caller is known by its frames' builtins."""
        ns = self._caller()
        if ns is None or context.path is not sys.path:
            return ()
        mine = importlib.metadata.DistributionFinder.Context(name=context.name, path=ns.roots())
        return importlib.metadata.MetadataPathFinder.find_distributions(mine)

    def _caller(self) -> Namespace | None:
        if not self._by_builtins:
            return None
        frame: FrameType | None = sys._getframe(2)
        for _ in range(64):
            if frame is None:
                return None
            ns = self._by_builtins.get(id(frame.f_globals.get("__builtins__")))
            if ns is not None:
                return ns
            frame = frame.f_back
        return None

    def load(
        self,
        code_dir: str,
        dependency_paths: Sequence[str] = (),
        native: frozenset[str] = frozenset(),
    ) -> Namespace:
        """Create the synthetic package for a code directory; its modules import lazily."""
        ns = Namespace(code_dir, dependency_paths, native)
        self._namespaces[ns.package] = ns
        self._by_builtins[id(ns.builtins)] = ns
        sys.modules[ns.package] = ns.module
        return ns

    def claim_natives(self, owner: str, wanted: Mapping[str, str], roots: Sequence[str]) -> None:
        """Record a sandbox's native distributions (natives.DependencyConflict if one is loaded
        here at another version) and make their top-level names importable runtime-wide."""
        self.natives.claim(owner, wanted, roots)
        self._native_roots = self.natives.roots()

    def release_natives(self, owner: str) -> None:
        self.natives.release(owner)
        self._native_roots = self.natives.roots()

    def native_roots(self) -> list[str]:
        return list(dict.fromkeys(self._native_roots.values()))

    def unload(self, ns: Namespace) -> None:
        """Drop every module and cache entry of the sandbox so its memory can be freed."""
        self._namespaces.pop(ns.package, None)
        self._by_builtins.pop(id(ns.builtins), None)
        inside = ns.package + "."
        # Snapshots (list() is atomic under the GIL): a thread of the sandbox's may still be
        # importing while it is unloaded (an import that overran its timeout).
        for name in [n for n in list(sys.modules) if n == ns.package or n.startswith(inside)]:
            # Not cleared: its functions may live on in shared modules (typing_extensions
            # patches `typing._collect_parameters`), which must keep working; the GC frees them.
            sys.modules.pop(name, None)
        # Its code and the layers no other sandbox uses (a layer's cache entries are shared).
        used = {root for other in self._namespaces.values() for root in other.roots()}
        for root in [r for r in ns.roots() if r not in used]:
            below = root + os.sep
            cached = list(sys.path_importer_cache)
            for key in [k for k in cached if k == root or k.startswith(below)]:
                sys.path_importer_cache.pop(key, None)
            for key in [k for k in list(linecache.cache) if k.startswith(below)]:
                linecache.cache.pop(key, None)


class _NativeDependencyFinder(importlib.abc.MetaPathFinder):
    """Last on `sys.meta_path`: a top-level name nothing else found, looked up in the import
    roots of the native distributions loaded from layers. A native package (loaded runtime-wide
    under its real name) imports its pure-Python dependencies by their real names too; they
    are in the same layer, and load runtime-wide beside it, never into a sandbox's package."""

    def __init__(self, finder: NamespaceFinder) -> None:
        self._finder = finder

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if path is not None or fullname.startswith(PREFIX):
            return None
        roots = self._finder.native_roots()
        return importlib.machinery.PathFinder.find_spec(fullname, roots) if roots else None


_finder: NamespaceFinder | None = None


def install() -> NamespaceFinder:
    """The process-wide finder, put first on `sys.meta_path` on first use (with its fallback
    for natives' dependencies last)."""
    global _finder
    if _finder is None:
        _finder = NamespaceFinder()
        sys.meta_path.insert(0, _finder)
        sys.meta_path.append(_NativeDependencyFinder(_finder))
    return _finder
