"""The autoscaler shell's pure parts: metric parsing, Little's-law concurrency, configuration."""

from __future__ import annotations

import pytest

from nest_operator.autoscaler_controller import (
    ConcurrencyMeter,
    RuntimeSample,
    config_of,
    deployment_concurrency,
    parse_gateway,
    parse_runtime,
)

RUNTIME = """\
# TYPE nest_sandbox_in_flight gauge
nest_sandbox_in_flight{sandbox="a"} 1.0
nest_sandbox_in_flight{sandbox="b"} 0.0
# TYPE nest_sandbox_invoke_seconds histogram
nest_sandbox_invoke_seconds_bucket{le="+Inf",sandbox="a"} 10.0
nest_sandbox_invoke_seconds_sum{sandbox="a"} 2.5
nest_sandbox_invoke_seconds_count{sandbox="a"} 10.0
nest_sandbox_invoke_seconds_sum{sandbox="b"} 4.0
"""
GATEWAY = """\
# TYPE nest_gateway_queued gauge
nest_gateway_queued{function="hello",namespace="ns"} 3.0
nest_gateway_queued{function="other",namespace="ns"} 0.0
"""


def test_parse_runtime_and_gateway_metrics() -> None:
    sample = parse_runtime(RUNTIME)
    assert sample.busy_seconds == {"a": 2.5, "b": 4.0}
    assert sample.in_flight == {"a": 1.0, "b": 0.0}
    assert parse_gateway(GATEWAY) == {("ns", "hello"): 3.0, ("ns", "other"): 0.0}
    assert parse_runtime("") == RuntimeSample({}, {})


def test_concurrency_is_busy_time_over_elapsed_time_or_in_flight_if_higher() -> None:
    meter = ConcurrencyMeter()
    first = meter.update(RuntimeSample({"a": 10.0, "b": 0.0}, {"a": 0.0, "b": 2.0}), now=100.0)
    assert first == {"a": 0.0, "b": 2.0}  # nothing to compare with yet: in flight only
    # a: 3 s of invocations in a 2 s interval is an average concurrency of 1.5.
    second = meter.update(RuntimeSample({"a": 13.0, "b": 0.5}, {"a": 1.0, "b": 0.0}), now=102.0)
    assert second == {"a": 1.5, "b": 0.25}
    assert deployment_concurrency(["a", "b", "gone"], second, queued=2.0) == 3.75
    # A sandbox that appeared since (a function woken from zero): all of its busy time counts.
    third = meter.update(RuntimeSample({"a": 13.0, "b": 0.5, "c": 0.25}, {}), now=103.0)
    assert third["c"] == 0.25


def test_autoscaling_configuration_defaults_target_to_the_function_concurrency() -> None:
    deployment = {
        "spec": {
            "replicas": 1,
            "autoscaling": {"maxReplicas": 5, "minReplicas": 1},
            "template": {"spec": {"function": {"concurrency": 4}}},
        }
    }
    cfg = config_of(deployment)
    assert cfg is not None
    assert (cfg.max_replicas, cfg.min_replicas, cfg.target_concurrency) == (5, 1, 4.0)
    assert cfg.target_utilization == pytest.approx(0.7)
    assert config_of({"spec": {"replicas": 3}}) is None
