"""FunctionHost around the interfaces: lifespan at start and close, hooks still run."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import pytest

from isolation.contract import FunctionInfo, Request, Response, after_invoke, before_invoke
from isolation.errors import LoadError
from isolation.host import FunctionHost
from tests.unit.kube.support import eventually

INFO = FunctionInfo(sandbox_id="s", function_name="f")


async def inline(fn: Any) -> Any:
    return fn()


def module_with(**attrs: Any) -> ModuleType:
    module = ModuleType("fn")
    for name, value in attrs.items():
        setattr(module, name, value)
    return module


def lifespan_app(seen: list[str], hang_on_shutdown: bool = False) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                seen.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                    continue
                if hang_on_shutdown:
                    await asyncio.Event().wait()
                await send({"type": "lifespan.shutdown.complete"})
                return
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


async def test_asgi_lifespan_runs_at_start_and_close_around_requests() -> None:
    seen: list[str] = []
    host = FunctionHost(INFO, module_with(app=lifespan_app(seen)), "app", [], inline,
                        interface="asgi")  # fmt: skip
    assert host.handler_is_async and host.has_start_hooks
    await host.start()
    assert (await host.invoke(Request(), "r", 1e18)).status == 204
    await host.close()
    assert seen == ["lifespan.startup", "lifespan.shutdown"]


async def test_a_shutdown_that_overruns_its_grace_leaves_no_task_behind() -> None:
    seen: list[str] = []
    app = lifespan_app(seen, hang_on_shutdown=True)
    host = FunctionHost(INFO, module_with(app=app), "app", [], inline, interface="asgi")
    await host.start()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):  # what the backends' stop grace does
            await host.close()

    def lifespan_tasks() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if "app" in repr(t.get_coro())]

    await eventually(lambda: not lifespan_tasks(), what="the cancelled lifespan task to finish")
    assert lifespan_tasks() == []


async def test_hooks_see_the_event_the_interface_built_and_may_answer_early() -> None:
    seen: list[Any] = []

    @before_invoke
    def check(event: Any, context: Any) -> Response | None:
        seen.append(event["httpMethod"])
        return Response(403, {}, "no") if event["path"] == "/deny" else None

    @after_invoke
    def stamp(event: Any, context: Any, response: Response) -> Response:
        headers = response.headers
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
        return Response(response.status, [*pairs, ("X-Hooked", "1")], response.body)

    def handler(event: Any, context: Any) -> dict[str, Any]:
        return {"statusCode": 200, "body": event["path"]}

    module = module_with(handler=handler, check=check, stamp=stamp)
    host = FunctionHost(INFO, module, "handler", [], inline, interface="apigateway-v1")
    denied = await host.invoke(Request("GET", "/deny"), "r1", 1e18)
    allowed = await host.invoke(Request("GET", "/ok"), "r2", 1e18)
    assert (denied.status, allowed.status, allowed.body) == (403, 200, b"/ok")
    assert ("X-Hooked", "1") in list(allowed.headers)
    assert seen == ["GET", "GET"]


def test_an_unknown_interface_or_a_missing_app_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="unknown interface"):
        FunctionHost(INFO, module_with(app=print), "app", [], inline, interface="grpc")
    with pytest.raises(LoadError, match="no callable ASGI app 'app'") as err:
        FunctionHost(INFO, module_with(), "app", [], inline, interface="asgi")
    assert err.value.reason == "HandlerNotFound"


def test_the_interface_names_agree_across_the_layers() -> None:
    """crds and isolation import nothing of each other, so each spells the names itself."""
    import typing

    from crds import Interface as CrdInterface
    from isolation.interfaces import Interface
    from sandbox.api import Interface as WireInterface

    names = {i.value for i in Interface}
    assert names == {i.value for i in CrdInterface} == set(typing.get_args(WireInterface))
