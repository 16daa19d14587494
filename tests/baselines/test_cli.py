"""`evop-hub prune --method wanda|slicegpt` end to end on a tiny model with a word-level tokenizer."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from evop_hub.cli import app
from evop_hub.models import LoadConfig, load
from evop_hub.record import PruningRecord

from ..calibration.conftest import topical_corpus, word_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random Llama with tied embeddings, its tokenizer, and a local corpus file."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    root = tmp_path_factory.mktemp("cli")
    texts = [d.text for d in topical_corpus().documents]
    (root / "corpus.txt").write_text("\n\n".join(texts))
    tokenizer = word_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def prune(setup, name: str, *options: str):
    args = [
        "prune",
        str(setup / "model"),
        "--corpus",
        str(setup / "corpus.txt"),
        "--sampler",
        "random",
        "--clusters",
        "2",
        "--seq-len",
        "16",
        "--quiet",
        "-o",
        str(setup / name),
        *options,
    ]
    return CliRunner().invoke(app, args)


def test_wanda_2_4_writes_a_same_shape_checkpoint_and_says_so(setup):
    out = prune(setup, "wanda", "--method", "wanda", "--pattern", "2:4")
    assert out.exit_code == 0, out.output
    assert "not smaller on disk" in out.output
    record = PruningRecord.load(setup / "wanda")
    assert (record.method, record.sparsity, record.sparsity_unit) == ("wanda", 0.5, "weights (2:4)")
    assert record.parameters_after == record.parameters_before
    model = load(str(setup / "wanda")).model
    for block in model.model.layers:
        weight = block.mlp.down_proj.weight
        assert ((weight == 0).view(weight.shape[0], -1, 4).sum(-1) == 2).all()


def test_slicegpt_output_loads_with_remote_code_and_evaluates(setup):
    out = prune(setup, "slicegpt", "--method", "slicegpt", "--sparsity", "0.25")
    assert out.exit_code == 0, out.output
    directory = setup / "slicegpt"
    assert (directory / "modeling_slicegpt.py").is_file()
    record = PruningRecord.load(directory)
    assert (record.method, record.sparsity, record.sparsity_unit) == (
        "slicegpt",
        0.25,
        "hidden channels (residual stream)",
    )
    assert "trust_remote_code=True" in record.search["format"]
    assert load(str(directory), LoadConfig(trust_remote_code=True)).model.config.sliced_hidden_size == 24
    # The Space app (uploaded as-is by push) loads it with its modeling code, as push's evop_space.json allows
    # (never because the folder's own record asks), and says what was removed.
    from evop_hub.hub.space import _load_app

    space = _load_app()
    assert space.build_demo(str(directory), trust_remote_code=True) is not None
    assert space.mask_markdown(record.to_dict()).startswith("**Every block kept, 25% of its hidden channels")

    refused = CliRunner().invoke(app, ["info", str(directory)])  # transformers alone fails on the weights' shapes
    assert "needs code from its repository" in str(refused.exception) and "--trust-remote-code" in str(
        refused.exception
    )
    ppl = CliRunner().invoke(
        app,
        [
            "ppl",
            str(directory),
            "--corpus",
            str(setup / "corpus.txt"),
            "--seq-len",
            "16",
            "--max-windows",
            "2",
            "--trust-remote-code",
            "--json",
        ],
    )
    assert ppl.exit_code == 0, ppl.output
    assert json.loads(ppl.stdout)["results"][0]["windows"] == 2
    timed = CliRunner().invoke(
        app,
        [
            "speed",
            str(setup / "model"),
            "--compare",
            str(directory),
            "--prompt-len",
            "8",
            "--new-tokens",
            "2",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--trust-remote-code",
            "--json",
        ],
    )
    assert timed.exit_code == 0, timed.output
    assert json.loads(timed.stdout)["pruned"]["parameters"] == record.parameters_after


def test_pattern_is_refused_where_it_means_nothing(setup):
    out = prune(setup, "refused", "--method", "slicegpt", "--pattern", "2:4")
    assert out.exit_code != 0
    assert "--pattern is Wanda's" in str(out.exception)


def test_num_drop_is_refused_for_width_baselines(setup):
    out = prune(setup, "refused", "--method", "wanda", "--num-drop", "2")
    assert out.exit_code != 0
    assert "--num-drop counts blocks" in str(out.exception)
