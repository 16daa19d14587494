"""CPU tier of the end-to-end benchmark (issue 23): a tiny random Llama with SmolLM2's tokenizer goes through the
real `evop-hub prune` CLI in a child process; every phase is timed and the output reloads with its blocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).with_name("bench_e2e.py")


def test_the_cli_runs_end_to_end_and_every_phase_is_timed(wikitext_dir, tmp_path):
    out = tmp_path / "e2e"
    command = [
        sys.executable,
        str(SCRIPT),
        "--shape",
        "tiny",
        "--out",
        str(out),
        "--",
        "--corpus",
        "pydoc:valid",
        "--clusters",
        "3",
        "--seq-len",
        "64",
        "--stages",
        "2@16",
        "--population",
        "6",
        "--generations",
        "2",
        "--quiet",
        "--data-dir",
        str(wikitext_dir),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=SCRIPT.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["blocks"] == 6 and result["blocks_after"] == 6 - result["search"]["k"]
    assert all(seconds is not None and seconds >= 0 for seconds in result["phases_seconds"].values())
    assert sum(result["phases_seconds"].values()) <= result["wall_seconds"]
    assert result["placement"].startswith("loaded on cpu")  # no GPU here: the default stays on the CPU
