"""The autoscaler's end of the gateways' demand streams: one long-lived GET per gateway.

Why: the autoscaler is the only writer of `/scale`, so a request the gateway holds for a function
with no ready sandbox must reach it at once, not at its next scrape (a tick is a second; a cold
start is budgeted 100 ms). As Knative's activator pushes stats to the autoscaler, each gateway
serves `GET /v1/demand`: newline-delimited JSON, one line per change and a heartbeat every
second, each line the gateway's whole held demand (`{"held": [{"namespace", "name",
"count"}]}`). The operator connects out to every gateway pod it already discovers for scraping,
so gateways need not know which operator replica leads (issue 13: only the leader's autoscaler
runs, and only it follows the streams).

A snapshot per line makes the stream self-healing: a dropped or coalesced line loses nothing
the next one does not carry, and a gateway whose stream ends contributes nothing until it is
back (its held requests still count through the periodic /metrics scrape, the ground truth;
a lost stream costs at most one tick). A broken stream is retried with the layer's back-off
(`nest_kube.Backoff`, 0.1 s doubling to 5 s, reset after a quiet minute); a silent one ends
when no heartbeat arrives within `read_timeout`. Streams are signed like runtime scrapes
(`sandbox.dataplane_auth`): what they show is what the gateway's /metrics shows, but a
gateway serves a bounded number of them, and only key holders may take a place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp

from nest_kube import Backoff

log = logging.getLogger(__name__)
DEMAND_PATH = "/v1/demand"
FunctionKey = tuple[str, str]  # (namespace, name)
Held = dict[FunctionKey, int]
# Called with the gateway's base URL and its held demand (empty: the stream ended).
OnDemand = Callable[[str, Held], Awaitable[None]]
Headers = Callable[[], Awaitable[dict[str, str] | None]]
MAX_LINE_BYTES = 1 << 20  # a gateway holding requests for thousands of functions still fits


def parse_line(line: bytes) -> Held | None:
    """A demand line's held requests by function, or None when it is not one (ignored)."""
    try:
        data: Any = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("held"), list):
        return None
    held: Held = {}
    for entry in data["held"]:
        if not isinstance(entry, dict):
            continue
        ns, name, count = entry.get("namespace"), entry.get("name"), entry.get("count")
        if isinstance(ns, str) and isinstance(name, str) and isinstance(count, int) and count > 0:
            held[(ns, name)] = held.get((ns, name), 0) + count
    return held


class DemandStreams:
    """Follows `GET /v1/demand` of every gateway given to `track`, calling `on_demand` per line."""

    def __init__(
        self,
        on_demand: OnDemand,
        headers: Headers,
        on_refused: Callable[[], None] | None = None,
        read_timeout: float = 5.0,
        backoff: Callable[[], Backoff] | None = None,
    ) -> None:
        """`on_refused`: called when a gateway refuses our signature (re-read the keys)."""
        self.on_demand = on_demand
        self.headers = headers
        self.on_refused = on_refused
        self.read_timeout = read_timeout
        self._backoff = backoff or (lambda: Backoff(initial=0.1, cap=5.0, reset_after=60.0))
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.connects: dict[str, int] = {}  # per gateway, for tests and debugging

    def track(self, bases: Iterable[str]) -> None:
        """Follow exactly these gateways (base URLs): new ones start, vanished ones stop."""
        wanted = set(bases)
        for base in set(self._tasks) - wanted:
            self._tasks.pop(base).cancel()
        for base in wanted - set(self._tasks):
            self._tasks[base] = asyncio.create_task(self._follow(base), name=f"demand {base}")

    @property
    def followed(self) -> frozenset[str]:
        return frozenset(self._tasks)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No total timeout: the stream lives as long as the gateway; silence ends it.
            timeout = aiohttp.ClientTimeout(total=None, connect=2.0, sock_read=self.read_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def _follow(self, base: str) -> None:
        backoff = self._backoff()
        while True:
            try:
                await self._stream(base)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.debug("demand stream of %s: %s", base, exc or type(exc).__name__)
            except Exception:  # a bug in a handler must not end following this gateway
                log.exception("demand stream of %s failed", base)
            try:
                await self.on_demand(base, {})  # its demand counts no more until it is back
            except Exception:
                log.exception("clearing the demand of %s failed", base)
            await asyncio.sleep(backoff.next())  # the back-off itself, not a synchronisation

    async def _stream(self, base: str) -> None:
        headers = await self.headers()
        async with self._client().get(base + DEMAND_PATH, headers=headers) as resp:
            if resp.status != 200:
                if resp.status == 401 and self.on_refused is not None:
                    self.on_refused()
                body = (await resp.text())[:200]
                log.info("gateway %s refused the demand stream: %d %s", base, resp.status, body)
                return
            self.connects[base] = self.connects.get(base, 0) + 1
            pending = b""
            async for chunk in resp.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_LINE_BYTES:
                    raise aiohttp.ClientPayloadError(f"demand line over {MAX_LINE_BYTES} bytes")
                for line in lines:
                    held = parse_line(line) if line.strip() else None
                    if held is not None:
                        await self.on_demand(base, held)


def total_held(by_gateway: Mapping[str, Mapping[FunctionKey, int]], key: FunctionKey) -> int:
    """Requests held for `key` across every gateway that reported it."""
    return sum(held.get(key, 0) for held in by_gateway.values())
