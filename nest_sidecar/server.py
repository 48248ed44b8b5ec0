"""The sidecar's own HTTP endpoints: /healthz, /readyz and /metrics (prometheus-client).

/readyz is what the pool pod's readiness probe asks, and the scheduler only places sandboxes on
Ready pods: so it says ready only once the watch has synced (the sidecar knows what is bound to
it) and the runtime answers (it can run what is bound to it).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector


class StateCollector(Collector):
    """What the sidecar holds now, read at scrape time so it is never stale: its sandboxes by
    phase, and the runtime restarts its pump has seen."""

    def __init__(self, phases: Callable[[], Iterable[str]], runtime_restarts: Callable[[], int]):
        self.phases = phases
        self.runtime_restarts = runtime_restarts

    def collect(self) -> Iterator[Metric]:
        sandboxes = GaugeMetricFamily(
            "nest_sidecar_sandboxes", "Sandboxes bound to this pod, by phase", labels=["phase"]
        )
        for phase, count in sorted(collections.Counter(self.phases()).items()):
            sandboxes.add_metric([phase], count)
        restarts = CounterMetricFamily("nest_sidecar_runtime_restarts", "Runtime restarts seen")
        restarts.add_metric([], self.runtime_restarts())
        yield from (sandboxes, restarts)


class SidecarMetrics:
    """The sidecar's metrics, in a registry of its own (tests run several sidecars)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.status_writes = Counter(
            "nest_sidecar_status_writes", "Status patches written", registry=self.registry
        )
        self.status_repairs = Counter(
            "nest_sidecar_status_repairs",
            "Status patches putting right a status someone else changed",
            registry=self.registry,
        )


def health_app(ready: Callable[[], tuple[bool, str]], metrics: SidecarMetrics) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        ok, detail = ready()
        return web.Response(status=200 if ok else 503, text=f"{detail}\n")

    async def metrics_handler(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
