"""KPA-like autoscaling with a fake clock: stable, panic, scale to zero, bounds."""

from __future__ import annotations

from nest_operator.autoscaler_policy import Autoscaler, AutoscalerConfig, wake_target


def feed(a: Autoscaler, start: float, end: float, concurrency: float) -> None:
    t = start
    while t < end:
        a.observe(t, concurrency)
        t += 1


def config(**kw: float) -> AutoscalerConfig:
    base = {"max_replicas": 50, "target_concurrency": 10, "target_utilization": 0.5}
    return AutoscalerConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_stable_desired_is_ceil_of_concurrency_over_target() -> None:
    a = Autoscaler(config())
    feed(a, 0, 60, 21)  # 21 / (10 * 0.5) = 4.2
    d = a.decide(60, ready=5)
    assert (d.replicas, d.reason, d.panicking) == (5, "stable", False)


def test_no_metrics_keeps_what_is_ready_within_bounds() -> None:
    assert Autoscaler(config(min_replicas=2)).decide(0, ready=0).replicas == 2
    assert Autoscaler(config()).decide(0, ready=3).reason == "no metrics"


def test_burst_panics_and_never_scales_down_while_panicking() -> None:
    a = Autoscaler(config())
    feed(a, 0, 60, 5)  # one sandbox's worth
    assert a.decide(60, ready=1).replicas == 1
    feed(a, 60, 66, 50)  # panic window wants 10 >= 2 x 1
    burst = a.decide(66, ready=1)
    assert burst.panicking and burst.replicas == 10
    feed(a, 66, 100, 0)
    calm = a.decide(100, ready=10)
    assert calm.panicking and calm.replicas == 10  # still within a stable window of the burst
    after = a.decide(126.5, ready=10)
    assert not after.panicking and after.replicas < 10


def test_scale_to_zero_only_after_the_idle_period() -> None:
    a = Autoscaler(config(scale_to_zero_after_seconds=120))
    feed(a, 0, 10, 3)
    feed(a, 10, 100, 0)
    assert a.decide(100, ready=1).replicas == 1  # 90 s idle: keep one
    feed(a, 100, 131, 0)
    d = a.decide(131, ready=1)
    assert (d.replicas, d.reason) == (0, "scale to zero")


def test_min_and_max_replicas_bound_every_decision() -> None:
    low = Autoscaler(config(min_replicas=2))
    feed(low, 0, 200, 0)
    assert low.decide(200, ready=2).replicas == 2
    high = Autoscaler(config(max_replicas=3))
    feed(high, 0, 60, 1000)
    d = high.decide(60, ready=3)
    assert d.replicas == 3 and d.reason.endswith("at maxReplicas")


def test_old_samples_leave_the_stable_window() -> None:
    a = Autoscaler(config(min_replicas=1))
    feed(a, 0, 10, 100)
    feed(a, 10, 80, 4)
    assert a.decide(80, ready=20).replicas == 1


def test_reconfigure_keeps_the_samples_a_new_policy_would_not_have() -> None:
    a = Autoscaler(config())
    feed(a, 0, 60, 21)
    assert a.decide(60, ready=5).replicas == 5  # 21 / 5 per sandbox
    tighter = config(target_concurrency=5)  # 2.5 per sandbox
    a.reconfigure(tighter)
    assert a.config == tighter
    d = a.decide(60, ready=5)
    assert (d.replicas, d.reason) == (9, "stable"), "the last minute of demand is still known"
    assert Autoscaler(tighter).decide(60, ready=5).reason == "no metrics"  # what it used to do


def test_reconfigure_keeps_panicking_and_its_floor() -> None:
    a = Autoscaler(config())
    feed(a, 0, 60, 5)
    feed(a, 60, 66, 50)
    assert a.decide(66, ready=1).replicas == 10
    feed(a, 66, 80, 0)
    a.reconfigure(config(max_replicas=40))
    d = a.decide(80, ready=10)
    assert d.panicking and d.replicas == 10, "a config change is no reason to drop the burst"


def test_a_conservative_policy_never_decreases_before_a_full_stable_window() -> None:
    a = Autoscaler(config(scale_to_zero_after_seconds=0), conservative_from=100)
    fresh = Autoscaler(config(scale_to_zero_after_seconds=0))
    for p in (a, fresh):
        feed(p, 100, 130, 0)
    assert fresh.decide(130, ready=4).replicas == 0  # what it did right after a restart
    held = a.decide(130, ready=4)
    assert held.replicas == 4 and "full stable window" in held.reason and a.conservative
    feed(a, 130, 159, 0)
    assert a.decide(159.5, ready=4).replicas == 4  # 59.5 s observed: still not a full window
    feed(a, 159, 161, 0)
    assert a.decide(160, ready=4).replicas == 0 and not a.conservative


def test_a_conservative_policy_scales_up_and_respects_max_replicas() -> None:
    a = Autoscaler(config(max_replicas=3), conservative_from=0)
    feed(a, 0, 10, 100)
    assert a.decide(10, ready=1).replicas == 3  # up at once: only decreases wait
    b = Autoscaler(config(max_replicas=2), conservative_from=0)
    feed(b, 0, 5, 0)
    assert b.decide(5, ready=4).replicas == 2, "a lowered maxReplicas is not history to keep"


def test_samples_from_two_feeds_out_of_order_stay_ordered() -> None:
    a = Autoscaler(config())
    a.observe(5.0, 20)  # a demand line handled while the tick was scraping
    a.observe(4.5, 0)  # the tick's sample, timed before its scrape
    d = a.decide(4.5, ready=2)
    assert (d.replicas, d.reason) == (2, "stable"), "the decision sees both samples (avg 10)"


def test_a_function_without_autoscaling_is_woken_only_from_zero() -> None:
    assert wake_target(0, held=1) == 1
    assert wake_target(0, held=0) is None
    assert wake_target(2, held=5) is None
