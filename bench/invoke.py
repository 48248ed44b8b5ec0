"""invoke: throughput and latency through the runtime's HTTP data plane vs a bare aiohttp handler.

Why: the runtime must add little to what any aiohttp service would cost (DESIGN.md: namespace
at least 0.8x the bare handler's throughput, subprocess p50 at most 0.1 ms over it). The same
handler, the same load generator and the same machine serve three targets in one run: a bare
aiohttp app (the baseline, and the generator's calibration: the fastest target it drives), a
namespace sandbox and a subprocess sandbox behind the runtime. Requests to the runtime carry
the data-plane signature (the runtime verifies every one), as the gateway's do in production.

How, so that the figures are the target's and not the generator's or the neighbours':
- the generator is wrk (bench.loadgen), one thread; on a machine with two cores or more it is
  pinned to one core and every target (the runtime with its zygote and sandbox processes) to
  another, so a target is one core's worth of server, as a pool pod's runtime is;
- each throughput run reports the generator's own CPU (`loadgen_cpu_share`, in cores) and the
  target's (`*_target_cpu_share`): a generator well under one core while the target is near
  one means the target is the bottleneck;
- latency (p50, p99) with one connection, throughput with CONCURRENCY; the targets are
  measured in interleaved rounds and the best round of each is reported, with the spread of
  the per-round figures (`*_min`, `*_max`) and the machine's load average, so a noisy
  neighbour shows as spread rather than hiding in one number.
Without wrk the Python generator runs instead, in this process and unpinned; the bench says
so on stderr and `results.loadgen_wrk` is 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from bench.common import HELLO, Report, ms
from bench.loadgen import Measured, measure, pinned, wrk_path
from sandbox import dataplane_auth as auth
from sandbox.api import CreateSandbox, LimitsModel
from sandbox.client import RuntimeClient

BODY = b'{"name": "bench"}'
HOST = "127.0.0.1"
SECONDS = 3
CONCURRENCY = 8
ROUNDS = 3
TARGETS = ("bare", "namespace", "subprocess")
Signer = Callable[[], dict[str, str] | None]  # a run's headers: signed just before it starts


def _unsigned() -> None:
    return None  # the bare server verifies nothing


@dataclass(frozen=True)
class Round:
    """One target's latency and throughput runs, and its CPU share during the latter."""

    latency: Measured
    throughput: Measured
    target_cpu_s: float  # the target's CPU (every process of it) during the throughput run

    @property
    def target_cpu_share(self) -> float:
        return self.target_cpu_s / self.throughput.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return self.target_cpu_s / self.throughput.requests * 1e6


def _note(text: str) -> None:
    print(f"bench invoke: {text}", file=sys.stderr, flush=True)


def _cores() -> tuple[set[int] | None, set[int] | None]:
    """(the generator's core, the targets' core), or no pinning on a single core."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return {cores[0]}, {cores[-1]}


def _start(argv: list[str], cpus: set[int] | None) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, preexec_fn=pinned(cpus))
    assert proc.stdout is not None
    return proc, int(json.loads(proc.stdout.readline())["data_port"])


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


def _cpu_seconds(pid: int) -> float:
    """CPU used so far by a process and every live descendant (the runtime's sandboxes)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue  # ended meanwhile
        total += times.user + times.system
    return total


def _best(rounds: list[Round]) -> tuple[Round, Round]:
    """The round with the lowest p50 and the round with the highest throughput."""
    fastest = min(rounds, key=lambda r: r.latency.p50_s)
    busiest = max(rounds, key=lambda r: r.throughput.rps)
    return fastest, busiest


def summarise(
    rounds: dict[str, list[Round]], tool: str, pinned_cores: bool, load: tuple[float, float]
) -> Report:
    """The report of measured rounds (pure: tested without a process)."""
    best = {name: _best(runs) for name, runs in rounds.items()}
    report = Report("invoke")
    base_lat, base_rps = best["bare"]
    report.baselines = {
        "bare_rps": base_rps.throughput.rps,
        "bare_p50_ms": ms(base_lat.latency.p50_s),
        "bare_p99_ms": ms(base_lat.latency.p99_s),
    }
    results: dict[str, float] = {}
    ratios: dict[str, float] = {}
    for name in ("namespace", "subprocess"):
        lat, rps = best[name]
        results[f"{name}_rps"] = rps.throughput.rps
        results[f"{name}_p50_ms"] = ms(lat.latency.p50_s)
        results[f"{name}_p99_ms"] = ms(lat.latency.p99_s)
        results[f"{name}_p50_overhead_ms"] = ms(lat.latency.p50_s - base_lat.latency.p50_s)
        ratios[f"{name}_rps_over_bare"] = rps.throughput.rps / base_rps.throughput.rps
        # Round by round (round i of every target ran back to back): the spread.
        paired = list(zip(rounds[name], rounds["bare"], strict=True))
        per_round = [r.throughput.rps / b.throughput.rps for r, b in paired]
        ratios[f"{name}_rps_over_bare_min"] = min(per_round)
        ratios[f"{name}_rps_over_bare_max"] = max(per_round)
        overheads = [ms(r.latency.p50_s - b.latency.p50_s) for r, b in paired]
        results[f"{name}_p50_overhead_ms_min"] = min(overheads)
        results[f"{name}_p50_overhead_ms_max"] = max(overheads)
    results["subprocess_p50_over_namespace_ms"] = (
        results["subprocess_p50_ms"] - results["namespace_p50_ms"]
    )
    every = [r for runs in rounds.values() for r in runs]
    # The generator's CPU, in cores, at its busiest (throughput runs: it sends the most then).
    results["loadgen_cpu_share"] = max(r.throughput.loadgen_cpu_share for r in every)
    results["loadgen_cpu_share_bare"] = best["bare"][1].throughput.loadgen_cpu_share
    for name in TARGETS:
        results[f"{name}_target_cpu_share"] = best[name][1].target_cpu_share
        # CPU per request (the best of the rounds) is what a busy machine disturbs least.
        results[f"{name}_cpu_us_per_request"] = min(r.cpu_us_per_request for r in rounds[name])
    results["loadgen_wrk"] = 1.0 if tool == "wrk" else 0.0
    results["pinned"] = 1.0 if pinned_cores else 0.0
    results["load_average_start"], results["load_average_end"] = load
    report.results = results
    report.ratios = ratios
    return report


async def _round(
    pid: int, port: int, path: str, sign: Signer,
    cpus: set[int] | None, seconds: int,
) -> Round:  # fmt: skip
    latency = await measure(HOST, port, path, BODY, 1, seconds, sign(), cpus)
    before = _cpu_seconds(pid)
    throughput = await measure(HOST, port, path, BODY, CONCURRENCY, seconds, sign(), cpus)
    return Round(latency, throughput, _cpu_seconds(pid) - before)


async def run(seconds: int = SECONDS, rounds: int = ROUNDS) -> Report:
    loadgen_cpus, target_cpus = _cores()
    tool = "wrk" if wrk_path() is not None else "python"
    if tool == "python":
        _note("wrk is NOT installed (apt-get install wrk): falling back to the Python load "
              "generator, in this process and unpinned; it may be the bottleneck")  # fmt: skip
    if target_cpus is not None:
        _note(f"pinned: load generator to CPU {sorted(loadgen_cpus or ())}, targets (runtime, "
              f"zygote, sandboxes, bare server) to CPU {sorted(target_cpus)}")  # fmt: skip
    load_start = os.getloadavg()[0]
    measured: dict[str, list[Round]] = {name: [] for name in TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        socket_path = os.path.join(tmp, "rt.sock")
        key_file = os.path.join(tmp, "dataplane.key")
        keys = auth.KeyRing({auth.SIGNING_NAME: auth.write_key_file(key_file)})
        argv = [sys.executable, "-m", "sandbox.runtime", "--socket", socket_path, "--port", "0",
                "--dataplane-key-file", key_file, "--log-level", "WARNING"]  # fmt: skip
        bare, bare_port = _start([sys.executable, "-m", "bench.loadgen", "--serve-bare"],
                                 target_cpus)  # fmt: skip
        runtime, port = _start(argv, target_cpus)
        try:
            async with RuntimeClient(socket_path) as client:
                for isolation in ("namespace", "subprocess"):
                    await client.create(
                        CreateSandbox(
                            id=isolation,
                            code_dir=HELLO,
                            handler="main:async_noop",
                            isolation=isolation,
                            limits=LimitsModel(concurrency=CONCURRENCY),
                        )
                    )

            def signer(path: str) -> Signer:
                # Signed just before each run: a signature holds for auth.MAX_SKEW_SECONDS.
                return lambda: keys.headers("POST", path, BODY)

            targets: dict[str, tuple[int, int, str, Signer]] = {
                "bare": (bare.pid, bare_port, "/invoke", _unsigned),
                "namespace": (runtime.pid, port, "/v1/sandboxes/namespace/invoke",
                              signer("/v1/sandboxes/namespace/invoke")),
                "subprocess": (runtime.pid, port, "/v1/sandboxes/subprocess/invoke",
                               signer("/v1/sandboxes/subprocess/invoke")),
            }  # fmt: skip
            for _, target_port, path, sign in targets.values():  # warm-up
                await measure(HOST, target_port, path, BODY, CONCURRENCY, 1, sign(), loadgen_cpus)
            # Interleaved rounds, best of each: a noisy neighbour then hurts all targets alike.
            for _ in range(rounds):
                for name, (pid, target_port, path, sign) in targets.items():
                    found = await _round(pid, target_port, path, sign, loadgen_cpus, seconds)
                    measured[name].append(found)
        finally:
            _stop(runtime)
            _stop(bare)
    load = (load_start, os.getloadavg()[0])
    _note(f"load average (1 min) {load[0]:.2f} at the start, {load[1]:.2f} at the end")
    return summarise(measured, tool, target_cpus is not None, load)
