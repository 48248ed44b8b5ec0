"""gateway: invocation throughput and latency through the gateway vs straight to the runtime.

Why: the gateway adds a hop (auth cache lookup, least-in-flight choice, a proxied request) to
every invocation; this measures what that hop costs under load. Both sides use the same load
generator (bench.loadgen's keep-alive workers), the same sandbox and the same concurrency, in
interleaved rounds (best of each, so a noisy neighbour hits both alike). The gateway is the pod
from deploy/ with authentication on (a ServiceAccount token, answers cached as in production);
the sandbox is created through the gateway's API and made ready by the operator. The direct
side signs its requests with the cluster's data-plane key, as the gateway does (the runtime
refuses unsigned ones), re-signed every round so no signature outlives its window.

"At equal p99" (issue 14): a closed loop at one concurrency gives each side its own latency, so
both sides are driven at several concurrencies and compared at one latency budget, the
gateway's p99 at the reference concurrency: each side's throughput is the most it reached with
its p99 within the budget, interpolated between the two concurrencies around it
(`rate_within`). `ratios.gateway_rps_over_direct` is that ratio; the raw ratio at the
reference concurrency stays beside it.
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests

from bench import loadgen
from bench.cluster import BenchCluster
from bench.common import Report, ms, percentile
from sandbox import dataplane_auth as auth

ROUNDS = 2
SECONDS = 2.0
CONCURRENCY = 16  # the reference: where the budget is read
CONCURRENCIES = (1, 4, CONCURRENCY, 32)
ECHO = "async def handler(event, context):\n    return event\n"
EVENT = b'{"hello":"nest"}'
GATEWAY_SELECTOR = "app.kubernetes.io/name=nest-gateway"


@dataclass
class Gateway:
    """The deployed gateway and a token allowed to manage and invoke in the bench namespace."""

    host: str
    port: int
    namespace: str
    token: str

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, suffix: str = "") -> str:
        return f"{self.base}/v1/namespaces/{self.namespace}/functions{suffix}"

    def call(self, method: str, suffix: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return requests.request(method, self.url(suffix), headers=headers, timeout=60, **kw)

    def create(self, name: str, code: str, **extra: Any) -> None:
        body = {"name": name, "handler": "main:handler", "files": {"main.py": code},
                "isolation": "namespace", **extra}  # fmt: skip
        resp = self.call("POST", "", json=body)
        if resp.status_code != 201:
            raise RuntimeError(f"creating {name} through the gateway: {resp.text}")

    def wait_ready(self, name: str, timeout: float = 120) -> dict[str, Any]:
        """The first ready endpoint address of a function (made ready by the operator)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = self.call("GET", f"/{name}/endpoints").json()["status"]["ready"]
            if ready:
                address: dict[str, Any] = ready[0]
                return address
            time.sleep(0.1)
        raise RuntimeError(
            f"{name} has no ready sandbox after {timeout}s: is the operator running?"
        )


def connect(bench: BenchCluster, timeout: float = 120) -> Gateway:
    """deploy/ applied, the gateway pod Ready, and a developer token for the bench namespace."""
    bench.deploy()
    ns = bench.namespace
    bench.kubectl("-n", ns, "create", "serviceaccount", "bench")
    role = "--clusterrole=nest-function-developer"
    bench.kubectl("-n", ns, "create", "rolebinding", "bench", role, f"--serviceaccount={ns}:bench")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = bench.core.list_namespaced_pod("nest-system", label_selector=GATEWAY_SELECTOR)
        pods: list[dict[str, Any]] = bench.api.sanitize_for_serialization(listed)["items"]
        ready = [
            p for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and all(c["ready"] for c in p["status"].get("containerStatuses") or [{"ready": False}])
        ]  # fmt: skip
        account = bench.api.sanitize_for_serialization(
            bench.core.read_namespaced_service_account("bench", ns)
        )
        if ready and account.get("secrets"):
            secret = bench.core.read_namespaced_secret(account["secrets"][0]["name"], ns)
            token = base64.b64decode((secret.data or {})["token"]).decode()
            return Gateway(str(ready[0]["status"]["podIP"]), 8090, ns, token)
        time.sleep(0.2)
    raise RuntimeError("the nest-gateway pod from deploy/ did not become Ready")


def rate_within(points: Sequence[tuple[float, float]], budget: float) -> float:
    """The throughput a side reaches with its p99 within `budget`, from its (p99, rps) points
    (one per concurrency, in rising concurrency): the best point within the budget, or between
    it and the next point (whose p99 is beyond) the rate interpolated at the budget. A side
    that never reaches the budget is credited with its best rate (it saturated first)."""
    ordered = list(points)
    best = 0.0
    for (p99, rps), after in zip(ordered, [*ordered[1:], None], strict=True):
        if p99 > budget:
            break
        best = max(best, rps)
        if after is not None and after[0] > budget and after[1] > rps:
            share = (budget - p99) / (after[0] - p99)
            best = max(best, rps + share * (after[1] - rps))
    return best if best else (min(ordered)[1] if ordered else 0.0)


async def _drive(
    host: str, port: int, request: bytes, concurrency: int = CONCURRENCY
) -> loadgen.Load:
    """bench.loadgen.drive with a request of our own (it carries the Authorization header)."""
    latencies: list[float] = []
    started = time.perf_counter()
    until = started + SECONDS
    workers = (loadgen._worker(host, port, request, until, latencies) for _ in range(concurrency))
    await asyncio.gather(*workers)
    return loadgen.Load(len(latencies), time.perf_counter() - started, latencies)


def _request(
    host: str, port: int, path: str, token: str | None, keys: auth.KeyRing | None = None
) -> bytes:
    signature = None if keys is None else keys.headers("POST", path, EVENT)
    plain = loadgen.encode_request(host, port, path, EVENT, signature)
    if token is None:
        return plain
    head, _, body = plain.partition(b"\r\n\r\n")
    return head + f"\r\nAuthorization: Bearer {token}".encode() + b"\r\n\r\n" + body


async def run() -> Report:
    report = Report("gateway")
    with BenchCluster() as bench:
        gw = await asyncio.to_thread(connect, bench)
        await asyncio.to_thread(gw.create, "echo", ECHO, replicas=1, concurrency=256)
        address = await asyncio.to_thread(gw.wait_ready, "echo")
        through = _request(gw.host, gw.port, f"/v1/namespaces/{gw.namespace}/functions/echo:invoke",
                           gw.token)  # fmt: skip
        direct_path = f"/v1/sandboxes/{address['uid']}/invoke"
        secret = await asyncio.to_thread(
            bench.core.read_namespaced_secret, auth.SECRET_NAME, "nest-system"
        )
        keys = auth.from_secret_data(secret.data)
        await _drive(gw.host, gw.port, through)  # warm both paths: auth cache, connections
        loads: dict[tuple[str, int], list[loadgen.Load]] = {}
        for _ in range(ROUNDS):
            for concurrency in CONCURRENCIES:
                direct = _request(address["podIP"], address["port"], direct_path, None, keys)
                loads.setdefault(("direct", concurrency), []).append(
                    await _drive(address["podIP"], address["port"], direct, concurrency)
                )
                loads.setdefault(("gateway", concurrency), []).append(
                    await _drive(gw.host, gw.port, through, concurrency)
                )
    curves: dict[str, list[tuple[float, float]]] = {"gateway": [], "direct": []}
    for (side, concurrency), runs in loads.items():
        best = max(runs, key=lambda load: load.rps)
        p99 = ms(percentile(best.latencies, 99))
        curves[side].append((p99, best.rps))
        target = report.results if side == "gateway" else report.baselines
        target[f"{side}_rps_c{concurrency}"] = best.rps
        target[f"{side}_p99_ms_c{concurrency}"] = p99
        if concurrency == CONCURRENCY:
            target[f"{side}_rps"] = best.rps
            target[f"{side}_p50_ms"] = ms(percentile(best.latencies, 50))
            target[f"{side}_rps_median_of_rounds"] = statistics.median(r.rps for r in runs)
    budget = report.results[f"gateway_p99_ms_c{CONCURRENCY}"]
    report.results["p99_budget_ms"] = budget
    report.results["gateway_rps_within_budget"] = rate_within(curves["gateway"], budget)
    report.baselines["direct_rps_within_budget"] = rate_within(curves["direct"], budget)
    report.results["concurrency"] = CONCURRENCY
    report.ratios["gateway_rps_over_direct"] = (
        report.results["gateway_rps_within_budget"] / report.baselines["direct_rps_within_budget"]
    )
    report.ratios["gateway_rps_over_direct_same_concurrency"] = (
        report.results["gateway_rps"] / report.baselines["direct_rps"]
    )
    report.ratios["gateway_p50_over_direct"] = (
        report.results["gateway_p50_ms"] / report.baselines["direct_p50_ms"]
    )
    return report
