"""What an Event occurrence becomes on the server: a new Event, a count on an old one, or nothing.

client-go's EventCorrelator (tools/record/events_cache.go), decision for decision, because the
API server's Events are a shared, rate-limited resource and Nest's components used to create a
new Event object for every occurrence (two per sandbox: a third of all writes of a big apply):

1. Aggregation: occurrences that differ only in their message (same source, object, type,
   reason) are counted per 10-minute window; from the 10th distinct message on, they fold into
   one Event whose message is "(combined from similar events): <latest>".
2. Counting: an occurrence identical to one seen before (same key, message included) is not a
   new Event; the earlier Event's `count` goes up and its `lastTimestamp` moves (a PATCH).
3. Spam filter: a token bucket per source+object (burst 25, one more every 5 minutes); past it
   the occurrence is still counted (so the next write carries the true count) but not written.

Pure: the clock is injected and nothing here does I/O, so every rule has a unit test. The
caches are LRUs of 4096 entries, as in client-go, so memory stays bounded however many objects.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from nest_kube.resources import Obj

K = TypeVar("K")
V = TypeVar("V")
CACHE_SIZE: Final = 4096
MAX_SIMILAR: Final = 10
SIMILAR_WINDOW: Final = 600.0
SPAM_BURST: Final = 25
SPAM_QPS: Final = 1.0 / 300.0
MESSAGE_LIMIT: Final = 1024
COMBINED: Final = "(combined from similar events): "


class Lru(Generic[K, V]):
    """A bounded map that forgets the least recently used key first."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; `allow` takes one if there is one."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = float(burst), now

    def allow(self, now: float) -> bool:
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def on_controller(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """What a routine Event about `obj` is recorded on: its controller if it has one.

    Why: an Event per sandbox for routine progress (the scheduler's Scheduled, the sidecar's
    Started) was a write per sandbox; on the replica set, with one message per pool pod, the
    recorder counts them on one Event (and coalesces a burst into one write). A bare sandbox
    keeps its own Events, and so do warnings, which name the sandbox they are about.
    """
    meta = obj["metadata"]
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return {
                "apiVersion": ref["apiVersion"],
                "kind": ref["kind"],
                "metadata": {
                    "name": ref["name"],
                    "namespace": meta["namespace"],
                    "uid": ref["uid"],
                },
            }
    return obj


@dataclass(frozen=True)
class ObjectRef:
    """The involvedObject of an Event."""

    api_version: str
    kind: str
    name: str
    namespace: str = ""
    uid: str = ""
    resource_version: str = ""
    field_path: str = ""

    @classmethod
    def of(
        cls, obj: Mapping[str, Any], kind: str | None = None, api_version: str | None = None
    ) -> ObjectRef:
        meta = obj.get("metadata") or {}
        return cls(
            api_version=str(api_version or obj.get("apiVersion") or ""),
            kind=str(kind or obj.get("kind") or ""),
            name=str(meta.get("name") or ""),
            namespace=str(meta.get("namespace") or ""),
            uid=str(meta.get("uid") or ""),
            resource_version=str(meta.get("resourceVersion") or ""),
        )

    @property
    def identity(self) -> tuple[str, ...]:
        """What names the object (not its resourceVersion, which changes with every write)."""
        return (self.kind, self.namespace, self.name, self.uid, self.api_version)


@dataclass(frozen=True)
class EventSource:
    """Who reports: `component` (and `host`) in `source`, the reporting controller/instance."""

    component: str
    host: str = ""
    reporting_controller: str = ""
    reporting_instance: str = ""


@dataclass(frozen=True)
class Record:
    """An Event as it should now stand on the server; count > 1 means it exists already."""

    name: str
    namespace: str
    ref: ObjectRef
    type: str
    reason: str
    message: str
    count: int
    first: float
    last: float


@dataclass
class _Similar:
    messages: dict[str, None]  # an ordered set: the oldest message is dropped first
    last: float


@dataclass(frozen=True)
class _Seen:
    name: str
    count: int
    first: float


class Correlator:
    """client-go's EventCorrelator for one source; `correlate` is the whole decision."""

    def __init__(
        self,
        source: EventSource,
        clock: Callable[[], float] = time.time,
        *,
        max_similar: int = MAX_SIMILAR,
        similar_window: float = SIMILAR_WINDOW,
        burst: int = SPAM_BURST,
        qps: float = SPAM_QPS,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.source, self.clock = source, clock
        self.max_similar, self.similar_window = max_similar, similar_window
        self.burst, self.qps = burst, qps
        self._similar: Lru[tuple[str, ...], _Similar] = Lru(cache_size)
        self._seen: Lru[tuple[str, ...], _Seen] = Lru(cache_size)
        self._buckets: Lru[tuple[str, ...], TokenBucket] = Lru(cache_size)
        self._last_stamp = 0

    def _name(self, ref: ObjectRef, now: float) -> str:
        stamp = max(int(now * 1e9), self._last_stamp + 1)  # unique even when the clock stands
        self._last_stamp = stamp
        return f"{ref.name[:230]}.{stamp:x}"

    def correlate(self, ref: ObjectRef, type_: str, reason: str, message: str) -> Record | None:
        """The Event to write for this occurrence, or None when the spam filter holds it back."""
        now = self.clock()
        message = message[:MESSAGE_LIMIT]
        src = self.source
        source = (src.component, src.host, src.reporting_controller, src.reporting_instance)
        aggregate = (*source, *ref.identity, ref.field_path, type_, reason)
        # 1. aggregation of similar occurrences (same but for the message)
        similar = self._similar.get(aggregate)
        if similar is None or now - similar.last > self.similar_window:
            similar = _Similar({}, now)
        similar.messages[message] = None
        similar.last = now
        self._similar.put(aggregate, similar)
        key: tuple[str, ...] = (*aggregate, message)
        if len(similar.messages) >= self.max_similar:
            del similar.messages[next(iter(similar.messages))]  # keep the set at its bound
            key, message = aggregate, COMBINED + message
        # 2. counting of identical occurrences
        seen = self._seen.get(key)
        if seen is None:
            seen = _Seen(self._name(ref, now), 1, now)
        else:
            seen = _Seen(seen.name, seen.count + 1, seen.first)
        self._seen.put(key, seen)
        record = Record(
            seen.name, ref.namespace or "default", ref, type_, reason, message,
            seen.count, seen.first, now,
        )  # fmt: skip
        # 3. the spam filter, per source and object
        spam = (*source, *ref.identity)
        bucket = self._buckets.get(spam)
        if bucket is None:
            bucket = TokenBucket(self.qps, self.burst, now)
        allowed = bucket.allow(now)
        self._buckets.put(spam, bucket)
        return record if allowed else None


def timestamp(seconds: float) -> str:
    """RFC 3339 at second precision, as core/v1 Event timestamps are."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def event_body(record: Record, source: EventSource) -> Obj:
    """The core/v1 Event to create for `record`."""
    ref = record.ref
    involved: Obj = {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name}
    for key, value in (
        ("namespace", ref.namespace), ("uid", ref.uid),
        ("resourceVersion", ref.resource_version), ("fieldPath", ref.field_path),
    ):  # fmt: skip
        if value:
            involved[key] = value
    body: Obj = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": record.name, "namespace": record.namespace},
        "involvedObject": involved,
        "type": record.type,
        "reason": record.reason,
        "message": record.message,
        "count": record.count,
        "firstTimestamp": timestamp(record.first),
        "lastTimestamp": timestamp(record.last),
        "source": {"component": source.component, **({"host": source.host} if source.host else {})},
    }
    if source.reporting_controller:
        body["reportingComponent"] = source.reporting_controller
    if source.reporting_instance:
        body["reportingInstance"] = source.reporting_instance
    return body


def count_patch(record: Record) -> Obj:
    """The merge patch that turns the existing Event into `record` (client-go patches these)."""
    return {
        "count": record.count,
        "lastTimestamp": timestamp(record.last),
        "message": record.message,
    }
