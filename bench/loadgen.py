"""Load generators for the HTTP benches, and the bare aiohttp server they are compared with.

Why wrk first: on a 2-core machine the load generator competes with the server for CPU, and a
Python generator costs about as much per request as the server does, which flattens every
ratio towards 1 and lets the machine's noise decide them. wrk (C, epoll) costs a few µs per
request, so `wrk()` runs it in its own process, optionally pinned to its own core, and reports
the CPU it used (the kernel's rusage of the process, from wait4), so a bench can show that the
generator was not the bottleneck: well under a core while the target saturates its own.

The Python generator (`drive`, `_worker`, `encode_request`) stays: bench.gateway drives pods
and the gateway with it from inside its cluster harness, and `measure()` falls back to it when
wrk is not installed (`Measured.tool` says which ran; the invoke bench says so loudly). It
writes pre-encoded requests on raw asyncio streams and parses only the status line and
Content-Length.

`python -m bench.loadgen --serve-bare` runs the baseline: a bare aiohttp handler doing the same
work as the runtime's path (decode JSON, call the example handler, encode JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from bench.common import percentile

# wrk's Lua hooks: the body and method of every request, and one JSON line at the end with
# what this module reads (latency in µs from wrk's own histogram, errors of every kind).
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{{"wrk":1,"requests":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,"errors":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class Measured:
    """One run of a load generator against one target."""

    tool: str  # "wrk" or "python"
    requests: int
    seconds: float
    p50_s: float
    p99_s: float
    loadgen_cpu_s: float  # CPU time (user + system) the generator itself used

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def loadgen_cpu_share(self) -> float:
        """The generator's CPU over the run's wall time, in cores (1.0: one core saturated)."""
        return self.loadgen_cpu_s / self.seconds


def wrk_path() -> str | None:
    return shutil.which("wrk")


def encode_request(
    host: str, port: int, path: str, body: bytes, headers: Mapping[str, str] | None = None
) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def pinned(cpus: Collection[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins a child (and whatever it forks) to `cpus`; None: no pinning."""
    if not cpus:
        return None
    chosen = set(cpus)
    return lambda: os.sched_setaffinity(0, chosen)


def _lua_string(body: bytes) -> str:
    # Lua's decimal escapes take any byte: no quoting rule of the body's own can break out.
    return '"' + "".join(f"\\{byte}" for byte in body) + '"'


def wrk(
    host: str, port: int, path: str, body: bytes, connections: int, seconds: int,
    headers: Mapping[str, str] | None = None, cpus: Collection[int] | None = None,
) -> Measured:  # fmt: skip
    """One wrk run (one thread, `connections` keep-alive connections, `seconds` long); raises
    RuntimeError when wrk fails or any request failed (a non-2xx answer, a reset, a timeout)."""
    binary = wrk_path()
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="nest-wrk-") as tmp:
        script = os.path.join(tmp, "post.lua")
        with open(script, "w") as f:
            f.write(_WRK_SCRIPT.format(body=_lua_string(body)))
        argv = [binary, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script,
                "-H", "Content-Type: application/json"]  # fmt: skip
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}: {value}"]
        argv.append(f"http://{host}:{port}{path}")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, preexec_fn=pinned(cpus))
        assert proc.stdout is not None
        with proc.stdout:
            out = proc.stdout.read()
        # wait4, not wait: the kernel's account of the CPU wrk used, all its threads included.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    line = next((x for x in out.splitlines() if x.startswith('{"wrk"')), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {out[-500:]}")
    found = json.loads(line)
    if found["errors"]:
        raise RuntimeError(f"{found['errors']} of {found['requests']} requests failed: {out}")
    return Measured(
        "wrk", found["requests"], found["duration_us"] / 1e6, found["p50_us"] / 1e6,
        found["p99_us"] / 1e6, usage.ru_utime + usage.ru_stime,
    )  # fmt: skip


async def _worker(
    host: str, port: int, request: bytes, until: float, latencies: list[float]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (started := time.perf_counter()) < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response: {head[:80]!r}")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def drive(
    host: str, port: int, path: str, body: bytes, concurrency: int, seconds: float,
    headers: Mapping[str, str] | None = None,
) -> Load:  # fmt: skip
    """`headers` are sent with every request: a data-plane signature is made once per drive
    (valid for its window), and the runtime still verifies it on every request."""
    request = encode_request(host, port, path, body, headers)
    latencies: list[float] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(
        *(_worker(host, port, request, until, latencies) for _ in range(concurrency))
    )
    return Load(len(latencies), time.perf_counter() - started, latencies)


async def measure(
    host: str, port: int, path: str, body: bytes, connections: int, seconds: int,
    headers: Mapping[str, str] | None = None, cpus: Collection[int] | None = None,
) -> Measured:  # fmt: skip
    """wrk when it is installed (pinned to `cpus`), else the Python generator in this process
    (unpinned: pinning the bench's own process would outlive the bench)."""
    if wrk_path() is not None:
        return await asyncio.to_thread(
            wrk, host, port, path, body, connections, seconds, headers, cpus
        )
    cpu = time.process_time()
    load = await drive(host, port, path, body, connections, seconds, headers)
    return Measured(
        "python", load.requests, load.seconds, percentile(load.latencies, 50),
        percentile(load.latencies, 99), time.process_time() - cpu,
    )  # fmt: skip


def serve_bare() -> None:
    from aiohttp import web

    from bench.common import HELLO

    sys.path.insert(0, HELLO)
    from main import async_noop

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        event = json.loads(body) if body else None
        result = await async_noop(event, None)
        return web.Response(
            body=json.dumps(result, separators=(",", ":")).encode(),
            content_type="application/json",
        )

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/invoke", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(json.dumps({"data_port": runner.addresses[0][1]}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve-bare", action="store_true")
    if parser.parse_args().serve_bare:
        serve_bare()
