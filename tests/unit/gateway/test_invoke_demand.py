"""The activator reports demand and writes nothing: the demand stream, served for real.

The whole gateway (`create_app`) runs on `FakeApi`; a request for a function at zero is held,
and the test follows `GET /v1/demand` as the operator's autoscaler does. What is checked is the
gateway's side of the one-owner rule: the line arrives at once (long before a heartbeat), the
API sees no write at all, and the stream is signed and bounded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import GATEWAY_KEY, Options, create_app
from gateway.demand import DEMAND_PATH, Demand
from gateway.routing import Activator
from nest_kube.fake import FakeApi
from nest_kube.resources import SANDBOX_DEPLOYMENTS
from sandbox import dataplane_auth as auth
from tests.unit.kube.support import eventually

NS = "team-a"
KEY = b"k" * 32


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS}, "spec": {"replicas": replicas}}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[FakeApi, TestClient[Any, Any]]]:
    key_file = tmp_path / "key"
    auth.write_key_file(key_file, KEY)
    api = FakeApi()
    api.put(SANDBOX_DEPLOYMENTS, deployment("cold", 0))
    options = Options(auth=False, dataplane_key_file=str(key_file), activation_timeout=30)
    client = TestClient(TestServer(create_app(api, options), host="127.0.0.1"))
    await client.start_server()
    yield api, client
    await client.close()


def signed() -> dict[str, str]:
    return auth.KeyRing({"current": KEY}).headers("GET", DEMAND_PATH)


async def next_line(content: Any) -> dict[str, Any]:
    line: dict[str, Any] = json.loads(await asyncio.wait_for(content.readline(), 5))
    return line


async def test_a_held_request_is_reported_at_once_and_nothing_is_written(
    gateway: tuple[FakeApi, TestClient[Any, Any]],
) -> None:
    api, client = gateway
    invoker = client.server.app[GATEWAY_KEY].invoker
    invoker.demand.heartbeat = 3600.0  # only the immediate line can arrive within the test
    async with client.get(DEMAND_PATH, headers=signed()) as stream:
        assert stream.status == 200 and stream.content_type == "application/x-ndjson"
        assert await next_line(stream.content) == {"held": []}  # the snapshot on connect
        call = asyncio.create_task(client.post(f"/v1/namespaces/{NS}/functions/cold:invoke",
                                               data=b"{}"))  # fmt: skip
        line = await next_line(stream.content)
        assert line == {"held": [{"namespace": NS, "name": "cold", "count": 1}]}
        call.cancel()
    assert api.writes == {}, "the gateway only reports demand: no /scale, no write at all"
    metrics = await (await client.get("/metrics")).text()
    assert f'nest_gateway_cold_starts_total{{function="cold",namespace="{NS}"}} 1.0' in metrics


async def test_the_stream_refuses_the_unsigned_and_is_bounded(
    gateway: tuple[FakeApi, TestClient[Any, Any]],
) -> None:
    _, client = gateway
    unsigned = await client.get(DEMAND_PATH)
    assert unsigned.status == 401 and "missing" in (await unsigned.json())["message"]
    forged = auth.KeyRing({"current": b"x" * 32}).headers("GET", DEMAND_PATH)
    assert (await client.get(DEMAND_PATH, headers=forged)).status == 401
    demand = client.server.app[GATEWAY_KEY].invoker.demand
    demand.max_followers = 1
    async with client.get(DEMAND_PATH, headers=signed()) as first:
        await next_line(first.content)
        crowded = await client.get(DEMAND_PATH, headers=signed())
        assert crowded.status == 503 and (await crowded.json())["error"] == "TooManyFollowers"
    await eventually(lambda: demand.followers == 0, what="the follower's place freed")
    async with client.get(DEMAND_PATH, headers=signed()) as again:
        assert again.status == 200


async def test_heartbeats_carry_the_counts_and_close_ends_every_stream() -> None:
    activator = Activator(capacity=10)
    demand = Demand(activator, keys=None, heartbeat=0.01)  # unsigned: --insecure-dataplane
    server = TestServer(_app(demand), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as http, http.get(server.make_url(DEMAND_PATH)) as stream:
            assert await next_line(stream.content) == {"held": []}
            for _ in range(3):
                activator.hold(("ns", "f"))  # no changed(): only a heartbeat reports these
            while (line := await next_line(stream.content))["held"] == []:
                pass
            assert line == {"held": [{"namespace": "ns", "name": "f", "count": 3}]}
            demand.close()
            assert await asyncio.wait_for(stream.content.read(), 5) is not None  # EOF, not hang
            assert stream.content.at_eof()
    finally:
        await server.close()


def _app(demand: Demand) -> web.Application:
    app = web.Application()
    app.router.add_get(DEMAND_PATH, demand.handle)
    return app
