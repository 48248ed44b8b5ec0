"""A real runtime daemon process per test, driven over its real socket and port.

Each runtime gets a data-plane key of its own (a 0400 file in the test's directory), and
`RuntimeProcess.request` signs what the tests send to its data plane, as the gateway does.
"""

from __future__ import annotations

import json as jsonlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from sandbox import dataplane_auth as auth
from sandbox.client import RuntimeClient


@dataclass
class RuntimeProcess:
    proc: subprocess.Popen[str]
    socket: str
    base_url: str
    trace_dir: Path
    keys: auth.KeyRing
    scratch: str

    def request(
        self,
        http: aiohttp.ClientSession,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        signed: bool = True,
    ) -> Any:
        """`http.request` to the data plane (use with `async with`), signed unless told not to."""
        body = data if data is not None else b"" if json is None else jsonlib.dumps(json).encode()
        sent = {"Content-Type": "application/json"} if json is not None else {}
        sent.update(headers or {})
        if signed:
            sent.update(self.keys.headers(method, path, body))
        return http.request(method, self.base_url + path, data=body, headers=sent)


def start_runtime(tmp_path: Path, name: str = "rt", *extra: str) -> RuntimeProcess:
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir(exist_ok=True)
    socket = str(tmp_path / f"{name}.sock")
    key_file = tmp_path / "dataplane.key"
    if not key_file.exists():  # a restarted runtime of the same test keeps the key
        auth.write_key_file(key_file)
    # Reachable by the sandboxes' uids (a test's tmp_path is not), so not under tmp_path.
    scratch = tempfile.mkdtemp(prefix="nest-test-scratch-")
    env = {
        **os.environ,
        "NEST_RUNTIME_SOCKET": socket,
        "NEST_TRACE_DIR": str(trace_dir),
        auth.ENV_KEY_FILE: str(key_file),
        # Not the pool pods' uids (the default range) nor their scratch: the local cluster's
        # sandboxes run on this host meanwhile.
        "NEST_SANDBOX_UIDS": "250000-259999",
        "NEST_SCRATCH_DIR": scratch,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.runtime", "--port", "0", "--log-level", "WARNING", *extra],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the runtime prints one JSON line once it listens
    assert line, "runtime exited before it was ready"
    port = jsonlib.loads(line)["data_port"]
    url = f"http://127.0.0.1:{port}"
    return RuntimeProcess(proc, socket, url, trace_dir, auth.load(key_file), scratch)


def stop_runtime(runtime: RuntimeProcess) -> None:
    descendants = psutil.Process(runtime.proc.pid).children(recursive=True)
    runtime.proc.terminate()
    runtime.proc.wait(timeout=30)
    assert runtime.proc.stdout is not None
    runtime.proc.stdout.close()
    _gone, alive = psutil.wait_procs(descendants, timeout=10)
    shutil.rmtree(runtime.scratch, ignore_errors=True)
    assert alive == [], f"runtime left processes behind: {alive}"


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[RuntimeProcess]:
    started = start_runtime(tmp_path)
    yield started
    stop_runtime(started)


@pytest.fixture
async def client(runtime: RuntimeProcess) -> AsyncIterator[RuntimeClient]:
    async with RuntimeClient(runtime.socket) as c:
        yield c


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory subprocess sandboxes can read: they run as uids of their own, and pytest's
    tmp_path sits below 0700 directories only its owner may enter."""
    path = Path(tempfile.mkdtemp(prefix="nest-test-code-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
