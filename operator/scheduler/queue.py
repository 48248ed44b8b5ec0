"""The scheduling queue: which sandboxes to decide now, which later, which only when the cluster
changes in a way that may let them fit.

Why: without it every Lease renewal re-decided every unschedulable sandbox (200 pods and 500
unschedulable sandboxes gave 10,000 scheduling cycles in 2 s). This is kube-scheduler's
PriorityQueue (pkg/scheduler/internal/queue/scheduling_queue.go), FIFO instead of by priority:

- active: to be decided now, in order;
- back-off: tried and failed (or moved by an event) too recently: waits 1 s after its first
  attempt, doubling per attempt up to 10 s (podInitialBackoff, podMaxBackoff), then is active;
- unschedulable: refused, waiting for an event that may let it fit. An event is offered to the
  plugins that refused it and registered that kind of event; their hints (QueueingHints) say
  whether it may help. A refusal that is UnschedulableAndUnresolvable is never offered freed
  capacity. A SandboxPool change moves every sandbox of the pool. Whatever stays here longer
  than 5 minutes is moved anyway (podMaxInUnschedulablePodsDuration), in case a hint was wrong.

A sandbox being decided ("in flight") when an event arrives must not miss it: events are logged
while anything is in flight, and a failed attempt is checked against those that arrived during
it (kube's in-flight events). Pure: time is passed in, nothing here does I/O; the shell hands
`pop`ped keys to its workers and calls `flush` when `next_wakeup` comes.
With `hints=False` (and no back-off) every event moves every waiting sandbox, as before the
queue existed: the benchmark's baseline.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from nest_operator.scheduler.interface import (
    CAPACITY_EVENTS,
    ClusterEvent,
    EventKind,
    Plugin,
    Rejection,
)
from nest_operator.scheduler.snapshot import SandboxRequest

INITIAL_BACKOFF = 1.0
MAX_BACKOFF = 10.0
MAX_UNSCHEDULABLE = 300.0
LOG_TRIM = 1024  # in-flight event log entries kept before old ones are dropped


class Where(Enum):
    ACTIVE = "active"
    BACKOFF = "backoff"
    UNSCHEDULABLE = "unschedulable"
    IN_FLIGHT = "in flight"


@dataclass(slots=True)
class _Entry:
    key: str
    where: Where = Where.ACTIVE
    attempts: int = 0
    last_attempt: float = 0.0
    ready_at: float = 0.0  # in back-off: when it becomes active
    since: float = 0.0  # in unschedulable: since when
    arrived: int = 0  # in unschedulable: its place in line (moved ones leave in this order)
    request: SandboxRequest | None = None
    rejection: Rejection | None = None
    log_from: int = 0  # in flight: the first logged event it has not seen
    dirty: bool = False  # in flight: the sandbox itself changed meanwhile


@dataclass
class SchedulingQueue:
    """Sandbox keys in active, back-off and unschedulable; `plugins` answer the hints by name."""

    plugins: Mapping[str, Plugin]
    initial_backoff: float = INITIAL_BACKOFF
    max_backoff: float = MAX_BACKOFF
    max_unschedulable: float = MAX_UNSCHEDULABLE
    hints: bool = True
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _active: deque[str] = field(default_factory=deque)
    _backoff: list[tuple[float, int, str]] = field(default_factory=list)  # (ready_at, seq, key)
    _seq: int = 0
    # Unschedulable keys in the order they arrived there (= by `since`: time only grows), and
    # per plugin the keys it refused, by pool: an event reaches only those it may concern.
    _unschedulable: dict[str, None] = field(default_factory=dict)
    _refused: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    _in_flight: set[str] = field(default_factory=set)
    _log: list[ClusterEvent] = field(default_factory=list)
    _log_base: int = 0  # the absolute index of _log[0]

    # --- the sandbox's own life -------------------------------------------------------------

    def add(self, key: str, now: float) -> None:
        """A sandbox to decide: new, or changed itself. Waiting ones move (back-off permitting)."""
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = entry = _Entry(key)
            self._activate(entry)
        elif entry.where is Where.IN_FLIGHT:
            entry.dirty = True
        elif entry.where is Where.UNSCHEDULABLE:
            self._requeue(entry, now)

    def delete(self, key: str) -> None:
        """The sandbox was bound by someone, or deleted: forget it."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._leave(entry)

    def pop(self) -> str | None:
        """The next key to decide, now in flight; None when nothing is active."""
        while self._active:
            key = self._active.popleft()
            entry = self._entries.get(key)
            if entry is None or entry.where is not Where.ACTIVE:
                continue
            entry.where = Where.IN_FLIGHT
            entry.dirty = False
            entry.log_from = self._log_base + len(self._log)
            self._in_flight.add(key)
            return key
        return None

    # --- what an attempt came to ------------------------------------------------------------

    def done(self, key: str) -> None:
        """Scheduled (or gone): forget it, attempts included."""
        self.delete(key)

    def unschedulable(
        self, key: str, request: SandboxRequest, rejection: Rejection, now: float
    ) -> None:
        """Refused: it waits for an event, unless one came while it was being decided."""
        entry = self._landed(key, now)
        if entry is None:
            return
        entry.attempts += 1
        entry.last_attempt = now
        entry.request, entry.rejection = request, rejection
        missed = self._log[entry.log_from - self._log_base :]
        if entry.dirty or any(self._worth(entry, event) for event in missed):
            self._requeue(entry, now)
        else:
            self._seq += 1
            entry.where, entry.since, entry.arrived = Where.UNSCHEDULABLE, now, self._seq
            self._unschedulable[key] = None
            for plugin in rejection.plugins:
                self._refused.setdefault(plugin, {}).setdefault(request.pool, set()).add(key)
        self._trim()

    def error(self, key: str, now: float) -> None:
        """The attempt failed for another reason than the plugins' (a failed bind): back off."""
        entry = self._landed(key, now)
        if entry is not None:
            entry.attempts += 1
            entry.last_attempt = now
            self._to_backoff(entry, now + self._backoff_of(entry))
        self._trim()

    def retry_after(self, key: str, now: float, delay: float) -> None:
        """Decide again after `delay` (the sandbox changed under the bind: the watch is late)."""
        entry = self._landed(key, now)
        if entry is not None:
            self._to_backoff(entry, now + delay)
        self._trim()

    # --- the cluster changed -----------------------------------------------------------------

    def move(self, event: ClusterEvent, now: float) -> int:
        """Move the unschedulable sandboxes `event` may let fit; returns how many moved."""
        if self._in_flight:
            self._log.append(event)
        if not self.hints:
            return self.move_all(now)
        if event.kind is EventKind.POOL_CHANGED:
            keys = {
                key for refused in self._refused.values() for key in refused.get(event.pool, ())
            }
        else:
            keys = set()
            for name, plugin in self.plugins.items():
                if event.kind not in plugin.events:
                    continue
                by_pool = self._refused.get(name, {})
                pools = by_pool.values() if not event.pool else [by_pool.get(event.pool, set())]
                for candidates in pools:
                    keys.update(
                        k for k in candidates if self._worth_for(self._entries[k], name, event)
                    )
        for key in sorted(keys, key=self._unschedulable_order):
            self._requeue(self._entries[key], now)
        return len(keys)

    def move_all(self, now: float) -> int:
        """Every unschedulable sandbox, whatever happened (the baseline's every-event retry)."""
        keys = list(self._unschedulable)
        for key in keys:
            self._requeue(self._entries[key], now)
        return len(keys)

    def flush(self, now: float) -> None:
        """Back-offs that ended become active; who waited 5 minutes for an event moves anyway."""
        while self._backoff and self._backoff[0][0] <= now:
            ready_at, _, key = heapq.heappop(self._backoff)
            entry = self._entries.get(key)
            if entry is not None and entry.where is Where.BACKOFF and entry.ready_at == ready_at:
                self._activate(entry)
        for key in list(self._unschedulable):
            entry = self._entries[key]
            if entry.since + self.max_unschedulable > now:
                break  # the rest arrived later
            self._requeue(entry, now)

    def next_wakeup(self) -> float | None:
        """When `flush` next has something to do; None when nothing waits on time."""
        times = [self._backoff[0][0]] if self._backoff else []
        first = next(iter(self._unschedulable), None)
        if first is not None:
            times.append(self._entries[first].since + self.max_unschedulable)
        return min(times) if times else None

    # --- looking in ---------------------------------------------------------------------------

    def where(self, key: str) -> Where | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.where

    def attempts(self, key: str) -> int:
        entry = self._entries.get(key)
        return 0 if entry is None else entry.attempts

    def counts(self) -> dict[str, int]:
        out = {where.value: 0 for where in Where}
        for entry in self._entries.values():
            out[entry.where.value] += 1
        return out

    # --- moving entries -----------------------------------------------------------------------

    def _backoff_of(self, entry: _Entry) -> float:
        if entry.attempts < 1 or self.initial_backoff <= 0:
            return 0.0
        return min(self.max_backoff, self.initial_backoff * 2.0 ** (entry.attempts - 1))

    def _requeue(self, entry: _Entry, now: float) -> None:
        """Out of unschedulable (or in flight): active, or back-off while its back-off lasts."""
        ready_at = entry.last_attempt + self._backoff_of(entry)
        if entry.attempts and ready_at > now:
            self._to_backoff(entry, ready_at)
        else:
            self._activate(entry)

    def _activate(self, entry: _Entry) -> None:
        self._leave(entry)
        entry.where = Where.ACTIVE
        self._active.append(entry.key)

    def _to_backoff(self, entry: _Entry, ready_at: float) -> None:
        self._leave(entry)
        entry.where, entry.ready_at = Where.BACKOFF, ready_at
        self._seq += 1
        heapq.heappush(self._backoff, (ready_at, self._seq, entry.key))

    def _leave(self, entry: _Entry) -> None:
        """Out of wherever it is (stale active and back-off items are skipped when met)."""
        if entry.where is Where.UNSCHEDULABLE:
            del self._unschedulable[entry.key]
            assert entry.rejection is not None and entry.request is not None
            for plugin in entry.rejection.plugins:
                self._refused[plugin][entry.request.pool].discard(entry.key)
        elif entry.where is Where.IN_FLIGHT:
            self._in_flight.discard(entry.key)
        entry.where = Where.ACTIVE  # a placeholder until the caller says where it goes

    def _landed(self, key: str, now: float) -> _Entry | None:
        """The entry of a key whose attempt ended; None when it was deleted meanwhile."""
        entry = self._entries.get(key)
        if entry is None or entry.where is not Where.IN_FLIGHT:
            return None
        self._in_flight.discard(key)
        return entry

    def _unschedulable_order(self, key: str) -> int:
        return self._entries[key].arrived

    # --- hints ----------------------------------------------------------------------------

    def _worth(self, entry: _Entry, event: ClusterEvent) -> bool:
        """Whether `event` may let `entry` fit, asking the plugins that refused it."""
        if not self.hints:
            return True
        rejection, request = entry.rejection, entry.request
        if rejection is None or request is None:
            return True
        if event.kind is EventKind.POOL_CHANGED:
            return event.pool == request.pool
        return any(
            name in self.plugins
            and event.kind in self.plugins[name].events
            and self._worth_for(entry, name, event)
            for name in rejection.plugins
        )

    def _worth_for(self, entry: _Entry, name: str, event: ClusterEvent) -> bool:
        rejection, request = entry.rejection, entry.request
        assert rejection is not None and request is not None
        if event.kind in CAPACITY_EVENTS and name not in rejection.resolvable:
            return False  # UnschedulableAndUnresolvable: freed capacity will not help
        return self.plugins[name].hint(request, event)

    def _trim(self) -> None:
        if not self._in_flight:
            self._log_base += len(self._log)
            self._log.clear()
        elif len(self._log) > LOG_TRIM:
            first = min(self._entries[key].log_from for key in self._in_flight)
            drop = first - self._log_base
            if drop > 0:
                del self._log[:drop]
                self._log_base = first
