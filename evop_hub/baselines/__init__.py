"""Width-pruning baselines the EvoP paper compares with: Wanda (single weights) and SliceGPT (hidden channels).

They run as ``evop-hub prune --method wanda|slicegpt`` (``evop_hub.methods.METHODS``), with the
same loading, calibration set, record and card as the block search, so ``evop-hub ppl``, ``tasks``
and ``speed`` compare every method on equal terms. ``--sparsity`` is in each method's own unit
(recorded as ``sparsity_unit``); ``parameters_after`` is what is actually stored.

    from evop_hub.baselines import wanda, WandaConfig, slicegpt, SliceGPTConfig
    wanda(model, calibration_ids, WandaConfig(pattern="2:4"))           # in place
    sliced = slicegpt(model, calibration_ids, SliceGPTConfig(sparsity=0.25))
"""

from __future__ import annotations

import torch

from ..evaluate.perplexity import total_nll
from .slicegpt import SliceGPTConfig, slicegpt
from .wanda import WandaConfig, wanda

__all__ = ["SliceGPTConfig", "WandaConfig", "calibration_loss", "slicegpt", "wanda"]


def calibration_loss(model: torch.nn.Module, input_ids: torch.Tensor, batch_size: int = 1) -> float:
    """Mean next-token NLL on the calibration set, measured as the search measures it (``BlockRunner.nll``)."""
    total, tokens = total_nll(model, input_ids.split(batch_size))
    return total / tokens
