"""HttpApi over real HTTP (a small aiohttp server on 127.0.0.1 playing the API server)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nest_kube import ApiError, HttpApi, Unreachable, connect
from nest_kube.resources import CONFIGMAPS, SANDBOX_DEPLOYMENTS

BIG = "x" * 300_000  # one object larger than aiohttp's own line limit


def server_app(seen: list[dict[str, Any]]) -> web.Application:
    async def configmaps(request: web.Request) -> web.StreamResponse:
        body = await request.text()
        seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "auth": request.headers.get("Authorization"),
                "type": request.headers.get("Content-Type"),
                "body": json.loads(body) if body else None,
            }
        )
        if request.query.get("watch") == "true":
            response = web.StreamResponse()
            await response.prepare(request)
            first = (
                json.dumps(
                    {
                        "type": "ADDED",
                        "object": {
                            "metadata": {"name": "big", "resourceVersion": "5"},
                            "data": {"v": BIG},
                        },
                    }
                )
                + "\n"
            )
            for start in range(0, len(first), 70_000):  # one event over many writes
                await response.write(first[start : start + 70_000].encode())
            gone = {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "code": 410,
                    "reason": "Expired",
                    "message": "too old",
                },
            }
            await response.write(json.dumps(gone).encode() + b"\n")
            return response
        if request.match_info.get("name") == "missing":
            status = {
                "kind": "Status",
                "code": 404,
                "reason": "NotFound",
                "message": 'configmaps "missing" not found',
            }
            return web.json_response(status, status=404)
        if request.match_info.get("name") == "broken":
            return web.Response(status=500, text="proxy exploded")
        return web.json_response(
            {"kind": "ConfigMapList", "items": [], "metadata": {"resourceVersion": "9"}}
        )

    app = web.Application()
    app.router.add_route("*", "/api/v1/namespaces/{ns}/configmaps", configmaps)
    app.router.add_route("*", "/api/v1/namespaces/{ns}/configmaps/{name}", configmaps)
    app.router.add_route(
        "*", "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/{sub}", configmaps
    )
    return app


@pytest.fixture
async def served() -> AsyncIterator[tuple[HttpApi, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    server = TestServer(server_app(seen), host="127.0.0.1")
    await server.start_server()
    api = HttpApi(connect(token="t0k", host=f"http://127.0.0.1:{server.port}", env={}))
    yield api, seen
    await api.close()
    await server.close()


async def test_verbs_send_paths_parameters_and_bodies(
    served: tuple[HttpApi, list[dict[str, Any]]],
) -> None:
    api, seen = served
    listed = await api.list(CONFIGMAPS, "a", label_selector="app=x", resource_version="0")
    assert listed["metadata"]["resourceVersion"] == "9"
    await api.patch(SANDBOX_DEPLOYMENTS, "a", "f", {"spec": {"replicas": 1}}, subresource="scale")
    await api.delete(CONFIGMAPS, "a", "c", propagation="Background", preconditions={"uid": "u"})
    assert seen[0]["query"] == {"labelSelector": "app=x", "resourceVersion": "0"}
    assert seen[0]["auth"] == "Bearer t0k"
    assert seen[1]["path"].endswith("/namespaces/a/sandboxdeployments/f/scale")
    assert seen[1]["type"] == "application/merge-patch+json"
    assert seen[2]["body"] == {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "propagationPolicy": "Background",
        "preconditions": {"uid": "u"},
    }


async def test_errors_carry_the_servers_status(
    served: tuple[HttpApi, list[dict[str, Any]]],
) -> None:
    api, _ = served
    with pytest.raises(ApiError) as missing:
        await api.get(CONFIGMAPS, "a", "missing")
    assert (missing.value.status, missing.value.reason) == (404, "NotFound")
    assert missing.value.message == 'configmaps "missing" not found'
    with pytest.raises(ApiError) as broken:
        await api.get(CONFIGMAPS, "a", "broken")
    assert broken.value.status == 500 and broken.value.message == "proxy exploded"


async def test_a_watch_reads_long_lines_and_raises_its_error_event(
    served: tuple[HttpApi, list[dict[str, Any]]],
) -> None:
    api, seen = served
    events = []
    with pytest.raises(ApiError) as gone:
        async for event in api.watch(CONFIGMAPS, "a", resource_version="4", timeout_seconds=9):
            events.append(event)
    assert gone.value.status == 410
    assert [(e.type, len(e.object["data"]["v"])) for e in events] == [("ADDED", len(BIG))]
    assert seen[0]["query"] == {
        "watch": "true",
        "resourceVersion": "4",
        "timeoutSeconds": "9",
        "allowWatchBookmarks": "true",
    }


async def test_no_server_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        api = HttpApi(connect(token="t", host=f"http://127.0.0.1:{port}", env={}))
        with pytest.raises(Unreachable):
            await api.get(CONFIGMAPS, "a", "c")
        await api.close()
