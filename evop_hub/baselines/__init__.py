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

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import EvopError
from ..models import BlockRunner, LoadedModel, load, prepare_output, save
from ..models.saving import check_not_source
from . import slicegpt as _slicegpt
from . import wanda as _wanda
from .slicegpt import SliceGPTConfig, slicegpt
from .wanda import WandaConfig, wanda

if TYPE_CHECKING:
    from ..prune import PruneConfig, PruneResult



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

__all__ = ["BASELINES", "Baseline", "SliceGPTConfig", "WandaConfig", "calibration_loss", "prune_baseline", "slicegpt", "wanda"]


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


def prune_baseline(model: str | LoadedModel, config: PruneConfig) -> PruneResult:
    """``prune()`` for a baseline method: load, calibrate, prune, record, save; returns a ``PruneResult``.

    ``config`` is a ``PruneConfig`` whose ``search.method`` names a baseline; ``sparsity`` None means
    the method's default (Wanda 0.5 or as ``pattern`` implies, SliceGPT 0.25).
    """
    from ..prune import PruneResult, _calibration

    method = config.search.method
    if config.resume:
        raise EvopError(f"--resume continues a block search; {method} runs in one go, re-run without --resume")
    if config.num_drop is not None:
        raise EvopError(f"--num-drop counts blocks; {method} removes weights, set how many with --sparsity")
    baseline = BASELINES[method]
    settings = baseline.settings(config.sparsity, config.pattern, config.batch_size, config.progress)
    output = prepare_output(config.output, overwrite=config.overwrite) if config.output else None
    loaded = model if isinstance(model, LoadedModel) else load(model, config.load)
    if loaded.record.dropped_blocks:
        raise EvopError("this model already had blocks removed; prune the original model instead")
    if output:
        check_not_source(output, loaded)
    calibration = _calibration(loaded, config, None)  # nothing resumes a width baseline: no run state
    ids = calibration.input_ids
    dense = calibration_loss(loaded.model, ids, config.batch_size)
    start = time.perf_counter()
    details = baseline.run(loaded, ids, settings)
    seconds = time.perf_counter() - start
    record = loaded.record
    record.method = method
    record.calibration = calibration.summary()
    record.search = {"method": method, "seconds": seconds, **details}
    record.scores["calibration_loss"] = {"dense": dense, "pruned": calibration_loss(loaded.model, ids, config.batch_size)}
    if config.command:
        record.command = config.command
    if output:
        save(loaded, output, overwrite=True)  # vetted by prepare_output above
    return PruneResult(loaded, [], record, None, output)
