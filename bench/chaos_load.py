"""The chaos harness's request loop: open-loop invocations through the gateways, every outcome kept.

Why a module of its own: the loop is the measuring instrument of bench.chaos and must not bend
under the faults it measures. It is open loop (each request leaves on its tick whether or not
earlier ones answered, so a stall shows as failures or latency, not as fewer requests), opens a
connection per request (a killed gateway's kept-alive sockets would otherwise fail requests no
new client would send there), and routes as the gateway Service would: round-robin over the
Ready gateway pods, listed twice a second and kept as they were while the API server is down.

Every call carries an `Idempotency-Key` (the harness's functions echo their event: running one
twice is harmless), as a caller does whose calls may be repeated: the gateway then retries a
call its sandbox's death cut off on another replica (gateway/retry.py), and this client retries
it once on the other gateway when the gateway's own death cut it off (connection closed or reset
before an answer), as it does a connection refused. Without the key, such a call is answered
502 "may have run" and not retried; `NEST_CHAOS_IDEMPOTENT=0` measures that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from kubernetes import client

from bench import chaos_faults as faults

FUNCTIONS = {"chaos-sub": "subprocess", "chaos-ns": "namespace"}
GATEWAY_PORT = 8090
IDEMPOTENT = os.environ.get("NEST_CHAOS_IDEMPOTENT", "1") != "0"


@dataclass
class Scene:
    """The cluster as the harness sees it: API clients, kubectl, the test namespace, a token
    allowed to deploy and invoke there, the functions deployed in it, and its node."""

    api: client.ApiClient
    kubectl: Callable[..., str]
    namespace: str
    token: str
    functions: dict[str, str] = field(default_factory=lambda: dict(FUNCTIONS))
    rate: float = 10.0
    # The cgroup key of the cluster's local node (chaos_faults.node_key): orphans are looked
    # for among its processes only. The default cluster's unless told.
    node: str | None = field(default_factory=faults.node_key)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)


@dataclass
class Outcome:
    at: float  # time.monotonic() when sent
    function: str
    status: int | None
    error: str | None
    retried: bool
    body: str = ""  # the start of a failed answer, to say why
    address: str = ""  # the gateway it was sent to last

    @property
    def failed(self) -> bool:
        return self.status != 200

    @property
    def label(self) -> str:
        return str(self.status) if self.error is None else self.error


class Gateways:
    """The gateway Service's ready addresses, routed to round-robin as kube-proxy would."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self.addresses: list[str] = []
        self._turn = itertools.count()

    def refresh(self) -> None:
        """The Ready, not deleting gateway pods, as the endpoints controller would list them
        (the local controller-manager leaves the Service's Endpoints empty)."""
        try:
            found = [
                f"{p['status']['podIP']}:{GATEWAY_PORT}"
                for p in faults.pods(self.core, faults.GATEWAY_SELECTOR)
                if faults.ready(p) and not p["metadata"].get("deletionTimestamp")
            ]
        except Exception:  # the API server down: route on the last known set, as kube-proxy does
            return
        self.addresses = sorted(found)

    def pick(self, avoid: str | None = None) -> str | None:
        choices = [a for a in self.addresses if a != avoid] or self.addresses
        return choices[next(self._turn) % len(choices)] if choices else None


async def _invoke(
    session: aiohttp.ClientSession, gateways: Gateways, scene: Scene, name: str, seq: int
) -> Outcome:
    sent = time.monotonic()
    path = f"/v1/namespaces/{scene.namespace}/functions/{name}:invoke"
    headers = {"Authorization": f"Bearer {scene.token}"}
    if IDEMPOTENT:
        headers["Idempotency-Key"] = f"{name}-{seq}"
    address, retried = gateways.pick(), False
    for attempt in range(2):
        if address is None:
            return Outcome(sent, name, None, "NoGateway", retried)
        try:
            async with session.post(f"http://{address}{path}", json={"seq": seq},
                                    headers=headers) as resp:  # fmt: skip
                text = (await resp.read())[:300].decode(errors="replace")
                return Outcome(sent, name, resp.status, None, retried,
                               "" if resp.status == 200 else text, address)  # fmt: skip
        except aiohttp.ClientConnectorError:
            if attempt == 0:  # nothing was sent: another address, once
                address, retried = gateways.pick(avoid=address), True
                continue
            return Outcome(sent, name, None, "ConnectError", retried, "", address)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if attempt == 0 and IDEMPOTENT:  # cut off before an answer, safe to repeat: once
                address, retried = gateways.pick(avoid=address), True
                continue
            return Outcome(sent, name, None, type(exc).__name__, retried, str(exc)[:300],
                           address)  # fmt: skip
        except TimeoutError:
            return Outcome(sent, name, None, "Timeout", retried, "", address)
        except aiohttp.ClientError as exc:
            return Outcome(sent, name, None, type(exc).__name__, retried, str(exc)[:300],
                           address)  # fmt: skip
    raise AssertionError("unreachable")


class Load:
    """An open-loop request loop: `rate` requests per second per function until stopped."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.gateways = Gateways(scene.core)
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Load:
        await asyncio.to_thread(self.gateways.refresh)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _refresher(self) -> None:
        while not self._stop.is_set():
            await asyncio.to_thread(self.gateways.refresh)
            await asyncio.sleep(0.5)  # the Endpoints refresh period, not a synchronisation

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=35)  # beyond the gateway's activation timeout
        connector = aiohttp.TCPConnector(force_close=True, limit=0)  # a connection per request
        pending: set[asyncio.Task[Outcome]] = set()
        refresher = asyncio.create_task(self._refresher())
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            period, seq = 1.0 / self.scene.rate, 0
            start = time.monotonic()
            while not self._stop.is_set():
                for name in self.scene.functions:
                    task = asyncio.create_task(
                        _invoke(session, self.gateways, self.scene, name, seq)
                    )
                    pending.add(task)
                    task.add_done_callback(self._collect(pending))
                seq += 1
                next_tick = start + seq * period
                with contextlib.suppress(TimeoutError):  # the open loop's pacing; stop ends it
                    await asyncio.wait_for(
                        self._stop.wait(), max(0.0, next_tick - time.monotonic())
                    )
            if pending:
                await asyncio.wait(pending)
        await refresher

    def _collect(
        self, pending: set[asyncio.Task[Outcome]]
    ) -> Callable[[asyncio.Task[Outcome]], None]:
        def done(task: asyncio.Task[Outcome]) -> None:
            pending.discard(task)
            self.outcomes.append(task.result())

        return done
