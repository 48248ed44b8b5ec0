"""The runtime's HTTP trigger builds one request shape for both isolation modes, and takes the
mount prefix and client address only from forwarding headers its signature covers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from sandbox import dataplane_auth as auth
from sandbox.api import CreateSandbox
from sandbox.client import RuntimeClient
from tests.unit.sandbox.conftest import RuntimeProcess

SHAPE = """
def handler(event, context):
    r = context.request
    return {"method": r.method, "path": r.path, "raw_path": r.raw_path,
            "root_path": r.root_path, "client": r.client, "query": dict(r.query),
            "raw_query": r.raw_query, "multi": r.headers["x-multi"],
            "all_multi": [v for k, v in r.header_items if k.lower() == "x-multi"],
            "host": r.headers["host"], "prefix_header": r.headers.get("x-forwarded-prefix"),
            "body": r.body.decode()}
"""
TARGET = "/v1/sandboxes/{id}/http/items/7%20x?tag=a&tag=b&q=x%20y"
FORWARDING = [
    ("Host", "gw.example:8443"),
    ("X-Forwarded-For", "127.0.0.87, 127.0.0.44"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "gw.example:8443"),
    ("X-Forwarded-Prefix", "/fn/team/shop"),
]


async def _create(client: RuntimeClient, code: Path) -> None:
    for isolation in ("namespace", "subprocess"):
        spec = CreateSandbox(
            id=isolation, code_dir=str(code), handler="main:handler", isolation=isolation
        )
        await client.create(spec)


def _signed(
    runtime: RuntimeProcess, path: str, pairs: list[tuple[str, str]], body: bytes
) -> CIMultiDict[str]:
    headers = CIMultiDict(pairs)
    fwd = auth.forwarded(headers, headers.items())
    headers[auth.HEADER] = runtime.keys.sign("PUT", path, body, fwd=fwd)
    return headers


async def _put(
    http: aiohttp.ClientSession, runtime: RuntimeProcess, path: str, headers: CIMultiDict[str]
) -> tuple[int, Any]:
    async with http.put(runtime.base_url + path, data=b"payload", headers=headers) as r:
        return r.status, json.loads(await r.read())


async def test_both_modes_see_the_same_request_with_the_signed_forwarding(
    runtime: RuntimeProcess,
    client: RuntimeClient,
    http: aiohttp.ClientSession,
    shared_dir: Path,
) -> None:
    (shared_dir / "main.py").write_text(SHAPE)
    await _create(client, shared_dir)
    pairs = [*FORWARDING, ("X-Multi", "one"), ("X-Multi", "two")]  # aiohttp merges by case
    seen = []
    for isolation in ("namespace", "subprocess"):
        path = TARGET.format(id=isolation)
        status, body = await _put(http, runtime, path, _signed(runtime, path, pairs, b"payload"))
        assert status == 200, body
        seen.append(body)
    assert seen[0] == seen[1] == {
        "method": "PUT", "path": "/items/7 x", "raw_path": "/items/7%20x",
        "root_path": "/fn/team/shop", "client": "127.0.0.44", "query": {"tag": "a", "q": "x y"},
        "raw_query": "tag=a&tag=b&q=x%20y", "multi": "one", "all_multi": ["one", "two"],
        "host": "gw.example:8443", "prefix_header": "/fn/team/shop", "body": "payload",
    }  # fmt: skip


async def test_forwarding_headers_outside_the_signature_are_refused(
    runtime: RuntimeProcess,
    client: RuntimeClient,
    http: aiohttp.ClientSession,
    shared_dir: Path,
) -> None:
    (shared_dir / "main.py").write_text(SHAPE)
    await _create(client, shared_dir)
    path = TARGET.format(id="namespace")
    plain = _signed(runtime, path, [("X-Multi", "one")], b"payload")
    status, body = await _put(http, runtime, path, plain)
    # Not through a gateway: no prefix, and no client to name.
    assert status == 200 and body["root_path"] == "" and body["client"] == ""
    # The same signature with a prefix added on the way (or one changed) no longer holds.
    plain["X-Forwarded-Prefix"] = "/fn/other/app"
    status, body = await _put(http, runtime, path, plain)
    assert (status, body["error"]) == (401, "Unauthorized")
    forwarded = _signed(runtime, path, FORWARDING, b"payload")
    forwarded["X-Forwarded-For"] = "127.0.0.66"
    status, body = await _put(http, runtime, path, forwarded)
    assert (status, body["error"]) == (401, "Unauthorized")
    usage = (await client.get("namespace")).usage
    assert usage is not None and usage.invocations == 1
