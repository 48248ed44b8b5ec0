"""The pool pod's content-addressed cache, kept within a size budget and never pulled from a user.

Entries are directories named by a digest (the fetcher's SHA-256 of code files, or
`sha256-<hex>` for an unpacked OCI layer), written to a `.partial-*` directory and renamed into
place, so a crash mid-write never leaves a half-written entry under a digest. Without collection
the cache only grew (41 directories after everything had been deleted), on an emptyDir that
counts against the pod.

Who uses what is known here: a worker pins the digests it runs (`use`: its code, and for a function
package every dependency layer too, which other sandboxes may share) and the sidecar releases the
pin when the Sandbox is gone (`release`). Pins are also written to `.in-use/<sandbox uid>` (one
digest a line),
because a restarted sidecar adopts running sandboxes without fetching their code again and must
not collect what they run. The runtime pins too (`runtime-<pid>-<start>`, by nest_sidecar.
runtime.NativePins): the layers its interpreter loaded native extensions from stay until it
ends. Collection is decided by `plan_eviction`, a pure function: entries nobody uses go once
they have been idle `idle_seconds` (a re-created sandbox or a rollback within that time finds
its code), or sooner, least recently used first, while the cache holds
more than its budget; an entry in use is never removed, whatever the budget says. Victims are
renamed to `.trash-*` on the event loop (where the fetcher looks entries up, so a lookup never
finds an entry half deleted) and removed in a thread. Leftover `.partial-*` and `.trash-*`
directories of a crashed sidecar are removed at start-up (`recover`).

An entry may have a companion file outside its directory (`attach`): the verified blob an OCI
layer was unpacked from, kept so that the next pull of a package sharing the layer finds it and
fetches nothing. It counts in the entry's size and goes with the entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 1 << 30  # 1 GiB
DEFAULT_IDLE_SECONDS = 30.0
PARTIAL_PREFIX = ".partial-"
TRASH_PREFIX = ".trash-"
PINS_DIR = ".in-use"
RUNTIME_PREFIX = "runtime-"  # a runtime's pins (its natives' layers), not a sandbox's
MIN_WAIT = 0.05  # seconds: a timer that fires a hair early must not spin the collector
FAILED_WAIT = 10.0  # seconds before a collection that failed is tried again


@dataclass(frozen=True)
class Entry:
    """One cached directory: its digest, its size in bytes, when it was last used (epoch s)."""

    digest: str
    size: int
    last_used: float


def plan_eviction(
    entries: Iterable[Entry], in_use: Collection[str], *, budget: int, idle: float, now: float
) -> list[str]:
    """The digests to remove, least recently used first.

    An entry in `in_use` stays whatever its size. Of the others, one idle for `idle` seconds
    goes; so does any, oldest first, while the cache is larger than `budget` bytes.
    """
    entries = list(entries)
    total = sum(e.size for e in entries)
    unused = sorted(
        (e for e in entries if e.digest not in in_use), key=lambda e: (e.last_used, e.digest)
    )
    victims = []
    for entry in unused:
        if now - entry.last_used >= idle or total > budget:
            victims.append(entry.digest)
            total -= entry.size
    return victims


def next_expiry(entries: Iterable[Entry], in_use: Collection[str], idle: float) -> float | None:
    """When the next unused entry becomes idle long enough to go (epoch s); None: none will."""
    times = [e.last_used + idle for e in entries if e.digest not in in_use]
    return min(times) if times else None


def tree_size(path: Path) -> int:
    """Bytes of the regular files under `path` (apparent sizes; links not followed)."""
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _populate(tmp: Path, populate: Callable[[Path], object]) -> int:
    """Fill `tmp` and make it readable (never writable) by the sandboxes, which run as uids of
    their own (Landlock lets each read only its own entries); its size in bytes."""
    populate(tmp)
    for directory in (tmp, *(p for p in tmp.rglob("*") if p.is_dir())):
        directory.chmod(0o755)
    return tree_size(tmp)


def _remove_all(paths: Iterable[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


class CodeCache:
    """Directories under `root`, one per digest, with pins and a collector (`run`)."""

    def __init__(
        self,
        root: Path,
        *,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.budget = budget_bytes
        self.idle = idle_seconds
        self.clock = clock
        self._entries: dict[str, Entry] = {}
        self._users: dict[str, frozenset[str]] = {}  # user (a sandbox uid) -> digests it uses
        self._attached: dict[str, Path] = {}  # digest -> a file that goes with the entry
        self._wake = asyncio.Event()
        self._pressure = False  # the disk filled up: collect everything unused once

    def path(self, digest: str) -> Path:
        return self.root / digest

    @property
    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def in_use(self) -> set[str]:
        return set().union(*self._users.values())

    def pins(self, user: str) -> frozenset[str]:
        """The digests `user` has pinned (empty when none)."""
        return self._users.get(user, frozenset())

    # -- start-up ------------------------------------------------------------------------------

    def recover(self) -> None:
        """Index what a previous sidecar left, remove its half-written and half-deleted
        directories, and load its pins. Call once, before the first lookup."""
        self.root.mkdir(parents=True, exist_ok=True)
        leftovers = []
        for child in self.root.iterdir():
            name = child.name
            if name.startswith((PARTIAL_PREFIX, TRASH_PREFIX)):
                leftovers.append(child)
            elif not name.startswith(".") and child.is_dir() and not child.is_symlink():
                used = child.stat().st_mtime
                self._entries[name] = Entry(name, tree_size(child), used)
        if leftovers:
            log.info(
                "removing %d leftover temporary directories from the code cache", len(leftovers)
            )
            _remove_all(leftovers)
        pins = self.root / PINS_DIR
        if pins.is_dir():
            for pin in pins.iterdir():
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    digests = frozenset(pin.read_text().split())
                    if digests and not pin.name.startswith("."):
                        self._users[pin.name] = digests
                    else:  # a temporary file of an interrupted pin write
                        pin.unlink()
        log.info(
            "code cache %s: %d entries, %d bytes, %d pins",
            self.root,
            len(self._entries),
            sum(e.size for e in self._entries.values()),
            len(self._users),
        )

    def retain(self, users: Collection[str]) -> None:
        """Release the pins of every sandbox not in `users` (Sandboxes gone while we were down).
        A runtime's pins are not a sandbox's: NativePins releases them when that runtime ends."""
        for user in [u for u in self._users if u not in users]:
            if not user.startswith(RUNTIME_PREFIX):
                self.release(user)

    def users(self) -> list[str]:
        """Who holds pins now (sandbox uids, runtimes)."""
        return list(self._users)

    # -- entries -------------------------------------------------------------------------------

    def lookup(self, digest: str, user: str | None = None) -> Path | None:
        """The entry's directory (pinned for `user`), or None when the cache does not hold it."""
        path = self.path(digest)
        if not path.is_dir():
            self._entries.pop(digest, None)
            return None
        entry = self._entries.get(digest) or Entry(digest, tree_size(path), 0.0)
        self._entries[digest] = replace(entry, last_used=self.clock())
        if user is not None:
            self.use(user, digest)
        return path

    def attach(self, digest: str, companion: Path) -> None:
        """`companion` (a file outside the entry) is removed with the entry and counted in its
        size: the blob a layer was unpacked from."""
        entry = self._entries.get(digest)
        if entry is None or self._attached.get(digest) == companion:
            return
        self._attached[digest] = companion
        with contextlib.suppress(OSError):
            self._entries[digest] = replace(entry, size=entry.size + companion.stat().st_size)

    def put(self, digest: str, populate: Callable[[Path], object], user: str | None = None) -> Path:
        """The entry for `digest`, written by `populate(directory)` unless already here.

        `populate` fills a fresh private directory; it is renamed into place only once complete.
        Whatever `populate` raises is raised, the partial directory removed first.
        """
        found = self.lookup(digest, user)
        if found is not None:
            return found
        tmp = self._partial()
        try:
            size = _populate(tmp, populate)
        except BaseException as exc:
            self._failed(tmp, exc)
            raise
        return self._commit(digest, tmp, size, user)

    async def put_async(
        self, digest: str, populate: Callable[[Path], object], user: str | None = None
    ) -> Path:
        """`put`, with `populate` run in a thread (an unpack of many megabytes): the lookup and
        the rename stay on the event loop, where the collector runs, so neither races it."""
        found = self.lookup(digest, user)
        if found is not None:
            return found
        tmp = self._partial()
        try:
            size = await asyncio.to_thread(_populate, tmp, populate)
        except BaseException as exc:
            self._failed(tmp, exc)
            raise
        return self._commit(digest, tmp, size, user)

    def _partial(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=self.root))

    def _failed(self, tmp: Path, exc: BaseException) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            self._pressure = True  # make room for the retry
            self._wake.set()

    def _commit(self, digest: str, tmp: Path, size: int, user: str | None) -> Path:
        final = self.path(digest)
        try:
            os.rename(tmp, final)
        except OSError as exc:
            self._failed(tmp, exc)
            if not final.is_dir():
                raise
            size = tree_size(final)  # a concurrent put won
        self._entries[digest] = Entry(digest, size, self.clock())
        if user is not None:
            self.use(user, digest)
        self._wake.set()  # a new entry may take the cache over its budget
        return final

    # -- pins ----------------------------------------------------------------------------------

    def use(self, user: str, *digests: str) -> None:
        """`user` runs the entries `digests` (and no others): never collect them until
        `release(user)` or another `use` by the same user."""
        wanted = frozenset(digests)
        previous = self._users.get(user, frozenset())
        if previous == wanted:
            return
        self._users[user] = wanted
        for digest in previous - wanted:
            self._touch(digest)
        pins = self.root / PINS_DIR
        try:
            pins.mkdir(mode=0o700, exist_ok=True)
            tmp = pins / f".{user}.{secrets.token_hex(4)}"
            tmp.write_text("\n".join(sorted(wanted)))  # one digest a line
            os.replace(tmp, pins / user)
        except OSError as exc:  # the pin still holds in this process, only not past a restart
            log.warning("cannot record that %s uses code %s: %s", user, sorted(wanted), exc)

    def release(self, user: str) -> None:
        """`user` is gone; its entry becomes collectable (after the idle time) if nobody else
        uses it."""
        digests = self._users.pop(user, None)
        if digests is None:
            return
        with contextlib.suppress(OSError):
            (self.root / PINS_DIR / user).unlink()
        for digest in digests:
            self._touch(digest)
        self._wake.set()

    def _touch(self, digest: str) -> None:
        entry = self._entries.get(digest)
        if entry is None:
            return
        now = self.clock()
        self._entries[digest] = replace(entry, last_used=now)
        with contextlib.suppress(OSError):  # the mtime carries the last use over a restart
            os.utime(self.path(digest), (now, now))

    # -- collection ----------------------------------------------------------------------------

    async def collect(self) -> list[str]:
        """Remove what `plan_eviction` picks; the digests removed."""
        budget = 0 if self._pressure else self.budget
        self._pressure = False
        victims = plan_eviction(
            self._entries.values(), self.in_use(), budget=budget, idle=self.idle, now=self.clock()
        )
        trash = []
        for digest in victims:
            target = self.root / f"{TRASH_PREFIX}{digest}-{secrets.token_hex(4)}"
            try:
                os.rename(self.path(digest), target)
            except FileNotFoundError:
                pass  # removed behind our back: forget it all the same
            except OSError as exc:
                log.warning("cannot remove code %s from the cache: %s", digest, exc)
                continue
            else:
                trash.append(target)
            self._entries.pop(digest, None)
            companion = self._attached.pop(digest, None)
            if companion is not None:
                with contextlib.suppress(OSError):
                    os.unlink(companion)
        if trash:
            log.info("code cache: removed %d entries nobody uses", len(trash))
            await asyncio.to_thread(_remove_all, trash)
        return victims

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Collect whenever an entry is added or released, and when the next one idles out."""
        while True:
            floor = MIN_WAIT
            try:
                await self.collect()
            except Exception:  # the collector must outlive a bad directory
                log.exception("code cache collection failed")
                floor = FAILED_WAIT
            expiry = next_expiry(self._entries.values(), self.in_use(), self.idle)
            timeout = None if expiry is None else max(floor, expiry - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
