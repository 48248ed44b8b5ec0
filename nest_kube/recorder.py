"""The one writer of core/v1 Events: callers never wait for it, and it never raises into them.

Why one writer task behind a queue: an Event is a report, not a decision, so it must cost the
caller nothing (no await, no exception, no thread) and must never queue ahead of the writes
that are decisions. `event()` runs the correlator (`nest_kube.correlator`: counts, aggregation,
spam filter) at once and leaves the resulting record in a pending map keyed by Event name; one
task on the loop writes them in order. Pending records of the same Event coalesce: five
identical occurrences that arrive before the writer gets to them are one create with count 5,
not a create and four patches.

Writes: a record whose Event this recorder created is a merge PATCH of count, lastTimestamp and
message (as client-go's recorder does); any other a create. A patch answered 404 (the Event
expired: the API server keeps them an hour) becomes a create, a create answered 409 (made
before a restart of this cache) a patch. Every other failure is logged at debug and dropped:
the map is bounded (`max_pending`), and past it occurrences are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

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


class EventRecorder:
    """Records Events about objects for `kubectl describe`, as `source`."""

    def __init__(
        self,
        api: Api,
        source: EventSource,
        *,
        correlator: Correlator | None = None,
        max_pending: int = 1000,
    ) -> None:
        self.api = api
        self.source = source
        self.correlator = correlator or Correlator(source)
        self.max_pending = max_pending
        # Statistics (also what the tests and the benchmarks read).
        self.created = self.patched = self.limited = self.dropped = self.failed = 0
        self._pending: dict[str, Record] = {}
        self._created: Lru[str, bool] = Lru()
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
            if record.name not in self._pending and len(self._pending) >= self.max_pending:
                self.dropped += 1
                return
            self._pending[record.name] = record
            self._ensure_writer()
            self._idle.clear()
            self._wake.set()
        except Exception:  # e.g. no running loop, an object without metadata
            self.dropped += 1
            log.debug("event %s not recorded", reason, exc_info=True)

    def _ensure_writer(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="events")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                name = next(iter(self._pending))
                record = self._pending.pop(name)
                try:
                    await self._write(record)
                except ApiError as exc:
                    self.failed += 1
                    log.debug("event %s for %s not recorded: %s", record.reason,
                              record.ref.name, exc)  # fmt: skip
                except Exception:
                    self.failed += 1
                    log.exception("event %s for %s not recorded", record.reason, record.ref.name)
            self._idle.set()

    async def _write(self, record: Record) -> None:
        if self._created.get(record.name):
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
        self._created.put(record.name, True)

    async def _patch(self, record: Record) -> None:
        await self.api.patch(
            EVENTS, record.namespace, record.name, count_patch(record), content_type=MERGE_PATCH
        )
        self.patched += 1

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every pending record is written (or failed); False at the deadline."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 2.0) -> None:
        """Write what is pending (for at most `timeout`), then stop the writer."""
        if self._pending:
            await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
