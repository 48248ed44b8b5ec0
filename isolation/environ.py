"""Each namespace sandbox's own `os.environ`, inside the one interpreter they share.

Why: functions read their configuration from the environment (`os.environ["TABLE"]`,
`os.getenv`), as Lambda code does. Namespace sandboxes share one process, so writing their
`spec.env` into the process environment would give every function the variables of all the
others, the last one loaded winning; until now namespace mode therefore did not apply `spec.env`
at all, and such functions broke. Instead the runtime's `os.environ` becomes a view
(`SandboxEnviron`): while a sandbox's code runs (its import, its calls, its streamed answers, on
the event loop or on its threads) a context variable names that sandbox's `Overlay`, and the
view reads the overlay over the runtime's own environment and writes into the overlay. Outside
any sandbox the view is the runtime's environment, unchanged. A context variable (not a global)
because many sandboxes' calls interleave on one loop and run at once on the thread pool: asyncio
tasks and the pool's jobs (isolation.threads) carry the context they were started in.

What it is not: a boundary. Namespace mode is for trusted code (docs/isolation.md); the process
environment stays reachable (`os.putenv`, C code's `getenv()`), child processes inherit the
runtime's environment, threads a function starts itself begin with the runtime's view, and one
sandbox can reach another's objects anyway.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar, Token


class Overlay:
    """One sandbox's variables: its `spec.env`, what its code set, and what it deleted."""

    __slots__ = ("deleted", "values")

    def __init__(self, env: Mapping[str, str]) -> None:
        self.values: dict[str, str] = dict(env)
        self.deleted: set[str] = set()


_current: ContextVar[Overlay | None] = ContextVar("nest_sandbox_environ", default=None)


class SandboxEnviron(MutableMapping[str, str]):
    """`os.environ` as the running sandbox sees it: its overlay over the runtime's environment
    (`real`, the original `os.environ`, which writes outside any sandbox still go to)."""

    def __init__(self, real: MutableMapping[str, str]) -> None:
        self.real = real

    def __getitem__(self, key: str) -> str:
        overlay = _current.get()
        if overlay is not None:
            if key in overlay.values:
                return overlay.values[key]
            if key in overlay.deleted:
                raise KeyError(key)
        return self.real[key]

    def __setitem__(self, key: str, value: str) -> None:
        overlay = _current.get()
        if overlay is None:
            self.real[key] = value
            return
        for item in (key, value):
            if not isinstance(item, str):  # as os.environ refuses them
                raise TypeError(f"str expected, not {type(item).__name__}")
        overlay.values[key] = value
        overlay.deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        overlay = _current.get()
        if overlay is None:
            del self.real[key]
            return
        if key not in self:
            raise KeyError(key)
        overlay.values.pop(key, None)
        if key in self.real:
            overlay.deleted.add(key)

    def __iter__(self) -> Iterator[str]:
        overlay = _current.get()
        if overlay is None:
            yield from self.real
            return
        yield from overlay.values
        for key in self.real:
            if key not in overlay.values and key not in overlay.deleted:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def copy(self) -> dict[str, str]:
        return dict(self)

    def __or__(self, other: Mapping[str, str]) -> dict[str, str]:
        return dict(self) | dict(other)

    def __ror__(self, other: Mapping[str, str]) -> dict[str, str]:
        return dict(other) | dict(self)

    def __ior__(self, other: Mapping[str, str]) -> SandboxEnviron:
        self.update(other)
        return self

    def __repr__(self) -> str:
        return f"environ({dict(self)!r})"


def install() -> SandboxEnviron:
    """Make `os.environ` the view (once per process; `os.getenv` reads it too)."""
    current: object = os.environ
    if isinstance(current, SandboxEnviron):
        return current
    view = SandboxEnviron(os.environ)
    setattr(os, "environ", view)  # noqa: B010 (os.environ is typed as os._Environ)
    return view


def enter(overlay: Overlay) -> Token[Overlay | None]:
    """`overlay` is the environment from here on in this context; `leave` with the token."""
    return _current.set(overlay)


def leave(token: Token[Overlay | None]) -> None:
    _current.reset(token)


@contextmanager
def active(overlay: Overlay) -> Iterator[None]:
    token = _current.set(overlay)
    try:
        yield
    finally:
        _current.reset(token)
