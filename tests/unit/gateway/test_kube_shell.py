"""The gateway's I/O shell on the shared layer's fake: management calls and watches.

The whole application (`create_app`) runs in-process on `nest_kube.fake.FakeApi`, so what is
tested is the gateway's side of the API server contract: what it writes, how its informers feed
routing, without a cluster (the activator's side, which writes nothing: test_invoke_demand.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import GATEWAY_KEY, INFORMERS_KEY, Options, create_app
from gateway.errors import NotFound
from gateway.kube import Kube
from nest_kube.fake import FakeApi
from nest_kube.resources import SANDBOX_ENDPOINTS
from tests.unit.kube.support import eventually

NS = "team-a"
BODY = {
    "name": "echo",
    "handler": "main:handler",
    "files": {"main.py": "def handler(e, c):\n    return e\n"},
    "isolation": "namespace",
}


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[FakeApi, TestClient[Any, Any]]]:
    api = FakeApi()
    client = TestClient(TestServer(create_app(api, Options(auth=False)), host="127.0.0.1"))
    await client.start_server()
    yield api, client
    await client.close()


async def test_management_writes_what_it_says_and_the_watches_feed_routing(
    gateway: tuple[FakeApi, TestClient[Any, Any]],
) -> None:
    api, client = gateway
    informers = client.server.app[INFORMERS_KEY]
    await eventually(lambda: all(i.synced.is_set() for i in informers), what="both informers")
    assert (await client.get("/readyz")).status == 200
    created = await client.post(f"/v1/namespaces/{NS}/functions", json=BODY)
    assert created.status == 201, await created.text()
    assert api.writes == {("create", "sandboxdeployments"): 1}
    invoker = client.server.app[GATEWAY_KEY].invoker
    await eventually(lambda: (NS, "echo") in invoker.functions, what="the deployment watch")
    endpoints = {
        "metadata": {"name": "echo", "namespace": NS},
        "status": {"ready": [{"podIP": "127.0.0.1", "port": 9, "uid": "u1", "sandbox": "echo-1"}]},
    }
    api.put(SANDBOX_ENDPOINTS, endpoints)
    await eventually(lambda: invoker.table.pick((NS, "echo"), set()), what="a ready address")
    deleted = await client.delete(f"/v1/namespaces/{NS}/functions/echo")
    assert deleted.status == 204
    await eventually(lambda: (NS, "echo") not in invoker.functions, what="the deletion")
    missing = await client.get(f"/v1/namespaces/{NS}/functions/echo")
    assert missing.status == 404 and missing.content_type == "application/problem+json"


async def test_a_missing_function_is_not_found() -> None:
    with pytest.raises(NotFound):
        await Kube(FakeApi()).get_deployment(NS, "absent")
