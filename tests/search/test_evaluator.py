"""The fitness evaluator is exact, and its shortcuts never change a decision."""

from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch

from evop_hub.errors import EvopError
from evop_hub.models import drop_blocks
from evop_hub.search import SerialEvaluator, num_drop

from ..models.conftest import ARCHITECTURES, build


def plain_mean(model, dropped, ids, score):
    """Reference: a physically pruned copy, one full forward per sample; the mean over predicted tokens of
    ``score(pruned, row)``, a sample's summed loss."""
    pruned = copy.deepcopy(model)
    if dropped:
        drop_blocks(pruned, dropped)
    total = tokens = 0.0
    with torch.no_grad():
        for row in ids:
            total += score(pruned, row)
            tokens += row.numel() - 1
    return total / tokens


def plain_loss(model, dropped, ids):
    """HF's own loss of the pruned copy."""
    return plain_mean(
        model, dropped, ids, lambda pruned, row: float(pruned(row[None], labels=row[None]).loss) * (row.numel() - 1)
    )


def calibration(model, n=4, seq=12, seed=0):
    return torch.randint(0, model.config.vocab_size, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_fitness_equals_plain_forward_of_pruned_model(arch):
    # The masks are evaluated together: their states share batched block calls (block arguments of
    # stacked samples come from the model's own forward), which must not change any value.
    model = build(arch)
    ids = calibration(model)
    evaluator = SerialEvaluator(model, ids, batch_size=3)
    masks = [(), (0,), (1, 4), (2, 3, 5), (0, 1, 2, 3, 4)]
    for mask, fit in zip(masks, evaluator.evaluate(masks)):
        assert fit.complete
        assert fit.loss == pytest.approx(plain_loss(model, mask, ids), rel=1e-5)


def test_prefix_reuse_and_memo_do_not_change_values():
    model = build("llama", layers=8)
    ids = calibration(model)
    masks = [tuple(sorted(random.Random(i).sample(range(8), 3))) for i in range(20)]
    cached = SerialEvaluator(model, ids, batch_size=2)
    fresh = [SerialEvaluator(model, ids, batch_size=2, cache_bytes=0).loss(m) for m in masks]
    cached.evaluate(masks[:10])  # the later masks start from prefixes these leave in the cache
    assert [f.loss for f in cached.evaluate(masks)] == pytest.approx(fresh, rel=1e-6)
    assert cached.stats.blocks_saved > 0 and cached.stats.prefix_hits > 0
    before = cached.stats.block_forwards
    cached.evaluate(masks)
    assert cached.stats.block_forwards == before, "memoised masks were recomputed"


def test_walks_and_head_calls_split_under_their_budgets_give_the_same_values():
    model = build("llama", layers=8)
    ids = calibration(model)
    masks = [tuple(sorted(random.Random(i).sample(range(8), 3))) for i in range(20)]
    state_bytes = ids.shape[1] * model.config.hidden_size * 4  # one sample's hidden state, float32
    tight = SerialEvaluator(model, ids, batch_size=1, cache_bytes=3 * state_bytes)
    tight.runner.chunk_tokens = 2 * ids.shape[1]  # and head calls of two masks each (the roomy one: all of a walk)
    walks = []
    real = tight._batch_nlls
    tight._batch_nlls = lambda keeps, b: walks.append(len(keeps)) or real(keeps, b)
    roomy = SerialEvaluator(model, ids, batch_size=1)
    assert [f.loss for f in tight.evaluate(masks)] == pytest.approx([f.loss for f in roomy.evaluate(masks)], rel=1e-6)
    assert max(walks) == 3 and len(walks) > 4 * 4


def test_early_termination_keeps_the_same_survivors():
    # Random models give every mask nearly the same loss, so nothing stops early here; the
    # real-weight test in test_smollm2_search.py checks that early stops happen and change nothing.
    model = build("qwen2", layers=8)
    ids = calibration(model, n=6)
    masks = [m for m in itertools.combinations(range(8), 2)]
    full = SerialEvaluator(model, ids, batch_size=1).evaluate(masks)
    fast = SerialEvaluator(model, ids, batch_size=1)
    got = fast.evaluate(masks, survivors=5)
    best_full = sorted(full, key=lambda f: f.loss)[:5]
    best_fast = sorted(got, key=lambda f: f.loss)[:5]
    assert [f.mask for f in best_fast] == [f.mask for f in best_full]
    assert [f.loss for f in best_fast] == pytest.approx([f.loss for f in best_full], rel=1e-9)
    assert fast.stats.block_forwards < len(masks) * 6 * (8 - 2)  # prefix reuse


# The Ray evaluator (several devices) is tested against this one in test_ray.py.


def test_layer_cosines_match_hidden_states():
    model = build("llama")
    ids = calibration(model, n=2)
    cos = SerialEvaluator(model, ids, batch_size=2).layer_cosines(1)
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states
    # transformers applies the final norm to the last entry of hidden_states; compare the others.
    for i in range(len(states) - 2):
        expected = torch.nn.functional.cosine_similarity(states[i], states[i + 1], dim=-1).mean()
        assert cos[i] == pytest.approx(float(expected), rel=1e-5)


def test_non_finite_loss_names_the_dense_block_and_no_wider_dtype_for_float32():
    """21.11: the block that produces inf/NaN in the dense pass is named, not the first pattern that kept it; a
    float32 model is not told to try --dtype float32."""
    model = build("llama")
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.fill_(float("inf"))
    evaluator = SerialEvaluator(model, calibration(model), batch_size=4)
    assert evaluator.loss((2,)) > 0
    with pytest.raises(EvopError, match=r"^block 2 of the dense model gives non-finite values") as error:
        evaluator.loss((1,))
    assert "--dtype" not in str(error.value) and "float32" in str(error.value)
    with pytest.raises(EvopError, match="overflows in bfloat16: try --dtype float32"):
        SerialEvaluator(model.to(torch.bfloat16), calibration(model), batch_size=4).loss((1,))


@pytest.mark.parametrize(
    "blocks, sparsity, k, expected",
    [(30, 0.2, None, 6), (30, 0.3, None, 9), (40, 0.1, None, 4), (12, None, 3, 3), (32, 0.2, None, 7)],
)
def test_num_drop_follows_evop(blocks, sparsity, k, expected):
    assert num_drop(blocks, sparsity, k) == expected


@pytest.mark.parametrize("sparsity, k", [(0.0, None), (1.0, None), (1.5, None), (None, 0), (None, 12)])
def test_num_drop_refuses_degenerate_requests(sparsity, k):
    with pytest.raises(EvopError):
        num_drop(12, sparsity, k)
