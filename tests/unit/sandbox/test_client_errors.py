"""The runtime client turns any error answer into a typed error, whatever its body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from sandbox.client import RuntimeClient
from sandbox.errors import RuntimeAPIError, SandboxNotFoundError


@pytest.fixture
async def socket_path(tmp_path: Path) -> AsyncIterator[str]:
    async def plain(request: web.Request) -> web.Response:
        return web.Response(
            status=500, text="500 Internal Server Error\n\nServer got itself in trouble"
        )

    async def typed(request: web.Request) -> web.Response:
        return web.json_response({"error": "NotFound", "message": "no sandbox x"}, status=404)

    app = web.Application()
    app.router.add_get("/v1/runtime", plain)
    app.router.add_get("/v1/sandboxes/x", typed)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "runtime.sock")
    await web.UnixSite(runner, path).start()
    yield path
    await runner.cleanup()


async def test_a_plain_text_error_is_a_typed_error_carrying_the_text(socket_path: str) -> None:
    async with RuntimeClient(socket_path) as client:
        with pytest.raises(RuntimeAPIError) as raised:
            await client.info()
    assert raised.value.status == 500
    assert "Server got itself in trouble" in raised.value.message


async def test_an_error_body_keeps_its_type(socket_path: str) -> None:
    async with RuntimeClient(socket_path) as client:
        with pytest.raises(SandboxNotFoundError):
            await client.get("x")
