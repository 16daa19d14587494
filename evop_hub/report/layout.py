"""What `evop-hub compare` writes and two rules its run and its report share: the report is made from
``results.json`` alone, so both read these from here rather than from each other."""

from __future__ import annotations

FORMAT, VERSION = "evop-hub-compare", 1
CELLS_DIR, RESULTS, REPORT = "cells", "results.json", "report.md"
FIG1A, FIG1C = "fig1a_calibration_loss.png", "fig1c_cluster_perplexity.png"


def own_sampler(method: str, baseline_sampler: str) -> str:
    """How a method's main cells are calibrated: EvoP with CCDS, every other method with ``baseline_sampler``."""
    return "ccds" if method == "evop" else baseline_sampler


def cluster_sparsity(fig1c_sparsity: float | None, sparsities: list[float]) -> float:
    """Fig. 1c's sparsity: ``fig1c_sparsity``, else the largest of ``sparsities``."""
    return fig1c_sparsity if fig1c_sparsity is not None else max(sparsities)
