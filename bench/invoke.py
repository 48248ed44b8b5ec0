"""invoke: throughput and latency through the runtime's HTTP data plane vs a bare aiohttp handler.

Why: the runtime must add little to what any aiohttp service would cost. The same handler, the
same load generator and the same machine serve three targets in one run: a bare aiohttp app
(baseline), a namespace sandbox and a subprocess sandbox behind the runtime. Latency (p50) is
measured with one connection, throughput with several.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from bench.common import HELLO, Report, ms, percentile
from bench.loadgen import Load, drive
from sandbox.api import CreateSandbox, LimitsModel
from sandbox.client import RuntimeClient

BODY = b'{"name": "bench"}'
HOST = "127.0.0.1"


def _start(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(json.loads(proc.stdout.readline())["data_port"])


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


async def _measure(port: int, path: str, seconds: float, concurrency: int) -> tuple[Load, Load]:
    await drive(HOST, port, path, BODY, 1, 0.5)  # warm-up
    latency = await drive(HOST, port, path, BODY, 1, seconds)
    throughput = await drive(HOST, port, path, BODY, concurrency, seconds)
    return latency, throughput


async def run(seconds: float = 3.0, concurrency: int = 8) -> Report:
    env = dict(os.environ)
    bare, bare_port = _start([sys.executable, "-m", "bench.loadgen", "--serve-bare"], env)
    try:
        direct = await _measure(bare_port, "/invoke", seconds, concurrency)
    finally:
        _stop(bare)
    with tempfile.TemporaryDirectory() as tmp:
        socket_path = os.path.join(tmp, "rt.sock")
        argv = [sys.executable, "-m", "sandbox.runtime", "--socket", socket_path, "--port", "0"]
        runtime, port = _start([*argv, "--log-level", "WARNING"], env)
        try:
            async with RuntimeClient(socket_path) as client:
                for isolation in ("namespace", "subprocess"):
                    await client.create(
                        CreateSandbox(
                            id=isolation,
                            code_dir=HELLO,
                            handler="main:async_noop",
                            isolation=isolation,
                            limits=LimitsModel(concurrency=concurrency),
                        )
                    )
            ns = await _measure(port, "/v1/sandboxes/namespace/invoke", seconds, concurrency)
            sp = await _measure(port, "/v1/sandboxes/subprocess/invoke", seconds, concurrency)
        finally:
            _stop(runtime)
    report = Report("invoke")
    report.results = {
        "namespace_rps": ns[1].rps,
        "subprocess_rps": sp[1].rps,
        "namespace_p50_ms": ms(percentile(ns[0].latencies, 50)),
        "subprocess_p50_ms": ms(percentile(sp[0].latencies, 50)),
        "namespace_p99_ms": ms(percentile(ns[0].latencies, 99)),
        "subprocess_p99_ms": ms(percentile(sp[0].latencies, 99)),
    }
    report.baselines = {
        "direct_rps": direct[1].rps,
        "direct_p50_ms": ms(percentile(direct[0].latencies, 50)),
        "direct_p99_ms": ms(percentile(direct[0].latencies, 99)),
    }
    report.ratios = {
        "namespace_rps_over_direct": report.results["namespace_rps"]
        / report.baselines["direct_rps"],
        "subprocess_rps_over_direct": report.results["subprocess_rps"]
        / report.baselines["direct_rps"],
        "namespace_p50_overhead_ms": report.results["namespace_p50_ms"]
        - report.baselines["direct_p50_ms"],
        "subprocess_p50_overhead_ms": report.results["subprocess_p50_ms"]
        - report.baselines["direct_p50_ms"],
    }
    return report
