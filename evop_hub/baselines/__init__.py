"""Width-pruning baselines the EvoP paper compares with: Wanda (single weights) and SliceGPT (hidden channels).

They run as ``evop-hub prune --method wanda|slicegpt`` through ``evop_hub.prune.prune``, with the
same loading, calibration set, record and card as the block search, so ``evop-hub ppl``, ``tasks``
and ``speed`` compare every method on equal terms. ``--sparsity`` is in each method's own unit
(recorded as ``sparsity_unit``); ``parameters_after`` is what is actually stored.

    from evop_hub.baselines import wanda, WandaConfig, slicegpt, SliceGPTConfig
    wanda(model, calibration_ids, WandaConfig(pattern="2:4"))           # in place
    sliced = slicegpt(model, calibration_ids, SliceGPTConfig(sparsity=0.25))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..models import LoadedModel
from ..scoring import BlockRunner
from . import slicegpt as _slicegpt
from . import wanda as _wanda
from .slicegpt import SliceGPTConfig, slicegpt
from .wanda import WandaConfig, wanda


@dataclass(frozen=True)
class Baseline:
    """A width-pruning method as ``prune`` runs it."""

    # (sparsity or None for the method's default, pattern, batch size, progress) -> the method's config, validated
    settings: Callable[[float | None, str | None, int, bool], Any]
    # (loaded, calibration ids, config) -> details for the record; edits ``loaded`` (its model and record) in place
    run: Callable[[LoadedModel, torch.Tensor, Any], dict[str, Any]]


BASELINES: dict[str, Baseline] = {
    "wanda": Baseline(WandaConfig, _wanda.run),
    "slicegpt": Baseline(_slicegpt.settings, _slicegpt.run),
}

__all__ = [
    "BASELINES",
    "Baseline",
    "SliceGPTConfig",
    "WandaConfig",
    "calibration_loss",
    "slicegpt",
    "wanda",
]


@torch.no_grad()
def calibration_loss(model: torch.nn.Module, input_ids: torch.Tensor, batch_size: int = 1) -> float:
    """Mean next-token NLL on the calibration set, measured as the search measures it (``BlockRunner.nll``)."""
    runner = BlockRunner(model)
    device = model.get_input_embeddings().weight.device
    total, tokens = 0.0, 0
    for batch in input_ids.split(batch_size):
        batch = batch.to(device)
        nll, count = runner.nll(runner.run(runner.prepare(batch)), batch)
        total, tokens = total + nll.item(), tokens + count
    return total / tokens
