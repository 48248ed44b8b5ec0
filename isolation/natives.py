"""Native extensions in a shared interpreter: which compiled distributions a runtime holds.

Why: pure-Python dependencies can be loaded once per namespace sandbox (isolation.loader gives
each sandbox its own copy), but a compiled extension module cannot: CPython initialises one
per process (single-phase init keeps its state in the process, and most extensions refuse a
second copy or corrupt each other's globals). So a native distribution is loaded once per
runtime, under its real name, shared by every namespace sandbox that asks for it, and a sandbox
that needs another version of it than the one already here cannot run here. This module keeps
that ledger: what is loaded (or promised to a running sandbox), from which import root, and
whether a new sandbox's `native_distributions` ("name==version") fit it. The runtime reports the
ledger (RuntimeInfo.native_distributions), the sidecar publishes it on its Lease and the
scheduler keeps conflicting sandboxes off the pod; what still lands here fails with
`DependencyConflict`, naming the package and both versions. The runtime also reports the import
roots those natives load from (`Ledger.import_roots`, RuntimeInfo.native_roots): they are
dependency layers in the sidecar's code cache, and an imported package keeps reading its
directory (its lazy submodules, its pure-Python dependencies, its data files) for as long as the
process lives, so the sidecar keeps them cached until this runtime ends, whoever still uses them.

The runtime's own compiled dependencies (aiohttp's, pydantic's) count too: they are loaded in
the same interpreter, so a sandbox wanting another pydantic-core conflicts with the runtime.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.metadata
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)
_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s=;,]+)\s*$")


class DependencyConflict(Exception):
    """A native distribution is wanted at one version and already loaded at another."""

    def __init__(self, name: str, wanted: str, loaded: str, where: str) -> None:
        super().__init__(
            f"needs {name}=={wanted}, but this runtime already loaded {name}=={loaded} ({where}); "
            "a compiled extension loads once per process: use subprocess isolation, or let the "
            "scheduler place it on a pod without this conflict"
        )
        self.name, self.wanted, self.loaded = name, wanted, loaded


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name: `Markup_Safe` and `markup-safe` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(specs: Iterable[str]) -> dict[str, str]:
    """`["name==version", ...]` as {canonical name: version}; ValueError names a bad entry."""
    out: dict[str, str] = {}
    for spec in specs:
        match = _NAME_RE.match(spec)
        if match is None:
            raise ValueError(f"native distribution {spec!r} is not name==version")
        out[canonical(match.group(1))] = match.group(2)
    return out


def module_stem(filename: str) -> str | None:
    """The importable name a top-level file provides (`x.py`, `x.cpython-311-...so`), else None."""
    for suffix in (".py", *EXTENSION_SUFFIXES):
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            return stem if stem.isidentifier() else None
    return None


def top_levels_of(files: Iterable[str]) -> frozenset[str]:
    """The top-level import names of a distribution, from the paths it installed (RECORD)."""
    names = set()
    for path in files:
        parts = path.replace(os.sep, "/").split("/")
        first = parts[0]
        if first in ("", "..", "__pycache__", "bin") or first.endswith((".dist-info", ".data")):
            continue
        if len(parts) == 1:
            stem = module_stem(first)
            if stem is not None:
                names.add(stem)
        elif first.isidentifier():
            names.add(first)
    return frozenset(names)


def installed_top_levels(root: str, name: str) -> frozenset[str]:
    """The import names distribution `name` installed into import root `root` (what
    `pip install --target` wrote: its dist-info's top_level.txt, else its RECORD)."""
    wanted = canonical(name)
    try:
        entries = os.listdir(root)
    except OSError:
        return frozenset()
    for entry in entries:
        if not entry.endswith(".dist-info"):
            continue
        if canonical(entry[: -len(".dist-info")].rsplit("-", 1)[0]) != wanted:
            continue
        info = os.path.join(root, entry)
        try:
            with open(os.path.join(info, "top_level.txt"), encoding="utf-8") as f:
                listed = frozenset(line.strip() for line in f if line.strip().isidentifier())
            if listed:
                return listed
        except OSError:
            pass
        try:
            with open(os.path.join(info, "RECORD"), encoding="utf-8") as f:
                return top_levels_of(line.split(",", 1)[0] for line in f)
        except OSError:
            return frozenset()
    return frozenset()


@functools.cache
def _environment_natives() -> tuple[tuple[str, str, frozenset[str]], ...]:
    """(canonical name, version, top-level names) of every compiled distribution installed in
    the runtime's own environment: read once (dozens of RECORD files)."""
    out = []
    for dist in importlib.metadata.distributions():
        files = [str(f) for f in dist.files or ()]
        if any(f.endswith(EXTENSION_SUFFIXES) for f in files):
            name = canonical(dist.metadata["Name"] or "")
            out.append((name, dist.version, top_levels_of(files)))
    return tuple(out)


def runtime_natives() -> dict[str, str]:
    """The compiled distributions of the runtime's own environment that it has imported by now
    (any of their top-level modules is in sys.modules): {canonical name: version}."""
    return {
        name: version
        for name, version, tops in _environment_natives()
        if any(top in sys.modules for top in tops)
    }


@dataclass
class Loaded:
    """One native distribution of this runtime: its version, where its files are, who uses it."""

    version: str
    root: str | None  # the import root it loads from; None: the runtime's own environment
    names: frozenset[str]  # its top-level import names
    owners: set[str] = field(default_factory=set)  # sandboxes that declared it


class Ledger:
    """The natives of one runtime. Not thread-safe: used from the event loop only."""

    def __init__(self) -> None:
        self._dists: dict[str, Loaded] = {}

    def version_of(self, name: str) -> tuple[str, str] | None:
        """(version, where it came from) of a loaded native distribution, else None."""
        entry = self._dists.get(name)
        if entry is not None:
            return entry.version, "from a dependency layer"
        own = runtime_natives().get(name)
        return None if own is None else (own, "the runtime's own")

    def check(self, wanted: Mapping[str, str]) -> None:
        """Raise DependencyConflict for the first wanted native loaded here at another version."""
        for name, version in sorted(wanted.items()):
            loaded = self.version_of(name)
            if loaded is not None and loaded[0] != version:
                raise DependencyConflict(name, version, loaded[0], loaded[1])

    def claim(self, owner: str, wanted: Mapping[str, str], roots: Iterable[str]) -> None:
        """Check, then record that `owner` uses these natives (from the first of its import
        roots that holds each); the first claimant's files are the ones the runtime loads."""
        if not wanted:
            return
        self.check(wanted)
        roots = tuple(roots)
        for name, version in wanted.items():
            entry = self._dists.get(name)
            if entry is None:
                if name in runtime_natives():
                    continue  # the runtime's own copy serves it: same version, checked above
                root, names = None, frozenset[str]()
                for candidate in roots:
                    names = installed_top_levels(candidate, name)
                    if names:
                        root = candidate
                        break
                entry = self._dists[name] = Loaded(version, root, names)
            entry.owners.add(owner)

    def release(self, owner: str) -> None:
        """`owner` is gone: forget the natives nobody uses and nothing imported (an imported
        extension stays in the process for good, and so does its entry)."""
        for name in list(self._dists):
            entry = self._dists[name]
            entry.owners.discard(owner)
            if not entry.owners and not any(top in sys.modules for top in entry.names):
                del self._dists[name]

    def roots(self) -> dict[str, str]:
        """{top-level import name: import root} of the natives loaded from layers."""
        out: dict[str, str] = {}
        for entry in self._dists.values():
            if entry.root is not None:
                for top in entry.names:
                    out.setdefault(top, entry.root)
        return out

    def import_roots(self) -> list[str]:
        """The import roots (dependency layers) this runtime loads or loaded natives from: every
        entry's, imported or only promised (a later sandbox imports it from the first
        claimant's root, whoever that was)."""
        return sorted({entry.root for entry in self._dists.values() if entry.root is not None})

    def report(self) -> list[str]:
        """What this runtime holds, as sorted "name==version": its own and its layers'."""
        merged = dict(runtime_natives())
        merged.update((name, entry.version) for name, entry in self._dists.items())
        return sorted(f"{name}=={version}" for name, version in merged.items())
