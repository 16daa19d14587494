"""Plots for runs and reports (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import atomic_path


def convergence_plot(trace: list[dict[str, Any]], path: str | Path) -> Path:
    """Best (and mean) calibration loss per search step, from a search trace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in trace if r.get("best") is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["evaluations"] for r in rows], [r["best"] for r in rows], marker="o", label="best")
    means = [(r["evaluations"], r["mean"]) for r in rows if r.get("mean") is not None]
    if means:
        ax.plot(*zip(*means), linestyle="--", alpha=0.6, label="mean of completed")
    ax.set_xlabel("masks evaluated")
    ax.set_ylabel("calibration loss (mean NLL)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)
