"""The scale benchmark's pure parts: the manifests it applies, the pool it makes, its arithmetic.

Why: a miscounted write (Events counted as object writes), a pool whose pods the default
SandboxPool also claims, or a cost ratio taken from a size that stalled would each report a
scale curve that is not the system's; these run without a cluster.
"""

from __future__ import annotations

import subprocess
import sys
from collections import namedtuple
from typing import Any

import psutil
import pytest
import yaml

from bench import scale, scale_pool
from crds import constants as c
from crds.pool import SandboxPool
from crds.workloads import SandboxDeployment


def test_sizes_are_sorted_distinct_and_positive() -> None:
    assert scale.parse_sizes("5000, 500,2000,500") == [500, 2000, 5000]
    for bad in ("", "0,10", "-5"):
        with pytest.raises(ValueError):
            scale.parse_sizes(bad)


@pytest.mark.parametrize(("n", "per"), [(500, 100), (5000, 100), (201, 100), (7, 100), (1, 1)])
def test_split_covers_n_with_deployments_of_at_most_per(n: int, per: int) -> None:
    parts = scale.split(n, per)
    assert sum(parts) == n
    assert max(parts) <= per
    assert max(parts) - min(parts) <= 1


def test_deployments_are_valid_namespace_mode_functions_of_the_pool() -> None:
    docs = scale.deployments("bench-x", "scale-abc", 250, 100)
    assert [d["spec"]["replicas"] for d in docs] == [84, 83, 83]
    models = [SandboxDeployment.model_validate(d) for d in docs]
    assert {m.spec.template.spec.pool for m in models} == {"scale-abc"}
    assert {m.spec.template.spec.function.isolation.value for m in models} == {"namespace"}
    names = [d["metadata"]["name"] for d in docs]
    assert len(set(names)) == len(names)
    code = {d["spec"]["template"]["spec"]["function"]["source"]["inline"]["main.py"] for d in docs}
    assert len(code) == len(docs)  # a function of its own each, not one cached copy
    for source in code:
        namespace: dict[str, Any] = {}
        exec(source, namespace)
        assert namespace["handler"]({"x": 1}, None)["event"] == {"x": 1}


def _pool_pod_labels(name: str) -> dict[str, str]:
    template = scale_pool.load_template()
    body = scale_pool.pool_deployment(template, name, name, 25, 250)
    labels: dict[str, str] = body["spec"]["template"]["metadata"]["labels"]
    return labels


def test_only_the_benchmarks_own_pool_claims_its_pods() -> None:
    labels = _pool_pod_labels("scale-abc")
    own = SandboxPool.model_validate(scale_pool.sandbox_pool("scale-abc", "scale-abc"))
    assert own.spec.pod_problem("scale-abc", "nest-system", labels) is None
    assert labels[c.POOL_LABEL] == "scale-abc"
    default = SandboxPool.model_validate(
        yaml.safe_load((scale_pool.TEMPLATE.parent / "pool.yaml").read_text())
    )
    assert default.spec.pod_problem("default", "nest-system", labels) is not None
    assert labels["app.kubernetes.io/name"] != "nest-pool"  # the shared PDB and chaos skip them


def test_pool_deployment_selects_its_pods_and_fits_the_node() -> None:
    body = scale_pool.pool_deployment(scale_pool.load_template(), "scale-abc", "r1", 25, 250)
    spec = body["spec"]
    assert spec["replicas"] == 25
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations[c.MAX_SANDBOXES_ANNOTATION] == "250"
    containers = {k["name"]: k for k in spec["template"]["spec"]["containers"]}
    millis = sum(int(k["resources"]["requests"]["cpu"].rstrip("m")) for k in containers.values())
    assert 25 * millis <= 1000  # half the local node's 2 cores: the shared system has the rest
    probe = containers["sidecar"]["livenessProbe"]
    assert probe["initialDelaySeconds"] >= 120  # 25 pods starting at once on 2 cores
    runtime = containers["runtime"]["resources"]["limits"]
    assert runtime["cpu"] == "2"  # the declared capacity stays deploy/'s
    assert int(runtime["memory"].rstrip("Mi")) >= 250 * scale_pool.SANDBOX_MEMORY_MI


def test_capacity_leaves_headroom_and_memory_fits_it() -> None:
    assert scale_pool.per_pod_capacity(5000, 25) == 250
    assert scale_pool.per_pod_capacity(50, 25) == 10
    assert scale_pool.runtime_memory_limit_mi(100) == 2048
    assert scale_pool.runtime_memory_limit_mi(400) == 400 * scale_pool.SANDBOX_MEMORY_MI


def test_etcd_metrics_are_read_from_unlabelled_samples() -> None:
    text = (
        "# HELP etcd_mvcc_db_total_size_in_bytes Total size\n"
        "etcd_mvcc_db_total_size_in_bytes 5.3977088e+08\n"
        'etcd_mvcc_db_total_size_in_use_in_bytes{x="y"} 3\n'
        "etcd_mvcc_db_total_size_in_use_in_bytes 2.4334336e+07\n"
        "etcd_other 7\n"
    )
    assert scale.parse_metrics(text) == {
        "etcd_mvcc_db_total_size_in_bytes": 539770880.0,
        "etcd_mvcc_db_total_size_in_use_in_bytes": 24334336.0,
    }


def _figures(n: int, ready_s: float | None, operator_cpu: float) -> scale.SizeFigures:
    return scale.SizeFigures(
        n=n,
        all_ready_s=ready_s,
        ready=n if ready_s else n // 2,
        writes_before={"sandboxes": 10, "events": 5, "POST sandboxes": 4},
        writes_after={
            "sandboxes": 10 + 3 * n,
            "events": 5 + n,
            "leases": 2,
            "POST sandboxes": 4 + n,
        },
        cpu={"operator": operator_cpu, "sidecar": 2.0},
        operator_peak_rss=100 * 1024 + 5 * 1024 * n,
        operator_base_rss=100 * 1024,
        events={"events nest-sidecar Started": float(n)},
    )


def test_size_results_count_events_apart_from_object_writes() -> None:
    results = scale.size_results(_figures(100, 4.0, 1.0))
    assert results["all_ready_s_100"] == 4.0
    assert results["object_writes_per_sandbox_100"] == pytest.approx((300 + 2) / 100)
    assert results["event_writes_per_sandbox_100"] == 1.0
    assert results["sandbox_writes_per_sandbox_100"] == 3.0
    assert results["writes_per_sandbox_100 POST sandboxes"] == 1.0
    assert results["operator_rss_kb_per_sandbox_100"] == pytest.approx(5.0)
    assert results["operator_cpu_s_100"] == 1.0
    assert results["objects_per_sandbox_100 events nest-sidecar Started"] == 1.0
    assert "stalled_100" not in results


def test_a_stalled_size_says_so_and_has_no_ready_time() -> None:
    results = scale.size_results(_figures(100, None, 1.0))
    assert results["stalled_100"] == 1.0
    assert "all_ready_s_100" not in results
    assert results["ready_100"] == 50


def test_ratios_compare_the_largest_finished_size_with_the_smallest() -> None:
    results = {
        **scale.size_results(_figures(500, 10.0, 5.0)),
        **scale.size_results(_figures(5000, 120.0, 65.0)),
    }
    baselines = {"raw_create_s_500": 2.0, "raw_create_s_5000": 20.0}
    out = scale.ratios(results, baselines, [500, 2000, 5000])
    assert out["cost_per_sandbox_5000_over_500"] == pytest.approx(1.3)
    assert out["cost_per_sandbox_growth_over_goal_1_3x"] == pytest.approx(1.0)
    assert out["all_ready_s_5000_over_goal_60s"] == pytest.approx(2.0)
    assert out["all_ready_over_raw_create_500"] == 5.0
    assert out["object_writes_per_sandbox_5000_over_goal_3"] == pytest.approx(3.0004 / 3)
    assert out["event_writes_per_sandbox_5000_over_goal_0_5"] == pytest.approx(2.0)
    assert out["operator_rss_kb_per_sandbox_5000_over_goal_10kb"] == pytest.approx(0.5)
    assert out["operator_rss_kb_per_extra_sandbox_5000_vs_500"] == pytest.approx(5.0)


def test_a_stalled_size_gives_no_cost_ratio() -> None:
    results = {
        **scale.size_results(_figures(500, 10.0, 5.0)),
        **scale.size_results(_figures(5000, None, 65.0)),
    }
    out = scale.ratios(results, {}, [500, 5000])
    assert not any(key.startswith("cost_per_sandbox") for key in out)
    assert "all_ready_s_500_over_goal_60s" in out  # the goals of what did finish


def test_census_says_where_sandboxes_stand() -> None:
    boxes: list[dict[str, Any]] = [
        {"spec": {"podName": "p1"}, "status": {"phase": "Running"}},
        {"spec": {"podName": "p1"}, "status": {"phase": "Starting"}},
        {"spec": {"podName": "p2"}, "status": {"phase": "Running"}},
        {"spec": {}, "status": {"phase": "Pending"}},
        {"spec": {}},
    ]
    assert scale.census(boxes) == {
        "sandboxes_created": 5.0,
        "sandboxes_bound": 3.0,
        "sandboxes_running": 2.0,
        "pods_used": 2.0,
        "most_sandboxes_on_a_pod": 2.0,
    }


def test_busy_is_the_fraction_of_cpu_time_not_idle() -> None:
    times = namedtuple("times", "user system idle iowait")
    assert scale_pool.busy(times(0, 0, 0, 0), times(3, 1, 3, 1)) == 0.5
    assert scale_pool.busy(times(1, 1, 1, 1), times(1, 1, 1, 1)) == 0.0


def test_meter_counts_a_process_that_dies_as_lost() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    mine, theirs = psutil.Process(), psutil.Process(child.pid)
    meter = scale_pool.ProcessMeter([mine, theirs], period=60)
    with meter:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert meter.lost == {child.pid}
    assert meter.peak_rss >= mine.memory_info().rss // 2
    assert meter.cpu() >= 0
