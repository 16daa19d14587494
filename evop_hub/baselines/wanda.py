"""Wanda (Sun et al., ICLR 2024): zero the weights with the smallest |W_ij| * ||X_j||_2 in each output row.

``X_j`` is input feature j of the linear over every calibration token. Like the reference code,
blocks are pruned in order and each block is calibrated on the outputs of the already pruned
blocks before it; only one block's activations exist at a time, so a 7B model in float16 fits a
24 GB GPU. Every ``nn.Linear`` inside the blocks is pruned (not the embeddings or the head).

The checkpoint keeps its shapes with zeros in place: it is not smaller on disk or faster on
dense kernels. ``N:M`` patterns (at most N nonzero weights in every M consecutive inputs of a row,
2:4 being what sparse tensor cores accelerate) are what hardware can exploit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import EvopError
from ..models import LoadedModel
from ..progress import bar
from ..scoring import BlockRunner


@dataclass
class WandaConfig:
    sparsity: float | None = None  # fraction of each row's weights zeroed; None: 0.5, or 1 - N/M with a pattern
    pattern: str | None = None  # "N:M": keep the N best of every M consecutive inputs of a row
    batch_size: int = 1  # calibration samples per forward
    progress: bool = True

    def __post_init__(self) -> None:
        if self.pattern:
            n, m = parse_pattern(self.pattern)
            if self.sparsity is not None and abs(self.sparsity - (1 - n / m)) > 1e-9:
                raise EvopError(
                    f"--pattern {self.pattern} zeroes {1 - n / m:.0%} of weights; drop --sparsity or make it match"
                )
            self.sparsity = 1 - n / m
        elif self.sparsity is None:
            self.sparsity = 0.5
        elif not 0 < self.sparsity < 1:
            raise EvopError(
                f"wanda --sparsity is the fraction of weights zeroed, strictly between 0 and 1; got {self.sparsity}"
            )


def settings(sparsity: float | None, pattern: str | None, batch_size: int, progress: bool) -> WandaConfig:
    """What ``evop-hub prune --method wanda`` asks for, checked before any model loads."""
    return WandaConfig(sparsity, pattern, batch_size, progress)


def parse_pattern(pattern: str) -> tuple[int, int]:
    try:
        n, m = (int(part) for part in pattern.split(":"))
    except ValueError:
        n = m = 0
    if not 0 < n < m:
        raise EvopError(f"--pattern {pattern!r} is not N:M with 0 < N < M (e.g. 2:4 keeps 2 of every 4 weights)")
    return n, m


def wanda_mask(weight: torch.Tensor, input_norm: torch.Tensor, config: WandaConfig) -> torch.Tensor:
    """True where a weight is zeroed: the lowest scores of each row, or of each group of M inputs for N:M."""
    score = weight.abs().float() * input_norm.float()
    rows, cols = score.shape
    if config.pattern:
        n, m = parse_pattern(config.pattern)
        if cols % m:
            raise EvopError(f"--pattern {config.pattern} needs input widths divisible by {m}; a linear has {cols}")
        groups = score.view(rows, cols // m, m)
        lowest = groups.topk(m - n, dim=-1, largest=False).indices
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True).view(rows, cols)
    lowest = score.topk(int(cols * config.sparsity), dim=1, largest=False).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, lowest, True)


@torch.no_grad()
def wanda(model: nn.Module, input_ids: torch.Tensor, config: WandaConfig | None = None) -> dict[str, int]:
    """Prune ``model`` in place; returns how many block weights were zeroed and how many were considered."""
    config = config or WandaConfig()
    if any(p.device.type == "meta" for p in model.parameters()):
        raise EvopError("wanda edits weights in place and cannot reach offloaded ones; drop --offload-folder")
    runner = BlockRunner(model)
    device = model.get_input_embeddings().weight.device
    contexts = [runner.prepare(batch.to(device)) for batch in input_ids.split(config.batch_size)]
    hidden = [ctx.hidden for ctx in contexts]
    for ctx in contexts:
        ctx.hidden = None  # only the pruned stream is needed from here on
    zeroed = total = 0
    for i in bar(range(len(runner)), desc="wanda", unit="block", disable=not config.progress):
        linears = {name: m for name, m in runner.blocks[i].named_modules() if isinstance(m, nn.Linear)}
        if not linears:
            raise EvopError(
                f"block {i} has no nn.Linear to prune (GPT-2's Conv1D is not supported); use another method"
            )
        fused = [name for name, p in runner.blocks[i].named_parameters() if p.dim() > 2]
        if fused:  # MoE experts held as 3-D tensors: most of the weights, which Wanda's per-row rule does not cover
            raise EvopError(
                f"block {i} keeps weights outside nn.Linear ({fused[0]}, e.g. fused MoE experts), which "
                "wanda would leave dense; use a block method or slicegpt"
            )
        squares = {
            name: torch.zeros(m.in_features, dtype=torch.float32, device=m.weight.device) for name, m in linears.items()
        }

        def accumulate(name: str):
            def hook(module, inputs, _output):
                x = inputs[0].reshape(-1, module.in_features).float()
                squares[name] += x.pow(2).sum(0).to(squares[name].device)

            return hook

        hooks = [m.register_forward_hook(accumulate(name)) for name, m in linears.items()]
        try:
            for h, ctx in zip(hidden, contexts):
                runner.block(i, h, ctx)
        finally:
            for hook in hooks:
                hook.remove()
        for name, linear in linears.items():
            mask = wanda_mask(linear.weight, squares[name].sqrt().to(linear.weight.device), config)
            linear.weight[mask] = 0
            zeroed += int(mask.sum())
            total += mask.numel()
        hidden = [runner.block(i, h, ctx) for h, ctx in zip(hidden, contexts)]  # the pruned block feeds the next
    return {"zeroed_weights": zeroed, "block_linear_weights": total}


def run(loaded: LoadedModel, input_ids: torch.Tensor, config: WandaConfig) -> dict[str, Any]:
    """``evop-hub prune --method wanda``: prune ``loaded`` in place; the record's details."""
    counts = wanda(loaded.model, input_ids, config)
    pattern = config.pattern
    record = loaded.record
    record.sparsity = counts["zeroed_weights"] / counts["block_linear_weights"]
    record.sparsity_unit = f"weights ({pattern})" if pattern else "weights (unstructured)"
    record.parameters_after = record.parameters_before  # zeros are still stored
    share = counts["zeroed_weights"] / record.parameters_before
    return {
        **counts,
        "pattern": pattern or "unstructured",
        "zeroed_share_of_parameters": share,
        "format": "standard checkpoint with zeroed weights: same shapes and size on disk as the source",
        "summary": f"wanda: zeroed {counts['zeroed_weights']:,} weights ({record.sparsity:.1%} of the blocks' linears, "
        f"{share:.1%} of all parameters); the checkpoint is not smaller on disk",
    }
