"""KL-to-dense fitness and staged selection: exact against a plain reference, and the evaluator's shortcuts
(memo, prefix reuse, early termination, resume) hold for KL as they do for NLL."""

from __future__ import annotations

import random

import pytest
import torch.nn.functional as F

from evop_hub.errors import EvopError
from evop_hub.scoring import parse_stages
from evop_hub.search import SearchConfig, SerialEvaluator, StagedEvaluator, evaluator_for, run_search

from ..models.conftest import ARCHITECTURES, build
from .test_evaluator import calibration, plain_mean


def plain_kl(model, dropped, ids):
    """Reference: the dense model and a physically pruned copy, one full forward each per sample, mean over
    predicted positions of ``kl_div(pruned log-probs, dense log-probs)`` summed over the vocabulary."""

    def kl(pruned, row):
        dense = F.log_softmax(model(row[None]).logits[0, :-1].float(), -1)
        small = F.log_softmax(pruned(row[None]).logits[0, :-1].float(), -1)
        return float(F.kl_div(small, dense, log_target=True, reduction="sum"))

    return plain_mean(model, dropped, ids, kl)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_kl_equals_plain_forward_of_pruned_model(arch):
    model = build(arch)
    ids = calibration(model)
    evaluator = SerialEvaluator(model, ids, batch_size=3, fitness="kl")
    masks = [(), (0,), (1, 4), (2, 3, 5), (0, 1, 2, 3, 4)]
    for mask, fit in zip(masks, evaluator.evaluate(masks)):
        assert fit.complete
        assert fit.loss == pytest.approx(plain_kl(model, mask, ids), rel=1e-4, abs=1e-6)
    assert evaluator.loss(()) == pytest.approx(0.0, abs=1e-6)


def test_kl_without_the_reference_cache_and_in_small_head_chunks_is_the_same():
    # A vocabulary too large for the cache (Gemma 3) recomputes the dense log-probs per call; chunks of a few
    # positions split samples and masks differently: neither may change a value.
    model = build("llama", layers=6)
    ids = calibration(model, n=4, seq=16)
    masks = [(0,), (1, 4), (2, 3, 5), (0, 5)]
    cached = [f.loss for f in SerialEvaluator(model, ids, batch_size=2, fitness="kl").evaluate(masks)]
    tight = SerialEvaluator(model, ids, batch_size=2, fitness="kl", cache_bytes=64)
    tight.runner.chunk_tokens = 5
    assert [f.loss for f in tight.evaluate(masks)] == pytest.approx(cached, rel=1e-6)
    assert tight.references == {}


def test_kl_keeps_the_references_that_fit_and_no_more():
    model = build("llama", layers=4)
    ids = calibration(model, n=4, seq=16)
    per_batch = 15 * model.config.vocab_size * 4  # one sample a batch: 15 predicted positions
    evaluator = SerialEvaluator(model, ids, batch_size=1, fitness="kl", cache_bytes=2 * per_batch)
    evaluator.evaluate([(0,), (1, 2)])
    assert sorted(evaluator.references) == [0, 1]


def test_kl_early_termination_keeps_the_selection():
    model = build("llama", layers=8)
    ids = calibration(model, n=6)
    masks = [tuple(sorted(random.Random(i).sample(range(8), 3))) for i in range(24)]
    full = SerialEvaluator(model, ids, batch_size=1, fitness="kl").evaluate(masks)
    fast = SerialEvaluator(model, ids, batch_size=1, fitness="kl")
    fits = fast.evaluate(masks, survivors=4)
    best = sorted(full, key=lambda f: f.loss)[:4]
    assert sorted(f.mask for f in fits if f.complete and f.loss <= best[-1].loss) == sorted(f.mask for f in best)
    assert fast.stats.early_stops > 0


def test_staged_selection_scores_survivors_exactly_and_screens_the_rest():
    model = build("llama", layers=8)
    ids = calibration(model, n=4, seq=16)
    masks = [tuple(sorted(random.Random(i).sample(range(8), 3))) for i in range(20)]
    staged = StagedEvaluator.build(SerialEvaluator(model, ids, fitness="kl"), [(6, 4), (3, 8)])
    fits = staged.evaluate(masks, survivors=2)
    complete = [f for f in fits if f.complete]
    exact = SerialEvaluator(model, ids, fitness="kl")
    assert 2 <= len(complete) <= 3
    for fit in complete:
        assert fit.loss == pytest.approx(exact.loss(fit.mask), rel=1e-6)
    # the screening is the first 4 tokens of every sample, exactly: the stage's ranking is the prefix's ranking
    prefix = SerialEvaluator(model, ids[:, :4], fitness="kl")
    top6 = sorted(masks, key=prefix.loss)[:6]
    assert {f.mask for f in complete} <= set(top6)
    assert staged.stats.screened_out == (len(set(masks)) - 6) + (6 - 3)
    assert all(f.loss == float("inf") for f in fits if f.mask not in top6)
    # every mask, when asked for all of them
    assert all(f.complete for f in staged.evaluate(masks[:3]))


def test_known_masks_skip_the_stages():
    model = build("llama", layers=6)
    ids = calibration(model, n=3, seq=16)
    staged = StagedEvaluator.build(SerialEvaluator(model, ids, fitness="kl"), [(1, 4)])
    known = staged.evaluate([(0, 1)])[0]
    fits = staged.evaluate([(0, 1), (2, 3), (4, 5), (1, 5)], survivors=1)
    assert fits[0] is known and known.complete  # not screened out by a cheaper stage's opinion


@pytest.mark.parametrize(
    "text, error",
    [("8@", "invalid stage"), ("0@64", "invalid stage"), ("4@64,8@32", "more tokens"), ("x", "invalid stage")],
)
def test_bad_stages_are_refused_in_one_line(text, error):
    with pytest.raises(EvopError, match=error):
        parse_stages(text)


def test_stages_not_shorter_than_the_samples_are_left_out():
    model = build("llama", layers=4)
    evaluator = evaluator_for(model, calibration(model, seq=12), SearchConfig(stages="4@6,2@12"))
    assert [stage.input_ids.shape[1] for _, stage in evaluator.stages] == [6]


def test_unknown_fitness_is_refused():
    model = build("llama", layers=4)
    with pytest.raises(EvopError, match="unknown --fitness"):
        SerialEvaluator(model, calibration(model), fitness="mse")


def test_staged_kl_search_resumes_to_the_same_answer(tmp_path):
    model = build("llama", layers=8)
    ids = calibration(model, n=4, seq=16)
    config = SearchConfig(population=8, generations=4, patience=2, stages="4@6")
    whole = run_search(evaluator_for(model, ids, config), 3, config, progress=False)
    assert {(row["fitness"], row["stages"]) for row in whole.trace} == {("kl", "4@6")}  # said in every trace row
    assert whole.summary()["config"]["fitness"] == "kl"  # and in the record (evop_pruning.json's search)
    with pytest.raises(KeyboardInterrupt):
        interrupted = evaluator_for(model, ids, config)
        calls = 0
        original = interrupted.evaluate

        def stop_after_two(masks, survivors=None):
            nonlocal calls
            calls += 1
            if calls > 3:
                raise KeyboardInterrupt
            return original(masks, survivors)

        interrupted.evaluate = stop_after_two
        run_search(interrupted, 3, config, state_dir=tmp_path, progress=False)
    resumed = run_search(evaluator_for(model, ids, config), 3, config, state_dir=tmp_path, resume=True, progress=False)
    assert resumed.resumed and resumed.mask == whole.mask and resumed.loss == pytest.approx(whole.loss, rel=1e-9)
    with pytest.raises(EvopError, match="another model, calibration set or settings"):
        nll = SearchConfig(population=8, generations=4, patience=2, stages="4@6", fitness="nll")
        run_search(evaluator_for(model, ids, nll), 3, nll, state_dir=tmp_path, resume=True, progress=False)


def test_staged_kl_search_over_a_device_pool_chooses_as_the_serial_one():
    # two CPU workers stand in for two GPUs; the cheap stages run on the first
    model = build("llama", layers=8)
    ids = calibration(model, n=4, seq=16)
    config = SearchConfig(population=8, generations=3, patience=2, stages="4@6")
    serial = run_search(evaluator_for(model, ids, config), 3, config, progress=False)
    pooled = run_search(evaluator_for(model, ids, config, ["cpu", "cpu"]), 3, config, progress=False)
    assert pooled.mask == serial.mask and pooled.loss == pytest.approx(serial.loss, rel=1e-9)
