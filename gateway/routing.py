"""Routing state: which sandboxes of a function are ready, how busy each one is, and who waits.

This is the pure core of invocation. The endpoints watch feeds `RoutingTable.set_endpoints`;
each invocation asks `pick` for the ready sandbox with the fewest requests in flight (the
gateway's own count, which it knows exactly, unlike any lagging metric) and brackets the call
with `acquire`/`release`. When nothing is ready the `Activator` holds the request in a bounded
per-function queue and says whether the queue was empty, i.e. whether to tell the autoscaler
about this demand now (it, not the gateway, scales: `gateway.demand`). Everything runs on one
event loop: `pick` followed by `hold` has no await in between, so an endpoint that turns ready
can never slip between them and strand a request.

Outlier ejection (Envoy's consecutive connect-failure ejection, reduced to one failure): a
sandbox whose connection was refused or broke is skipped by `pick` for a while, 1 s doubling to
10 s each time it fails again once back, so a dead runtime costs one failed attempt per sandbox
and period instead of one per request. It is still picked when every candidate is ejected (an
ejection is a guess; a request held while an untried sandbox exists would be a loss). An answer
of any kind clears it, and so does the endpoints watch dropping the sandbox: one that comes back
(a restarted runtime marks it Ready again) starts clean.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from crds import Function, SandboxDeploymentSpec
from gateway.errors import QueueFull

FunctionKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class Address:
    """A ready sandbox's data-plane address."""

    uid: str
    sandbox: str
    host: str
    port: int

    @property
    def base(self) -> str:
        """The sandbox's data-plane URL prefix (already URL-safe: IP, port, UID)."""
        return f"http://{self.host}:{self.port}/v1/sandboxes/{self.uid}"


# The CRD's defaults, from the models that declare them.
DEFAULT_REPLICAS = int(SandboxDeploymentSpec.model_fields["replicas"].default)
DEFAULT_MAX_DURATION = float(Function.model_fields["max_duration_seconds"].default)


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """What invocation needs of a SandboxDeployment, read from the watch."""

    replicas: int
    timeout_seconds: float
    max_duration_seconds: float = DEFAULT_MAX_DURATION  # a streamed answer's longest life


def addresses(status: Mapping[str, Any] | None) -> tuple[Address, ...]:
    """The routable ready addresses of a SandboxEndpoints status (ones with an IP and port)."""
    found = []
    for entry in (status or {}).get("ready") or []:
        ip, port, uid = entry.get("podIP"), entry.get("port"), entry.get("uid")
        if ip and port and uid:
            found.append(Address(str(uid), str(entry.get("sandbox", "")), str(ip), int(port)))
    return tuple(found)


def function_info(obj: Mapping[str, Any]) -> FunctionInfo:
    """The invocation-relevant parts of a stored SandboxDeployment, with the CRD's defaults.

    The function is read through its model without validating it again (`model_construct`):
    the API server and the admission webhook already did, and a full parse re-checks inline
    code of up to 1 MiB on every watch event of every function.
    """
    spec = obj.get("spec") or {}
    raw = ((spec.get("template") or {}).get("spec") or {}).get("function") or {}
    function = Function.model_construct(**raw)
    return FunctionInfo(
        replicas=int(spec.get("replicas", DEFAULT_REPLICAS)),
        timeout_seconds=float(function.timeout_seconds),
        max_duration_seconds=float(function.max_duration_seconds),
    )


# The runtime's answers for an invocation it did not run (sandbox gone, stopping, overloaded,
# or our data-plane signature refused): safe to send elsewhere. Recognised by the runtime's
# error body, not by status alone, because a function's own HTTP response may well be a 404.
NOT_RUN = {404: "NotFound", 503: "NotRunning", 429: "TooManyRequests", 401: "Unauthorized"}
_ERROR_BODY_KEYS = frozenset({"error", "message", "sandbox"})


def runtime_refusal(status: int, body: bytes) -> str | None:
    """The runtime's error word when it refused to run the invocation, else None."""
    word = NOT_RUN.get(status)
    if word is None or not body.startswith(b"{"):
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # a function's own 404 may be any body at all
        return None
    if isinstance(parsed, dict) and parsed.get("error") == word and set(parsed) <= _ERROR_BODY_KEYS:
        return word
    return None


# Outlier ejection: the first period, and the cap it doubles to while the sandbox keeps failing.
EJECT_FIRST_SECONDS = 1.0
EJECT_MAX_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Ejection:
    """A sandbox skipped until `until` (the table's clock) for a period of `span` seconds."""

    until: float
    span: float


class RoutingTable:
    """Ready addresses per function, requests in flight per sandbox, and ejected sandboxes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._ready: dict[FunctionKey, tuple[Address, ...]] = {}
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._turn: defaultdict[FunctionKey, int] = defaultdict(int)
        self._ejected: dict[str, Ejection] = {}
        self._clock = clock

    def set_endpoints(self, key: FunctionKey, ready: tuple[Address, ...]) -> None:
        listed = {a.uid for a in ready}
        for gone in self._ready.get(key, ()):
            if gone.uid not in listed:  # left the endpoints: it comes back, if ever, clean
                self._ejected.pop(gone.uid, None)
        if ready:
            self._ready[key] = ready
        else:
            self._ready.pop(key, None)

    def remove(self, key: FunctionKey) -> None:
        self.set_endpoints(key, ())

    def ready(self, key: FunctionKey) -> tuple[Address, ...]:
        return self._ready.get(key, ())

    def pick(self, key: FunctionKey, exclude: Iterable[str] = ()) -> Address | None:
        """The ready sandbox with the fewest requests in flight, `exclude`d UIDs aside, and
        ejected ones aside unless nothing else is left.

        Ties rotate, so a trickle of sequential requests spreads over every sandbox instead of
        always landing on the first one listed.
        """
        skip = set(exclude)
        candidates = [a for a in self._ready.get(key, ()) if a.uid not in skip]
        if not candidates:
            return None
        now = self._clock()
        healthy = [a for a in candidates if not self._is_ejected(a.uid, now)]
        candidates = healthy or candidates
        least = min(self._in_flight[a.uid] for a in candidates)
        tied = [a for a in candidates if self._in_flight[a.uid] == least]
        self._turn[key] += 1
        return tied[self._turn[key] % len(tied)]

    def eject(self, key: FunctionKey, address: Address) -> float | None:
        """Skip `address` for a while after its connection was refused or broke: the period in
        seconds, or None when it is already ejected (the requests in flight on a runtime that
        died all fail at once: one outage, one ejection) or no longer listed."""
        if address not in self._ready.get(key, ()):
            return None  # left the endpoints meanwhile: nothing to skip, no state to keep
        now = self._clock()
        current = self._ejected.get(address.uid)
        if current is not None and now < current.until:
            return None
        span = EJECT_FIRST_SECONDS if current is None else min(current.span * 2, EJECT_MAX_SECONDS)
        self._ejected[address.uid] = Ejection(now + span, span)
        return span

    def answered(self, address: Address) -> None:
        """The sandbox's runtime answered (whatever it said): it is reachable again."""
        self._ejected.pop(address.uid, None)

    def ejected(self, uid: str) -> bool:
        return self._is_ejected(uid, self._clock())

    def _is_ejected(self, uid: str, now: float) -> bool:
        ejection = self._ejected.get(uid)
        return ejection is not None and now < ejection.until

    def acquire(self, address: Address) -> None:
        self._in_flight[address.uid] += 1

    def release(self, address: Address) -> None:
        left = self._in_flight[address.uid] - 1
        if left > 0:
            self._in_flight[address.uid] = left
        else:
            del self._in_flight[address.uid]

    def in_flight(self, uid: str) -> int:
        return self._in_flight.get(uid, 0)


class Activator:
    """Bounded per-function queues of requests waiting for a first ready sandbox."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._waiters: dict[FunctionKey, deque[asyncio.Future[None]]] = {}

    def hold(self, key: FunctionKey) -> tuple[asyncio.Future[None], bool]:
        """Queue a request; its future resolves when the function has a ready sandbox.

        The flag is True when the queue was empty: the caller reports the new demand once, at
        once, instead of once per held request (later ones ride on the periodic report).
        Raises QueueFull.
        """
        queue = self._waiters.setdefault(key, deque())
        if len(queue) >= self.capacity:
            raise QueueFull(
                f"{len(queue)} requests already wait for function {key[0]}/{key[1]} to scale up"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        first = not queue
        queue.append(future)
        return future, first

    def forget(self, key: FunctionKey, future: asyncio.Future[None]) -> None:
        """Drop a request that gave up (timed out, client gone)."""
        queue = self._waiters.get(key)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiters[key]

    def release(self, key: FunctionKey) -> int:
        """Wake every held request of `key`, oldest first; how many were woken."""
        queue = self._waiters.pop(key, deque())
        woken = 0
        for future in queue:
            if not future.done():
                future.set_result(None)
                woken += 1
        return woken

    def queued(self, key: FunctionKey) -> int:
        return len(self._waiters.get(key, ()))

    def keys(self) -> list[FunctionKey]:
        return list(self._waiters)
