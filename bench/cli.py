"""cli: the wall time of the common `nest` commands against `kubectl get` in the same run.

Why: a CLI that takes seconds per command is one people stop using (issue 14 measured `nest get
functions` at 1.4 s against `kubectl get sbxd` at 0.07 s). The goal is at most 3x kubectl's wall
time for `nest get` and `nest invoke`. Each round runs every command once, in turn, so load from
other work on the machine falls on the baselines and the commands alike; p50 of ROUNDS rounds.

Measured: `nest get functions` (a list), `nest get functions NAME`, `nest invoke NAME` (through
the gateway), `nest describe function NAME`, `nest --help`; baselines `kubectl get sbxd -A`,
`kubectl get sbxd NAME -n NS` and a bare interpreter (`python -c pass`, the floor of any Python
CLI).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.cluster import BenchCluster
from bench.common import HELLO, Report, ms, percentile

ROUNDS = int(os.environ.get("NEST_BENCH_CLI_ROUNDS", "10"))
FUNCTION = "hello"


def nest_argv() -> list[str]:
    """The `nest` console script users run (the venv's), else `python -m nest`."""
    script = Path(sys.executable).with_name("nest")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nest"]


def commands(kubectl: Sequence[str], namespace: str) -> dict[str, list[str]]:
    """Name → argv of every timed command; kubectl_* are the baselines."""
    nest, ns = nest_argv(), ["-n", namespace]
    return {
        "nest_get_functions": [*nest, "get", "functions", *ns],
        "nest_get_function_name": [*nest, "get", "functions", FUNCTION, *ns],
        "nest_invoke": [*nest, "invoke", FUNCTION, '{"name": "bench"}', *ns],
        "nest_describe": [*nest, "describe", "function", FUNCTION, *ns],
        "nest_help": [*nest, "--help"],
        "kubectl_get_all": [*kubectl, "get", "sbxd", "-A"],
        "kubectl_get_name": [*kubectl, "get", "sbxd", FUNCTION, "-n", namespace],
        "python_pass": [sys.executable, "-c", "pass"],
    }


def timed(argv: Sequence[str], env: dict[str, str]) -> float:
    """Wall seconds of one run; a failing command fails the benchmark (its time means nothing)."""
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.decode()}")
    return elapsed


def _measure(bench: BenchCluster) -> dict[str, list[float]]:
    bench.deploy()
    env = {**os.environ, "NEST_KUBECONFIG": str(bench.kubeconfig)}
    env.pop("NEST_GATEWAY", None)  # found in nest-system, as a user's invoke finds it
    # Bytecode caches as an installed package has them (pip writes them): without, every run
    # would compile the project's modules again and time the compiler.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    deploy = [*nest_argv(), "deploy", HELLO, "--isolation", "namespace", "-n", bench.namespace]
    timed(deploy, env)  # waits until ready
    kubectl = [bench.kubectl_binary, f"--kubeconfig={bench.kubeconfig}"]
    argvs = commands(kubectl, bench.namespace)
    for argv in argvs.values():
        timed(argv, env)  # warm the page cache and the gateway's auth cache, not measured
    samples: dict[str, list[float]] = {name: [] for name in argvs}
    for _ in range(ROUNDS):
        for name, argv in argvs.items():
            samples[name].append(timed(argv, env))
    return samples


def report_of(samples: dict[str, list[float]]) -> Report:
    """The report from the samples (seconds) of every command: p50/p90 ms, ratios over p50s."""
    report = Report("cli")
    p50 = {name: ms(percentile(values, 50)) for name, values in samples.items()}
    for name, values in samples.items():
        where = report.baselines if not name.startswith("nest_") else report.results
        where[f"{name}_p50_ms"] = p50[name]
        where[f"{name}_p90_ms"] = ms(percentile(values, 90))
    report.results["rounds"] = min(len(v) for v in samples.values())
    kubectl = p50["kubectl_get_all"]
    report.ratios["nest_get_over_kubectl_get"] = p50["nest_get_functions"] / kubectl
    report.ratios["nest_get_name_over_kubectl_get_name"] = (
        p50["nest_get_function_name"] / p50["kubectl_get_name"]
    )
    report.ratios["nest_invoke_over_kubectl_get"] = p50["nest_invoke"] / kubectl
    report.ratios["nest_describe_over_kubectl_get"] = p50["nest_describe"] / kubectl
    report.ratios["nest_help_over_kubectl_get"] = p50["nest_help"] / kubectl
    return report


async def run() -> Report:
    with BenchCluster() as bench:
        samples = await asyncio.to_thread(_measure, bench)
    return report_of(samples)
