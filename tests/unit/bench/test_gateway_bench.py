"""The gateway benchmark's comparison at equal p99 (`bench.gateway.rate_within`)."""

from __future__ import annotations

from bench.gateway import rate_within


def test_the_best_rate_within_the_budget_counts() -> None:
    assert rate_within([(1.0, 100.0), (2.0, 300.0), (9.0, 400.0)], budget=2.0) == 300.0


def test_between_two_points_the_rate_is_interpolated_at_the_budget() -> None:
    assert rate_within([(1.0, 100.0), (3.0, 300.0)], budget=2.0) == 200.0


def test_a_side_that_never_reaches_the_budget_gets_its_best_rate() -> None:
    assert rate_within([(0.5, 1000.0), (1.0, 1500.0)], budget=5.0) == 1500.0


def test_a_side_beyond_the_budget_everywhere_gets_its_lowest_latency_rate() -> None:
    assert rate_within([(3.0, 50.0), (6.0, 80.0)], budget=2.0) == 50.0
