"""Request-driven autoscaling policy, after Knative's KPA, as a pure object with an injected clock.

Why: scaling on concurrency (not CPU) is what lets functions scale to zero and back; getting the
windows right decides whether a burst is absorbed or dropped and whether idle functions really
go away. Two windows, as Knative: the stable window (60 s) averages demand for normal decisions;
the panic window (6 s) catches bursts, and while panicking the policy never scales down. The
shell feeds it `observe(t, concurrency)` samples (in-flight invocations across the deployment)
and asks `decide(now, ready)`; nothing here reads a clock or a metric itself.

Two rules keep a decision from resting on history the policy does not have. A configuration
change (`reconfigure`) swaps the windows and targets but keeps the samples and the panic state:
a `kubectl patch` of minReplicas is no reason to forget the last minute of demand. And a policy
started `conservative` (the controller restarted and this deployment existed before it, so its
current scale may rest on demand this process never saw) never decides below the current scale
until it has observed a full stable window, as Knative's autoscaler starts in panic mode.
A request held for a function without autoscaling at zero wakes it with `wake_target`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from crds import Autoscaling

# The CRD's defaults come from its model; the config below only converts them to floats.
_D = {name: field.default for name, field in Autoscaling.model_fields.items()}


@dataclass(frozen=True, slots=True)
class AutoscalerConfig:
    """SandboxDeployment.spec.autoscaling, with targetConcurrency resolved."""

    max_replicas: int
    target_concurrency: float
    min_replicas: int = int(_D["min_replicas"])
    target_utilization: float = float(_D["target_utilization"])
    scale_to_zero_after_seconds: float = float(_D["scale_to_zero_after_seconds"])
    stable_window_seconds: float = float(_D["stable_window_seconds"])
    panic_window_seconds: float = float(_D["panic_window_seconds"])
    panic_threshold: float = float(_D["panic_threshold"])

    @classmethod
    def of(cls, scaling: Autoscaling, concurrency: int) -> AutoscalerConfig:
        """The policy's view of a parsed spec.autoscaling; `concurrency` is the template's
        function concurrency, the target when targetConcurrency is unset."""
        return cls(
            max_replicas=scaling.max_replicas,
            target_concurrency=float(scaling.target_concurrency or concurrency),
            min_replicas=scaling.min_replicas,
            target_utilization=scaling.target_utilization,
            scale_to_zero_after_seconds=float(scaling.scale_to_zero_after_seconds),
            stable_window_seconds=float(scaling.stable_window_seconds),
            panic_window_seconds=float(scaling.panic_window_seconds),
            panic_threshold=scaling.panic_threshold,
        )


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """How many replicas to want now, and a short reason for events and status."""

    replicas: int
    reason: str
    panicking: bool


class Autoscaler:
    """The policy for one deployment: samples in, desired replicas out."""

    def __init__(self, config: AutoscalerConfig, conservative_from: float | None = None) -> None:
        """`conservative_from`: the time from which a full stable window must be observed
        before any decision goes below the current scale (None: decide freely at once)."""
        self.config = config
        self._conservative_from = conservative_from
        self._samples: deque[tuple[float, float]] = deque()
        self._latest = float("-inf")
        self._panic_since: float | None = None  # last time the panic condition held
        self._panic_floor = 0  # never scale below this while panicking
        # Last sample with traffic, or the first sample: idleness is counted from either.
        self._last_active: float | None = None

    def reconfigure(self, config: AutoscalerConfig) -> None:
        """Take a changed spec.autoscaling; samples, idleness and panic state stay (decide
        reads the windows from the config each time, so the new ones apply from now on)."""
        self.config = config

    @property
    def conservative(self) -> bool:
        """Whether decisions are still held at or above the current scale."""
        return self._conservative_from is not None

    def _clock(self, t: float) -> float:
        """Time never goes back for a policy. Two feeds (the periodic scrape, whose time is
        taken before it scrapes, and the gateways' demand lines) may hand in times slightly
        out of order; an earlier one is taken as the latest seen, so the window stays ordered
        and a decision always sees the sample just observed."""
        self._latest = max(t, self._latest)
        return self._latest

    def observe(self, t: float, concurrency: float) -> None:
        """Record the deployment's in-flight invocations at time `t`."""
        t = self._clock(t)
        self._samples.append((t, concurrency))
        if concurrency > 0 or self._last_active is None:
            self._last_active = t

    def _average(self, now: float, window: float) -> float | None:
        values = [c for t, c in self._samples if now - window < t <= now]
        return sum(values) / len(values) if values else None

    def decide(self, now: float, ready: int) -> ScaleDecision:
        """Desired replicas at `now` for a deployment that has `ready` ready sandboxes."""
        now = self._clock(now)
        decision = self._decide(now, ready)
        since = self._conservative_from
        if since is not None and now - since >= self.config.stable_window_seconds:
            self._conservative_from = since = None  # a full window seen: decide freely
        if since is not None and decision.replicas < ready:
            # Still bounded by max: a maxReplicas lowered by the user is not history.
            held = self._clamp(ready, f"{decision.reason}; held until a full stable window "
                               "after restart", decision.panicking)  # fmt: skip
            return held
        return decision

    def _decide(self, now: float, ready: int) -> ScaleDecision:
        cfg = self.config
        while self._samples and self._samples[0][0] <= now - cfg.stable_window_seconds:
            self._samples.popleft()
        stable = self._average(now, cfg.stable_window_seconds)
        if stable is None:
            return self._clamp(ready, "no metrics", panicking=False)
        per_sandbox = cfg.target_concurrency * cfg.target_utilization
        panic = self._average(now, cfg.panic_window_seconds)
        desired_stable = math.ceil(stable / per_sandbox)
        desired_panic = math.ceil((panic or 0.0) / per_sandbox)

        if desired_panic >= cfg.panic_threshold * max(ready, 1) and desired_panic > ready:
            self._panic_since = now
        elif self._panic_since is not None and now - self._panic_since >= cfg.stable_window_seconds:
            self._panic_since = None
            self._panic_floor = 0
        if self._panic_since is not None:
            desired = max(desired_panic, desired_stable, ready, self._panic_floor)
            self._panic_floor = desired
            return self._clamp(desired, "panic", panicking=True)

        if desired_stable == 0 and ready > 0 and cfg.min_replicas == 0:
            idle_since = self._last_active
            if idle_since is not None and now - idle_since < cfg.scale_to_zero_after_seconds:
                return self._clamp(1, "idle, waiting to scale to zero", panicking=False)
            return self._clamp(0, "scale to zero", panicking=False)
        return self._clamp(desired_stable, "stable", panicking=False)

    def _clamp(self, desired: int, reason: str, panicking: bool) -> ScaleDecision:
        cfg = self.config
        if desired > cfg.max_replicas:
            return ScaleDecision(cfg.max_replicas, f"{reason}; at maxReplicas", panicking)
        if desired < cfg.min_replicas:
            return ScaleDecision(cfg.min_replicas, f"{reason}; at minReplicas", panicking)
        return ScaleDecision(desired, reason, panicking)


def wake_target(replicas: int, held: float) -> int | None:
    """The scale for a deployment without autoscaling that has `held` requests waiting: one at
    zero is woken to one sandbox (what the activator did before the autoscaler owned /scale);
    one already scaled up is starting, and a fixed scale is never changed otherwise."""
    if replicas > 0 or held <= 0:
        return None
    return 1
