"""Plots for runs and reports (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    _pyplot().close(fig)
    return Path(path)


def convergence_plot(trace: list[dict[str, Any]], path: str | Path) -> Path:
    """Best (and mean) calibration loss per search step, from a search trace."""
    plt = _pyplot()
    rows = [r for r in trace if r.get("best") is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["evaluations"] for r in rows], [r["best"] for r in rows], marker="o", label="best")
    means = [(r["evaluations"], r["mean"]) for r in rows if r.get("mean") is not None]
    if means:
        ax.plot(*zip(*means), linestyle="--", alpha=0.6, label="mean of completed")
    ax.set_xlabel("masks evaluated")
    ax.set_ylabel("calibration loss (mean NLL)")
    ax.legend()
    return _save(fig, path)


def lines_plot(
    series: dict[str, list[tuple[float, float, float]]], xlabel: str, ylabel: str, title: str, path: str | Path
) -> Path:
    """One line per series through (x, mean, spread) points, the spread as error bars (compare's Fig. 1a)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, points in series.items():
        xs, means, spreads = zip(*points) if points else ((), (), ())
        ax.errorbar(xs, means, yerr=spreads, marker="o", capsize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if series:
        ax.legend()
    return _save(fig, path)


def bars_plot(
    groups: list[str], series: dict[str, list[tuple[float, float]]], ylabel: str, title: str, path: str | Path
) -> Path:
    """Grouped bars: for every group, one (mean, spread) bar per series (compare's Fig. 1c)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [v[0] for v in values], width, yerr=[v[1] for v in values], capsize=3, label=label)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if series:
        ax.legend()
    return _save(fig, path)
