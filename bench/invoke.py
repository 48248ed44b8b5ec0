"""invoke: throughput and latency through the runtime's HTTP data plane vs a bare aiohttp handler.

Why: the runtime must add little to what any aiohttp service would cost. The same handler, the
same load generator and the same machine serve three targets in one run: a bare aiohttp app
(baseline), a namespace sandbox and a subprocess sandbox behind the runtime. Latency (p50) is
measured with one connection, throughput with several; the three targets are measured in
interleaved rounds and the best round of each is reported. Requests to the runtime carry the
data-plane signature (the runtime verifies every one), as the gateway's do in production.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from bench.common import HELLO, Report, ms, percentile
from bench.loadgen import Load, drive
from sandbox import dataplane_auth as auth
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


def _signed(keys: auth.KeyRing | None, path: str) -> dict[str, str] | None:
    return None if keys is None else keys.headers("POST", path, BODY)


async def _measure(
    port: int, path: str, seconds: float, concurrency: int, keys: auth.KeyRing | None
) -> tuple[Load, Load]:
    latency = await drive(HOST, port, path, BODY, 1, seconds, _signed(keys, path))
    throughput = await drive(HOST, port, path, BODY, concurrency, seconds, _signed(keys, path))
    return latency, throughput


def _best(runs: list[tuple[Load, Load]]) -> tuple[list[float], float]:
    """The round with the lowest p50 and the round with the highest throughput."""
    latencies = min((r[0].latencies for r in runs), key=lambda xs: percentile(xs, 50))
    return latencies, max(r[1].rps for r in runs)


async def run(seconds: float = 2.0, concurrency: int = 8, rounds: int = 3) -> Report:
    env = dict(os.environ)
    targets: dict[str, list[tuple[Load, Load]]] = {"direct": [], "namespace": [], "subprocess": []}
    with tempfile.TemporaryDirectory() as tmp:
        socket_path = os.path.join(tmp, "rt.sock")
        key_file = os.path.join(tmp, "dataplane.key")
        keys = auth.KeyRing({auth.SIGNING_NAME: auth.write_key_file(key_file)})
        argv = [sys.executable, "-m", "sandbox.runtime", "--socket", socket_path, "--port", "0",
                "--dataplane-key-file", key_file]  # fmt: skip
        bare, bare_port = _start([sys.executable, "-m", "bench.loadgen", "--serve-bare"], env)
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
            paths = {
                "direct": (bare_port, "/invoke", None),
                "namespace": (port, "/v1/sandboxes/namespace/invoke", keys),
                "subprocess": (port, "/v1/sandboxes/subprocess/invoke", keys),
            }
            for target_port, path, signer in paths.values():
                await drive(HOST, target_port, path, BODY, concurrency, 0.5,
                            _signed(signer, path))  # warm-up  # fmt: skip
            # Interleaved rounds, best of each: a noisy neighbour then hurts all targets alike.
            for _ in range(rounds):
                for name, (target_port, path, signer) in paths.items():
                    load = await _measure(target_port, path, seconds, concurrency, signer)
                    targets[name].append(load)
        finally:
            _stop(runtime)
            _stop(bare)
    direct_lat, direct_rps = _best(targets["direct"])
    ns_lat, ns_rps = _best(targets["namespace"])
    sp_lat, sp_rps = _best(targets["subprocess"])
    report = Report("invoke")
    report.results = {
        "namespace_rps": ns_rps,
        "subprocess_rps": sp_rps,
        "namespace_p50_ms": ms(percentile(ns_lat, 50)),
        "subprocess_p50_ms": ms(percentile(sp_lat, 50)),
        "namespace_p99_ms": ms(percentile(ns_lat, 99)),
        "subprocess_p99_ms": ms(percentile(sp_lat, 99)),
    }
    report.baselines = {
        "direct_rps": direct_rps,
        "direct_p50_ms": ms(percentile(direct_lat, 50)),
        "direct_p99_ms": ms(percentile(direct_lat, 99)),
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
