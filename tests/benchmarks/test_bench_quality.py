"""CI tier of the search-quality benchmark (issue 6): the script runs end to end, tiny, and its
JSON holds every cell with finite numbers, held-out scores equal to the perplexity of the
physically pruned model, and evop's calibration loss never above SLEB's on the same set."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import evop_hub
from evop_hub.data import load_corpus
from evop_hub.evaluate import PerplexityConfig, perplexity
from evop_hub.models import drop_blocks

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).with_name("bench_quality.py")
BLOCKS, K, SEEDS, WINDOW = 12, 3, [0], 64


@pytest.fixture(scope="module")
def run(wikitext_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quality"
    command = [
        sys.executable,
        str(SCRIPT),
        "--tier",
        "cpu",
        "--blocks",
        str(BLOCKS),
        "--ks",
        str(K),
        "--seeds",
        ",".join(map(str, SEEDS)),
        "--samples",
        "3",
        "--seq-len",
        "32",
        "--heldout-windows",
        "1",
        "--heldout-seq-len",
        str(WINDOW),
        "--data-dir",
        str(wikitext_dir),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(Path(f"{out}.json").read_text()), Path(f"{out}.md").read_text(), done.stdout


def test_every_cell_is_present_and_finite(run):
    result, table, _ = run
    (model,) = result["models"]
    assert model["blocks"] == BLOCKS
    heldout = result["protocol"]["heldout"]
    assert [(c["seed"], c["k"]) for c in model["cells"]] == [(s, K) for s in SEEDS]
    for cell in model["cells"]:
        assert set(cell["runs"]) == {"evop_ccds", "evop_random", "sleb_ccds", "sleb_random"}
        for run_ in cell["runs"].values():
            assert len(set(run_["mask"])) == K and all(0 <= i < BLOCKS for i in run_["mask"])
            assert math.isfinite(run_["calibration_loss"])
            assert set(run_["heldout"]) == set(heldout) and all(map(math.isfinite, run_["heldout"].values()))
            assert run_["heldout_mean"] == pytest.approx(sum(run_["heldout"].values()) / len(heldout))
            assert str(run_["mask"]) in table


def test_evop_never_above_sleb_on_the_same_calibration_set(run):
    result, _, stdout = run
    (model,) = result["models"]
    for cell in model["cells"]:
        assert cell["runs"]["evop_ccds"]["calibration_loss"] <= cell["runs"]["sleb_ccds"]["calibration_loss"]
    # The summary and the verdict agree with the cells they summarise.
    (row,) = model["summary"]
    runs = [c["runs"] for c in model["cells"]]
    mean = lambda name: sum(r[name]["heldout_mean"] for r in runs) / len(runs)  # noqa: E731
    assert row["heldout_mean"]["evop_ccds"] == pytest.approx(mean("evop_ccds"))
    assert row["heldout_win"] == (mean("evop_ccds") < mean("sleb_random"))
    strict = sum(r["evop_ccds"]["calibration_loss"] < r["sleb_ccds"]["calibration_loss"] for r in runs)
    assert row["calibration_strict_wins"] == strict
    assert result["acceptance"]["holds"] == row["heldout_win"]
    assert ("acceptance HOLDS" if result["acceptance"]["holds"] else "acceptance FAILS") in stdout


def test_heldout_scores_are_the_pruned_models_perplexity(run, wikitext_dir):
    """Independent reference: physically remove the blocks from a copy and run ``perplexity``."""
    result, _, _ = run
    (model,) = result["models"]
    loaded = evop_hub.load("smollm2-135m")
    evop_hub.drop(loaded, range(BLOCKS, loaded.record.num_blocks))
    mask = model["cells"][0]["runs"]["evop_ccds"]["mask"]
    pruned = copy.deepcopy(loaded.model)
    drop_blocks(pruned, mask)
    for spec, nll in model["cells"][0]["runs"]["evop_ccds"]["heldout"].items():
        corpus = load_corpus(spec, data_dir=wikitext_dir)
        reference = perplexity(pruned, loaded.tokenizer, corpus, PerplexityConfig(seq_len=WINDOW, max_windows=1))
        assert nll == pytest.approx(reference.nll, rel=1e-5), spec
