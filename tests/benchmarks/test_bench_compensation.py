"""CI tier of the compensation benchmark (issue 24, item 4): the script runs end to end on a tiny random Llama,
writes one row per (seed, method) with finite numbers, the compensated rows differ from the pruned one, the
recovered fractions are (pruned - compensated) / (pruned - dense) of the rows' own numbers, and a second run on
the same output resumes (computes nothing)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny import tiny_llama

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).with_name("bench_compensation.py")
HELDOUT = ["pydoc:test", "shakespeare:test"]
METHODS = ["dense", "pruned", "linear", "ridge=0", "cosine"]


def byte_tokenizer():
    """Byte-level tokenizer with no merges (257 ids): every text tokenizes, offline, into varied ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<eos>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab, [], unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>")


def test_rows_gap_fractions_and_resume(tmp_path):
    model_dir = tmp_path / "tiny"
    tokenizer = byte_tokenizer()
    tiny_llama(layers=6, vocab_size=len(tokenizer), max_position_embeddings=256).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "comp"
    command = [
        sys.executable,
        str(SCRIPT),
        "--models",
        f"tiny={model_dir}",
        "--sparsities",
        "0.34",
        "--seeds",
        "0,1",
        "--samples",
        "4",
        "--seq-len",
        "32",
        "--sampler",
        "random",
        "--mixture",
        "pydoc:train+shakespeare:train",
        "--heldout",
        ",".join(HELDOUT),
        "--heldout-windows",
        "2",
        "--heldout-seq-len",
        "32",
        "--mask",
        "2,3,5",  # two runs (2-3 on block 1, 5 on block 4); a random model's chosen masks often start at block 0
        "--methods",
        ",".join(METHODS),
        "--cosine-steps",
        "20",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["rows"]
    assert [(r["seed"], r["method"]) for r in rows] == [(s, m) for s in (0, 1) for m in METHODS]
    by = {(r["seed"], r["method"]): r for r in rows}
    for seed in (0, 1):
        dense, pruned = by[seed, "dense"], by[seed, "pruned"]
        assert dense["mask"] == [] and pruned["mask"] == [2, 3, 5] and pruned["k"] == 3
        for method in METHODS:
            row = by[seed, method]
            assert list(row["heldout"]) == HELDOUT and all(math.isfinite(v) for v in row["heldout"].values())
            assert row["heldout_mean"] == pytest.approx(sum(row["heldout"].values()) / len(HELDOUT))
        for method in METHODS[2:]:
            row = by[seed, method]
            assert row["mask"] == pruned["mask"] and row["heldout"] != pruned["heldout"]
            assert [r["folded_into_block"] for r in row["fit"]["runs"]] == [1, 4]
            for corpus in HELDOUT:
                gap = pruned["heldout"][corpus] - dense["heldout"][corpus]
                expected = (pruned["heldout"][corpus] - row["heldout"][corpus]) / gap
                assert row["recovered"][corpus] == pytest.approx(expected)
    linear = next(s for s in result["summary"] if s["method"] == "linear")
    expected = sum(by[s, "linear"]["recovered"][c] for s in (0, 1) for c in HELDOUT) / 4
    assert linear["seeds"] == [0, 1] and linear["recovered_mean"] == pytest.approx(expected)
    assert linear["meets"] == (expected >= 0.25 and linear["worst_corpus_change"] <= 0)
    table = out.with_suffix(".md").read_text()
    assert "| tiny | 3 | 0 | linear |" in table and "| tiny | 3 | cosine | 2 |" in table
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    assert '"method"' not in again.stdout  # every row was already there
    assert json.loads(out.with_suffix(".json").read_text())["rows"] == rows


def test_the_cheap_mask_methods_choose_k_blocks():
    from bench_compensation import TIERS, choose_mask

    model = tiny_llama(layers=6)
    ids = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(0))
    protocol = dataclasses.replace(TIERS["cpu"], batch_size=3, search={"population": 4, "generations": 2, "stages": ""})
    for method in ("angular", "shortgpt", "evop"):
        mask = choose_mask(model, ids, 2, dataclasses.replace(protocol, mask_method=method), seed=0)
        assert len(mask) == 2 and mask == sorted(set(mask)) and all(0 <= i < 6 for i in mask)
    assert choose_mask(model, ids, 2, dataclasses.replace(protocol, mask=[4, 1]), seed=0) == [1, 4]
