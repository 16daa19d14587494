"""CI tier of the robustness benchmark (issue 26): the script runs end to end on a truncated SmolLM2, writes the
issue's JSON list of rows with finite numbers, and a second run on the same output resumes (computes nothing)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).with_name("bench_robust.py")
KEYS = {"model", "k", "seed", "method", "mask", "heldout_mean", "heldout", "calibration_tokens", "seconds"}


def test_rows_are_complete_finite_and_a_second_run_resumes(wikitext_dir, tmp_path):
    out = tmp_path / "robust"
    command = [
        sys.executable,
        str(SCRIPT),
        "--tier",
        "cpu",
        "--blocks",
        "8",
        "--sparsities",
        "0.25",
        "--seeds",
        "0",
        "--samples",
        "3",
        "--paper-samples",
        "2",
        "--seq-len",
        "24",
        "--stages",
        "2@8",
        "--mixture",
        "pydoc:valid",
        "--heldout-windows",
        "1",
        "--heldout-seq-len",
        "32",
        "--data-dir",
        str(wikitext_dir),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=SCRIPT.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())
    assert {r["method"] for r in rows} == {"default", "paper", "sleb", "shortgpt", "angular"}  # no oracle for SmolLM2
    for row in rows:
        assert set(row) == KEYS and row["k"] == 2 and len(row["mask"]) == 2
        assert math.isfinite(row["heldout_mean"]) and len(row["heldout"]) == 4
    default = next(r for r in rows if r["method"] == "default")
    assert default["calibration_tokens"] == 3 * 24
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["details"][0]["fitness"] == "kl" and meta["details"][0]["stages"] == "2@8"
    assert "| smollm2-135m | 2 |" in out.with_suffix(".md").read_text()
    again = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=SCRIPT.parent)
    assert again.returncode == 0 and '"method"' not in again.stdout  # every row was already there
    assert json.loads(out.with_suffix(".json").read_text()) == rows
