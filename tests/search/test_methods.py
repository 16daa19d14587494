"""Each search method does what its paper says, checked against brute force on tiny models."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from evop_hub import progress
from evop_hub.errors import EvopError
from evop_hub.search import SearchConfig, SerialEvaluator, run_search

from ..models.conftest import build

LAYERS = 8


@pytest.fixture(scope="module")
def setup():
    model = build("llama", layers=LAYERS)
    ids = torch.randint(0, model.config.vocab_size, (3, 10), generator=torch.Generator().manual_seed(3))
    reference = SerialEvaluator(model, ids, batch_size=3)  # full evaluations, no early stops
    return model, ids, reference


def fresh(setup):
    model, ids, _ = setup
    return SerialEvaluator(model, ids, batch_size=1)


def test_exhaustive_finds_the_brute_force_optimum(setup):
    reference = setup[2]
    masks = list(itertools.combinations(range(LAYERS), 3))
    best = min(reference.evaluate(masks), key=lambda f: f.loss)
    result = run_search(fresh(setup), 3, SearchConfig(method="exhaustive", chunk=10), progress=False)
    assert result.mask == best.mask
    assert result.loss == pytest.approx(best.loss, rel=1e-6)  # batch 1 vs 3: float32 rounding only


def test_enumerations_show_patterns_done_of_all(setup, tmp_path, capsys, monkeypatch):
    """Exhaustive and random search know how many patterns they try: the bar counts those, so it has an ETA,
    and a resumed run's bar starts at the patterns already done, not at its count of checkpoints."""
    monkeypatch.setattr(progress, "_shown", True)  # a `--quiet` CLI test earlier in this process silenced bars
    config, total = SearchConfig(method="exhaustive", chunk=10), math.comb(LAYERS, 3)
    run_search(fresh(setup), 3, config, state_dir=tmp_path)
    renders = capsys.readouterr().err.split("\r")
    assert any(f" 10/{total} " in line for line in renders)  # the first chunk, counted of all
    assert f" {total}/{total} " in renders[-1] and "pattern" in renders[-1]
    run_search(fresh(setup), 3, config, state_dir=tmp_path, resume=True)
    assert all(f" {total}/{total} " in line for line in capsys.readouterr().err.split("\r") if "exhaustive" in line)


def test_exhaustive_refuses_huge_spaces(setup):
    with pytest.raises(EvopError, match=r"C\(8,4\) = 70"):
        run_search(fresh(setup), 4, SearchConfig(method="exhaustive", exhaustive_limit=50), progress=False)


def test_sleb_is_greedy_removal(setup):
    reference = setup[2]
    dropped: tuple = ()
    for _ in range(3):
        options = [tuple(sorted((*dropped, i))) for i in range(LAYERS) if i not in dropped]
        dropped = min(reference.evaluate(options), key=lambda f: f.loss).mask
    result = run_search(fresh(setup), 3, SearchConfig(method="sleb"), progress=False)
    assert result.mask == dropped
    assert [row["best_mask"] for row in result.trace][-1] == list(dropped)


def test_shortgpt_drops_lowest_block_influence(setup):
    evaluator = fresh(setup)
    influence = [1 - c for c in evaluator.layer_cosines(1)]
    result = run_search(evaluator, 2, SearchConfig(method="shortgpt"), progress=False)
    assert result.mask == tuple(sorted(sorted(range(LAYERS), key=lambda i: influence[i])[:2]))


def test_angular_drops_the_closest_contiguous_run(setup):
    evaluator = fresh(setup)
    cos = evaluator.layer_cosines(3)
    start = max(range(len(cos)), key=lambda i: cos[i])  # smallest angle = largest cosine
    result = run_search(evaluator, 3, SearchConfig(method="angular"), progress=False)
    assert result.mask == (start, start + 1, start + 2)


def test_random_search_uses_its_budget_and_keeps_the_best(setup):
    result = run_search(fresh(setup), 2, SearchConfig(method="random", budget=12, chunk=5), progress=False)
    assert result.trace[-1]["step"] == 12
    assert result.loss == min(r["best"] for r in result.trace)


def test_evop_keeps_k_fixed_and_is_reproducible(setup):
    config = SearchConfig(method="evop", population=10, generations=5, seed=7)
    a = run_search(fresh(setup), 3, config, progress=False)
    b = run_search(fresh(setup), 3, config, progress=False)
    assert len(a.mask) == 3 and a.mask == b.mask
    assert [r["best"] for r in a.trace] == [r["best"] for r in b.trace]
    assert all(len(r["best_mask"]) == 3 for r in a.trace)
    bests = [r["best"] for r in a.trace if r.get("phase") is None]
    assert bests == sorted(bests, reverse=True), "elitism: the best loss never gets worse"


@pytest.mark.parametrize("local", [True, False])
def test_evop_trace_ends_on_the_answer(setup, local):
    """The last children are scored after the last generation; without the local search they once went
    untraced, so a run could return a better mask than its trace's best."""
    config = SearchConfig(method="evop", population=6, generations=2, seed=3, local_search=local)
    result = run_search(fresh(setup), 3, config, progress=False)
    assert result.trace[-1]["best_mask"] == list(result.mask) and result.trace[-1]["best"] == result.loss
    assert result.trace[-1]["phase"] == ("local_search" if local else "last_children")
    assert result.loss == min(r["best"] for r in result.trace)


def test_evop_result_is_a_local_optimum_under_swaps(setup):
    result = run_search(fresh(setup), 3, SearchConfig(method="evop", population=8, generations=3), progress=False)
    reference = setup[2]
    kept = [i for i in range(LAYERS) if i not in result.mask]
    neighbours = [tuple(sorted((set(result.mask) - {o}) | {i})) for o in result.mask for i in kept]
    assert all(f.loss >= result.loss - 1e-12 for f in reference.evaluate(neighbours))
    assert math.isfinite(result.dense_loss)


def test_unknown_method_is_refused(setup):
    with pytest.raises(EvopError, match="unknown --method"):
        run_search(fresh(setup), 2, SearchConfig(method="magic"), progress=False)
