"""`evop-hub prune` killed with SIGKILL mid-search resumes to the same answer as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from evop_hub.calibration import CalibrationSet, tokenizer_fingerprint
from evop_hub.search import STATE_FILE, TRACE_FILE

from ..models.test_save_and_load import llama_dir  # noqa: F401  (fixture)

ARGS = ["--num-drop", "3", "--population", "12", "--generations", "12", "--quiet", "--search-seed", "5"]


def prune_cmd(model_dir, calibration, out, *extra):
    return [
        sys.executable,
        "-m",
        "evop_hub.cli",
        "prune",
        str(model_dir),
        "--calibration",
        str(calibration),
        "--output",
        str(out),
        *ARGS,
        *extra,
    ]


@pytest.fixture
def calibration_file(llama_dir, tmp_path):  # noqa: F811
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    ids = torch.randint(0, 90, (8, 48), generator=torch.Generator().manual_seed(0))
    meta = {"sampler": "random", "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "corpus": "synthetic"}
    return CalibrationSet(ids, meta).save(tmp_path / "cal.safetensors")


def bests(out):
    rows = [json.loads(line) for line in (out / ".evop" / TRACE_FILE).read_text().splitlines()]
    return [(r["step"], r.get("phase"), r["best"], r["best_mask"]) for r in rows]


def test_sigkill_then_resume_matches_uninterrupted_run(llama_dir, calibration_file, tmp_path):  # noqa: F811
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    whole = tmp_path / "whole"
    subprocess.run(prune_cmd(llama_dir, calibration_file, whole), check=True, env=env, capture_output=True)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        prune_cmd(llama_dir, calibration_file, cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = cut / ".evop" / STATE_FILE
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text()).get("method_state", {}).get("generation", 0) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the search finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "config.json").exists(), "nothing is published before the search ends"

    again = subprocess.run(prune_cmd(llama_dir, calibration_file, cut), env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # an interrupted run is not silently restarted

    subprocess.run(prune_cmd(llama_dir, calibration_file, cut, "--resume"), check=True, env=env, capture_output=True)
    record_whole = json.loads((whole / "evop_pruning.json").read_text())
    record_cut = json.loads((cut / "evop_pruning.json").read_text())
    assert record_cut["dropped_blocks"] == record_whole["dropped_blocks"]
    assert record_cut["search"]["resumed"] is True
    assert bests(cut) == bests(whole)
    assert bests(whole)[-1][1] == "local_search"  # the trace ends with the search's last phase


def test_resume_with_other_settings_is_refused(llama_dir, calibration_file, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    subprocess.run(prune_cmd(llama_dir, calibration_file, out), check=True, capture_output=True)
    changed = prune_cmd(llama_dir, calibration_file, out, "--resume")
    changed[changed.index("5")] = "6"  # another search seed
    result = subprocess.run(changed, capture_output=True, text=True)
    assert result.returncode == 2 and "another model, calibration set or settings" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "magic"], "unknown --method 'magic'"),
        (["--sparsity", "1.5"], "--sparsity must be strictly between 0 and 1"),
        (
            ["--method", "sleb", "--pattern", "2:4"],
            "--pattern is Wanda's N:M weight sparsity; sleb removes whole blocks",
        ),
        (["--population", "0"], "--population must be at least 2"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--ray-address", "auto"], "--ray-address needs --search-devices"),
        (["--corpus", "wikitext3"], "unknown corpus 'wikitext3'"),
        (["--corpus", "wiki-leads:bogus"], "corpus 'wiki-leads' has no split 'bogus'"),
        (["--calibration", "missing.safetensors"], "calibration file missing.safetensors not found"),
        (["--method", "wanda", "--plot", "w.png"], "--plot draws a block search's convergence; wanda searches nothing"),
    ],
)
def test_bad_settings_fail_before_any_loading(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "evop_hub.cli", "prune", "no/such-model", "--output", str(tmp_path / "o"), *args],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
    assert "Hub" not in result.stderr  # the model was never looked up


def test_resume_with_another_calibration_draw_is_refused(llama_dir, tmp_path):  # noqa: F811
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(f"w{(7 * i + j) % 90}" for j in range(40)) for i in range(30)))
    out = tmp_path / "run"
    base = [
        sys.executable,
        "-m",
        "evop_hub.cli",
        "prune",
        str(llama_dir),
        "--corpus",
        str(corpus),
        "--sampler",
        "random",
        "--clusters",
        "2",
        "--seq-len",
        "16",
        "--output",
        str(out),
        "--num-drop",
        "1",
        "--population",
        "4",
        "--generations",
        "1",
        "--quiet",
    ]
    subprocess.run(base, check=True, capture_output=True)
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text())
    for change in (["--calib-seed", "1"], ["--corpus", str(other)]):  # the same draw options from another corpus too
        result = subprocess.run([*base, "--resume", *change], capture_output=True, text=True)
        assert result.returncode == 2 and "drew its calibration set with other" in result.stderr
    assert subprocess.run([*base, "--resume"], capture_output=True).returncode == 0


def test_a_run_that_fails_before_its_search_leaves_nothing_to_resume(llama_dir, tmp_path):  # noqa: F811
    """A calibration error must not leave an empty run behind, or the retry is refused as "already exists"."""
    out = tmp_path / "run"
    base = [
        sys.executable,
        "-m",
        "evop_hub.cli",
        "prune",
        str(llama_dir),
        "--sampler",
        "random",
        "--clusters",
        "2",
        "--seq-len",
        "16",
        "--output",
        str(out),
        "--num-drop",
        "1",
        "--population",
        "4",
        "--generations",
        "1",
        "--quiet",
    ]
    failed = subprocess.run([*base, "--corpus", str(tmp_path / "missing.txt")], capture_output=True, text=True)
    assert failed.returncode == 2 and "not found" in failed.stderr and not out.exists()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(f"w{(7 * i + j) % 90}" for j in range(40)) for i in range(30)))
    assert subprocess.run([*base, "--corpus", str(corpus)], capture_output=True).returncode == 0


def test_an_existing_plot_is_not_replaced_without_overwrite(tmp_path):
    plot = tmp_path / "mine.png"
    plot.write_bytes(b"the user's picture")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "evop_hub.cli",
            "prune",
            "no/such-model",
            "--output",
            str(tmp_path / "o"),
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "already exists; pass --overwrite" in result.stderr
    assert plot.read_bytes() == b"the user's picture"


def test_resume_on_another_batching_or_model_is_refused(tmp_path):
    # Saved partial sums count batches: continued under another batch size they would skip or repeat samples.
    from evop_hub.errors import EvopError
    from evop_hub.search import SearchConfig, SerialEvaluator, run_search

    from ..models.conftest import build

    model = build("llama", layers=6)
    ids = torch.randint(0, model.config.vocab_size, (6, 12), generator=torch.Generator().manual_seed(0))
    config = SearchConfig(method="sleb")
    run_search(SerialEvaluator(model, ids, batch_size=2), 2, config, state_dir=tmp_path, progress=False)
    tuned = build("llama", layers=6)  # the same embeddings, another block: a fine-tune of the same base
    with torch.no_grad():
        tuned.model.layers[3].mlp.down_proj.weight.mul_(1.01)
    for other in (
        SerialEvaluator(model, ids, batch_size=1),
        SerialEvaluator(build("llama", layers=6, seed=1), ids, batch_size=2),
        SerialEvaluator(build("llama", layers=6).to(torch.bfloat16), ids, batch_size=2),
        SerialEvaluator(tuned, ids, batch_size=2),
    ):
        with pytest.raises(EvopError, match="another model, calibration set or settings"):
            run_search(other, 2, config, state_dir=tmp_path, resume=True, progress=False)
    again = run_search(
        SerialEvaluator(model, ids, batch_size=2), 2, config, state_dir=tmp_path, resume=True, progress=False
    )
    assert again.resumed


def test_draw_options_beside_a_calibration_file_are_refused(llama_dir, calibration_file, tmp_path):  # noqa: F811
    result = subprocess.run(
        prune_cmd(llama_dir, calibration_file, tmp_path / "o", "--corpus", "wiki-leads:bogus", "--seq-len", "64"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--corpus, --seq-len would change nothing" in result.stderr and not (tmp_path / "o").exists()


def test_quiet_silences_every_progress_bar_and_the_default_output_is_named_after_a_dot(
    llama_dir,
    calibration_file,  # noqa: F811
    tmp_path,
):
    command = prune_cmd(".", calibration_file, "unused")
    command = command[: command.index("--output")] + command[command.index("--output") + 2 :]  # the default output
    result = subprocess.run(command, capture_output=True, text=True, cwd=llama_dir)
    assert result.returncode == 0, result.stderr
    assert "it/s" not in result.stderr and "%|" not in result.stderr, (
        result.stderr
    )  # no tqdm bar (see tests/test_progress.py)
    assert (llama_dir / "outputs" / f"{llama_dir.name}-evop" / "config.json").is_file()


def test_calibration_longer_than_the_models_context_is_one_line(tmp_path):
    """GPT-2 has learned positions: samples past them would fail with an IndexError in its embeddings."""
    from evop_hub.calibration import CalibrationConfig
    from evop_hub.errors import EvopError
    from evop_hub.models import LoadedModel, SourceInfo
    from evop_hub.prune import PruneConfig, prune

    from ..models.conftest import build
    from ..tiny import tiny_tokenizer

    model = build("gpt2")  # 64 positions
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat " * 200)
    loaded = LoadedModel(model, tiny_tokenizer(), SourceInfo("tiny", "tiny"))
    config = PruneConfig(
        corpus=str(corpus),
        calibration=CalibrationConfig(sampler="random", clusters=2, seq_len=128),
        num_drop=1,
        output=str(tmp_path / "o"),
    )
    with pytest.raises(EvopError, match="exceed the model's context of 64; use --seq-len 64 or less"):
        prune(loaded, config)
    assert not (tmp_path / "o").exists()
