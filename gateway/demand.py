"""The gateway's demand stream: what the activator holds, pushed to the autoscaler at once.

Why: the operator's autoscaler is the only writer of a function's `/scale`; the gateway only
reports demand. A request held for a function with no ready sandbox has to reach the autoscaler
immediately (a cold start is budgeted 100 ms, the autoscaler's scrape runs once a second), so,
as Knative's activator pushes its stats, the gateway serves `GET /v1/demand` to the autoscaler,
which connects out to every gateway pod (the gateway need not know which operator leads):
newline-delimited JSON, each line this gateway's whole held demand,

    {"held": [{"namespace": "team-a", "name": "echo", "count": 3}]}

written the moment a cold episode starts (`changed`) and again every `heartbeat` seconds while
the stream is open (an empty list when nothing is held), so a lost or coalesced line costs
nothing the next one does not carry, and a silent stream is noticed by its reader. A follower
never queues lines: it is woken and writes the current snapshot, so a slow reader costs one
line's memory, not a backlog.

What it shows is what the unauthenticated /metrics shows (`nest_gateway_queued` by function).
It is still signed, as the operator's runtime scrapes are (`sandbox.dataplane_auth`), because
a gateway serves at most `max_followers` streams: only key holders may take one, so nobody can
crowd the autoscaler out. Not in the public OpenAPI document: it is operator-facing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiohttp import web

from gateway.routing import Activator
from sandbox import dataplane_auth as auth
from sandbox.disconnects import cancelled_if_caller_leaves

log = logging.getLogger(__name__)
DEMAND_PATH = "/v1/demand"
CONTENT_TYPE = "application/x-ndjson"


class Demand:
    """This gateway's held requests as a stream of snapshot lines, for the autoscalers."""

    def __init__(
        self,
        activator: Activator,
        keys: auth.KeySource | None = None,
        heartbeat: float = 1.0,
        max_followers: int = 8,
    ) -> None:
        """`keys` None: streams are served unsigned (a gateway with --insecure-dataplane)."""
        self.activator = activator
        self.keys = keys
        self.heartbeat = heartbeat
        self.max_followers = max_followers
        self._followers: set[asyncio.Event] = set()
        self._closing = False

    def line(self) -> bytes:
        """The current snapshot, one line."""
        held = [
            {"namespace": ns, "name": name, "count": count}
            for ns, name in sorted(self.activator.keys())
            if (count := self.activator.queued((ns, name))) > 0
        ]
        return json.dumps({"held": held}, separators=(",", ":")).encode() + b"\n"

    def changed(self) -> None:
        """A request was just held for a function with no ready sandbox: tell everyone now."""
        for woken in self._followers:
            woken.set()

    def close(self) -> None:
        """End every stream (the gateway shuts down: its graceful wait must not wait on them;
        the autoscaler reconnects to another gateway, or to this one's successor)."""
        self._closing = True
        self.changed()

    @property
    def followers(self) -> int:
        return len(self._followers)

    def _refusal(self, request: web.Request) -> web.Response | None:
        if len(self._followers) >= self.max_followers:
            return web.json_response(
                {"error": "TooManyFollowers", "message": f"{self.max_followers} streams open"},
                status=503,
            )
        if self.keys is None:
            return None
        denied = self.keys.verify(request.headers.get(auth.HEADER), request.method,
                                  request.raw_path, "", b"")  # fmt: skip
        if denied is None:
            return None
        return web.json_response(
            {"error": "Unauthorized", "message": denied}, status=401,
            headers={"WWW-Authenticate": auth.CHALLENGE},
        )  # fmt: skip

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/demand`: lines until the follower or the gateway goes away."""
        refused = self._refusal(request)
        if refused is not None:
            return refused
        response = web.StreamResponse(
            headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
        )
        woken = asyncio.Event()
        self._followers.add(woken)
        try:
            await response.prepare(request)
            # A follower that left frees its place at once, not at the next heartbeat's write.
            async with cancelled_if_caller_leaves(request):
                while not self._closing:
                    woken.clear()  # before the snapshot: a change while writing wakes us again
                    await response.write(self.line())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), self.heartbeat)
            await response.write_eof()
        except ConnectionError:  # the follower left (CallerLeft is one)
            pass
        finally:
            self._followers.discard(woken)
        return response
