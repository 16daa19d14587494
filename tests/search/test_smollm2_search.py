"""CI tier of the search proof, on real weights small enough for CPU: the first 12 blocks of
SmolLM2-135M and a few hundred WikiText-2 calibration tokens."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import evop_hub
from evop_hub.search import SearchConfig, SerialEvaluator, run_search

pytestmark = pytest.mark.integration
BLOCKS, K = 12, 3


@pytest.fixture(scope="module")
def evaluator_factory(wikitext_dir):
    loaded = evop_hub.load("smollm2-135m")
    evop_hub.drop(loaded, range(BLOCKS, 30))
    text = (wikitext_dir / "valid.txt").read_text()[:100_000]
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids[0]
    starts = torch.randint(0, len(ids) - 24, (4,), generator=torch.Generator().manual_seed(0))
    calibration = torch.stack([ids[s : s + 24] for s in starts])  # 4 x 24 tokens: the 49k-vocab head dominates
    return lambda batch_size=1: SerialEvaluator(loaded.model, calibration, batch_size=batch_size)


@pytest.fixture(scope="module")
def optimum(evaluator_factory):
    """Every C(12,3) pattern fully evaluated in one batch (no early termination possible): the true optimum."""
    masks = list(itertools.combinations(range(BLOCKS), K))
    fits = evaluator_factory(batch_size=4).evaluate(masks)
    return min(fits, key=lambda f: f.loss), fits


def test_early_termination_changes_nothing_on_real_weights(evaluator_factory, optimum):
    best, _ = optimum
    evaluator = evaluator_factory()
    result = run_search(evaluator, K, SearchConfig(method="exhaustive"), progress=False)
    assert result.mask == best.mask and result.loss == pytest.approx(best.loss, rel=1e-6)  # batch 1 vs 4
    assert evaluator.stats.early_stops > 100  # most patterns are abandoned before their last sample


def test_evop_reaches_the_exhaustive_optimum_without_sleb_seeding(evaluator_factory, optimum):
    best, _ = optimum
    evaluator = evaluator_factory()
    result = run_search(evaluator, K, SearchConfig(method="evop", seed_sleb=False), progress=False)
    assert result.mask == best.mask
    # Cost in block calls against evaluating all C(12,3) patterns fully (9 blocks x 4 samples each).
    # Measured at 4 x 32 tokens: 18-22 % over seeds 0-3. The target is 10 %: not met yet (see the issue notes).
    naive = math.comb(BLOCKS, K) * (BLOCKS - K) * 4
    assert evaluator.stats.block_forwards <= 0.25 * naive, evaluator.stats


def test_evop_never_ends_above_sleb(evaluator_factory):
    evaluator = evaluator_factory()  # shared: the seeding SLEB run inside evop is memoised
    sleb = run_search(evaluator, 4, SearchConfig(method="sleb"), progress=False)
    evop = run_search(evaluator, 4, SearchConfig(method="evop", generations=4), progress=False)
    assert evop.loss <= sleb.loss + 1e-12, (evop.mask, sleb.mask)
