"""The held-out oracle script, tiny: its exact top patterns and the rank it gives a chosen pattern must
equal a brute-force ranking by ``bench_quality``'s own held-out score (the mean over corpora)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from bench_heldout_oracle import equal_weights, main
from bench_quality import TIERS, held_out, load_model, score

pytestmark = pytest.mark.integration
BLOCKS, WINDOWS, SEQ_LEN, TOP = 12, 1, 32, 3


def test_oracle_ranks_patterns_as_brute_force_does(wikitext_dir, tmp_path):
    runs = tmp_path / "runs.json"  # the shape of a bench_quality JSON: one model, cells of runs with masks
    cells = [{"seed": i, "k": 1, "runs": {"evop_ccds": {"mask": [i]}}} for i in range(BLOCKS)]  # every pattern "chosen"
    runs.write_text(json.dumps({"models": [{"cells": cells}]}))
    argv = [
        "--model",
        "smollm2-135m",
        "--tier",
        "cpu",
        "--ks",
        "1",
        "--top",
        str(TOP),
        "--runs",
        str(runs),
        "--heldout-windows",
        str(WINDOWS),
        "--heldout-seq-len",
        str(SEQ_LEN),
        "--chunk",
        "5",
        "--data-dir",
        str(wikitext_dir),
        "--out",
        str(tmp_path / "oracle"),
    ]
    result = main(argv)
    assert result["ks"][1]["scan"]["resumed"] is False
    # The same command again picks the finished scan up from its checkpoints (a device call that ran out of
    # time resumes the same way, chunk by chunk) and reports the same ranking.
    again = main(argv)
    assert again["ks"][1]["scan"]["resumed"] is True
    assert again["ks"][1]["top"] == result["ks"][1]["top"] and again["ks"][1]["chosen"] == result["ks"][1]["chosen"]

    protocol = replace(
        TIERS["cpu"], blocks=BLOCKS, heldout_windows=WINDOWS, heldout_seq_len=SEQ_LEN, data_dir=str(wikitext_dir)
    )
    heldout = held_out(load_model("smollm2-135m", protocol), protocol)
    means = {(i,): score(heldout, (i,))["heldout_mean"] for i in range(BLOCKS)}
    ranking = sorted(means, key=means.get)

    row = result["ks"][1]
    assert row["patterns"] == BLOCKS
    assert [tuple(t["mask"]) for t in row["top"]] == ranking[:TOP]
    assert [t["heldout_mean"] for t in row["top"]] == pytest.approx([means[m] for m in ranking[:TOP]], rel=1e-6)
    for rank, mask in enumerate(ranking, 1):  # exact ranks for the top, None (not known) below it
        got = row["chosen"][str(list(mask))]
        assert got["heldout_mean"] == pytest.approx(means[mask], rel=1e-6)
        assert got["rank"] == (rank if rank <= TOP else None), mask
        assert got["runs"] == [f"evop_ccds seed {mask[0]}"]
    assert (tmp_path / "oracle.md").read_text().count("\n| ") >= TOP


def test_corpora_with_fewer_windows_are_repeated_to_equal_weight():
    a, b = torch.arange(12).view(4, 3), torch.arange(100, 106).view(2, 3)
    batch = equal_weights({"a": a, "b": b})
    assert batch.tolist() == [*a.tolist(), *b.tolist(), *b.tolist()]
    # Per-window values averaged over the batch = mean of the two corpora's means.
    assert batch.float().mean() == pytest.approx((a.float().mean() + b.float().mean()) / 2)
