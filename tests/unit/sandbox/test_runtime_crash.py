"""The runtime daemon after namespace code killed it: it names the culprit, cleans up, and keeps
its event loop free of slow imports (issue 10, items 7 and 8)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from sandbox.api import CreateSandbox, LimitsModel
from sandbox.client import RuntimeClient
from sandbox.errors import CreateFailed
from tests.conformance.support import HELLO, write_function
from tests.unit.sandbox.conftest import RuntimeProcess, start_runtime, stop_runtime


def create(sandbox_id: str, handler: str, code: str = HELLO, **limits: float) -> CreateSandbox:
    return CreateSandbox(
        id=sandbox_id,
        code_dir=code,
        handler=handler,
        isolation="namespace",
        limits=LimitsModel.model_validate(limits),
    )


def reap(runtime: RuntimeProcess) -> int:
    code = runtime.proc.wait(timeout=30)
    assert runtime.proc.stdout is not None
    runtime.proc.stdout.close()
    return code


async def test_a_namespace_sandbox_that_kills_the_runtime_is_named_by_the_next_one(
    tmp_path: Path,
) -> None:
    first = start_runtime(tmp_path, "rt")
    async with RuntimeClient(first.socket) as client:
        await client.create(create("culprit", "main:crash"))
        await client.create(create("bystander", "main:handler"))
        assert (await client.info()).last_crash is None
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):  # the process is gone mid-call
                async with first.request(
                    http, "POST", "/v1/sandboxes/culprit/invoke", json={"code": 9}
                ) as r:
                    await r.read()
    assert reap(first) == 9
    second = start_runtime(tmp_path, "rt")  # same socket, same state directory
    try:
        async with RuntimeClient(second.socket) as client:
            crash = (await client.info()).last_crash
            assert crash is not None
            assert (crash.sandboxes, crash.culprits, crash.pid) == (
                ["culprit"],
                ["culprit"],
                first.proc.pid,
            )
            with pytest.raises(CreateFailed) as refused:
                await client.create(create("culprit", "main:handler"))
            assert refused.value.error == "RuntimeCrash"
            assert (await client.create(create("bystander", "main:handler"))).state == "Running"
    finally:
        stop_runtime(second)


async def test_a_slow_import_fails_on_its_timeout_while_the_runtime_answers(
    runtime: RuntimeProcess, client: RuntimeClient, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    code = write_function(
        tmp_path / "slow",
        f"import fcntl\nwith open({str(gate)!r}) as f:\n    fcntl.flock(f, fcntl.LOCK_SH)\n",
    )
    with open(gate) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        slow = create("slow", "main:handler", code, timeout_seconds=1.0)
        creating = asyncio.create_task(client.create(slow))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{runtime.base_url}/healthz") as r:
                assert r.status == 200, "the loop answers while the import blocks"
            await client.create(create("quick", "main:handler"))
            async with runtime.request(http, "POST", "/v1/sandboxes/quick/invoke", json={}) as r:
                assert r.status == 200
        with pytest.raises(CreateFailed) as failed:
            await creating
        assert failed.value.error == "ImportTimeout"
        threads = (await client.info()).threads
        assert threads is not None and threads.overdue == 1
        fcntl.flock(held, fcntl.LOCK_UN)


def _pycaches(root: Path) -> list[Path]:
    return sorted(root.glob("nest-pycache-*"))


def test_the_bytecode_cache_of_a_dead_runtime_is_swept_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    first = start_runtime(tmp_path, "rt")
    left = _pycaches(temporary)
    assert len(left) == 1
    os.kill(first.proc.pid, signal.SIGKILL)
    reap(first)
    assert _pycaches(temporary) == left, "a killed runtime cannot clean up after itself"
    second = start_runtime(tmp_path, "rt")
    try:
        now = _pycaches(temporary)
        assert len(now) == 1 and now != left
    finally:
        stop_runtime(second)
    assert _pycaches(temporary) == [], "a clean exit removes its own"
