"""The gateway signs what it forwards, exactly as a runtime checks it, and copes with refusals.

The "runtimes" here are small aiohttp servers on 127.0.0.1 that verify the way sandbox.runtime
does (the signature over method, raw path+query, the routed sandbox id and the body), so what is
tested is the gateway's side of the contract over real HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from gateway.errors import Upstream
from gateway.invoke import Caller, Invoker, Metrics, invoke_call, mounted_path, trigger_call
from gateway.kube import Kube
from nest_kube.fake import FakeApi
from sandbox import dataplane_auth as auth

KEY = ("team-a", "echo")


def fake_runtime(keys: auth.KeySource, seen: list[dict[str, Any]]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        sandbox = request.match_info["id"]
        header = request.headers.get(auth.HEADER)
        fwd = auth.forwarded(request.headers, request.headers.items())  # as sandbox.runtime
        denied = keys.verify(header, request.method, request.raw_path, sandbox, body, fwd)
        seen.append({"path": request.raw_path, "denied": denied, "headers": request.headers.copy(),
                     "signatures": request.headers.getall(auth.HEADER, [])})  # fmt: skip
        if denied is not None:
            error = {"error": "Unauthorized", "message": denied, "sandbox": None}
            return web.json_response(error, status=401)
        cookies = CIMultiDict([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        return web.Response(body=body, content_type="application/json", headers=cookies)

    app = web.Application()
    app.router.add_route("*", "/v1/sandboxes/{id}/invoke", handle)
    app.router.add_route("*", "/v1/sandboxes/{id}/http/{path:.*}", handle)
    return app


def key_dir(root: Path, name: str, key: bytes) -> Path:
    where = root / name
    where.mkdir()
    auth.write_key_file(where / auth.SIGNING_NAME, key)
    return where


@pytest.fixture
async def pods(tmp_path: Path) -> AsyncIterator[tuple[list[TestServer], list[dict[str, Any]]]]:
    """Two runtimes: the first holds a stale key, the second the gateway's."""
    seen: list[dict[str, Any]] = []
    stale = auth.KeySource(key_dir(tmp_path, "stale", b"s" * 32))
    shared = auth.KeySource(key_dir(tmp_path, "shared", b"g" * 32))
    servers = [TestServer(fake_runtime(k, seen), host="127.0.0.1") for k in (stale, shared)]
    for server in servers:
        await server.start_server()
    yield servers, seen
    for server in servers:
        await server.close()


async def invoker(tmp_path: Path, servers: list[TestServer], name: str = "gateway") -> Invoker:
    kube = Kube(FakeApi())  # never called: the function is known from the "watch"
    keys = auth.KeySource(key_dir(tmp_path, name, b"g" * 32))
    inv = Invoker(kube, Metrics(CollectorRegistry()), 10, 1.0, keys)
    await inv.open()
    deployment = {"metadata": {"namespace": KEY[0], "name": KEY[1], "resourceVersion": "1"},
                  "spec": {"replicas": len(servers)}}  # fmt: skip
    inv.on_deployment("ADDED", deployment)
    ready = [{"podIP": "127.0.0.1", "port": s.port, "uid": f"uid-{i}", "sandbox": f"echo-{i}"}
             for i, s in enumerate(servers)]  # fmt: skip
    inv.on_endpoints("ADDED", {"metadata": deployment["metadata"], "status": {"ready": ready}})
    return inv


async def test_invoke_and_trigger_are_signed_for_the_sandbox_they_reach(
    tmp_path: Path, pods: tuple[list[TestServer], list[dict[str, Any]]]
) -> None:
    servers, seen = pods
    inv = await invoker(tmp_path, servers[1:])
    try:
        answered = await inv.invoke(KEY, invoke_call({}, b'{"n": 1}'))
        assert (answered.status, answered.body) == (200, b'{"n": 1}')
        forged = {"X-Nest-Signature": "v1 t=1,k=x,s=" + "0" * 64, "X-Trace": "t"}
        trigger = trigger_call("put", "users/42 x", "a=1&b=%2F", forged, b"{}", strip_auth=True)
        assert (await inv.invoke(KEY, trigger)).status == 200
    finally:
        await inv.close()
    assert [s["denied"] for s in seen] == [None, None]
    assert seen[1]["path"] == "/v1/sandboxes/uid-0/http/users/42%20x?a=1&b=%2F"
    assert len(seen[1]["signatures"]) == 1  # the caller's header was dropped, not forwarded


async def test_a_runtime_with_another_key_is_skipped_and_none_at_all_is_a_502(
    tmp_path: Path, pods: tuple[list[TestServer], list[dict[str, Any]]]
) -> None:
    servers, seen = pods
    both = await invoker(tmp_path, servers)
    try:
        for _ in range(4):  # whichever it picks first, the stale runtime never answers for it
            assert (await both.invoke(KEY, invoke_call({}, b"{}"))).status == 200
    finally:
        await both.close()
    assert [s["path"] for s in seen if s["denied"] is None] == ["/v1/sandboxes/uid-1/invoke"] * 4
    assert all(s["denied"] is not None for s in seen if "uid-0" in s["path"])
    only_stale = await invoker(tmp_path, servers[:1], "gateway-2")
    try:
        with pytest.raises(Upstream, match="nest-dataplane-key"):
            await only_stale.invoke(KEY, invoke_call({}, b"{}"))
    finally:
        await only_stale.close()


async def test_without_keys_requests_go_unsigned(
    pods: tuple[list[TestServer], list[dict[str, Any]]],
) -> None:
    servers, seen = pods
    kube = Kube(FakeApi())
    inv = Invoker(kube, Metrics(CollectorRegistry()), 10, 1.0)
    await inv.open()
    meta = {"namespace": KEY[0], "name": KEY[1], "resourceVersion": "1"}
    inv.on_deployment("ADDED", {"metadata": meta, "spec": {"replicas": 1}})
    ready = [{"podIP": "127.0.0.1", "port": servers[1].port, "uid": "u", "sandbox": "s"}]
    inv.on_endpoints("ADDED", {"metadata": meta, "status": {"ready": ready}})
    try:
        with pytest.raises(Upstream):
            await inv.invoke(KEY, invoke_call({}, b"{}"))
    finally:
        await inv.close()
    assert seen[0]["signatures"] == [] and "missing" in str(seen[0]["denied"])


def test_the_gateway_does_not_start_without_a_key_unless_told_it_is_insecure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from gateway import main

    for name in (auth.ENV_KEY_FILE, "NEST_DATAPLANE_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    assert main.main(["--kubeconfig", str(tmp_path / "unused")]) == 2
    assert "no data-plane key" in capsys.readouterr().err
    missing = str(tmp_path / "absent")
    monkeypatch.setattr(main, "_api", lambda kubeconfig: FakeApi())
    assert main.main(["--dataplane-key-file", missing]) == 1
    assert "cannot read the data-plane key" in capsys.readouterr().err


async def test_the_trigger_forwards_host_and_x_forwarded_under_the_signature(
    tmp_path: Path, pods: tuple[list[TestServer], list[dict[str, Any]]]
) -> None:
    servers, seen = pods
    inv = await invoker(tmp_path, servers[1:])
    caller = Caller("api.example:8090", "http", "127.0.0.77", "/fn/team-a/echo")
    sent = {"Host": "api.example:8090", "X-Forwarded-For": "127.0.0.66", "x-forwarded-prefix": "/x",
            "X-Forwarded-Host": "evil.example", "Cookie": "a=1"}  # fmt: skip
    raw = mounted_path("/fn/team-a/echo/items/7%20x?q=1", caller.prefix)
    try:
        trigger = trigger_call("get", "items/7 x", "q=1", sent, b"", True, caller, raw)
        answered = await inv.invoke(KEY, trigger)
        assert answered.status == 200
        assert answered.headers.getall("Set-Cookie") == ["a=1", "b=2"]  # a repeat is kept
        event = invoke_call({"Host": "api.example:8090"}, b"{}", Caller("api.example:8090"))
        assert (await inv.invoke(KEY, event)).status == 200
    finally:
        await inv.close()
    assert [s["denied"] for s in seen] == [None, None]
    assert seen[0]["path"] == "/v1/sandboxes/uid-0/http/items/7%20x?q=1"
    headers = seen[0]["headers"]
    assert headers["Host"] == headers["X-Forwarded-Host"] == "api.example:8090"
    assert headers["X-Forwarded-For"] == "127.0.0.66, 127.0.0.77"  # the caller's hop appended
    assert headers.getall("X-Forwarded-Prefix") == ["/fn/team-a/echo"]  # the caller's dropped
    assert (headers["X-Forwarded-Proto"], headers["Cookie"]) == ("http", "a=1")
    assert seen[1]["headers"]["Host"] == "api.example:8090"
    assert "X-Forwarded-Prefix" not in seen[1]["headers"]


@pytest.mark.parametrize(
    ("raw", "mounted"),
    [
        ("/fn/ns/app", ""),
        ("/fn/ns/app/", "/"),
        ("/fn/ns/app/a%2Fb/c?x=1", "/a%2Fb/c"),
        ("/fn/ns/apple/x", None),  # another function's name that starts alike
        ("/fn/ns/app/a/../b", None),  # dot segments: the router's normalised path stands in
        ("/fn/ns/app/%2e%2e/b", None),
        ("/fn/%6es/app/x", None),  # the prefix not spelled plainly
    ],
)
def test_mounted_path_keeps_escapes_and_refuses_what_it_cannot_trust(
    raw: str, mounted: str | None
) -> None:
    assert mounted_path(raw, "/fn/ns/app") == mounted
