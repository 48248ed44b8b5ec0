"""Prometheus metrics of one runtime: per-sandbox load, errors, latency, memory; cold starts.

Why a class with its own registry: tests and benchmarks run several runtimes in one process,
and the global default registry would refuse duplicate metric names. Per-sandbox children are
cached so the invoke hot path does no label lookup, and dropped when a sandbox is removed so
the label set does not grow forever.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10)
COLD_START_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5)


@dataclass(frozen=True, slots=True)
class SandboxMetrics:
    in_flight: Gauge
    invocations: Counter
    errors: Counter
    rejected: Counter
    latency: Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        label = ["sandbox"]
        self._in_flight = Gauge(
            "nest_sandbox_in_flight", "Invocations in flight", label, registry=self.registry
        )
        self._invocations = Counter(
            "nest_sandbox_invocations", "Invocations answered", label, registry=self.registry
        )
        self._errors = Counter(
            "nest_sandbox_errors", "Invocations answered 5xx", label, registry=self.registry
        )
        self._rejected = Counter(
            "nest_sandbox_rejected", "Invocations refused with 429", label, registry=self.registry
        )
        self._latency = Histogram(
            "nest_sandbox_invoke_seconds",
            "Invocation latency inside the runtime",
            label,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._memory = Gauge(
            "nest_sandbox_memory_bytes", "Sandbox USS (subprocess)", label, registry=self.registry
        )
        self.cold_start = Histogram(
            "nest_sandbox_cold_start_seconds",
            "Create until ready",
            ["isolation"],
            buckets=COLD_START_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[str, SandboxMetrics] = {}

    def sandbox(self, sandbox_id: str) -> SandboxMetrics:
        found = self._children.get(sandbox_id)
        if found is None:
            found = self._children[sandbox_id] = SandboxMetrics(
                in_flight=self._in_flight.labels(sandbox_id),
                invocations=self._invocations.labels(sandbox_id),
                errors=self._errors.labels(sandbox_id),
                rejected=self._rejected.labels(sandbox_id),
                latency=self._latency.labels(sandbox_id),
            )
        return found

    def set_memory(self, sandbox_id: str, memory_bytes: int | None) -> None:
        if memory_bytes is not None:
            self._memory.labels(sandbox_id).set(memory_bytes)

    def forget(self, sandbox_id: str) -> None:
        self._children.pop(sandbox_id, None)
        for family in (
            self._in_flight,
            self._invocations,
            self._errors,
            self._rejected,
            self._latency,
            self._memory,
        ):
            with contextlib.suppress(KeyError):  # never observed for this sandbox
                family.remove(sandbox_id)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
