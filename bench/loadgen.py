"""A small HTTP/1.1 keep-alive load generator, and the bare aiohttp server it is compared with.

Why not aiohttp's client: on a 2-core machine the load generator competes with the server for
CPU, and aiohttp's client costs more per request than a server does, which would flatten every
ratio towards 1. This client writes pre-encoded requests on raw asyncio streams and parses only
the status line and Content-Length. The same generator drives the baseline and the runtime.

`python -m bench.loadgen --serve-bare` runs the baseline: a bare aiohttp handler doing the same
work as the runtime's path (decode JSON, call the example handler, encode JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def encode_request(
    host: str, port: int, path: str, body: bytes, headers: Mapping[str, str] | None = None
) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


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
