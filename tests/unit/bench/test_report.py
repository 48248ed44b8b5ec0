"""The benchmark report's pure half: what is read from saved JSON, judged, and spliced in.

The report must regenerate from a clean checkout and leave the hand-written history alone;
these pin the pieces that decide that (no matplotlib needed).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import report


def test_the_scale_curve_is_read_from_whatever_sizes_were_saved() -> None:
    results = {"all_ready_s_2000": 20.0, "all_ready_s_500": 4.0, "all_ready_s": 1.0}
    assert report.scale_points(results) == [(500, 4.0), (2000, 20.0)]


def test_per_sandbox_figures_become_one_series_each() -> None:
    results = {"event_writes_per_sandbox_500": 0.4, "event_writes_per_sandbox_5000": 0.6,
               "other": 1.0}  # fmt: skip
    assert report.per_sandbox_series(results) == {
        "event_writes_per_sandbox": [(500, 0.4), (5000, 0.6)]
    }
    assert report.scale_goal("event_writes_per_sandbox") == 0.5
    assert report.scale_goal("object_writes_per_sandbox") == 3.0
    assert report.scale_goal("operator_rss_kb_per_sandbox") == 10.0
    assert report.scale_goal("sidecar_cpu_s_per_sandbox") is None


def test_samples_are_the_numbered_keys_in_order() -> None:
    section = {"from_zero_ms sample 01": 2.0, "from_zero_ms sample 00": 1.0, "from_zero_p50_ms": 9}
    assert report.samples(section, "from_zero") == [1.0, 2.0]


def test_goals_are_judged_in_their_direction_and_unmeasured_ones_said_so() -> None:
    data = {
        "versus-pods": {"ratios": {"from_zero_over_pods": 0.05,
                                   "apply_to_answering_over_pods": 0.3}},
        "gateway": {"ratios": {"gateway_over_direct_rps": 0.29}},
    }  # fmt: skip
    judged = {goal.key: value for goal, value in report.verdicts(data)}
    goals = {goal.key: goal for goal, _ in report.verdicts(data)}
    assert goals["from_zero_over_pods"].met(0.05)
    assert not goals["apply_to_answering_over_pods"].met(0.3)
    assert not goals["gateway_over_direct_rps"].met(0.29)  # at least 0.6
    assert judged["all_ready_s_5000"] is None
    assert "gateway_rps_over_direct" not in judged  # the older key stands in for it
    rows = "\n".join(report.goal_table(data))
    assert "| 0.050 | ≤ 0.100 | ✓ |" in rows and "| 0.300 | ≤ 0.200 | ✗ |" in rows
    assert "not measured" in rows


def test_the_newer_gateway_key_wins_and_the_older_one_is_dropped() -> None:
    data = {"gateway": {"ratios": {"gateway_over_direct_rps": 0.3, "gateway_rps_over_direct": 0.7}}}
    keys = [goal.key for goal, _ in report.verdicts(data)]
    assert "gateway_rps_over_direct" in keys and "gateway_over_direct_rps" not in keys


def test_splicing_replaces_only_the_generated_section() -> None:
    first = report.splice("# Benchmarks\n\nhistory\n", report.markdown({}, [], ["x"]))
    assert first.startswith("# Benchmarks\n\nhistory\n\n" + report.BEGIN)
    again = report.splice(first + "\nlater hand text\n", report.markdown({}, ["a/p.png"], []))
    assert again.count(report.BEGIN) == 1 and again.count(report.END) == 1
    assert "history" in again and "later hand text" in again
    assert "Not plotted: x" not in again and "(benchmarks/p.png)" in again


def test_saved_reports_are_found_by_their_bench_name(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"bench": "coldstart", "results": {"x": 1}}))
    (tmp_path / "b.json").write_text(json.dumps({"bench": "coldstart", "results": {"x": 2}}))
    (tmp_path / "c.json").write_text(json.dumps([1, 2]))
    assert report.load(tmp_path) == {"coldstart": {"bench": "coldstart", "results": {"x": 2}}}


def test_the_versus_pods_table_puts_each_figure_beside_its_baseline() -> None:
    data = {
        "versus-pods": {
            "results": {"functions": 50, "namespace_memory_per_function_mb": 2.5,
                        "from_zero_p50_ms": 140.0},
            "baselines": {"pods_memory_per_function_mb": 28.0, "pods_from_zero_p50_ms": 1200.0},
        }
    }  # fmt: skip
    text = report.markdown(data, [], [])
    assert "versus-pods, 50 functions, same run:" in text
    assert "| memory per function (MB, amortised PSS) | 28.00 | — | 2.50 |" in text
    assert "| first response from zero, p50 (ms) | 1,200 | — | 140 |" in text
