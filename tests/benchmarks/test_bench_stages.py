"""CI tier of the staged-selection probe: it runs end to end and its rank correlations are real numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).with_name("bench_stages.py")


def test_prefix_rankings_are_scored_against_the_full_ranking(wikitext_dir, tmp_path):
    out = tmp_path / "stages"
    command = [
        sys.executable,
        str(SCRIPT),
        "--samples",
        "3",
        "--seq-len",
        "32",
        "--masks",
        "6",
        "--prefixes",
        "8,16",
        "--keep",
        "3",
        "--corpus",
        "pydoc:valid",
        "--data-dir",
        str(wikitext_dir),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=SCRIPT.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["tokens"] for r in result["rows"]] == [8, 16]
    assert all(-1 <= r["spearman"] <= 1 and isinstance(r["best_kept"], bool) for r in result["rows"])
    assert result["masks"] >= 6 and "| 16 |" in out.with_suffix(".md").read_text()
