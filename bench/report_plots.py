"""The report's PNG plots, each with its goal drawn in; the only module that imports matplotlib.

Why apart from bench.report: matplotlib is an optional extra (`bench`), heavy to import, and
the report's pure parts (what is judged against which goal, the markdown) must stay testable
without it. Agg backend: no display on the machines that regenerate the report. PNGs are saved
without the Software metadata so the same JSON draws byte-for-byte the same file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend is chosen before pyplot loads

from bench import report

GOAL_STYLE: dict[str, Any] = {"color": "tab:red", "linestyle": "--", "linewidth": 1.2}
PNG_METADATA: dict[str, Any] = {"Software": None}


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    return str(path)


def scale(data: report.Data, images: Path) -> tuple[str | None, str | None]:
    """The scale curve: all Ready seconds by sandbox count, and the per-sandbox costs."""
    results = (data.get("scale") or {}).get("results") or {}
    points = report.scale_points(results)
    if not points:
        return None, "the scale curve: no `scale` JSON with `all_ready_s_<n>` keys saved"
    series = report.per_sandbox_series(results)
    fig, axes = plt.subplots(1, 2 if series else 1, figsize=(11 if series else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot([n for n, _ in points], [s for _, s in points], marker="o", label="all Ready")
    ax.axhline(60, label="goal: 5,000 Ready within 60 s", **GOAL_STYLE)
    ax.set(xlabel="namespace sandboxes", ylabel="apply to all Ready (s)", title="scale")
    ax.legend()
    if series:
        ax = axes[0][1]
        for what, pts in series.items():
            line = ax.plot([n for n, _ in pts], [v for _, v in pts], marker="o", label=what)
            goal = report.scale_goal(what)
            if goal is not None:
                ax.axhline(goal, color=line[0].get_color(), linestyle="--", linewidth=1)
        ax.set(xlabel="namespace sandboxes", title="per sandbox (dashed: goals)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    missing = [n for n in (500, 2000, 5000) if n not in {p for p, _ in points}]
    note = f"scale: sizes {missing} not in the saved JSON" if missing else None
    return _save(fig, images / "scale.png"), note


def _bars(ax: Any, title: str, unit: str, values: Mapping[str, float | None], goals: Any) -> None:
    labels = [k for k, v in values.items() if v is not None]
    heights = [float(values[k] or 0) for k in labels]
    bars = ax.bar(labels, heights, color=["tab:gray", "tab:blue", "tab:green"][: len(labels)])
    for bar, height in zip(bars, heights, strict=True):
        ax.annotate(report.number(height), (bar.get_x() + bar.get_width() / 2, height),
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
    for label, limit in goals:
        if label in labels:
            i = labels.index(label)
            ax.hlines(limit, i - 0.4, i + 0.4, **GOAL_STYLE)
    ax.set_yscale("log")
    ax.set(title=title, ylabel=unit)


def versus_pods(data: report.Data, images: Path) -> tuple[str | None, str | None]:
    """Nest next to pod-per-function on memory, apply to answering and from zero; the goal of
    each Nest bar (a fraction of the pods' bar) as a dashed line over it."""
    vp = data.get("versus-pods")
    if not vp:
        return None, "versus-pods: no saved JSON"
    r, b = vp.get("results", {}), vp.get("baselines", {})
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    pods_mb = b.get("pods_memory_per_function_mb")
    _bars(
        axes[0],
        "memory per function (PSS)",
        "MB",
        {
            "pods": pods_mb,
            "subprocess": r.get("subprocess_memory_per_function_mb"),
            "namespace": r.get("namespace_memory_per_function_mb"),
        },
        [("subprocess", 0.15 * pods_mb), ("namespace", 0.02 * pods_mb)] if pods_mb else [],
    )
    pods_s = b.get("pods_apply_to_answering_s")
    _bars(
        axes[1],
        f"apply {int(r.get('functions', 0))} to all answering",
        "s",
        {
            "pods": pods_s,
            "subprocess": r.get("subprocess_apply_to_answering_s"),
            "namespace": r.get("namespace_apply_to_answering_s"),
        },
        [(k, 0.2 * pods_s) for k in ("subprocess", "namespace")] if pods_s else [],
    )
    pods_ms = b.get("pods_from_zero_p50_ms")
    _bars(axes[2], "first response from zero, p50", "ms",
          {"pods": pods_ms, "namespace": r.get("from_zero_p50_ms")},
          [("namespace", 0.1 * pods_ms)] if pods_ms else [])  # fmt: skip
    fig.suptitle("versus-pods (dashed: goal for Nest)", fontsize=10)
    return _save(fig, images / "versus-pods.png"), None


def coldstart(data: report.Data, images: Path) -> tuple[str | None, str | None]:
    """From-zero samples (versus-pods saves them) and the coldstart bench's percentiles."""
    groups: dict[str, list[float]] = {}
    vp = data.get("versus-pods") or {}
    nest = report.samples(vp.get("results", {}), "from_zero")
    pods = report.samples(vp.get("baselines", {}), "pods_from_zero")
    if nest:
        groups["Nest activator\n(versus-pods)"] = nest
    if pods:
        groups["Deployment 0→1\n(versus-pods)"] = pods
    cold = (data.get("coldstart") or {}).get("results") or {}
    marks = {k: float(cold[k]) for k in ("from_zero_p50_ms", "from_zero_p99_ms") if k in cold}
    if not groups and not marks:
        return None, "cold start: neither versus-pods samples nor coldstart JSON saved"
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(groups)
    if groups:
        ax.boxplot([groups[n] for n in names], showfliers=False)
        for i, name in enumerate(names, start=1):
            ax.scatter([i] * len(groups[name]), groups[name], s=12, alpha=0.6, zorder=3)
    if marks:
        names.append("Nest\n(coldstart bench)")
        x = len(names)
        for key, value in marks.items():
            ax.scatter([x], [value], marker="D", zorder=3, label=key.removeprefix("from_zero_"))
        ax.legend(fontsize=8)
    ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
    ax.axhline(100, label="goal: 100 ms", **GOAL_STYLE)
    ax.annotate("goal ≤ 100 ms", (0.55, 100), xytext=(0, 3), textcoords="offset points",
                color="tab:red", fontsize=8)  # fmt: skip
    ax.set_yscale("log")
    ax.set(ylabel="first response from zero (ms)", title="cold start distribution")
    note = None if marks else "cold start: no coldstart JSON saved (versus-pods samples only)"
    return _save(fig, images / "coldstart.png"), note


def draw_all(data: report.Data, images: Path) -> tuple[list[str], list[str]]:
    """Every plot there is data for, and a note for each one there is not."""
    plots: list[str] = []
    notes: list[str] = []
    for draw in (scale, versus_pods, coldstart):
        plot, note = draw(data, images)
        if plot:
            plots.append(plot)
        if note:
            notes.append(note)
    return plots, notes
