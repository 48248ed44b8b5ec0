"""The runtime process's own doors: a signed-only data plane and an owner-only control socket."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from sandbox import dataplane_auth as auth
from sandbox.api import CreateSandbox
from sandbox.client import RuntimeClient
from tests.conformance.support import HELLO
from tests.unit.sandbox.conftest import RuntimeProcess, start_runtime, stop_runtime

INVOKE = "/v1/sandboxes/fn/invoke"


async def create(client: RuntimeClient, sandbox_id: str = "fn") -> None:
    await client.create(
        CreateSandbox(id=sandbox_id, code_dir=HELLO, handler="main:handler", isolation="namespace")
    )


async def invocations(client: RuntimeClient, sandbox_id: str = "fn") -> int:
    usage = (await client.get(sandbox_id)).usage
    assert usage is not None
    return usage.invocations


async def refused(response: aiohttp.ClientResponse, words: str) -> None:
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == auth.CHALLENGE
    body = await response.json()
    assert body["error"] == "Unauthorized" and words in body["message"]
    assert set(body) <= {"error", "message", "sandbox"}  # the runtime's ErrorBody shape


async def test_unsigned_invoke_and_trigger_are_refused_and_never_run(
    runtime: RuntimeProcess, client: RuntimeClient, http: aiohttp.ClientSession
) -> None:
    await create(client)
    async with runtime.request(http, "POST", INVOKE, json={"name": "x"}, signed=False) as r:
        await refused(r, "missing X-Nest-Signature")
    trigger = "/v1/sandboxes/fn/http/anything"
    async with runtime.request(http, "GET", trigger, signed=False) as r:
        await refused(r, "missing X-Nest-Signature")
    assert await invocations(client) == 0
    async with runtime.request(http, "POST", INVOKE, json={"name": "x"}) as r:
        assert r.status == 200
    assert await invocations(client) == 1


async def test_wrong_key_other_sandbox_and_other_body_are_refused(
    runtime: RuntimeProcess, client: RuntimeClient, http: aiohttp.ClientSession
) -> None:
    await create(client, "fn")
    await create(client, "victim")
    body = b'{"name": "x"}'
    stranger = auth.KeyRing({"current": b"s" * 32})
    async with runtime.request(
        http, "POST", INVOKE, data=body, headers=stranger.headers("POST", INVOKE, body),
        signed=False,
    ) as r:  # fmt: skip
        await refused(r, "unknown key")
    # A genuine signature for "fn", sent to the victim, or with another event.
    mine = runtime.keys.headers("POST", INVOKE, body)
    victim = "/v1/sandboxes/victim/invoke"
    async with runtime.request(http, "POST", victim, data=body, headers=mine, signed=False) as r:
        await refused(r, "bad signature")
    other = b'{"name": "y"}'
    async with runtime.request(http, "POST", INVOKE, data=other, headers=mine, signed=False) as r:
        await refused(r, "bad signature")
    expired = {auth.HEADER: runtime.keys.sign("POST", INVOKE, body, now=1_000_000_000)}
    async with runtime.request(http, "POST", INVOKE, data=body, headers=expired, signed=False) as r:
        await refused(r, "more than 60s")
    assert await invocations(client, "fn") == await invocations(client, "victim") == 0


async def test_metrics_need_a_signature_healthz_does_not(
    runtime: RuntimeProcess, client: RuntimeClient, http: aiohttp.ClientSession
) -> None:
    await create(client)
    async with runtime.request(http, "GET", "/metrics", signed=False) as r:
        await refused(r, "missing X-Nest-Signature")
    async with runtime.request(http, "GET", "/metrics") as r:
        assert r.status == 200
        assert 'sandbox="fn"' in await r.text()
    async with runtime.request(http, "GET", "/healthz", signed=False) as r:
        assert (r.status, await r.text()) == (200, "ok")


async def test_a_key_added_to_the_directory_is_accepted_without_a_restart(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    auth.write_key_file(keys / "current")
    started = start_runtime(tmp_path, "rotating", "--dataplane-key-file", str(keys))
    try:
        async with RuntimeClient(started.socket) as client:
            await create(client)
        upcoming = auth.write_key_file(keys / "next")  # step one of a rotation
        signer = auth.KeyRing({"current": upcoming})
        body = b"{}"
        headers = signer.headers("POST", INVOKE, body)
        async with started.request(
            http, "POST", INVOKE, data=body, headers=headers, signed=False
        ) as r:
            assert r.status == 200
    finally:
        stop_runtime(started)


def test_control_socket_is_owner_only_in_an_owner_only_directory(tmp_path: Path) -> None:
    shared = tmp_path / "run"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # as a fresh emptyDir is
    path = shared / "runtime.sock"
    started = start_runtime(tmp_path, "private", "--socket", str(path))
    try:
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
        assert stat.S_IMODE(os.stat(shared).st_mode) == 0o700
    finally:
        stop_runtime(started)


def test_a_runtime_without_a_key_does_not_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEST_DATAPLANE")}
    argv = [sys.executable, "-m", "sandbox.runtime", "--port", "0",
            "--socket", str(tmp_path / "rt.sock")]  # fmt: skip
    bare = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "no data-plane key" in bare.stderr
    missing = subprocess.run(
        [*argv, "--dataplane-key-file", str(tmp_path / "absent")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1 and "cannot read the data-plane key" in missing.stderr
    assert not (tmp_path / "rt.sock").exists()


async def test_insecure_mode_serves_unsigned_requests_and_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEST_DATAPLANE")}
    socket = str(tmp_path / "rt.sock")
    argv = [sys.executable, "-m", "sandbox.runtime", "--port", "0", "--socket", socket,
            "--insecure-dataplane"]  # fmt: skip
    with open(tmp_path / "stderr", "w+") as log:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            assert line, "runtime exited before it was ready"
            port = json.loads(line)["data_port"]
            async with RuntimeClient(socket) as client:
                await create(client)
            async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{port}{INVOKE}", json={"name": "x"}
            ) as r:  # fmt: skip
                assert r.status == 200
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            proc.stdout.close()
        log.seek(0)
        assert "INSECURE DATA PLANE" in log.read()


@pytest.mark.parametrize("flag", ["--help"])
def test_help_names_the_key_settings(flag: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sandbox.runtime", flag], capture_output=True, text=True, timeout=60
    )
    for word in ("--dataplane-key-file", auth.ENV_KEY_FILE, "--insecure-dataplane"):
        assert word in out.stdout


async def test_a_runtime_that_cannot_get_the_port_leaves_the_owners_socket_alone(
    runtime: RuntimeProcess, client: RuntimeClient
) -> None:
    port = runtime.base_url.rsplit(":", 1)[1]
    env = {**os.environ, auth.ENV_KEY_FILE: str(Path(runtime.socket).parent / "dataplane.key")}
    second = subprocess.run(
        [sys.executable, "-m", "sandbox.runtime", "--port", port, "--socket", runtime.socket],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode != 0 and "address already in use" in second.stderr
    assert (await client.info()).pid == runtime.proc.pid  # the first one still answers on it
