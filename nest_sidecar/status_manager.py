"""The only writer of Sandbox status: coalesces each sandbox's reports into few patches, and puts
right a status someone else changed.

Workers report every change at once; writing each would cost an API call per step (Scheduled,
Starting, Running within milliseconds). The manager keeps the latest report per sandbox and
writes a passing phase (Pending, Scheduled, Starting) only once it has stood for `hold` (1 s),
while a settled phase (Running, Failed, Succeeded) and Terminating are written at once: so a
start that takes under a second is one patch (Running), a slow one (a cold layer fetch) shows
Starting, and nobody waits for Running. Under load a burst's slowest starts took 0.2-0.6 s: a
20 ms window wrote their Starting too (1.03-1.09 patches per sandbox in bench e2e). A write is
skipped entirely when the API already shows the status we would write (as the kubelet's status
manager does). A failed write is kept (the latest report wins) and retried after an exponential
back-off, so an unreachable API server is not hammered.

Repair, as the kubelet's `syncBatch` does every 10 s: the manager remembers, per sandbox, the
status the API server answered to its last write and that answer's resourceVersion. Every
`resync_period` it compares them with the informer's store (no request): the same version, or
the same status at a newer version (labels, finalizers changed), is in sync. Otherwise either
the store lags behind our own write or someone else changed the status: one GET tells which, and
only a real difference is patched back (guarded by the resourceVersion read, so a concurrent
writer is not overwritten blindly). One exception, the kubelet's too: a final phase (Failed,
Succeeded) someone else set, say the operator's eviction of a pod it believes dead, is not
turned back; the sidecar adopts it as what the API shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from crds import SandboxPhase
from crds.constants import PASSING_PHASE_HOLD_SECONDS
from nest_kube import ApiError, Backoff
from nest_kube.resources import resource_version
from nest_sidecar.status import Observed, desired_status, status_patch

SETTLED = frozenset({SandboxPhase.RUNNING, SandboxPhase.FAILED, SandboxPhase.SUCCEEDED})
# Written at once too: the way out of every phase, which callers watch for.
URGENT = SETTLED | {SandboxPhase.TERMINATING}
FINAL = frozenset({SandboxPhase.FAILED.value, SandboxPhase.SUCCEEDED.value})
RESYNC_SECONDS = 10.0  # the kubelet's status manager re-checks every pod this often

log = logging.getLogger(__name__)
Obj = dict[str, Any]
Lookup = Callable[[str], Mapping[str, Any] | None]


class StatusApi(Protocol):
    """The calls the manager makes (`KubeShell` in the sidecar)."""

    async def patch_status(
        self, obj: Mapping[str, Any], patch: Mapping[str, Any]
    ) -> Obj | None: ...

    async def get_sandbox(self, obj: Mapping[str, Any]) -> Obj | None: ...


def drifted(known: Mapping[str, Any], known_version: str, obj: Mapping[str, Any]) -> bool:
    """Whether `obj` shows a status other than the one we left (`known`, at `known_version`)."""
    if resource_version(obj) == known_version:
        return False
    return dict(obj.get("status") or {}) != dict(known)


def ended_elsewhere(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """A final phase set by someone else, which the sidecar must not turn back (only its own
    Terminating, the way out of every phase, may follow it)."""
    phase = current.get("phase")
    wanted = desired.get("phase")
    return phase in FINAL and wanted != phase and wanted != SandboxPhase.TERMINATING.value


@dataclass
class _Entry:
    """One sandbox: its latest report, and the status the API server last showed us."""

    obj: Mapping[str, Any]
    observed: Observed
    known: Obj = field(default_factory=dict)  # the status the API answered (write or read)
    version: str = ""  # the resourceVersion `known` came with
    flushed: bool = False  # a report has been written (or found written) since it arrived
    since: float = 0.0  # when the latest report's phase began (the clock's time)


class StatusManager:
    """Latest-wins, per-sandbox status writes (passing phases held), and periodic repair."""

    def __init__(
        self,
        api: StatusApi,
        lookup: Lookup = lambda uid: None,
        *,
        hold: float = PASSING_PHASE_HOLD_SECONDS,
        parallel: int = 16,
        resync_period: float = RESYNC_SECONDS,
        backoff: Backoff | None = None,
        on_write: Callable[[], None] = lambda: None,
        on_repair: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`lookup(uid)`: the informer's stored Sandbox of that uid (None when not there)."""
        self.api = api
        self.lookup = lookup
        self.hold = hold
        self.parallel = parallel
        self.resync_period = resync_period
        self.backoff = backoff or Backoff()
        self.on_write = on_write
        self.on_repair = on_repair
        self.clock = clock
        self.entries: dict[str, _Entry] = {}
        self.pending: set[str] = set()
        self.repairs = 0
        self._dirty = asyncio.Event()

    def report(self, obj: Mapping[str, Any], observed: Observed) -> None:
        uid = str(obj["metadata"]["uid"])
        entry = self.entries.get(uid)
        if entry is None:
            status = dict(obj.get("status") or {})
            entry = self.entries[uid] = _Entry(obj, observed, status, resource_version(obj))
            entry.since = self.clock()
        else:
            if observed.phase != entry.observed.phase:
                entry.since = self.clock()
            entry.obj, entry.observed, entry.flushed = obj, observed, False
        self.pending.add(uid)
        self._dirty.set()

    def forget(self, uid: str) -> None:
        self.entries.pop(uid, None)
        self.pending.discard(uid)

    # -- writes --------------------------------------------------------------------------------

    def _stored(self, entry: _Entry, stored: Obj | None) -> None:
        if stored is not None:
            entry.known = dict(stored.get("status") or {})
            entry.version = resource_version(stored)

    async def _write(self, entry: _Entry, current: Obj, precondition: str = "") -> bool:
        """Patch `current` to what the latest report says; False when nothing differed."""
        desired = desired_status(current, entry.observed, datetime.now(UTC))
        patch = status_patch(current, desired)
        if patch is None:
            return False
        if precondition:  # a repair: refused (409) if the status moved again since our read
            patch["metadata"] = {"resourceVersion": precondition}
        stored = await self.api.patch_status(entry.obj, patch)
        self.on_write()
        self._stored(entry, stored)
        return True

    async def flush(self) -> int:
        """Write every pending status, several at once (a pod starting a hundred sandboxes must
        not queue their Running behind one another's round trips); the failures' count."""
        now = self.clock()
        held = {uid for uid in self.pending if self._held_until(uid) > now}
        batch, self.pending = self.pending - held, held
        limit = asyncio.Semaphore(self.parallel)
        failures = 0

        async def write(uid: str) -> None:
            nonlocal failures
            entry = self.entries.get(uid)
            if entry is None:
                return
            async with limit:
                try:
                    await self._write(entry, entry.known)
                except Exception as exc:  # retried after a back-off; the latest report wins
                    log.warning("status of %s not written: %s", entry.obj["metadata"]["name"], exc)
                    self.pending.add(uid)
                    failures += 1
                    return
            if uid not in self.pending:  # else a newer report came while it was written
                entry.flushed = True

        await asyncio.gather(*(write(uid) for uid in batch))
        return failures

    # -- repair --------------------------------------------------------------------------------

    async def resync(self) -> None:
        """Compare every written status with the informer's store; repair what someone changed."""
        limit = asyncio.Semaphore(self.parallel)

        async def check(uid: str, entry: _Entry) -> None:
            stored = self.lookup(uid)
            if stored is None or not drifted(entry.known, entry.version, stored):
                if stored is not None:
                    entry.version = resource_version(stored)  # same status, newer object
                return
            async with limit:
                try:
                    await self._repair(entry)
                except ApiError as exc:  # a conflict or an outage: the next resync looks again
                    log.info("status of %s not repaired: %s", entry.obj["metadata"]["name"], exc)

        await asyncio.gather(*(
            check(uid, entry) for uid, entry in list(self.entries.items())
            if entry.flushed and uid not in self.pending
        ))  # fmt: skip

    async def _repair(self, entry: _Entry) -> None:
        latest = await self.api.get_sandbox(entry.obj)  # the store may only lag behind our write
        if latest is None or not drifted(entry.known, entry.version, latest):
            self._stored(entry, latest)
            return
        current = dict(latest.get("status") or {})
        version = resource_version(latest)
        name = "{namespace}/{name}".format(**entry.obj["metadata"])
        if ended_elsewhere(current, desired_status(current, entry.observed, datetime.now(UTC))):
            log.info("status of %s is %s, set by someone else: kept", name, current.get("phase"))
            self._stored(entry, latest)
            return
        if await self._write(entry, current, precondition=version):
            self.repairs += 1
            self.on_repair()
            log.info("status of %s was changed by someone else (phase %s): put right",
                     name, current.get("phase"))  # fmt: skip
        else:
            self._stored(entry, latest)

    # -- the loop ------------------------------------------------------------------------------

    def _held_until(self, uid: str) -> float:
        """When a pending report may be written: at once for an urgent phase, else once its
        phase has stood for `hold`."""
        entry = self.entries.get(uid)
        if entry is None or entry.observed.phase in URGENT:
            return 0.0
        return entry.since + self.hold

    async def run(self) -> None:
        due = self.clock() + self.resync_period
        while True:
            wake = min([due, *(self._held_until(uid) for uid in self.pending)])
            with contextlib.suppress(TimeoutError):  # a report, a held phase's time, or repair
                await asyncio.wait_for(self._dirty.wait(), max(0.0, wake - self.clock()))
            self._dirty.clear()
            if self.pending and await self.flush():
                await asyncio.sleep(self.backoff.next())  # the API server is away or failing
            if self.clock() >= due:
                await self.resync()
                due = self.clock() + self.resync_period
