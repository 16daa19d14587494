"""`evop-hub info` and `evop-hub drop` as a user runs them: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from transformers import AutoModelForCausalLM

from .test_save_and_load import llama_dir  # noqa: F401  (fixture)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "evop_hub.cli", *map(str, args)], capture_output=True, text=True)


def test_info_reports_blocks_and_parameters(llama_dir):  # noqa: F811
    result = cli("info", llama_dir, "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    assert facts["blocks"] == 6 and facts["model_type"] == "llama"
    assert facts["parameters"] == sum(p.numel() for p in model.parameters())


def test_drop_writes_a_smaller_checkpoint_and_refuses_to_overwrite(llama_dir, tmp_path):  # noqa: F811
    out = tmp_path / "pruned"
    result = cli("drop", llama_dir, "--layers", "1,3-4", "--output", out)
    assert result.returncode == 0, result.stderr
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 3
    record = json.loads((out / "evop_pruning.json").read_text())
    assert record["dropped_blocks"] == [1, 3, 4] and record["command"].startswith("evop-hub drop")
    before = (out / "model.safetensors").read_bytes()

    again = cli("drop", llama_dir, "--layers", "2", "--output", out)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: output directory {out} already exists; pass --overwrite to replace it"
    ]  # before loading
    assert (out / "model.safetensors").read_bytes() == before

    assert cli("drop", llama_dir, "--layers", "2", "--output", out, "--overwrite").returncode == 0
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 5


def test_bad_input_is_one_line_and_debug_shows_the_traceback(llama_dir, tmp_path):  # noqa: F811
    for layers, message in [
        ("9", "out of range"),
        ("0-5", "cannot drop all"),
        ("1,1", "more than once"),
        ("x", "cannot read"),
    ]:
        result = cli("drop", llama_dir, "--layers", layers, "--output", tmp_path / "o")
        assert result.returncode == 2
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr, result.stderr
    debug = cli("--debug", "drop", llama_dir, "--layers", "9", "--output", tmp_path / "o")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "EvopError" in debug.stderr
    assert not (tmp_path / "o").exists()


def test_a_device_this_machine_lacks_is_one_line(llama_dir, tmp_path):  # noqa: F811
    """cuda:99 exists nowhere: without CUDA torch says so by an assertion deep in the first copy, with it by
    an index error; evop-hub names the devices there are, for loading and for a search device pool alike."""
    import torch
    from transformers import AutoTokenizer

    from evop_hub.calibration import CalibrationSet, tokenizer_fingerprint

    meta = {
        "sampler": "random",
        "tokenizer_fingerprint": tokenizer_fingerprint(AutoTokenizer.from_pretrained(llama_dir)),
    }
    calibration = CalibrationSet(torch.randint(0, 90, (2, 16)), meta).save(tmp_path / "cal.safetensors")
    for args in (
        ["info", llama_dir, "--device-map", "cuda:99"],
        [
            "prune",
            llama_dir,
            "--calibration",
            calibration,
            "--search-devices",
            "cpu,cuda:99",
            "--output",
            tmp_path / "o",
            "--num-drop",
            "1",
        ],
    ):
        result = cli(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: cuda:99: "), result.stderr
    assert not (tmp_path / "o").exists()  # nothing left to be taken for a run to resume
