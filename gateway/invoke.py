"""Invocation: route to the least busy ready sandbox, hold requests while a function scales up.

The I/O around `gateway.routing`: this module owns the routing state (fed by the two watches),
forwards requests to the runtime's data plane in the pool pods, and runs the activator loop.
The retry rule (`gateway.retry`, RFC 9110 §9.2.2 as Go's net/http applies it): an attempt that
certainly did not run is sent to another sandbox: a connection that could not be opened, one
aiohttp wrote nothing to, or the runtime's own "not run" answer (sandbox gone, stopping,
overloaded). A connection closed or reset after the request went out and before any byte of
the answer may have run: it is sent elsewhere only when the request is replayable (GET, HEAD,
OPTIONS, TRACE, PUT, DELETE, or an `Idempotency-Key` header), else answered 502 naming the
sandbox. Once the answer began nothing is retried, so nothing runs twice that may not.
A sandbox whose connection was refused or broke is skipped for a while (`RoutingTable.eject`).
When every ready sandbox refused (none ran the request: a runtime restarting), the request is
held and tried again after a back-off (0.1 s doubling to 1 s) or at the next endpoints change,
whichever comes first, until the activation deadline.
A function with no ready sandbox holds the request in its bounded queue, reports the demand to
the operator's autoscaler at once (`gateway.demand`: the autoscaler alone writes `/scale`, the
gateway only tells it what it holds) and resumes it as soon as the endpoints watch shows a
ready address. Per-function metrics are what the autoscaler's periodic scrape reads.
Every forwarded request carries the data-plane signature (`sandbox.dataplane_auth`): runtimes
answer nothing else, so the gateway's RBAC is the only way in. A runtime that refuses the
signature (a key it does not know yet) did not run the request: another sandbox is tried, and
when none accepts it the caller gets a 502 that names the key, not a 401 it could not fix.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from yarl import URL

from gateway import retry
from gateway.demand import Demand
from gateway.errors import GatewayError, NotFound, Timeout, Upstream
from gateway.kube import Kube, Obj
from gateway.routing import (
    Activator,
    Address,
    FunctionInfo,
    FunctionKey,
    RoutingTable,
    addresses,
    function_info,
    runtime_refusal,
)
from sandbox import dataplane_auth as auth
from sandbox.disconnects import cancelled_if_caller_leaves

log = logging.getLogger(__name__)
# Connection-level headers (RFC 9110 §7.6.1) and ones the client library recomputes.
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "host", "content-length",
    }
)  # fmt: skip
# Never forwarded from a caller: the gateway's own signature replaces it.
SIGNATURE = auth.HEADER.lower()
# Time the runtime gets beyond the function's own timeout to report it before we give up.
TIMEOUT_GRACE_SECONDS = 1.0


class Metrics:
    """Per-function counters and gauges, labelled namespace/function."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("namespace", "function")
        self.requests = Counter(
            "nest_gateway_requests", "Invocations answered, by status code.",
            (*labels, "code"), registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "nest_gateway_request_duration_seconds", "Invocation latency including queueing.",
            labels, registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.queued = Gauge(
            "nest_gateway_queued", "Requests held by the activator.", labels, registry=registry
        )
        self.in_flight = Gauge(
            "nest_gateway_in_flight", "Requests being served by sandboxes.", labels,
            registry=registry,
        )  # fmt: skip
        self.cold_starts = Counter(
            "nest_gateway_cold_starts",
            "Requests held for a function at zero replicas, reported to the autoscaler.",
            labels, registry=registry,
        )  # fmt: skip
        self._of: dict[FunctionKey, FunctionMetrics] = {}

    def of(self, key: FunctionKey) -> FunctionMetrics:
        """The children of `key`, looked up once: `labels()` joins, hashes and takes a lock on
        every call, several times per invocation otherwise."""
        found = self._of.get(key)
        if found is None:
            found = self._of[key] = FunctionMetrics(self, key)
        return found

    def forget(self, key: FunctionKey) -> None:
        """Drop the looked-up children of a deleted function (its series stay, as before)."""
        self._of.pop(key, None)


class FunctionMetrics:
    """One function's children of `Metrics`; the request counter's by status code, as met."""

    __slots__ = ("_codes", "_key", "_requests", "cold_starts", "in_flight", "latency", "queued")

    def __init__(self, metrics: Metrics, key: FunctionKey) -> None:
        self._key, self._requests = key, metrics.requests
        self._codes: dict[int, Counter] = {}
        self.latency: Histogram = metrics.latency.labels(*key)
        self.queued: Gauge = metrics.queued.labels(*key)
        self.in_flight: Gauge = metrics.in_flight.labels(*key)
        self.cold_starts: Counter = metrics.cold_starts.labels(*key)

    def requests(self, code: int) -> Counter:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._requests.labels(*self._key, str(code))
        return child


@dataclass(frozen=True)
class Call:
    """What to send to the sandbox: `target` is the data-plane path after /v1/sandboxes/{uid}/."""

    method: str
    target: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    replayable: bool = False  # may run twice (`retry.replayable`): retried after a broken call
    # `auth.forwarded()` of `headers` when the builder knows it (it set the forwarding headers
    # itself, none of the caller's), so it is not worked out again per attempt; None: it is.
    fwd: str | None = None


@dataclass(frozen=True)
class Caller:
    """How the caller reached the gateway: what the function is told in Host and X-Forwarded-*
    (the runtime trusts those only under our signature, which covers them)."""

    host: str  # the Host the caller sent (the gateway's own name as the caller knows it)
    scheme: str = "http"
    remote: str = ""  # the caller's address, appended to X-Forwarded-For
    prefix: str = ""  # where the function is mounted: /fn/{namespace}/{name}


def caller_of(request: web.Request, prefix: str = "") -> Caller:
    """The Caller of an aiohttp request (its Host, else the address it reached us at)."""
    return Caller(request.headers.get("Host") or request.host, request.scheme,
                  request.remote or "", prefix)  # fmt: skip


# Set by the gateway alone: a caller's own values would let it tell the function anything.
_FORWARDING = frozenset(name.lower() for name in auth.FORWARDING)


def forwarding(headers: Mapping[str, str], caller: Caller | None) -> dict[str, str]:
    """Host and X-Forwarded-* for the call, as a proxy in front of an app sets them: the
    caller's Host, its address appended to any X-Forwarded-For it sent, scheme and prefix."""
    if caller is None:
        return {}
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):  # an aiohttp request's: no scan
        hops = ", ".join(headers.getall("X-Forwarded-For", ()))
    else:
        hops = ", ".join(v for k, v in headers.items() if k.lower() == "x-forwarded-for")
    out = {"Host": caller.host, "X-Forwarded-Host": caller.host}
    out["X-Forwarded-For"] = f"{hops}, {caller.remote}" if hops else caller.remote
    out["X-Forwarded-Proto"] = caller.scheme
    if caller.prefix:
        out["X-Forwarded-Prefix"] = caller.prefix
    return out


def signed_forwarding(forwarded: Mapping[str, str]) -> str:
    """`auth.forwarded()` of a call whose only covered headers are `forwarded` (what
    `forwarding()` made, spelled as `auth.FORWARDING` spells them, so a plain dict serves)."""
    return auth.forwarded(forwarded, forwarded.items())


def invoke_call(headers: Mapping[str, str], body: bytes, caller: Caller | None = None) -> Call:
    """`:invoke`: the event as a POST to the function's root (an HTTP request to a Lambda
    interface), with the caller's content type and forwarding headers."""
    content_type = headers.get("Content-Type", "application/json")
    added = forwarding(headers, caller)
    return Call("POST", "invoke", "", {"Content-Type": content_type} | added, body,
                retry.replayable("POST", headers), signed_forwarding(added))  # fmt: skip


def mounted_path(raw_path: str, prefix: str) -> str | None:
    """What follows the function's mount `prefix` in the request target as sent (escapes kept),
    or None when the raw target does not spell the prefix plainly or has dot segments (then
    the decoded, normalised path the router matched stands in)."""
    raw = raw_path.split("?", 1)[0]
    if not raw.startswith(prefix):
        return None
    rest = raw[len(prefix) :]
    if rest and not rest.startswith("/"):
        return None
    if "/." in rest or "%2e" in rest.lower():
        return None
    return rest


def trigger_call(
    method: str, path: str, query: str, headers: Mapping[str, str], body: bytes, strip_auth: bool,
    caller: Caller | None = None, raw_path: str | None = None,
) -> Call:  # fmt: skip
    """An HTTP-trigger call; the caller's Kubernetes token is not the function's business, and
    a signature the caller sent is not passed on (ours is added per attempt). `path` is the
    decoded path after the mount, `raw_path` the same as sent (`mounted_path`), preferred."""
    dropped = _DROPPED[strip_auth, caller is not None]
    kept = {k: v for k, v in headers.items() if k.lower() not in dropped}
    added = forwarding(headers, caller)
    kept |= added
    if raw_path is None:
        raw_path = "/" + quote(path.lstrip("/"), safe="/")
    replayable = retry.replayable(method, headers)
    # With a caller, every covered header of the call is one `forwarding()` added (the caller's
    # own Host and X-Forwarded-* are dropped); without one, the caller's pass and are signed.
    fwd = signed_forwarding(added) if caller is not None else None
    return Call(method, "http/" + raw_path.lstrip("/"), query, kept, body, replayable, fwd)


# What `trigger_call` drops, by (strip_auth, with a caller): the same four sets every time.
_DROPPED = {
    (strip, called): HOP_BY_HOP | {SIGNATURE} | ({"authorization"} if strip else set())
    | (_FORWARDING if called else set())
    for strip in (False, True) for called in (False, True)
}  # fmt: skip


def _kept(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """An answer's headers to pass on: pairs, not a dict (a name may repeat: Set-Cookie). A copy
    (in C) less the hop-by-hop names present, in order: cheaper than filtering pair by pair."""
    kept = CIMultiDict(headers)
    for name in HOP_BY_HOP:
        if name in kept:
            del kept[name]  # every value of that name
    return kept


@functools.lru_cache(maxsize=1024)
def client_timeout(info: FunctionInfo) -> aiohttp.ClientTimeout:
    """The bounds of one attempt (the same for every call of a function revision). The
    function's timeout bounds every wait for bytes (a whole answer, or each gap of a streamed
    one); the maximum duration, a streamed answer in all. The runtime enforces both; these
    only keep the gateway from waiting on a runtime that does not."""
    longest = max(info.timeout_seconds, info.max_duration_seconds)
    return aiohttp.ClientTimeout(
        total=longest + TIMEOUT_GRACE_SECONDS,
        sock_read=info.timeout_seconds + TIMEOUT_GRACE_SECONDS,
    )


async def relay(
    resp: aiohttp.ClientResponse, caller: web.Request, key: FunctionKey
) -> web.StreamResponse:
    """A streamed answer passed on chunk by chunk as it arrives, never buffered. Cut short
    upstream (the runtime closed without the last chunk: the function failed or a bound ran
    out), the caller's connection is closed the same way, so it sees an incomplete answer; a
    caller that leaves closes the upstream connection at once (not at the next chunk: the wait
    for it is cancelled, sandbox.disconnects), which stops the function's stream."""
    out = web.StreamResponse(status=resp.status, headers=_kept(resp.headers))
    try:
        async with cancelled_if_caller_leaves(caller):
            await out.prepare(caller)
            async for chunk in resp.content.iter_any():
                await out.write(chunk)
    except ConnectionError:  # the caller left: the runtime sees its connection go, and stops
        resp.close()
        return out
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.info("stream of %s/%s cut short upstream: %s", *key, exc or type(exc).__name__)
        if caller.transport is not None:
            caller.transport.close()
        return out
    await out.write_eof()
    return out


@dataclass(frozen=True)
class Refused:
    """The sandbox did not run the request: unreachable, gone, stopping or overloaded."""

    word: str
    response: web.Response | None


class Invoker:
    """Routing state plus the activator loop, on one event loop."""

    def __init__(
        self,
        kube: Kube,
        metrics: Metrics,
        queue_size: int,
        activation_timeout: float,
        keys: auth.KeySource | None = None,
    ) -> None:
        """`keys` None: requests go unsigned (only runtimes in --insecure-dataplane take them)."""
        self.kube = kube
        self.keys = keys
        self._refusal_logged = float("-inf")
        self._session: aiohttp.ClientSession | None = None
        self.metrics = metrics
        self.activation_timeout = activation_timeout
        self.table = RoutingTable()
        self.activator = Activator(queue_size)
        self.demand = Demand(self.activator, keys)
        self.functions: dict[FunctionKey, FunctionInfo] = {}

    async def open(self) -> None:
        """Start the data-plane client: unbounded pool, kept alive, bodies passed as they are."""
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        # aiohttp resends an idempotent request once, to the same sandbox, when its connection
        # breaks (RFC 9112 §9.3.1). The gateway decides that itself (`gateway.retry`), and sends
        # it to another sandbox: the one that just broke it is the worst choice. No public
        # switch exists; the attribute is one ClientSession declares (ATTRS). Should a later
        # aiohttp drop it, the cost is that extra attempt on the same sandbox, nothing worse.
        self._session._retry_connection = False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- watch events (called on the loop) -----------------------------------------------------

    def on_deployment(self, kind: str, obj: Obj) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if kind == "DELETED":
            self.functions.pop(key, None)
            self.metrics.forget(key)
            self.table.remove(key)
            self.activator.release(key)  # the woken requests find no function: 404
        else:
            self.functions[key] = function_info(obj)

    def on_endpoints(self, kind: str, obj: Obj) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        ready = () if kind == "DELETED" else addresses(obj.get("status"))
        self.table.set_endpoints(key, ready)
        if ready:
            self.activator.release(key)

    # -- invocation ----------------------------------------------------------------------------

    async def _info(self, key: FunctionKey) -> FunctionInfo:
        info = self.functions.get(key)
        if info is None:
            # Created a moment ago and not yet seen by the watch, or no such function.
            obj = await self.kube.get_deployment(*key)
            info = self.functions.setdefault(key, function_info(obj))
        return info

    async def invoke(
        self, key: FunctionKey, call: Call, caller: web.Request | None = None
    ) -> web.StreamResponse:
        """The function's answer; a streamed one (chunked from the runtime) is relayed to
        `caller` chunk by chunk as it comes, when given, else read whole."""
        started = time.perf_counter()
        code = 500
        try:
            response = await self._route(key, call, started + self.activation_timeout, caller)
            code = response.status
            return response
        except GatewayError as exc:
            code = exc.status
            raise
        finally:
            children = self.metrics.of(key)
            children.requests(code).inc()
            children.latency.observe(time.perf_counter() - started)

    async def _route(
        self, key: FunctionKey, call: Call, hold_until: float, caller: web.Request | None
    ) -> web.StreamResponse:
        tried: set[str] = set()
        overloaded: web.Response | None = None
        unauthorized = False
        retry_in: float | None = None  # the back-off while every ready sandbox refuses
        held = False
        while True:
            info = await self._info(key)
            address = self.table.pick(key, tried)
            if address is not None:
                outcome = await self._try(key, address, call, info, caller)
                if not isinstance(outcome, Refused):
                    return outcome
                tried.add(address.uid)
                overloaded = outcome.response if outcome.word == "TooManyRequests" else overloaded
                unauthorized = unauthorized or outcome.word == "Unauthorized"
                continue
            if overloaded is not None:
                return overloaded  # every sandbox is busy: the caller backs off, we do not queue
            if unauthorized:
                raise Upstream(
                    f"the pool refused the gateway's data-plane signature for {key[0]}/{key[1]}: "
                    f"the gateway's and the runtimes' {auth.SECRET_NAME} keys differ"
                )
            if tried:
                # Every ready sandbox refused, none ran it: a runtime restarting comes back
                # before the endpoints say anything (or without them ever changing), so try
                # again after a back-off as well as at the next endpoints change.
                if time.perf_counter() >= hold_until:
                    raise Timeout(
                        f"no sandbox of {key[0]}/{key[1]} took the request within "
                        f"{self.activation_timeout:g}s: every ready one refused it"
                    )
                retry_in = retry.next_hold_retry(retry_in)
            # None ready, or only stale addresses (scaled down, pod gone): wait for the next set.
            await self._hold(key, info, hold_until, retry_in if tried else None, again=held)
            held = True
            tried.clear()
            if key not in self.functions:
                raise NotFound(f"function {key[0]}/{key[1]} was deleted")

    async def _hold(
        self, key: FunctionKey, info: FunctionInfo, until: float, retry_in: float | None = None,
        again: bool = False,
    ) -> None:  # fmt: skip
        """Hold until the function's endpoints show a ready address, or `retry_in` seconds when
        given (then the deadline only ends the wait, the caller tries once more). `again`: this
        request was held before (a cold start is counted once)."""
        children = self.metrics.of(key)
        gauge = children.queued
        future, first = self.activator.hold(key)  # QueueFull: 503
        if first:  # new demand: the autoscaler hears of it now, later ones with the heartbeat
            self.demand.changed()
            if info.replicas == 0 and not again:
                children.cold_starts.inc()
                log.info("holding a request for %s/%s at zero: reported to the autoscaler", *key)
        gauge.inc()
        try:
            wait = max(0.0, until - time.perf_counter())
            done, _ = await asyncio.wait({future}, timeout=wait if retry_in is None
                                         else min(wait, retry_in))  # fmt: skip
            if not done and retry_in is None:
                raise Timeout(
                    f"no sandbox of {key[0]}/{key[1]} became ready within "
                    f"{self.activation_timeout:g}s"
                )
        finally:
            if not future.done():
                self.activator.forget(key, future)
                future.cancel()
            gauge.dec()

    async def _try(
        self, key: FunctionKey, address: Address, call: Call, info: FunctionInfo,
        caller: web.Request | None = None,
    ) -> web.StreamResponse | Refused:  # fmt: skip
        """The sandbox's response, or Refused when it certainly did not run (retry elsewhere)."""
        target = f"{address.base}/{call.target}" + (f"?{call.query}" if call.query else "")
        url = URL(target, encoded=True)
        timeout = client_timeout(info)
        gauge = self.metrics.of(key).in_flight
        assert self._session is not None, "Invoker.open() first"
        headers = dict(call.headers)
        if self.keys is not None:  # signed per attempt: the path names this sandbox
            method = call.method.upper()
            fwd = call.fwd
            if fwd is None:
                fwd = auth.forwarded(CIMultiDict(headers), headers.items())
            headers[auth.HEADER] = self.keys.ring.sign(
                method, url.raw_path_qs, call.body, address.uid, fwd=fwd
            )
        self.table.acquire(address)
        gauge.inc()
        answered = False
        try:
            async with self._session.request(
                call.method, url, data=call.body, headers=headers, timeout=timeout
            ) as resp:
                answered = True
                self.table.answered(address)
                if caller is not None and resp.headers.get("Transfer-Encoding") == "chunked":
                    return await relay(resp, caller, key)
                body = await resp.read()
                response = web.Response(status=resp.status, body=body, headers=_kept(resp.headers))
                word = runtime_refusal(resp.status, body)
                if word == "Unauthorized" and time.monotonic() >= self._refusal_logged + 10:
                    self._refusal_logged = time.monotonic()  # a key mismatch floods otherwise
                    log.error("sandbox %s of %s/%s refused our signature: %s", address.sandbox,
                              *key, body[:200].decode(errors="replace"))  # fmt: skip
                return response if word is None else Refused(word, response)
        except TimeoutError:
            raise Timeout(
                f"function {key[0]}/{key[1]} did not answer within {info.timeout_seconds:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            failure = None if answered else retry.failure_of(exc)
            if failure is None:
                raise Upstream(f"sandbox {address.sandbox} failed mid-request: {exc}") from exc
            return self._failed(key, address, call, failure, exc)
        finally:
            self.table.release(address)
            gauge.dec()

    def _failed(
        self, key: FunctionKey, address: Address, call: Call, failure: retry.Failure,
        exc: aiohttp.ClientError,
    ) -> Refused:  # fmt: skip
        """An attempt that failed before the answer began: ejects the sandbox when its runtime
        looks gone, then Refused (try another) or, when it may have run and may not run twice,
        the 502. The pooled idle connections to a dead runtime need no closing here: its kernel
        closed them, and aiohttp drops a pooled connection whose peer closed when it is next
        taken (`is_connected`), so they cost no attempt."""
        span = self.table.eject(key, address) if failure.ejects else None
        if span is not None:
            log.info("sandbox %s of %s/%s skipped for %gs: %s", address.sandbox, *key, span,
                     failure.value.lower())  # fmt: skip
        if not retry.retryable(failure, call.replayable):
            log.warning("sandbox %s of %s/%s broke the connection with a %s in flight (%s): "
                        "not retried", address.sandbox, *key, call.method, exc)  # fmt: skip
            raise Upstream(retry.not_retried(address.sandbox, key, failure, call.method)) from exc
        log.info("sandbox %s of %s/%s: %s (%s); trying another", address.sandbox, *key,
                 failure.value.lower(), exc)  # fmt: skip
        return Refused(failure.value, None)
