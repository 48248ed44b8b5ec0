"""The one writer of core/v1 Events: callers never wait for it, and it never raises into them.

Why one writer task behind a queue: an Event is a report, not a decision, so it must cost the
caller nothing (no await, no exception, no thread) and must never queue ahead of the writes
that are decisions. `event()` runs the correlator (`nest_kube.correlator`: counts, aggregation,
spam filter) at once and leaves the resulting record in a pending map keyed by Event name; one
task on the loop writes them in order. Pending records of the same Event coalesce: five
identical occurrences that arrive before the writer gets to them are one create with count 5,
not a create and four patches.

Why repeats are held: a routine Event counted on a replica set (a `Scheduled` per pool pod)
repeats for every sandbox of a burst, and a count PATCH per repeat was most of the Event writes
of a big apply. The first occurrence of an Event, Warning or Normal, is written at once, so
`kubectl describe` tells the story as it happens; a repeat of an Event this recorder wrote less
than `window` seconds ago is held, and the latest count and lastTimestamp go out once at the end
of that window: an Event costs at most one write per window however often it repeats, and its
count on the server is at most `window` (30 s) behind. client-go's events.k8s.io recorder holds
repeats longer: it writes a series' second occurrence, then the count only on a 30-minute
heartbeat or when the series ends. `flush` and `close` (shutdown) write held counts at once.

Writes: a record whose Event this recorder created is a merge PATCH of count, lastTimestamp and
message (as client-go's recorder does); any other a create. A patch answered 404 (the Event
expired: the API server keeps them an hour) becomes a create, a create answered 409 (made
before a restart of this cache) a patch. Every other failure is logged at debug and dropped:
pending and held records are bounded together (`max_pending`), and past it occurrences are
dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from nest_kube.api import MERGE_PATCH, Api, ApiError
from nest_kube.correlator import (
    Correlator,
    EventSource,
    Lru,
    ObjectRef,
    Record,
    count_patch,
    event_body,
)
from nest_kube.resources import EVENTS

log = logging.getLogger(__name__)
NORMAL = "Normal"
WARNING = "Warning"
# How long a repeat of a written Event waits for the next write of that Event: its count on the
# server is at most this far behind.
HOLD_SECONDS: Final = 30.0


class EventRecorder:
    """Records Events about objects for `kubectl describe`, as `source`."""

    def __init__(
        self,
        api: Api,
        source: EventSource,
        *,
        correlator: Correlator | None = None,
        max_pending: int = 1000,
        window: float = HOLD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.source = source
        self.correlator = correlator or Correlator(source)
        self.max_pending = max_pending
        self.window = window
        self.clock = clock
        # Statistics (also what the tests and the benchmarks read).
        self.created = self.patched = self.limited = self.dropped = self.failed = 0
        self.held = 0  # repeats held for their Event's next write instead of a write each
        self._pending: dict[str, Record] = {}  # to write now, in order
        self._held: dict[str, Record] = {}  # repeats of Events written in the last window
        self._written: Lru[str, float] = Lru()  # Event name -> when this recorder last wrote it
        self._writing: str | None = None  # the Event whose write is in flight
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def event(
        self,
        obj: Mapping[str, Any] | ObjectRef,
        type_: str,
        reason: str,
        message: str,
        *,
        kind: str | None = None,
        api_version: str | None = None,
    ) -> None:
        """Record an occurrence; returns at once and never raises (an Event is best effort)."""
        try:
            ref = obj if isinstance(obj, ObjectRef) else ObjectRef.of(obj, kind, api_version)
            record = self.correlator.correlate(ref, type_, reason, message)
            if record is None:
                self.limited += 1
                return
            name = record.name
            queued = name in self._pending or name in self._held
            if not queued and len(self._pending) + len(self._held) >= self.max_pending:
                self.dropped += 1
                return
            self._ensure_writer()
            if name in self._pending:
                self._pending[name] = record  # not written yet: the write carries this count
            elif name in self._held or self._recent(name):
                self.held += 1
                self._held[name] = record  # the latest count is what its next write carries
                self._wake.set()  # the writer's next wake-up may be sooner now
            else:
                self._pending[name] = record
                self._idle.clear()
                self._wake.set()
        except Exception:  # e.g. no running loop, an object without metadata
            self.dropped += 1
            log.debug("event %s not recorded", reason, exc_info=True)

    def _recent(self, name: str) -> bool:
        """Written (or being written) less than a window ago: a repeat waits for the window."""
        if name == self._writing:
            return True
        last = self._written.get(name)
        return last is not None and self.clock() - last < self.window

    def _due(self, name: str) -> float:
        last = self._written.get(name)  # forgotten (the cache is bounded): due now, a create
        return float("-inf") if last is None else last + self.window

    def _release(self, everything: bool = False) -> float | None:
        """Move the held records whose window has ended (all of them: `everything`) to pending;
        returns when the next one still held is due (None: none is)."""
        now, due = self.clock(), None
        for name in list(self._held):
            if name == self._writing:
                continue  # due a window after the write in flight ends
            at = self._due(name)
            if everything or at <= now:
                self._pending[name] = self._held.pop(name)
            else:
                due = at if due is None else min(due, at)
        if self._pending:
            self._idle.clear()
        return due

    def _ensure_writer(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="events")

    async def _run(self) -> None:
        while True:
            due = self._release()
            if not self._pending:
                self._idle.set()
                timeout = None if due is None else max(0.0, due - self.clock())
                with contextlib.suppress(TimeoutError):  # a held record is due
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
                continue
            name = next(iter(self._pending))
            record = self._pending.pop(name)
            self._writing = name
            try:
                await self._write(record)
            except ApiError as exc:
                self.failed += 1
                log.debug("event %s for %s not recorded: %s", record.reason,
                          record.ref.name, exc)  # fmt: skip
            except Exception:
                self.failed += 1
                log.exception("event %s for %s not recorded", record.reason, record.ref.name)
            finally:
                self._writing = None

    async def _write(self, record: Record) -> None:
        if self._written.get(record.name) is not None:
            try:
                await self._patch(record)
                return
            except ApiError as exc:
                if exc.status != 404:
                    raise
        try:
            await self.api.create(EVENTS, record.namespace, event_body(record, self.source))
            self.created += 1
        except ApiError as exc:
            if exc.status != 409:
                raise
            await self._patch(record)
        self._written.put(record.name, self.clock())

    async def _patch(self, record: Record) -> None:
        await self.api.patch(
            EVENTS, record.namespace, record.name, count_patch(record), content_type=MERGE_PATCH
        )
        self.patched += 1
        self._written.put(record.name, self.clock())

    async def flush(self, timeout: float = 5.0) -> bool:
        """Write every pending and held record now and wait until they are written (or failed);
        False at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._release(everything=True)  # not the repeat of a write in flight: once it ends
            if self._pending:
                self._ensure_writer()
                self._wake.set()
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return False
            if not self._held:
                return True

    async def close(self, timeout: float = 2.0) -> None:
        """Write what is pending or held (for at most `timeout`), then stop the writer."""
        if self._pending or self._held:
            await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
