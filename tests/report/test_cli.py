"""`evop-hub compare` from the command line: a TOML config plus flags, the report, --report-only, --write-config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from evop_hub.cli import app
from evop_hub.report.compare import CompareConfig

from ..baselines.test_cli import setup  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def experiment(setup):
    """The baselines' CLI setup (a tiny 2-block Llama, its tokenizer, corpus.txt) and a small experiment TOML."""
    (setup / "experiment.toml").write_text(
        'methods = ["sleb", "shortgpt"]\nsamples = 2\nseq_len = 16\neval_seq_len = 16\neval_windows = 2\n'
        "ablations = false\nfig1c = false\nexhaustive_limit = 10\n[search]\npopulation = 4\n"
    )
    return setup


def test_compare_runs_from_a_config_and_flags_then_rerenders(experiment):
    setup = experiment
    out = setup / "report"
    corpus = str(setup / "corpus.txt")
    args = [
        "compare",
        str(setup / "model"),
        "--config",
        str(setup / "experiment.toml"),
        "--output",
        str(out),
        "--corpus",
        corpus,
        "--eval",
        corpus,
        "--sparsities",
        "0.25,0.5",
        "--seeds",
        "0",
        "--tasks",
        "none",
        "--no-speed",
        "--quiet",
    ]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    results = json.loads((out / "results.json").read_text())
    config = results["config"]
    assert config["methods"] == ["sleb", "shortgpt"] and config["sparsities"] == [0.25, 0.5] and config["seeds"] == [0]
    assert config["search"] == {"population": 4} and config["tasks"] == [] and config["speed"] is False
    assert results["cells"][0]["provenance"]["command"].startswith("evop-hub")  # sys.argv: pytest's under CliRunner
    report = (out / "report.md").read_text()
    (out / "report.md").write_text("edited")
    done = CliRunner().invoke(app, ["compare", "--report-only", "--output", str(out)])
    assert done.exit_code == 0, done.output
    assert (out / "report.md").read_text() == report
    done = CliRunner().invoke(app, [*args, "--resume"])
    assert done.exit_code == 0 and f"{len(results['cells'])} reused" in done.output


def test_write_config_round_trips(tmp_path):
    path = tmp_path / "resolved.toml"
    done = CliRunner().invoke(
        app, ["compare", "--preset", "cpu", "--seeds", "3,4", "--device", "cpu", "--write-config", str(path)]
    )
    assert done.exit_code == 0, done.output
    config = CompareConfig.load(path)
    assert config.seeds == [3, 4] and config.blocks == 12
    again = CliRunner().invoke(app, ["compare", "--preset", "cpu", "--seeds", "5", "--write-config", str(path)])
    assert again.exit_code != 0 and "already exists; pass --overwrite" in str(again.exception)
    assert CompareConfig.load(path).seeds == [3, 4]  # the file written before is kept


def test_bad_flag_is_one_line_and_exit_2(setup, tmp_path):  # noqa: F811
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "evop_hub.cli",
            "compare",
            str(setup / "model"),
            "--output",
            str(tmp_path / "r"),
            "--methods",
            "evop,bogus",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unknown method 'bogus'; choose from evop, sleb, exhaustive, "
        "random, shortgpt, angular, wanda, slicegpt (dense is always the reference)"
    ]
