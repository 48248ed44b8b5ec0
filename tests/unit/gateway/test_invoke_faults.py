"""Sandboxes that go away under the gateway: what is retried, what is reported, what is held.

The runtimes are real sockets on 127.0.0.1: an aiohttp server that answers, a raw one that reads
the whole request and then resets the connection, closes it, or sends half an answer head (what
the gateway sees when a runtime is killed with the call in flight), and a socket bound but not
listening, which refuses connections until the test makes it listen (a runtime restarting at
the same address while the endpoints never change). The routing table's clock is the test's,
so an ejection lasts as long as the test needs.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from gateway.errors import Timeout, Upstream
from gateway.invoke import Invoker, Metrics, invoke_call, trigger_call
from gateway.kube import Kube
from gateway.routing import Address, RoutingTable
from nest_kube.fake import FakeApi
from tests.unit.kube.support import eventually

KEY = ("team-a", "echo")


@dataclass
class Broken:
    """A runtime that reads each request and then fails it as `mode` says."""

    mode: str  # "reset" | "close" | "partial"
    requests: int = 0
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            writer.close()
            return
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        self.requests += 1
        if self.mode == "reset":  # SO_LINGER 0: close sends RST, as for unread data at a kill
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if self.mode == "partial":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port


@dataclass
class Good:
    calls: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            self.calls.append(request.method)
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_route("*", "/v1/sandboxes/{id}/invoke", handle)
        app.router.add_route("*", "/v1/sandboxes/{id}/http/{path:.*}", handle)
        return app


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Scene:
    invoker: Invoker
    good: Good
    good_address: Address
    clock: Clock
    registry: CollectorRegistry
    cleanups: list[Callable[[], Any]] = field(default_factory=list)

    def route(self, *ready: Address) -> None:
        meta = {"namespace": KEY[0], "name": KEY[1], "resourceVersion": "1"}
        entries = [{"podIP": a.host, "port": a.port, "uid": a.uid, "sandbox": a.sandbox}
                   for a in ready]  # fmt: skip
        self.invoker.on_endpoints("MODIFIED", {"metadata": meta, "status": {"ready": entries}})

    async def broken(self, mode: str) -> tuple[Broken, Address]:
        runtime = Broken(mode)
        runtime.server = await asyncio.start_server(runtime.handle, "127.0.0.1", 0)
        self.cleanups.append(runtime.server.close)
        return runtime, Address("uid-bad", "echo-bad", "127.0.0.1", runtime.port)

    def refusing(self) -> tuple[socket.socket, Address]:
        """A socket bound and not listening: connections to it are refused, until listen()."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.cleanups.append(sock.close)
        return sock, Address("uid-dead", "echo-dead", "127.0.0.1", sock.getsockname()[1])

    def first(self, address: Address) -> None:
        """Make `address` the first pick: the good sandbox looks busy until the test ends."""
        self.invoker.table.acquire(self.good_address)
        assert self.invoker.table.pick(KEY) == address


@pytest.fixture
async def scene() -> AsyncIterator[Scene]:
    good = Good()
    server = TestServer(good.app(), host="127.0.0.1")
    await server.start_server()
    clock = Clock()
    registry = CollectorRegistry()
    invoker = Invoker(Kube(FakeApi()), Metrics(registry), 10, 30.0)
    invoker.table = RoutingTable(clock)
    await invoker.open()
    meta = {"namespace": KEY[0], "name": KEY[1], "resourceVersion": "1"}
    invoker.on_deployment("ADDED", {"metadata": meta, "spec": {"replicas": 2}})
    assert server.port is not None
    good_address = Address("uid-good", "echo-good", "127.0.0.1", server.port)
    found = Scene(invoker, good, good_address, clock, registry)
    yield found
    await invoker.close()
    await server.close()
    for cleanup in reversed(found.cleanups):  # a site before the socket it serves
        done = cleanup()
        if inspect.isawaitable(done):
            await done


def get() -> Any:
    return trigger_call("GET", "items", "", {}, b"", strip_auth=True)


@pytest.mark.parametrize("mode", ["reset", "close"])
async def test_a_post_that_may_have_run_is_not_retried_and_the_502_says_so(
    scene: Scene, mode: str
) -> None:
    bad, address = await scene.broken(mode)
    scene.route(scene.good_address, address)
    scene.first(address)
    with pytest.raises(Upstream) as raised:
        await scene.invoker.invoke(KEY, invoke_call({}, b'{"n": 1}'))
    detail = raised.value.detail
    assert "echo-bad" in detail and "died with the call in flight" in detail
    assert "Idempotency-Key" in detail
    assert bad.requests == 1 and scene.good.calls == [], "ran at most once, nowhere else"
    assert scene.invoker.table.ejected("uid-bad")


@pytest.mark.parametrize("mode", ["reset", "close"])
@pytest.mark.parametrize("replayable", ["idempotency-key", "get"])
async def test_a_replayable_request_is_retried_on_another_sandbox(
    scene: Scene, mode: str, replayable: str
) -> None:
    bad, address = await scene.broken(mode)
    scene.route(scene.good_address, address)
    scene.first(address)
    if replayable == "get":
        call = get()
    else:
        call = invoke_call({"Idempotency-Key": "order-17"}, b'{"n": 1}')
    answer = await scene.invoker.invoke(KEY, call)
    assert answer.status == 200
    assert bad.requests == 1 and len(scene.good.calls) == 1


async def test_an_answer_that_began_is_never_retried(scene: Scene) -> None:
    bad, address = await scene.broken("partial")
    scene.route(scene.good_address, address)
    scene.first(address)
    with pytest.raises(Upstream, match="failed mid-request"):
        await scene.invoker.invoke(KEY, get())
    assert bad.requests == 1 and scene.good.calls == []


async def test_a_broken_sandbox_is_skipped_while_ejected_then_tried_again(scene: Scene) -> None:
    bad, address = await scene.broken("reset")
    scene.route(scene.good_address, address)
    scene.first(address)
    assert (await scene.invoker.invoke(KEY, get())).status == 200
    scene.invoker.table.release(scene.good_address)  # idle again: ties would rotate onto bad
    for _ in range(4):
        assert (await scene.invoker.invoke(KEY, get())).status == 200
    assert bad.requests == 1 and len(scene.good.calls) == 5, "bad was skipped, not retried"
    scene.clock.now += 1.0  # the first period is over: bad is tried again (and fails again)
    for _ in range(2):
        assert (await scene.invoker.invoke(KEY, get())).status == 200
    assert bad.requests == 2 and scene.invoker.table.ejected("uid-bad")


async def test_a_refused_connection_is_retried_for_any_method(scene: Scene) -> None:
    _, address = scene.refusing()
    scene.route(scene.good_address, address)
    scene.first(address)
    assert (await scene.invoker.invoke(KEY, invoke_call({}, b"{}"))).status == 200
    assert scene.good.calls == ["POST"] and scene.invoker.table.ejected("uid-dead")


async def test_every_sandbox_refusing_holds_until_one_comes_back_at_its_address(
    scene: Scene,
) -> None:
    sock, address = scene.refusing()
    scene.route(address)  # the endpoints never change in this test
    call = asyncio.create_task(scene.invoker.invoke(KEY, invoke_call({}, b"{}")))
    await eventually(lambda: scene.invoker.table.ejected("uid-dead"), what="a refused attempt")
    await eventually(lambda: scene.invoker.activator.queued(KEY) == 1, what="the request held")
    assert not call.done()
    runner = web.AppRunner(scene.good.app())
    await runner.setup()
    scene.cleanups.append(runner.cleanup)
    await web.SockSite(runner, sock).start()  # the runtime is back, at the same address
    answer = await asyncio.wait_for(call, 10)
    assert answer.status == 200 and scene.good.calls == ["POST"]
    assert scene.invoker.activator.queued(KEY) == 0


async def test_a_sandbox_listed_while_every_other_refuses_takes_the_held_request(
    scene: Scene,
) -> None:
    _, address = scene.refusing()
    scene.route(address)
    call = asyncio.create_task(scene.invoker.invoke(KEY, invoke_call({}, b"{}")))
    await eventually(lambda: scene.invoker.activator.queued(KEY) == 1, what="the request held")
    scene.route(address, scene.good_address)
    answer = await asyncio.wait_for(call, 10)
    assert answer.status == 200 and scene.good.calls == ["POST"]


async def test_refusals_until_the_activation_deadline_end_in_a_504_that_says_so(
    scene: Scene,
) -> None:
    scene.invoker.activation_timeout = 0.3
    _, address = scene.refusing()
    scene.route(address)
    with pytest.raises(Timeout, match="every ready one refused it"):
        await scene.invoker.invoke(KEY, invoke_call({}, b"{}"))
    assert scene.invoker.activator.queued(KEY) == 0
    labels = {"namespace": KEY[0], "function": KEY[1]}
    assert scene.registry.get_sample_value("nest_gateway_queued", labels) == 0, "holds undone"
    assert (
        scene.registry.get_sample_value("nest_gateway_requests_total", labels | {"code": "504"})
        == 1
    )
