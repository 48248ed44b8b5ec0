"""The runtime holds every body to `sandbox.limits`: the data plane answers problem+json, the
sandbox never sees a refused body and lives on; the control API answers its ErrorBody."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sandbox import limits
from sandbox.api import CreateSandbox
from sandbox.client import RuntimeClient
from sandbox.runtime import parse_config
from tests.conformance.support import HELLO
from tests.unit.sandbox.conftest import RuntimeProcess, start_runtime, stop_runtime

LIMIT = limits.DEFAULT_MAX_BODY_BYTES
DEEP = b"[" * 100_000 + b"]" * 100_000
ISOLATIONS = pytest.mark.parametrize("isolation", ["namespace", "subprocess"])


def json_string(size: int) -> bytes:
    """A JSON document (a string) of exactly `size` bytes."""
    return b'"' + b"a" * (size - 2) + b'"'


async def create(client: RuntimeClient, isolation: str, sandbox_id: str = "fn") -> None:
    spec = CreateSandbox.model_validate(
        {"id": sandbox_id, "code_dir": HELLO, "handler": "main:handler", "isolation": isolation}
    )
    await client.create(spec)


async def call(
    runtime: RuntimeProcess, http: aiohttp.ClientSession, body: bytes, target: str = "invoke"
) -> tuple[int, str, bytes]:
    path = f"/v1/sandboxes/fn/{target}"
    async with runtime.request(http, "POST", path, data=body) as r:
        return r.status, r.content_type, await r.read()


async def assert_problem(answer: tuple[int, str, bytes], status: int, kind: str) -> None:
    code, content_type, raw = answer
    assert (code, content_type) == (status, "application/problem+json"), raw[:300]
    problem = json.loads(raw)
    assert problem["type"] == limits.PROBLEM_BASE + kind  # the runtime's, not the sandbox's
    assert problem["status"] == status and problem["title"] and problem["detail"]


async def assert_alive(client: RuntimeClient, invocations: int) -> None:
    info = await client.get("fn")
    assert info.state == "Running"
    assert info.usage is not None and info.usage.invocations == invocations


@ISOLATIONS
async def test_the_data_plane_refuses_too_large_and_too_deep_and_the_sandbox_lives_on(
    runtime: RuntimeProcess, client: RuntimeClient, http: aiohttp.ClientSession, isolation: str
) -> None:
    await create(client, isolation)
    status, _, raw = await call(runtime, http, json_string(LIMIT))
    assert status == 200, raw[:300]  # exactly the limit: the gateway's limit too
    await assert_problem(
        await call(runtime, http, json_string(LIMIT + 1)), 413, "payload-too-large"
    )
    await assert_problem(await call(runtime, http, DEEP), 400, "json-too-deep")
    await assert_problem(await call(runtime, http, DEEP, "http/x"), 400, "json-too-deep")
    await assert_alive(client, 1)  # neither refusal reached the sandbox
    status, _, raw = await call(runtime, http, b'{"name": "after"}')
    assert status == 200 and json.loads(raw)["hello"] == "after"
    await assert_alive(client, 2)


@pytest.fixture
async def control(runtime: RuntimeProcess) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.UnixConnector(path=runtime.socket)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def test_the_control_api_refuses_deep_and_large_bodies_with_its_error_body(
    control: aiohttp.ClientSession, client: RuntimeClient
) -> None:
    cases = [
        ("/v1/sandboxes", DEEP, 400, "InvalidRequest"),
        ("/v1/sandboxes", b'{"id": "x", "env": ' + b"[" * 100_000, 400, "InvalidRequest"),
        ("/v1/sandboxes", b"{" + b" " * LIMIT + b"}", 413, "PayloadTooLarge"),
        ("/v1/sandboxes/x/stop", DEEP, 400, "InvalidRequest"),
    ]
    for path, body, status, word in cases:
        async with control.post("http://rt" + path, data=body) as r:
            assert r.status == status, await r.text()
            assert r.content_type == "application/json"
            assert (await r.json())["error"] == word
    info = await client.info()  # still serving
    assert info.sandboxes == 0


async def test_the_limits_follow_the_flags(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    runtime = start_runtime(tmp_path, "small", "--max-body-bytes", "2Ki", "--max-json-depth", "8")
    try:
        async with RuntimeClient(runtime.socket) as client:
            await create(client, "namespace")
            assert (await call(runtime, http, json_string(2048)))[0] == 200
            await assert_problem(
                await call(runtime, http, json_string(2049)), 413, "payload-too-large"
            )
            assert (await call(runtime, http, b"[" * 8 + b"]" * 8))[0] == 200
            await assert_problem(
                await call(runtime, http, b"[" * 9 + b"]" * 9), 400, "json-too-deep"
            )
            await assert_alive(client, 2)
    finally:
        stop_runtime(runtime)


def test_the_runtime_reads_the_gateways_limit_settings() -> None:
    keyed = {"NEST_DATAPLANE_KEY_FILE": "/k"}
    assert parse_config([], keyed).limits == limits.DEFAULT_LIMITS
    env = {**keyed, "NEST_MAX_BODY_BYTES": "1Mi", "NEST_MAX_JSON_DEPTH": "32"}
    assert parse_config([], env).limits == limits.BodyLimits(1024 * 1024, 32)
    flagged = parse_config(["--max-body-bytes", "100", "--max-json-depth", "3"], env)
    assert flagged.limits == limits.BodyLimits(100, 3)
