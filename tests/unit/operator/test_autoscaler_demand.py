"""The autoscaler's demand path: gateways' lines in, one `/scale` write out, on `FakeApi`.

The operator's real shells (`Kube` on `FakeApi`, `AutoscalerController`, `DemandStreams`) follow
real demand streams: `gateway.demand.Demand` served on 127.0.0.1, an activator holding requests
as the gateway's does. What is counted is the writes the API receives, so "one scale-up" means
one PATCH of sandboxdeployments/scale, whatever the number of gateways and lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from crds import constants as c
from gateway.demand import DEMAND_PATH, Demand
from gateway.routing import Activator
from nest_kube import Backoff, connect
from nest_kube.fake import FakeApi
from nest_kube.resources import PODS, SANDBOX_DEPLOYMENTS
from nest_operator.autoscaler_controller import AutoscalerController
from nest_operator.demand_client import DemandStreams, Held, parse_line
from nest_operator.kube import Kube
from nest_operator.store import Kind, Obj, Store
from sandbox import dataplane_auth as auth
from tests.unit.kube.support import eventually

NS = "team-a"
KEY = (NS, "f")
SECRET = b"d" * 32
WRITES = ("patch", c.DEPLOYMENT_PLURAL)


class Keys:
    """SecretKeys as the controller uses it, holding the gateways' key."""

    def __init__(self) -> None:
        self.stale_calls = 0

    async def ring(self) -> auth.KeyRing:
        return auth.KeyRing({"current": SECRET})

    def stale(self) -> None:
        self.stale_calls += 1


def deployment(replicas: int, autoscaling: Obj | None = None) -> Obj:
    spec: Obj = {"replicas": replicas, "template": {"spec": {"function": {"concurrency": 10}}}}
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    return {"metadata": {"name": KEY[1], "namespace": NS}, "spec": spec}


def controller(api: FakeApi, obj: Obj) -> AutoscalerController:
    store = Store()
    kube = Kube(connect(token="t", host="http://127.0.0.1:9"), store, api=api)
    ctl = AutoscalerController(store, kube)
    ctl.keys = Keys()  # type: ignore[assignment]
    store.apply(Kind.DEPLOYMENT, "ADDED", api.put(SANDBOX_DEPLOYMENTS, obj))
    ctl.begin(asyncio.get_running_loop().time())
    return ctl


class Gateway:
    """A gateway's demand side: an activator and its stream on 127.0.0.1."""

    def __init__(self, key_file: Path) -> None:
        self.activator = Activator(capacity=10)
        self.demand = Demand(self.activator, auth.KeySource(key_file), heartbeat=0.02)
        app = web.Application()
        app.router.add_get(DEMAND_PATH, self.demand.handle)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def hold(self) -> None:
        _, first = self.activator.hold(KEY)
        if first:
            self.demand.changed()


@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[list[Gateway]]:
    key_file = tmp_path / "key"
    auth.write_key_file(key_file, SECRET)
    made = [Gateway(key_file), Gateway(key_file)]
    for gw in made:
        await gw.server.start_server()
    yield made
    for gw in made:
        gw.demand.close()
        await gw.server.close()


def lines_seen(ctl: AutoscalerController) -> list[tuple[str, Held]]:
    """Record every line the controller handles (and still handle it)."""
    seen: list[tuple[str, Held]] = []
    handle = ctl.on_demand

    async def recording(gateway: str, held: Held) -> None:
        seen.append((gateway, dict(held)))
        await handle(gateway, held)

    ctl.streams.on_demand = recording
    return seen


async def test_a_demand_line_makes_one_scale_write(gateways: list[Gateway]) -> None:
    api = FakeApi()
    ctl = controller(api, deployment(0))  # no autoscaling: woken to one sandbox
    seen = lines_seen(ctl)
    gw = gateways[0]
    ctl.streams.track([gw.base])
    await eventually(lambda: seen, what="the first line")
    assert api.writes[WRITES] == 0, "nothing held, nothing written"
    gw.hold()
    await eventually(lambda: api.writes[WRITES] == 1, what="the scale write")
    assert (await api.get(SANDBOX_DEPLOYMENTS, NS, "f"))["spec"]["replicas"] == 1
    before = len(seen)
    await eventually(lambda: len(seen) >= before + 5, what="heartbeats while the request waits")
    assert api.writes[WRITES] == 1, "the write in flight counts: heartbeats do not repeat it"
    await ctl.streams.close()


async def test_two_gateways_reporting_one_cold_function_make_one_write(
    gateways: list[Gateway],
) -> None:
    api = FakeApi()
    ctl = controller(api, deployment(0, {"minReplicas": 0, "maxReplicas": 5}))
    seen = lines_seen(ctl)
    ctl.streams.track([gw.base for gw in gateways])
    for gw in gateways:
        gw.hold()
    both = {gw.base for gw in gateways}
    await eventually(lambda: {g for g, held in seen if held.get(KEY)} == both, what="both lines")
    before = len(seen)
    await eventually(lambda: len(seen) >= before + 6, what="more lines from both")
    assert api.writes[WRITES] == 1
    assert (await api.get(SANDBOX_DEPLOYMENTS, NS, "f"))["spec"]["replicas"] == 1
    # The watch shows the write: the store's own scale takes over, still no second write.
    ctl.store.apply(Kind.DEPLOYMENT, "MODIFIED", await api.get(SANDBOX_DEPLOYMENTS, NS, "f"))
    before = len(seen)
    await eventually(lambda: len(seen) >= before + 4, what="lines after the watch caught up")
    assert api.writes[WRITES] == 1
    await ctl.streams.close()


@pytest.mark.parametrize("autoscaling", [None, {"minReplicas": 0, "maxReplicas": 5}])
async def test_nothing_is_written_when_the_replicas_already_suffice(
    gateways: list[Gateway], autoscaling: Obj | None
) -> None:
    api = FakeApi()
    ctl = controller(api, deployment(2, autoscaling))
    seen = lines_seen(ctl)
    ctl.streams.track([gateways[0].base])
    gateways[0].hold()  # starting sandboxes, none ready yet: held, but two already wanted
    await eventually(lambda: sum(1 for _, held in seen if held) >= 5, what="demand lines")
    assert api.writes[WRITES] == 0
    await ctl.streams.close()


async def test_a_broken_stream_is_followed_again_with_back_off() -> None:
    served = 0

    async def one_line_then_close(request: web.Request) -> web.StreamResponse:
        nonlocal served
        served += 1
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(
            b'{"held": [{"namespace": "ns", "name": "f", "count": %d}]}\n' % served
        )
        return response  # the connection ends: a gateway restarting, a proxy cutting it

    app = web.Application()
    app.router.add_get(DEMAND_PATH, one_line_then_close)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    pauses: list[float] = []

    class Recorded(Backoff):
        def next(self) -> float:
            pauses.append(super().next())
            return pauses[-1]

    calls: list[Held] = []

    async def on_demand(gateway: str, held: Held) -> None:
        calls.append(held)

    async def no_headers() -> None:
        return None

    backoff = lambda: Recorded(initial=0.01, cap=0.04, jitter=0.0)  # noqa: E731
    streams = DemandStreams(on_demand, no_headers, backoff=backoff)
    base = str(server.make_url("")).rstrip("/")
    streams.track([base])
    await eventually(lambda: len(pauses) >= 4, what="four reconnections")
    await streams.close()
    await server.close()
    assert pauses[:4] == [0.01, 0.02, 0.04, 0.04], "doubling to the cap"
    assert streams.connects[base] >= 4
    # Each connection's line, then "nothing from this gateway" when its stream ended.
    assert calls[:4] == [{("ns", "f"): 1}, {}, {("ns", "f"): 2}, {}]


async def test_a_refused_stream_asks_for_the_keys_again(gateways: list[Gateway]) -> None:
    api = FakeApi()
    ctl = controller(api, deployment(0))
    keys = Keys()
    ctl.keys = keys  # type: ignore[assignment]

    async def wrong() -> auth.KeyRing:
        return auth.KeyRing({"current": b"w" * 32})

    keys.ring = wrong  # type: ignore[method-assign]
    ctl.streams.track([gateways[0].base])
    await eventually(lambda: keys.stale_calls > 0, what="a 401 noticed")
    gateways[0].hold()
    assert api.writes[WRITES] == 0 and not ctl.demand
    await ctl.streams.close()


def test_only_well_formed_positive_counts_are_demand() -> None:
    assert parse_line(b'{"held": [{"namespace": "a", "name": "f", "count": 2}]}') == {("a", "f"): 2}
    assert parse_line(b'{"held": []}') == {}
    for junk in (b"not json", b"[]", b'{"held": 3}', b'{"held": [{"namespace": "a"}]}'):
        assert not parse_line(junk)
    assert parse_line(b'{"held": [{"namespace": "a", "name": "f", "count": -1}]}') == {}


async def test_the_tick_follows_the_gateways_it_discovers() -> None:
    api = FakeApi()
    ctl = controller(api, deployment(0))
    pod: dict[str, Any] = {
        "metadata": {"name": "gw", "namespace": "nest-system",
                     "labels": {"app.kubernetes.io/name": "nest-gateway"}},
        "status": {"podIP": "127.0.0.1"},
    }  # fmt: skip
    ctl.namespace = "nest-system"
    ctl.gateway_port = 9  # nothing listens: the stream is retried, the scrape contributes nothing
    api.put(PODS, pod)
    async with aiohttp.ClientSession() as http:
        await ctl.tick(http, asyncio.get_running_loop().time())
    assert ctl.streams.followed == {"http://127.0.0.1:9"}
    await api.delete(PODS, "nest-system", "gw")
    async with aiohttp.ClientSession() as http:
        await ctl.tick(http, asyncio.get_running_loop().time())
    assert ctl.streams.followed == frozenset()
    await ctl.streams.close()


def gateway_pod(api: FakeApi) -> None:
    api.put(PODS, {
        "metadata": {"name": "gw", "namespace": "nest-system",
                     "labels": {"app.kubernetes.io/name": "nest-gateway"}},
        "status": {"podIP": "127.0.0.1"},
    })  # fmt: skip


async def metrics_only_gateway(on_scrape: Any) -> TestServer:
    """A gateway whose /metrics says one request is held (and that has no demand stream: the
    tick is the autoscaler's only source, as when a stream is lost)."""

    async def metrics(request: web.Request) -> web.Response:
        await on_scrape()
        return web.Response(text=f'nest_gateway_queued{{function="f",namespace="{NS}"}} 1.0\n')

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.parametrize("user_scales_meanwhile", [False, True])
async def test_the_tick_wakes_from_a_scrape_only_a_deployment_unchanged_since(
    user_scales_meanwhile: bool,
) -> None:
    api = FakeApi()
    ctl = controller(api, deployment(1))  # serving the request the gateway still counts

    async def scale_to_zero() -> None:  # as the user does, seen by the watch at once
        await api.patch(
            SANDBOX_DEPLOYMENTS, NS, "f", {"spec": {"replicas": 0}}, subresource="scale"
        )
        ctl.store.apply(Kind.DEPLOYMENT, "MODIFIED", await api.get(SANDBOX_DEPLOYMENTS, NS, "f"))

    async def on_scrape() -> None:
        if user_scales_meanwhile:  # the counted request is answered, the user scales to zero
            await scale_to_zero()

    if not user_scales_meanwhile:  # at zero before the scrape: the count is current demand
        await scale_to_zero()
    server = await metrics_only_gateway(on_scrape)
    gateway_pod(api)
    ctl.namespace, ctl.gateway_port = "nest-system", server.port
    before = api.writes[WRITES]
    async with aiohttp.ClientSession() as http:
        await ctl.tick(http, asyncio.get_running_loop().time())
    await ctl.streams.close()
    await server.close()
    written = api.writes[WRITES] - before - (1 if user_scales_meanwhile else 0)
    replicas = (await api.get(SANDBOX_DEPLOYMENTS, NS, "f"))["spec"]["replicas"]
    if user_scales_meanwhile:
        assert (written, replicas) == (0, 0), "a count scraped before the user's scale to zero"
    else:
        assert (written, replicas) == (1, 1), "a lost stream costs one tick, not the wake"


async def test_a_scale_write_goes_through_to_the_store_and_its_controller_at_once(
    gateways: list[Gateway],
) -> None:
    api = FakeApi()
    ctl = controller(api, deployment(0))
    before = ctl.store.all(Kind.DEPLOYMENT)[0]["metadata"]
    routed: list[tuple[Kind, str]] = []
    ctl.kube.on_write = lambda kind, obj, deleted: routed.append((kind, obj["metadata"]["name"]))
    ctl.streams.track([gateways[0].base])
    gateways[0].hold()
    await eventually(lambda: routed, what="the deployment handed to its controller")
    stored = ctl.store.all(Kind.DEPLOYMENT)[0]  # no watch runs here: only the write-through
    server = await api.get(SANDBOX_DEPLOYMENTS, NS, "f")
    assert routed == [(Kind.DEPLOYMENT, "f")] and stored["spec"]["replicas"] == 1
    assert stored["metadata"]["resourceVersion"] == server["metadata"]["resourceVersion"]
    assert stored["metadata"]["generation"] == before["generation"] + 1
    await ctl.streams.close()


async def test_a_tick_racing_a_demand_line_does_not_write_the_same_scale_again() -> None:
    api = FakeApi()
    ctl = controller(api, deployment(0, {"minReplicas": 0, "maxReplicas": 5}))
    gateway = "http://gw"

    async def demand_during_the_scrape() -> None:  # the line arrives while the tick scrapes
        await ctl.on_demand(gateway, {KEY: 1})
        await ctl.on_demand(gateway, {KEY: 1})  # its heartbeat: the store shows the write

    server = await metrics_only_gateway(demand_during_the_scrape)
    gateway_pod(api)
    ctl.namespace, ctl.gateway_port = "nest-system", server.port
    async with aiohttp.ClientSession() as http:
        await ctl.tick(http, asyncio.get_running_loop().time())
    await ctl.streams.close()
    await server.close()
    assert api.writes[WRITES] == 1, "the tick decided on the deployment as the line left it"
    assert (await api.get(SANDBOX_DEPLOYMENTS, NS, "f"))["spec"]["replicas"] == 1
