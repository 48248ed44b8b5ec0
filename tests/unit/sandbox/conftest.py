"""A real runtime daemon process per test, driven over its real socket and port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
import pytest

from sandbox.client import RuntimeClient


@dataclass
class RuntimeProcess:
    proc: subprocess.Popen[str]
    socket: str
    base_url: str
    trace_dir: Path


def start_runtime(tmp_path: Path, name: str = "rt") -> RuntimeProcess:
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir(exist_ok=True)
    socket = str(tmp_path / f"{name}.sock")
    env = {**os.environ, "NEST_RUNTIME_SOCKET": socket, "NEST_TRACE_DIR": str(trace_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.runtime", "--port", "0", "--log-level", "WARNING"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the runtime prints one JSON line once it listens
    assert line, "runtime exited before it was ready"
    port = json.loads(line)["data_port"]
    return RuntimeProcess(proc, socket, f"http://127.0.0.1:{port}", trace_dir)


def stop_runtime(runtime: RuntimeProcess) -> None:
    descendants = psutil.Process(runtime.proc.pid).children(recursive=True)
    runtime.proc.terminate()
    runtime.proc.wait(timeout=30)
    assert runtime.proc.stdout is not None
    runtime.proc.stdout.close()
    _gone, alive = psutil.wait_procs(descendants, timeout=10)
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
