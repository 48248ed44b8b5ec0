"""coldstart-layer: the first response of a function package whose 20 MB dependency layer the
pod has not got yet, beside the same start with the layer already in the pod's code cache.

Why: a function package's dependencies are a layer shared by every function built on them, so
a pod fetches and unpacks it once; what the first function on a pod pays for that (pull by
digest, verify, unpack) is what this measures, and the warm figure shows the others do not pay
it. Each package is new (a wheel of fresh random bytes, built into a dependency layer by the
same builder as `nest deploy DIR`, pushed to the cluster's registry): its first start from zero
replicas through the gateway is a cold layer on whichever pod the scheduler picks. The package
is then scaled to zero and started again, with its layer still cached (within the cache's idle
time). Every trial is classified by the pool sidecars' own counters
(`nest_sidecar_layer_blob_fetches`), not assumed: a start whose layer blob some pod downloaded
meanwhile is cold, one with no download is warm (a warm start that lands on the other pod is
cold, and counted as such). Baseline, same run: warm invocations of a started package.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import zipfile
from pathlib import Path

import requests

from bench.cluster import POOL_SELECTOR, BenchCluster
from bench.coldstart import _at_zero, _invoke
from bench.common import Report, ms, percentile
from bench.gateway import Gateway, connect
from nest.package.build import Builder
from nest.package.push import hosting_from_cluster, push, repository_for
from nest.package.target import host_target
from sandbox.layers import DEPENDENCIES_MEDIA_TYPE

PACKAGES = 5  # cold trials: each a new 20 MB layer
RESTARTS = 3  # warm trials per package (scale to zero, start again)
WARM = 30
LAYER_BYTES = 20 * 1024 * 1024
ISOLATION = os.environ.get("NEST_BENCH_ISOLATION", "subprocess")
HANDLER = (
    "import os\nimport nest_bench_layer\n\n"
    "def handler(event, context):\n"
    "    return {'bytes': os.path.getsize(nest_bench_layer.DATA)}\n"
)
FETCHES = re.compile(r'^nest_sidecar_layer_blob_fetches_total\{digest="([^"]+)"\} (\S+)$', re.M)


def wheel(wheelhouse: Path, version: str) -> None:
    """A pure-Python wheel with LAYER_BYTES of fresh random (incompressible) data."""
    name = "nest_bench_layer"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"import os\n\nDATA = os.path.join(os.path.dirname(__file__), "
        b"'data.bin')\n",
        f"{name}/data.bin": os.urandom(LAYER_BYTES),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{p},,\n" for p in [*files, f"{info}/RECORD"]).encode()
    with zipfile.ZipFile(wheelhouse / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        for path, data in files.items():
            whl.writestr(path, data)


def build_and_push(bench: BenchCluster, work: Path, index: int) -> tuple[str, str]:
    """A new package (new layer); its reference and its dependency layer's digest."""
    version = f"1.0.{index}"
    wheelhouse = work / f"wheels-{index}"
    wheelhouse.mkdir()
    wheel(wheelhouse, version)
    fn = work / f"fn-{index}"
    fn.mkdir()
    (fn / "main.py").write_text(HANDLER)
    (fn / "requirements.txt").write_text(
        f"--no-index\n--find-links {wheelhouse}\nnest_bench_layer=={version}\n"
    )
    hosting = hosting_from_cluster(bench.core)
    if hosting is None:
        raise RuntimeError("the cluster announces no registry (kube-public/local-registry-hosting)")
    package = Builder(work / "cache", lambda line: None).build(fn, host_target())
    (layer,) = [blob for media, blob in package.layers if media == DEPENDENCIES_MEDIA_TYPE]
    ref = push(package, hosting, repository_for(bench.namespace), f"l{index}", lambda line: None)
    return ref, layer.digest


def fetches(bench: BenchCluster, digest: str) -> int:
    """Downloads of `digest` by every pool pod's sidecar so far."""
    total = 0
    pods = bench.core.list_namespaced_pod("nest-system", label_selector=POOL_SELECTOR).items
    for pod in pods:
        if pod.status is None or not pod.status.pod_ip:
            continue
        try:
            text = requests.get(f"http://{pod.status.pod_ip}:8081/metrics", timeout=10).text
        except requests.RequestException:
            continue
        total += sum(int(float(n)) for d, n in FETCHES.findall(text) if d == digest)
    return total


def _start(gw: Gateway, bench: BenchCluster, name: str, digest: str) -> tuple[float, bool]:
    """One start from zero: (seconds to the first response, whether a pod fetched the layer)."""
    before = fetches(bench, digest)
    elapsed = _invoke(gw, name)
    return elapsed, fetches(bench, digest) > before


def _measure(bench: BenchCluster) -> tuple[list[float], list[float], list[float]]:
    gw = connect(bench)
    cold: list[float] = []
    warm_start: list[float] = []
    warm: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nest-bench-layer-") as tmp:
        for index in range(PACKAGES):
            ref, digest = build_and_push(bench, Path(tmp), index)
            name = f"layer-{index}"
            body = {"name": name, "handler": "main:handler", "code": {"oci": {"ref": ref}},
                    "isolation": ISOLATION, "replicas": 0, "concurrency": 16}  # fmt: skip
            resp = gw.call("POST", "", json=body)
            if resp.status_code != 201:
                raise RuntimeError(f"creating {name} through the gateway: {resp.text}")
            for trial in range(1 + RESTARTS):
                if trial:
                    _at_zero(gw, name)
                elapsed, fetched = _start(gw, bench, name, digest)
                (cold if fetched else warm_start).append(elapsed)
            warm += [_invoke(gw, name) for _ in range(WARM // PACKAGES)]
            _at_zero(gw, name)  # its sandbox leaves the pool's capacity to the next package
    return cold, warm_start, warm


async def run() -> Report:
    report = Report("coldstart-layer")
    with BenchCluster() as bench:
        cold, warm_start, warm = await asyncio.to_thread(_measure, bench)
    if not cold or not warm_start:
        raise RuntimeError(f"{len(cold)} cold and {len(warm_start)} warm-layer starts: need both")
    report.results["cold_layer_p50_ms"] = ms(percentile(cold, 50))
    report.results["cold_layer_max_ms"] = ms(max(cold))
    report.results["cold_layer_trials"] = len(cold)
    report.results["layer_mb"] = LAYER_BYTES / (1024 * 1024)
    report.baselines["warm_layer_p50_ms"] = ms(percentile(warm_start, 50))
    report.baselines["warm_layer_max_ms"] = ms(max(warm_start))
    report.baselines["warm_layer_trials"] = len(warm_start)
    report.baselines["warm_invoke_p50_ms"] = ms(percentile(warm, 50))
    report.ratios["cold_over_warm_layer_p50"] = (
        report.results["cold_layer_p50_ms"] / report.baselines["warm_layer_p50_ms"]
    )
    return report
