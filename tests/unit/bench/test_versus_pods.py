"""versus-pods bookkeeping without a cluster: who is charged for what, which writes count.

The headline ratios are only as honest as this: a pool pod's memory split over the wrong
count, or the node's heartbeats counted as a workload's writes, would move them silently.
"""

from __future__ import annotations

import pytest

from bench import versus_pods_specs as specs
from crds.constants import FUNCTION_LABEL


def test_a_pool_pod_is_split_over_every_sandbox_it_hosts() -> None:
    pods = [specs.PoolPod(pss=100, mine=10, hosted=40), specs.PoolPod(pss=60, mine=3, hosted=3)]
    assert specs.amortised_bytes(pods) == pytest.approx(100 * 10 / 40 + 60)


def test_a_pool_pod_without_our_sandboxes_costs_nothing() -> None:
    assert specs.amortised_bytes([specs.PoolPod(pss=500, mine=0, hosted=7)]) == 0
    assert specs.amortised_bytes([specs.PoolPod(pss=500, mine=0, hosted=0)]) == 0


def test_only_successful_writes_count_and_heartbeats_are_left_out() -> None:
    metrics = "\n".join([
        '# HELP apiserver_request_total Counter of apiserver requests',
        'apiserver_request_total{code="201",resource="pods",verb="POST"} 4',
        'apiserver_request_total{code="200",resource="pods",subresource="status",verb="PATCH"} 6',
        'apiserver_request_total{code="422",resource="endpoints",verb="PUT"} 90',
        'apiserver_request_total{code="200",resource="pods",verb="GET"} 500',
        'apiserver_request_total{code="200",resource="leases",verb="PUT"} 70',
    ])  # fmt: skip
    after = specs.successful_writes(metrics)
    assert after == {"pods": 10.0, "leases": 70.0}
    before = {"pods": 3.0, "leases": 10.0}
    assert specs.workload_writes(before, after) == {"pods": 7.0}


def test_the_pod_side_is_a_deployment_and_a_service_that_select_its_pod() -> None:
    deployment, service = specs.pod_objects("ns", "fn-0001")
    template = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == template["metadata"]["labels"]
    assert service["spec"]["selector"] == template["metadata"]["labels"]
    container = template["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["port"] == specs.PORT
    assert "POD_IP" in container["command"][-1]  # it serves on the pod's own address


def test_the_nest_side_is_labelled_as_the_gateway_creates_functions() -> None:
    obj = specs.sandbox_deployment("ns", "fn-0002", "subprocess", replicas=0)
    assert obj["spec"]["replicas"] == 0
    assert obj["spec"]["template"]["metadata"]["labels"] == {FUNCTION_LABEL: "fn-0002"}
    assert obj["spec"]["template"]["spec"]["function"]["isolation"] == "subprocess"


def _figures() -> tuple[dict[str, float], dict[str, float]]:
    results = {
        "subprocess_memory_per_function_mb": 3.0, "namespace_memory_per_function_mb": 0.6,
        "subprocess_marginal_memory_per_function_mb": 2.0,
        "namespace_marginal_memory_per_function_mb": 0.1,
        "namespace_apply_to_answering_s": 2.0, "subprocess_apply_to_answering_s": 4.0,
        "from_zero_p50_ms": 80.0, "namespace_api_writes_per_function": 6.0,
        "subprocess_api_writes_per_function": 6.0,
    }  # fmt: skip
    baselines = {
        "pods_memory_per_function_mb": 30.0, "pods_apply_to_answering_s": 20.0,
        "pods_from_zero_p50_ms": 1600.0, "pods_api_writes_per_function": 12.0,
    }  # fmt: skip
    return results, baselines


def test_ratios_are_nest_over_pods_under_the_issues_names() -> None:
    ratios = specs.ratios(*_figures())
    assert ratios["subprocess_memory_per_function_over_pods"] == pytest.approx(0.1)
    assert ratios["namespace_memory_per_function_over_pods"] == pytest.approx(0.02)
    assert ratios["apply_to_answering_over_pods"] == pytest.approx(0.1)
    assert ratios["from_zero_over_pods"] == pytest.approx(0.05)
    assert ratios["namespace_api_writes_over_pods"] == pytest.approx(0.5)


def test_a_missing_baseline_gives_minus_one_not_a_crash() -> None:
    results, baselines = _figures()
    baselines["pods_from_zero_p50_ms"] = 0.0
    assert specs.ratios(results, baselines)["from_zero_over_pods"] == -1.0
