"""Prometheus metrics of one runtime: per-sandbox load, errors, latency, memory; cold starts.

Why collected at scrape time: the invoke hot path must stay a handful of microseconds, and the
backends already count invocations, errors, timeouts, rejections and in-flight calls for
`usage()`. So a scrape reads those counters (and USS) from the backends, and the only thing the
hot path records is one latency observation into a plain bucket array (no lock, no label
lookup: invocations run on the event loop, and so does the scrape).

Why a registry per instance: tests and benchmarks run several runtimes in one process, and the
global default registry would refuse duplicate metric names. Per-sandbox state is dropped when a
sandbox is removed so the label set does not grow forever.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from isolation.base import Usage

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10)
COLD_START_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5)
_LE = [repr(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]  # as prometheus_client writes `le`

UsageSource = Callable[[], Iterable[tuple[str, Usage]]]


class Latency:
    """One sandbox's invoke-latency histogram: per-bucket counts (`Metrics.observe` adds to
    them), made cumulative on scrape."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def buckets(self) -> list[tuple[str, float]]:
        running = 0
        out = []
        for le, count in zip(_LE, self.counts, strict=True):
            running += count
            out.append((le, float(running)))
        return out


class _SandboxCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        label = ["sandbox"]
        in_flight = GaugeMetricFamily(
            "nest_sandbox_in_flight", "Invocations in flight", labels=label
        )
        invocations = CounterMetricFamily(
            "nest_sandbox_invocations", "Invocations admitted", labels=label
        )
        errors = CounterMetricFamily(
            "nest_sandbox_errors", "Invocations answered 5xx, timed out or crashed", labels=label
        )
        rejected = CounterMetricFamily(
            "nest_sandbox_rejected", "Invocations refused with 429", labels=label
        )
        memory = GaugeMetricFamily(
            "nest_sandbox_memory_bytes", "Sandbox USS (subprocess)", labels=label
        )
        latency = HistogramMetricFamily(
            "nest_sandbox_invoke_seconds", "Invocation latency inside the runtime", labels=label
        )
        for sandbox_id, usage in self._metrics.usages():
            ids = [sandbox_id]
            in_flight.add_metric(ids, usage.in_flight)
            invocations.add_metric(ids, usage.invocations)
            errors.add_metric(ids, usage.errors + usage.timeouts)
            rejected.add_metric(ids, usage.rejected)
            if usage.memory_bytes is not None:
                memory.add_metric(ids, usage.memory_bytes)
            found = self._metrics.latencies.get(sandbox_id)
            if found is not None:
                latency.add_metric(ids, found.buckets(), found.total)
        yield from (in_flight, invocations, errors, rejected, memory, latency)


class Metrics:
    def __init__(self, usages: UsageSource) -> None:
        self.registry = CollectorRegistry()
        self.usages = usages
        self.latencies: dict[str, Latency] = {}
        self.cold_start = Histogram(
            "nest_sandbox_cold_start_seconds",
            "Create until ready",
            ["isolation"],
            buckets=COLD_START_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_SandboxCollector(self))

    def observe(self, sandbox_id: str, seconds: float) -> None:
        """One invocation's latency (Latency.observe inlined: it runs on every call)."""
        found = self.latencies.get(sandbox_id)
        if found is None:
            found = self.latencies[sandbox_id] = Latency()
        found.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # `le` bounds are inclusive
        found.total += seconds

    def forget(self, sandbox_id: str) -> None:
        self.latencies.pop(sandbox_id, None)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
