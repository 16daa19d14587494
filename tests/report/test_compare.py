"""`evop-hub compare` (issue 10) on a tiny random Llama and a small topical corpus: the cells' numbers are
the pruned models' perplexities, finished cells are reused, and the report is a function of results.json."""

from __future__ import annotations

import copy
import importlib
import json
import math
from dataclasses import replace

import pytest

import evop_hub.report.compare as cmp
from evop_hub.calibration import CalibrationConfig, calibrate
from evop_hub.data import load_corpus
from evop_hub.errors import EvopError
from evop_hub.evaluate import PerplexityConfig, perplexity
from evop_hub.models import LoadedModel, SourceInfo, drop_blocks
from evop_hub.report import tables
from evop_hub.report.compare import CompareConfig, compare
from evop_hub.report.tables import regenerate, render

from ..calibration.conftest import topical_corpus, word_tokenizer
from ..tiny import tiny_llama

LAYERS, SEQ, WINDOWS = 6, 16, 2


def write_jsonl(path, documents):
    path.write_text("".join(json.dumps({"text": d.text, "label": d.label}) + "\n" for d in documents))
    return str(path)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return (
        write_jsonl(root / "topics.jsonl", topical_corpus(12, seed=0).documents),
        write_jsonl(root / "other.jsonl", topical_corpus(4, seed=1).documents),
    )


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer([d.text for d in topical_corpus(12, seed=0).documents])


def tiny_loaded(tokenizer) -> LoadedModel:
    model = tiny_llama(LAYERS, vocab_size=len(tokenizer), max_position_embeddings=64)
    return LoadedModel(model, tokenizer, SourceInfo(name="tiny", path="tiny"))


def small_config(corpora, **changes) -> CompareConfig:
    calibration, other = corpora
    config = CompareConfig(
        sparsities=[0.2, 0.4],
        methods=["evop", "sleb", "slicegpt"],
        seeds=[0, 1],
        calibration=calibration,
        eval=[calibration, other],
        samples=3,
        seq_len=SEQ,
        eval_seq_len=SEQ,
        eval_windows=WINDOWS,
        exhaustive_limit=15,
        search={"population": 6, "generations": 3, "patience": 2},
        tasks=[],
        speed_prompt_len=8,
        speed_new_tokens=3,
        speed_repeats=1,
        speed_warmup=0,
    )
    return replace(config, **changes)


@pytest.fixture(scope="module")
def run(corpora, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "r"
    results = compare(
        tiny_loaded(tokenizer), small_config(corpora), out, command="evop-hub compare tiny", progress=False
    )
    return out, results


def test_every_cell_is_written_with_its_provenance(run):
    out, results = run
    ids = [c["id"] for c in results["cells"]]
    assert len(ids) == len(set(ids))
    assert {p.stem for p in (out / "cells").glob("*.json")} == set(ids)
    expected = {
        "dense",
        "evop-ccds-s0.2-seed0",
        "sleb-random-s0.4-seed1",
        "slicegpt-random-s0.2-seed0",
        "evop-random-s0.2-seed0",
        "sleb-ccds-s0.4-seed1",
        "exhaustive-ccds-s0.2-seed0",
        "sleb-ccds-s0.4-seed0-cluster2",
    }
    assert expected <= set(ids)
    assert "exhaustive-ccds-s0.4-seed0" not in ids  # C(6, 3) = 20 patterns > exhaustive_limit 15
    for cell in results["cells"]:
        p = cell["provenance"]
        assert p["command"] == "evop-hub compare tiny" and p["seconds"] >= 0 and "torch" in p["versions"]
        assert p["seeds"] == {"calibration": cell["seed"], "search": cell["seed"]} and p["hardware"]
        assert all(math.isfinite(h["ppl"]) for h in cell["heldout"].values())
    # speed only for the first seed of the main rows
    timed = {c["id"] for c in results["cells"] if "speed" in c}
    assert timed == {
        "evop-ccds-s0.2-seed0",
        "evop-ccds-s0.4-seed0",
        "sleb-random-s0.2-seed0",
        "sleb-random-s0.4-seed0",
        "slicegpt-random-s0.2-seed0",
        "slicegpt-random-s0.4-seed0",
    }
    # the exhaustive optimum is never above the searches on the same calibration set
    by_id = {c["id"]: c for c in results["cells"]}
    for seed in (0, 1):
        best = by_id[f"exhaustive-ccds-s0.2-seed{seed}"]["calibration_loss"]
        assert best <= by_id[f"evop-ccds-s0.2-seed{seed}"]["calibration_loss"] + 1e-9
        assert best <= by_id[f"sleb-ccds-s0.2-seed{seed}"]["calibration_loss"] + 1e-9


def test_single_cluster_cells_calibrate_on_that_cluster_only(run, corpora, tokenizer):
    config = CalibrationConfig(clusters=3, samples_per_cluster=1, seq_len=SEQ, seed=0, cluster=2)
    drawn = calibrate(corpora[0], tokenizer, config)
    assert drawn.input_ids.shape == (3, SEQ)
    assert [s["cluster"] for s in drawn.metadata["samples"]] == [2, 2, 2]
    with pytest.raises(EvopError, match="cluster 3"):
        CalibrationConfig(clusters=3, cluster=3)


def test_cell_perplexity_is_the_physically_pruned_models(run, corpora, tokenizer):
    _, results = run
    cell = next(c for c in results["cells"] if c["id"] == "evop-ccds-s0.4-seed1")
    pruned = copy.deepcopy(tiny_loaded(tokenizer).model)  # same seed: the same random model
    drop_blocks(pruned, cell["mask"])
    assert cell["parameters_after"] == sum(p.numel() for p in pruned.parameters()) < cell["parameters_before"]
    for spec, value in cell["heldout"].items():
        reference = perplexity(pruned, tokenizer, load_corpus(spec), PerplexityConfig(seq_len=SEQ, max_windows=WINDOWS))
        assert value["nll"] == pytest.approx(reference.nll, rel=1e-5)
        assert value["ppl"] == pytest.approx(reference.ppl, rel=1e-5)
    dense = next(c for c in results["cells"] if c["id"] == "dense")
    for spec, value in dense["heldout"].items():
        reference = perplexity(
            tiny_loaded(tokenizer).model, tokenizer, load_corpus(spec), PerplexityConfig(SEQ, 1, WINDOWS)
        )
        assert value["ppl"] == pytest.approx(reference.ppl, rel=1e-5)


def test_report_regenerates_from_json(run):
    out, results = run
    written = (out / "report.md").read_text()
    assert render(json.loads((out / "results.json").read_text())) == written
    (out / "report.md").unlink()
    regenerate(out)
    assert (out / "report.md").read_text() == written
    assert (out / cmp.FIG1A).stat().st_size > 0 and (out / cmp.FIG1C).stat().st_size > 0
    for title in ("Table 1", "Table 2: in-domain", "Table 3: out-of-domain", "Table 4", "Figure 1a", "Figure 1c"):
        assert title in written
    cell = next(c for c in results["cells"] if c["id"] == "evop-ccds-s0.2-seed0")
    assert str(cell["mask"]) in written
    assert "Zero-shot tasks: not requested" in written
    assert " ± " in written  # two seeds: mean ± spread
    assert f"{results['config']['eval'][0]} (plain): {WINDOWS} × {SEQ} tokens" in written  # each corpus's text form


def test_resume_reuses_finished_cells_and_computes_only_new_ones(run, corpora, tokenizer, monkeypatch):
    out, results = run
    with pytest.raises(EvopError, match="--resume"):
        compare(tiny_loaded(tokenizer), small_config(corpora), out, progress=False)
    computed = []
    real = cmp.run_cell
    monkeypatch.setattr(cmp, "run_cell", lambda ws, key: computed.append(key.id) or real(ws, key))
    again = compare(tiny_loaded(tokenizer), small_config(corpora), out, resume=True, progress=False)
    assert computed == [] and again["cells_reused"] == len(results["cells"])
    assert [c["id"] for c in again["cells"]] == [c["id"] for c in results["cells"]]
    # A report over fewer seeds, every cell finished: made without the model (e.g. here, from a GPU run's cells).
    loaded_property = cmp.Workspace.loaded
    monkeypatch.setattr(cmp.Workspace, "loaded", property(lambda ws: pytest.fail("loaded the model needlessly")))
    fewer = compare(tiny_loaded(tokenizer), small_config(corpora, seeds=[0]), out, resume=True, progress=False)
    assert computed == [] and {c["seed"] for c in fewer["cells"]} <= {None, 0}
    monkeypatch.setattr(cmp.Workspace, "loaded", loaded_property)
    more = compare(
        tiny_loaded(tokenizer),
        small_config(corpora, seeds=[0, 1, 2], fig1c=False, ablations=False, fig1a=False),
        out,
        resume=True,
        progress=False,
    )
    assert computed and all(i.endswith("seed2") for i in computed)
    assert more["cells_reused"] == len(more["cells"]) - len(computed)
    monkeypatch.setattr(cmp.Workspace, "loaded", property(lambda ws: pytest.fail("loaded the model needlessly")))
    with pytest.raises(EvopError, match="other settings"):  # refused before the model loads
        compare(tiny_loaded(tokenizer), small_config(corpora, seq_len=SEQ + 1), out, resume=True, progress=False)
    # Where the data lies and how much cache memory there is change no number: such a resume is accepted.
    compare(
        tiny_loaded(tokenizer),
        small_config(corpora, data_dir="/elsewhere", cache_gib=2.0),
        out,
        resume=True,
        progress=False,
    )


def test_settings_found_wrong_before_any_cell_runs(corpora, tokenizer, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(cmp, "run_cell", lambda ws, key: pytest.fail("a cell ran"))
    monkeypatch.setattr(cmp.SearchConfig, "exhaustive_limit", 10)  # C(6,2) = 15 patterns is then too many
    with pytest.raises(EvopError, match=r"method exhaustive at sparsity 0.2 would evaluate C\(6,2\) = 15"):
        compare(
            tiny_loaded(tokenizer),
            small_config(corpora, methods=["exhaustive"], exhaustive_limit=1),
            tmp_path / "a",
            progress=False,
        )
    if not torch.cuda.is_available():
        with pytest.raises(EvopError, match="no CUDA GPU is visible here"):
            compare(tiny_loaded(tokenizer), small_config(corpora, device="cuda"), tmp_path / "b", progress=False)
    with pytest.raises(EvopError, match="not a torch device"):
        compare(tiny_loaded(tokenizer), small_config(corpora, device="gpu"), tmp_path / "c", progress=False)


def test_overwrite_deletes_only_what_compare_wrote(corpora, tokenizer, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "cells").mkdir()
    (out / "cells" / "stale.json").write_text("{}")
    config = small_config(
        corpora, methods=["sleb"], sparsities=[0.2], seeds=[0], ablations=False, fig1a=False, fig1c=False, speed=False
    )
    with pytest.raises(EvopError, match="already exists"):
        compare(tiny_loaded(tokenizer), config, out, progress=False)
    results = compare(tiny_loaded(tokenizer), config, out, overwrite=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine" and not (out / "cells" / "stale.json").exists()
    assert [c["id"] for c in results["cells"]] == ["dense", "sleb-random-s0.2-seed0"]


def test_unreachable_task_data_is_reported_not_fatal(corpora, tokenizer, tmp_path, monkeypatch):
    tasks_module = importlib.import_module("evop_hub.evaluate.tasks")  # the package exports a function of that name

    calls = []

    def offline(*args, **kwargs):
        calls.append(1)
        raise tasks_module.TasksUnavailable("cannot fetch task data from the Hugging Face Hub (offline)")

    monkeypatch.setattr(cmp, "tasks", offline)  # the name compare calls
    config = small_config(
        corpora,
        methods=["sleb"],
        sparsities=[0.2],
        seeds=[0],
        ablations=False,
        fig1a=False,
        fig1c=False,
        speed=False,
        tasks=["arc_easy"],
    )
    results = compare(tiny_loaded(tokenizer), config, tmp_path / "r", progress=False)
    assert len(calls) == 1  # tried once on the dense model, then not again
    assert all(
        c["tasks"] == {"unavailable": "cannot fetch task data from the Hugging Face Hub (offline)"}
        for c in results["cells"]
    )
    assert "unavailable: cannot fetch task data" in (tmp_path / "r" / "report.md").read_text()


def test_a_model_failing_its_tasks_stops_the_run_and_marks_nothing_else(corpora, tokenizer, tmp_path, monkeypatch):
    """A failure while scoring one model (here a stand-in CUDA error on the third call) is not "task data
    unavailable": the run stops there, the cells before it keep their scores, and --resume scores the rest."""
    tasks_module = importlib.import_module("evop_hub.evaluate.tasks")
    calls = []

    def scored(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return tasks_module.TasksResult(
            {"arc_easy": {"acc": 0.25 * len(calls)}}, {"arc_easy": 4}, {"acc": 0.25 * len(calls)}, 0, None, "stand-in"
        )

    monkeypatch.setattr(cmp, "tasks", scored)
    config = small_config(
        corpora,
        methods=["sleb"],
        sparsities=[0.2],
        seeds=[0, 1, 2],
        ablations=False,
        fig1a=False,
        fig1c=False,
        speed=False,
        tasks=["arc_easy"],
        task_limit=4,
    )
    with pytest.raises(RuntimeError, match="CUDA error"):
        compare(tiny_loaded(tokenizer), config, tmp_path / "r", progress=False)
    assert sorted(p.stem for p in (tmp_path / "r" / "cells").glob("*.json")) == ["dense", "sleb-random-s0.2-seed0"]
    results = compare(tiny_loaded(tokenizer), config, tmp_path / "r", resume=True, progress=False)
    accuracies = [c["tasks"]["mean"]["acc"] for c in results["cells"]]
    assert accuracies == [0.25, 0.5, 1.0, 1.25]  # dense, then seeds 0, 1 (retried after the failure) and 2
    report = (tmp_path / "r" / "report.md").read_text()
    assert "| sleb | 0.2 (blocks) |" in report and "0.9167 ± 0.3819" in report  # the three seeds' 0.5, 1.0, 1.25
    assert "only the first 4 examples of each task" in report


def test_table1_says_which_seeds_lack_task_scores():
    cells = [
        {
            "method": "dense",
            "sampler": "random",
            "sparsity": 0.0,
            "cluster": None,
            "seed": 0,
            "tasks": {"scores": {"piqa": {"acc": 0.7}}, "mean": {"acc": 0.7}},
        }
    ]
    cells += [
        {
            "method": "sleb",
            "sampler": "random",
            "sparsity": 0.2,
            "cluster": None,
            "seed": seed,
            "tasks": {"scores": {"piqa": {"acc": 0.6}}, "mean": {"acc": 0.6}}
            if seed == 0
            else {"unavailable": "an older run's reason"},
        }
        for seed in (0, 1, 2)
    ]
    lines = "\n".join(
        tables._table1(
            tables.Cells(
                {
                    "config": {
                        "tasks": ["piqa"],
                        "methods": ["sleb"],
                        "sparsities": [0.2],
                        "baseline_sampler": "random",
                        "speed": False,
                    },
                    "cells": cells,
                }
            )
        )
    )
    assert "Zero-shot tasks of sleb at 0.2: 1 of 3 seeds (seeds 1, 2: an older run's reason)" in lines


def test_config_toml_round_trip_and_presets(tmp_path):
    for name in cmp.PRESETS:
        config = cmp.preset(name)
        path = tmp_path / f"{name}.toml"
        path.write_text(config.to_toml())
        assert CompareConfig.load(path) == config
    gpu = cmp.preset("gpu")
    assert (gpu.samples, gpu.seq_len, gpu.eval_seq_len, gpu.sparsities, gpu.seeds, gpu.device) == (
        5,
        2048,
        2048,
        [0.1, 0.2, 0.3],
        [0, 1, 2],
        "cuda",
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("sparsity = [0.1]", "unknown compare setting"),
        ("sparsities = 0.1", "is not a list"),
        ("sparsities = [1.5]", "strictly between 0 and 1"),
        ("methods = ['evop', 'nope']", "unknown method 'nope'"),
        ("seeds = [0, 0]", "must not repeat"),
        ("samples = 0", "at least 1"),
        ("[search]\nmethod = 'sleb'", "set per cell"),
        ("sparsities = [", "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(EvopError, match=message) as info:
        CompareConfig.load(path)
    assert "\n" not in str(info.value)


def test_committed_results_page_is_what_its_json_says():
    """tests/benchmarks/RESULTS.md quotes compare/smollm2-gpu/report.md: it must be the rendering of results.json."""
    from pathlib import Path

    from evop_hub.report.tables import render

    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "compare" / "smollm2-gpu"
    results = json.loads((folder / "results.json").read_text())
    assert render(results) == (folder / "report.md").read_text()
    assert len({c["seed"] for c in results["cells"]} - {None}) == 2 and len(results["cells"]) == 77
