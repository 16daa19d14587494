"""Sanity of both baselines on the real SmolLM2-135M, through `prune()` and a reload from disk."""

from __future__ import annotations

import copy
import math

import pytest

from evop_hub.calibration import CalibrationConfig
from evop_hub.data import load_corpus
from evop_hub.evaluate.perplexity import PerplexityConfig, perplexity
from evop_hub.models import LoadConfig, count_parameters, load
from evop_hub.prune import PruneConfig, prune
from evop_hub.record import PruningRecord
from evop_hub.search import SearchConfig


@pytest.mark.integration
def test_smollm2_pruned_variants_stay_finite_and_above_dense(wikitext_dir, tmp_path):
    base = load("smollm2-135m")
    corpus = load_corpus("wikitext2:test", data_dir=wikitext_dir)
    windows = PerplexityConfig(seq_len=128, max_windows=2)
    dense = perplexity(base.model, base.tokenizer, corpus, windows).ppl
    calibration = CalibrationConfig(sampler="random", clusters=2, seq_len=128, data_dir=str(wikitext_dir))
    variants = [("wanda", 0.5, None), ("wanda", None, "2:4"), ("slicegpt", 0.2, None)]
    for method, sparsity, pattern in variants:
        output = tmp_path / f"{method}-{pattern or sparsity}"
        config = PruneConfig(
            sparsity=sparsity,
            pattern=pattern,
            search=SearchConfig(method=method),
            calibration=calibration,
            corpus="wikitext2:valid",
            output=str(output),
            progress=False,
        )
        prune(copy.deepcopy(base), config)
        record = PruningRecord.load(output)
        reloaded = load(str(output), LoadConfig(trust_remote_code=True))
        ppl = perplexity(reloaded.model, reloaded.tokenizer, corpus, windows).ppl
        assert math.isfinite(ppl) and ppl > dense, (method, pattern, ppl, dense)
        assert record.method == method and record.calibration["sampler"] == "random"
        assert record.parameters_after == count_parameters(reloaded.model)
        assert math.isfinite(record.scores["calibration_loss"]["pruned"])
        if method == "wanda":
            assert record.sparsity == pytest.approx(0.5, abs=1e-3)
            assert record.sparsity_unit == f"weights ({pattern or 'unstructured'})"
            assert record.parameters_after == record.parameters_before
            zeros = sum(int((p == 0).sum()) for p in reloaded.model.model.layers.parameters())
            assert zeros >= record.search["zeroed_weights"]
        else:
            assert reloaded.model.config.sliced_hidden_size == 456  # 576 x 0.8, rounded down to a multiple of 8
            # The blocks shrink; the whole model need not: SliceGPT unties SmolLM2's 28M-parameter embeddings.
            blocks = sum(p.numel() for p in reloaded.model.model.layers.parameters())
            assert blocks < sum(p.numel() for p in base.model.model.layers.parameters())
