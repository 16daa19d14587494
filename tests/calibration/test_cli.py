"""`evop-hub calibrate`: the same set as the Python API, files that reload, no silent overwrites."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from evop_hub.calibration import CalibrationConfig, CalibrationSet, calibrate, split_chunks
from evop_hub.cli import app
from evop_hub.data import load_corpus
from evop_hub.errors import EvopError

from ..conftest import SHARED, skip_or_fail
from .conftest import topical_corpus


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    """A local model folder; calibrate reads only its tokenizer."""
    from transformers import LlamaConfig

    folder = tmp_path / "model"
    tokenizer.save_pretrained(folder)
    LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(folder)
    return folder


def test_cli_writes_the_api_result_and_a_plot_and_refuses_to_overwrite(
    model_dir, corpus, tmp_path, monkeypatch, embed_cache
):
    monkeypatch.setenv("EVOP_CACHE", str(embed_cache))
    corpus_file = tmp_path / "topical.jsonl"
    corpus_file.write_text("".join(json.dumps({"text": d.text, "label": d.label}) + "\n" for d in corpus.documents))
    output, plot = tmp_path / "cal.safetensors", tmp_path / "clusters.png"
    args = [
        "calibrate",
        str(model_dir),
        "--corpus",
        str(corpus_file),
        "--clusters",
        "3",
        "--samples-per-cluster",
        "2",
        "--seq-len",
        "100",
        "--output",
        str(output),
        "--plot",
        str(plot),
    ]

    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert f"wrote {output}: 6 samples x 100 tokens, ccds from {corpus_file}:all" in out.output
    assert "NMI vs topic labels: 1.000" in out.output and plot.stat().st_size > 0

    from evop_hub.models import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    saved = CalibrationSet.load(output, tokenizer)
    expected = calibrate(
        load_corpus(str(corpus_file)),
        tokenizer,
        CalibrationConfig(clusters=3, samples_per_cluster=2, seq_len=100, cache_dir=str(embed_cache)),
    )
    assert torch.equal(saved.input_ids, expected.input_ids) and saved.metadata == expected.metadata

    before = output.read_bytes()
    again = CliRunner().invoke(app, [*args[:-2]])
    assert isinstance(again.exception, EvopError) and "already exists; pass --overwrite" in str(again.exception)
    assert output.read_bytes() == before
    out = CliRunner().invoke(app, [*args, "--seed", "1", "--overwrite"])
    assert out.exit_code == 0, out.output
    assert CalibrationSet.load(output).metadata["seed"] == 1


def test_cli_rejects_bad_options_before_loading_anything(tmp_path):
    out = CliRunner().invoke(
        app, ["calibrate", str(tmp_path / "never-loaded"), "--sampler", "kmeans", "--output", str(tmp_path / "x")]
    )
    assert isinstance(out.exception, EvopError) and "unknown sampler 'kmeans'" in str(out.exception)
    out = CliRunner().invoke(
        app,
        [
            "calibrate",
            str(tmp_path / "never-loaded"),
            "--sampler",
            "random",
            "--plot",
            str(tmp_path / "c.png"),
            "--output",
            str(tmp_path / "x"),
        ],
    )
    assert isinstance(out.exception, EvopError) and "--sampler random has none" in str(out.exception)


@pytest.mark.integration
def test_smollm2_tokenizer_ccds_and_random_on_wikitext(tmp_path):
    """The real target tokenizer (BPE): exact lengths, text that decodes back, a file bound to it."""
    from evop_hub.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    corpus = topical_corpus(docs_per_topic=6)
    drawn = calibrate(corpus, tokenizer, CalibrationConfig(clusters=3, seq_len=64, cache_dir=str(tmp_path)))
    assert tuple(drawn.input_ids.shape) == (3, 64)
    first_chunk = split_chunks(corpus.documents, 4)[drawn.metadata["samples"][0]["chunks"][0]]
    assert tokenizer.decode(drawn.input_ids[0]).startswith(first_chunk.text)

    wikitext = SHARED / "data" / "wikitext-2"
    if not (wikitext / "valid.txt").is_file():
        skip_or_fail(f"WikiText-2 not found at {wikitext}")
    output = tmp_path / "sleb.safetensors"
    args = [
        "calibrate",
        "smollm2-135m",
        "--corpus",
        "wikitext2:valid",
        "--data-dir",
        str(wikitext),
        "--sampler",
        "random",
        "--output",
        str(output),
    ]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    saved = CalibrationSet.load(output, tokenizer)
    assert tuple(saved.input_ids.shape) == (5, 2048)
    assert saved.metadata["form"] == "wikitext-2-v1-tokenized" and saved.metadata["sampler"] == "random"
