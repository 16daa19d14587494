"""Wanda against a brute-force reference: activations from plain hooks on full forwards, rows sorted in Python."""

from __future__ import annotations

import copy

import pytest
import torch

from evop_hub.baselines import WandaConfig, wanda
from evop_hub.errors import EvopError

from .conftest import tiny_model


def linears(block: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, torch.nn.Linear)}


@torch.no_grad()
def reference_wanda(model, ids, sparsity: float, pattern: tuple[int, int] | None) -> None:
    """Block by block: a full forward of the model (earlier blocks already pruned) with hooks recording every
    input of the block's linears; then in each row (or each group of M inputs) zero the lowest |W| * ||X||."""
    for block in model.get_decoder().layers:
        seen: dict[str, list[torch.Tensor]] = {}
        hooks = [
            m.register_forward_hook(lambda mod, inp, out, name=name: seen.setdefault(name, []).append(inp[0]))
            for name, m in linears(block).items()
        ]
        model(ids)
        for hook in hooks:
            hook.remove()
        for name, linear in linears(block).items():
            x = torch.cat([t.reshape(-1, linear.in_features) for t in seen[name]]).double()
            norm = x.pow(2).sum(0).sqrt().tolist()
            weight = linear.weight
            rows, cols = weight.shape
            groups = [range(g, g + pattern[1]) for g in range(0, cols, pattern[1])] if pattern else [range(cols)]
            drop = pattern[1] - pattern[0] if pattern else int(cols * sparsity)
            for r in range(rows):
                for group in groups:
                    ranked = sorted(group, key=lambda j: abs(weight[r, j].item()) * norm[j])
                    for j in ranked[:drop]:
                        weight[r, j] = 0


@pytest.mark.parametrize("kind", ["llama", "opt"])
@pytest.mark.parametrize(("sparsity", "pattern"), [(0.5, None), (0.3, None), (None, "2:4")])
def test_wanda_zeroes_the_lowest_scores_per_row(kind, sparsity, pattern, calibration_ids):
    model = tiny_model(kind)
    expected = copy.deepcopy(model)
    counts = wanda(model, calibration_ids, WandaConfig(sparsity, pattern, batch_size=2, progress=False))
    nm = tuple(int(p) for p in pattern.split(":")) if pattern else None
    reference_wanda(expected, calibration_ids, sparsity, nm)

    pruned = dict(model.named_parameters())
    for name, param in expected.named_parameters():
        assert torch.equal(pruned[name], param), name  # same zeros; embeddings, norms, head untouched

    total = zeroed = 0
    for block in model.get_decoder().layers:
        for linear in linears(block).values():
            rows, cols = linear.weight.shape
            zeros = linear.weight == 0
            if nm:  # exactly M - N zeros in every group of M consecutive inputs
                assert (zeros.view(rows, cols // nm[1], nm[1]).sum(-1) == nm[1] - nm[0]).all()
            else:  # exactly the requested fraction of each row
                assert (zeros.sum(1) == int(cols * sparsity)).all()
            total, zeroed = total + zeros.numel(), zeroed + int(zeros.sum())
    assert counts == {"zeroed_weights": zeroed, "block_linear_weights": total}


def test_pattern_and_sparsity_must_agree():
    assert WandaConfig(pattern="2:4").sparsity == 0.5
    assert WandaConfig(pattern="1:4").sparsity == 0.75
    with pytest.raises(EvopError, match="zeroes 50%"):
        WandaConfig(sparsity=0.3, pattern="2:4")
    with pytest.raises(EvopError, match="not N:M"):
        WandaConfig(pattern="4:2")
    with pytest.raises(EvopError, match="strictly between 0 and 1"):
        WandaConfig(sparsity=1.0)


def test_fused_moe_experts_are_refused_not_left_dense():
    # transformers 5 keeps Qwen3-MoE's experts as 3-D tensors: Wanda's rule would skip most of the weights.
    from ..models.conftest import build

    model = build("qwen3_moe", layers=4)
    with pytest.raises(EvopError, match="fused MoE experts"):
        wanda(model, torch.randint(0, model.config.vocab_size, (2, 8)))
