"""The runtime daemon end to end: control API over its unix socket, data plane over HTTP."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
from pathlib import Path

import aiohttp
import psutil
import pytest

from sandbox.api import CreateSandbox, LimitsModel, SandboxEvent
from sandbox.client import RuntimeClient
from sandbox.errors import CreateFailed, SandboxExistsError, SandboxNotFoundError
from tests.conformance.support import HELLO, wait_for, write_function
from tests.unit.sandbox.conftest import RuntimeProcess, start_runtime, stop_runtime

ISOLATIONS = pytest.mark.parametrize("isolation", ["namespace", "subprocess"])


def create(
    sandbox_id: str, isolation: str, handler: str = "main:handler", **kw: object
) -> CreateSandbox:
    return CreateSandbox.model_validate(
        {"id": sandbox_id, "code_dir": HELLO, "handler": handler, "isolation": isolation, **kw}
    )


@ISOLATIONS
async def test_create_invoke_get_list_stop_remove(
    runtime: RuntimeProcess,
    client: RuntimeClient,
    http: aiohttp.ClientSession,
    isolation: str,
) -> None:
    info = await client.create(create("fn-1", isolation, function_name="greeter"))
    assert (info.state, info.isolation) == ("Running", isolation)
    assert info.pid is not None and psutil.pid_exists(info.pid)
    async with runtime.request(http, "POST", "/v1/sandboxes/fn-1/invoke", json={"name": "x"}) as r:
        assert r.status == 200
        got = await r.json()
    assert (got["hello"], got["function_name"]) == ("x", "greeter")
    fetched = await client.get("fn-1")
    assert fetched.usage is not None and fetched.usage.invocations == 1
    if isolation == "subprocess":
        assert fetched.usage.memory_bytes and fetched.usage.memory_bytes > 0
    assert [s.id for s in await client.list()] == ["fn-1"]
    stopped = await client.stop("fn-1", grace_seconds=2)
    assert (stopped.state, stopped.reason) == ("Stopped", "Completed")
    async with runtime.request(http, "POST", "/v1/sandboxes/fn-1/invoke") as r:
        assert r.status == 503
        assert (await r.json())["error"] == "NotRunning"
    await client.remove("fn-1")
    with pytest.raises(SandboxNotFoundError):
        await client.get("fn-1")
    async with runtime.request(http, "POST", "/v1/sandboxes/fn-1/invoke") as r:
        assert r.status == 404


async def test_event_stream_reports_state_changes(
    runtime: RuntimeProcess, client: RuntimeClient
) -> None:
    seen: list[SandboxEvent] = []
    async with client.watch() as events:

        async def collect() -> None:
            async for event in events:
                seen.append(event)

        collector = asyncio.create_task(collect())
        await client.create(create("evt", "subprocess", handler="main:crash"))
        info = await client.info()
        url = f"http://{info.data_host}:{info.data_port}/v1/sandboxes/evt/invoke"
        body = b'{"code": 7}'
        headers = runtime.keys.headers("POST", "/v1/sandboxes/evt/invoke", body)
        async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
            assert r.status == 502
        await wait_for(lambda: len(seen) == 3, what="Creating, Running, Failed")
        collector.cancel()
    states = [(e.sandbox.id, e.sandbox.state, e.sandbox.reason) for e in seen]
    assert states == [("evt", "Creating", ""), ("evt", "Running", ""), ("evt", "Failed", "Crashed")]
    failed = seen[-1].sandbox
    assert (failed.exit_code, failed.message) == (7, "exited with code 7")


@ISOLATIONS
async def test_create_failure_is_reported_with_reason(
    client: RuntimeClient, shared_dir: Path, isolation: str
) -> None:
    code_dir = write_function(shared_dir / "fn", "import not_installed_anywhere\n")
    request = CreateSandbox.model_validate(
        {"id": "bad", "code_dir": code_dir, "handler": "main:handler", "isolation": isolation}
    )
    with pytest.raises(CreateFailed) as caught:
        await client.create(request)
    assert caught.value.error == "ImportError"
    assert "not_installed_anywhere" in caught.value.message
    listed = await client.get("bad")
    assert (listed.state, listed.reason) == ("Failed", "ImportError")
    with pytest.raises(SandboxExistsError):
        await client.create(request)


async def test_full_sandbox_answers_429(
    runtime: RuntimeProcess, client: RuntimeClient, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    limits = LimitsModel(concurrency=1, queue=0)
    await client.create(create("busy", "namespace", handler="main:gate", limits=limits))
    path = "/v1/sandboxes/busy/invoke"
    with open(gate) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        first = asyncio.create_task(runtime.request(http, "POST", path, json={"gate": str(gate)}))

        async def in_flight() -> bool:
            usage = (await client.get("busy")).usage
            return usage is not None and usage.in_flight == 1

        await wait_for(in_flight, what="first call in flight")
        async with runtime.request(http, "POST", path, json={"gate": str(gate)}) as r:
            assert r.status == 429
            assert (await r.json())["error"] == "TooManyRequests"
        fcntl.flock(held, fcntl.LOCK_UN)
        response = await first
        assert response.status == 200
        response.release()


async def test_http_trigger_passes_the_request_through(
    runtime: RuntimeProcess, client: RuntimeClient, http: aiohttp.ClientSession
) -> None:
    await client.create(create("web", "subprocess"))
    path = "/v1/sandboxes/web/http/users/42?verbose=1"
    body = b'{"name": "z"}'
    async with runtime.request(http, "PUT", path, data=body, headers={"X-Trace": "t"}) as r:
        got = await r.json()
    assert (got["method"], got["path"], got["query"], got["hello"]) == (
        "PUT",
        "/users/42",
        {"verbose": "1"},
        "z",
    )


async def test_timeout_answers_504_and_is_reported_for_the_sidecar_to_restart(
    runtime: RuntimeProcess, client: RuntimeClient, http: aiohttp.ClientSession
) -> None:
    limits = LimitsModel(timeout_seconds=0.3)
    await client.create(create("slow", "subprocess", handler="main:slow", limits=limits))
    async with runtime.request(
        http, "POST", "/v1/sandboxes/slow/invoke", json={"seconds": 30}
    ) as r:
        assert r.status == 504

    async def reported() -> bool:
        found = await client.get("slow")
        return (found.state, found.reason) == ("Failed", "Timeout")

    await wait_for(reported, what="Failed with reason Timeout (the runtime never restarts)")


async def test_metrics_and_healthz(
    runtime: RuntimeProcess, client: RuntimeClient, http: aiohttp.ClientSession
) -> None:
    await client.create(create("m", "subprocess"))
    async with runtime.request(http, "POST", "/v1/sandboxes/m/invoke", json={"raise": "x"}) as r:
        assert r.status == 500
        assert await r.json() == {"error": "ValueError", "message": "x"}
    async with http.get(f"{runtime.base_url}/healthz") as r:
        assert r.status == 200
    async with runtime.request(http, "GET", "/metrics") as r:
        text = await r.text()
    for line in (
        'nest_sandbox_invocations_total{sandbox="m"} 1.0',
        'nest_sandbox_errors_total{sandbox="m"} 1.0',
        'nest_sandbox_in_flight{sandbox="m"} 0.0',
        'nest_sandbox_invoke_seconds_count{sandbox="m"} 1.0',
        'nest_sandbox_cold_start_seconds_count{isolation="subprocess"} 1.0',
    ):
        assert line in text
    assert 'nest_sandbox_memory_bytes{sandbox="m"}' in text


async def test_restarted_runtime_reports_nothing(tmp_path: Path) -> None:
    first = start_runtime(tmp_path, "crashing")
    async with RuntimeClient(first.socket) as client:
        info = await client.create(create("s", "subprocess"))
    assert info.pid is not None
    sandbox = psutil.Process(info.pid)
    os.kill(first.proc.pid, signal.SIGKILL)  # the runtime dies without cleaning up
    first.proc.wait(timeout=10)
    assert first.proc.stdout is not None
    first.proc.stdout.close()
    sandbox.wait(timeout=10)  # PDEATHSIG: its sandboxes go with it (reaped by init)
    second = start_runtime(tmp_path, "crashing")  # same socket path, stale file left behind
    try:
        async with RuntimeClient(second.socket) as client:
            assert await client.list() == []
            assert (await client.info()).sandboxes == 0
    finally:
        stop_runtime(second)


def test_help_mentions_every_setting() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "sandbox.runtime", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for word in ("NEST_RUNTIME_SOCKET", "NEST_RUNTIME_HOST", "POD_IP", "NEST_RUNTIME_PORT"):
        assert word in out.stdout
