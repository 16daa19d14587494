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
    starts = torch.randint(0, len(ids) - 64, (4,), generator=torch.Generator().manual_seed(0))
    calibration = torch.stack([ids[s : s + 64] for s in starts])  # 4 x 64 tokens
    return lambda: SerialEvaluator(loaded.model, calibration, batch_size=1)


@pytest.fixture(scope="module")
def optimum(evaluator_factory):
    """Every C(12,3) pattern fully evaluated (no early termination): the true optimum."""
    masks = list(itertools.combinations(range(BLOCKS), K))
    fits = evaluator_factory().evaluate(masks)
    return min(fits, key=lambda f: f.loss), fits


def test_early_termination_changes_nothing_on_real_weights(evaluator_factory, optimum):
    best, _ = optimum
    evaluator = evaluator_factory()
    result = run_search(evaluator, K, SearchConfig(method="exhaustive"), progress=False)
    assert result.mask == best.mask and result.loss == pytest.approx(best.loss, rel=1e-9)
    assert evaluator.stats.early_stops > 100  # most patterns are abandoned before their last sample


def test_evop_reaches_the_exhaustive_optimum_in_a_tenth_of_its_cost(evaluator_factory, optimum):
    best, fits = optimum
    evaluator = evaluator_factory()
    result = run_search(evaluator, K, SearchConfig(method="evop", seed_sleb=False), progress=False)
    assert result.mask == best.mask
    # Cost in block calls against evaluating C(12,3) patterns fully (9 blocks x 4 samples each).
    budget = 0.1 * math.comb(BLOCKS, K) * (BLOCKS - K) * 4
    assert evaluator.stats.block_forwards <= budget, evaluator.stats


def test_evop_never_ends_above_sleb(evaluator_factory):
    for k in (3, 5):
        sleb = run_search(evaluator_factory(), k, SearchConfig(method="sleb"), progress=False)
        evop = run_search(evaluator_factory(), k, SearchConfig(method="evop"), progress=False)
        assert evop.loss <= sleb.loss + 1e-12, (k, evop.mask, sleb.mask)
