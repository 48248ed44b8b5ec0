"""The invoke benchmark's report (bench.invoke.summarise) and its wrk driver (bench.loadgen)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.invoke import BODY, Round, summarise
from bench.loadgen import Measured, _lua_string, wrk, wrk_path


def _round(p50_ms: float, rps: float, loadgen_cpu: float = 0.2, target_cpu: float = 0.9) -> Round:
    seconds = 2.0
    latency = Measured("wrk", 100, seconds, p50_ms / 1000, 2 * p50_ms / 1000, 0.1)
    throughput = Measured("wrk", int(rps * seconds), seconds, 0.001, 0.002, loadgen_cpu * seconds)
    return Round(latency, throughput, target_cpu * seconds)


ROUNDS = {
    "bare": [_round(0.20, 10_000), _round(0.25, 8_000)],
    "namespace": [_round(0.25, 8_500), _round(0.24, 6_000)],
    "subprocess": [_round(0.32, 5_000), _round(0.40, 4_000, loadgen_cpu=0.3)],
}


def test_best_rounds_ratios_and_their_spread() -> None:
    report = summarise(ROUNDS, "wrk", True, (1.0, 2.0))
    assert report.baselines == {"bare_rps": 10_000, "bare_p50_ms": 0.2, "bare_p99_ms": 0.4}
    r, q = report.results, report.ratios
    assert r["namespace_rps"] == 8_500 and q["namespace_rps_over_bare"] == 0.85
    assert q["namespace_rps_over_bare_min"] == 0.75 and q["namespace_rps_over_bare_max"] == 0.85
    assert r["subprocess_p50_overhead_ms"] == pytest.approx(0.12)  # best p50 over best p50
    assert r["subprocess_p50_overhead_ms_min"] == pytest.approx(0.12)
    assert r["subprocess_p50_overhead_ms_max"] == pytest.approx(0.15)
    assert r["subprocess_p50_over_namespace_ms"] == pytest.approx(0.08)


def test_the_load_generator_and_the_targets_cpu_are_reported() -> None:
    r = summarise(ROUNDS, "wrk", True, (1.0, 2.0)).results
    assert r["loadgen_cpu_share"] == pytest.approx(0.3)  # its busiest run
    assert r["bare_target_cpu_share"] == pytest.approx(0.9)
    assert r["bare_cpu_us_per_request"] == pytest.approx(0.9 * 2 / 20_000 * 1e6)
    assert (r["loadgen_wrk"], r["pinned"], r["load_average_end"]) == (1.0, 1.0, 2.0)
    fallback = summarise(ROUNDS, "python", False, (1.0, 2.0)).results
    assert (fallback["loadgen_wrk"], fallback["pinned"]) == (0.0, 0.0)


def test_a_body_becomes_a_lua_string_of_decimal_escapes() -> None:
    assert _lua_string(b'{"a"}\n\\') == '"\\123\\34\\97\\34\\125\\10\\92"'


@pytest.mark.skipif(wrk_path() is None, reason="wrk is not installed")
def test_wrk_drives_the_bare_server_and_reports_its_own_cpu() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", "--serve-bare"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = json.loads(server.stdout.readline())["data_port"]
        found = wrk("127.0.0.1", port, "/invoke", BODY, 2, 1)
        assert found.tool == "wrk" and found.requests > 0
        assert 0 < found.p50_s <= found.p99_s
        assert found.loadgen_cpu_s > 0
        with pytest.raises(RuntimeError, match="requests failed"):  # a 404 for every request
            wrk("127.0.0.1", port, "/nowhere", BODY, 1, 1)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()
