"""ReplaceMe-style compensation (--compensate linear): folding a fitted linear map into a kept block's MLP
projection gives exactly the model with the map applied by a hook, the saved checkpoint reloads as a plain
transformers model, and architectures or runs where the fold would not be exact are refused in one line.

The reference for "exact" is the pruned model with the explicit map applied to the MLP projection's output by a
forward hook: it shares no code with :func:`fold`, so a wrong transpose, bias or block index shows in the logits.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, OPTConfig, OPTForCausalLM

from evop_hub.compensation.linear import (
    applied,
    calibration_losses,
    check_compensable,
    compensate,
    fit_linear,
    fold,
    removed_runs,
    solve,
)
from evop_hub.errors import EvopError
from evop_hub.models import drop_blocks
from evop_hub.scoring import BlockRunner

from .conftest import build
from .test_save_and_load import llama_dir  # noqa: F401  (fixture)

DROP = [2, 3, 5]  # two runs: 2-3 (map on block 1) and 5 (map on block 4), fitted in that order
FOLDABLE = ["gemma", "gpt2", "llama", "mistral", "opt", "phi3", "qwen2", "qwen3"]


def calibration_ids(model, rows=4, seq=16, seed=1):
    return torch.randint(0, model.config.vocab_size, (rows, seq), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def renumbered(maps, keep):
    """The maps with their blocks in the pruned model's numbering, for the hook reference."""
    return [dataclasses.replace(m, block=keep.index(m.block)) for m in maps]


def saved_and_reloaded(model, path):
    model.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_removed_runs_and_ridge_limits():
    assert removed_runs([5, 2, 3, 9, 10]) == [[2, 3], [5], [9, 10]]
    gram = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    cross = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(solve(gram, cross, 0.0), torch.linalg.solve(gram, cross))  # plain least squares
    torch.testing.assert_close(solve(gram, cross, 1e9), torch.eye(2, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", FOLDABLE)
def test_folded_checkpoint_equals_pruned_model_with_the_hooked_map(name, tmp_path):
    model = build(name).float()
    ids = calibration_ids(model)
    maps = fit_linear(model, DROP, ids)
    assert [m.block for m in maps] == [1, 4] and [m.removed for m in maps] == [[2, 3], [5]]
    assert all(not torch.allclose(m.transform, torch.eye(m.transform.shape[0], dtype=torch.float64)) for m in maps)

    hooked = copy.deepcopy(model)
    keep = drop_blocks(hooked, DROP)
    with applied(hooked, renumbered(maps, keep)):
        expected = logits(hooked, ids)

    for m in maps:
        fold(model, m.block, m.transform)
    drop_blocks(model, DROP)
    reloaded = saved_and_reloaded(model, tmp_path / "folded")
    assert type(reloaded) is type(hooked) and reloaded.config.to_dict().keys() == hooked.config.to_dict().keys()
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in hooked.parameters())
    torch.testing.assert_close(logits(reloaded, ids), expected, rtol=1e-4, atol=1e-5)
    plain = copy.deepcopy(hooked)  # and the map does change the model: without it the logits differ
    assert not torch.allclose(logits(plain, ids), expected, atol=1e-3)


@pytest.mark.parametrize("name", ["llama", "gpt2", "opt"])  # Linear with and without bias, GPT-2's Conv1D
def test_identity_map_leaves_the_pruned_model_bit_for_bit(name, tmp_path):
    model = build(name).float()
    ids = calibration_ids(model)
    plain = copy.deepcopy(model)
    drop_blocks(plain, DROP)
    expected = logits(plain, ids)
    hidden = model.config.hidden_size
    for block in (1, 4):
        fold(model, block, torch.eye(hidden, dtype=torch.float64))
    drop_blocks(model, DROP)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))
    assert torch.equal(logits(saved_and_reloaded(model, tmp_path / "identity"), ids), expected)


def _sequential_neox():
    config = GPTNeoXConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=6,
        rotary_pct=0.5,
        use_parallel_residual=False,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(config).eval()


def test_sequential_gpt_neox_folds_exactly(tmp_path):
    """GPT-NeoX is refused for its parallel residual, not by name: with the flag off its blocks fold."""
    model = _sequential_neox()
    ids = calibration_ids(model)
    maps = fit_linear(model, [3], ids)
    hooked = copy.deepcopy(model)
    keep = drop_blocks(hooked, [3])
    with applied(hooked, renumbered(maps, keep)):
        expected = logits(hooked, ids)
    fold(model, 2, maps[0].transform)
    drop_blocks(model, [3])
    torch.testing.assert_close(
        logits(saved_and_reloaded(model, tmp_path / "neox"), ids), expected, rtol=1e-4, atol=1e-5
    )


def _post_norm_opt():
    config = OPTConfig(
        vocab_size=96,
        hidden_size=32,
        ffn_dim=64,
        num_attention_heads=4,
        max_position_embeddings=64,
        num_hidden_layers=6,
        do_layer_norm_before=False,
    )
    torch.manual_seed(0)
    return OPTForCausalLM(config).eval()


@pytest.mark.parametrize(
    "make, dropped, message",
    [
        (lambda: build("falcon"), DROP, "run attention and MLP in parallel"),
        (lambda: build("falcon_alibi"), DROP, "run attention and MLP in parallel"),
        (lambda: build("gpt_neox"), DROP, "run attention and MLP in parallel"),
        (lambda: build("gemma2"), DROP, "transforms its MLP output (mlp.down_proj) before adding it"),
        (lambda: build("gemma3"), DROP, "transforms its MLP output (mlp.down_proj) before adding it"),
        (_post_norm_opt, DROP, "transforms its MLP output (fc2) before adding it"),
        (lambda: build("qwen3_moe"), DROP, "no single MLP output projection to fold a map into (a mixture of experts)"),
        (lambda: build("llama"), [0, 1, 4], "block(s) 0-1: they start the model"),
    ],
    ids=["falcon", "falcon_alibi", "gpt_neox", "gemma2", "gemma3", "opt_post_norm", "qwen3_moe", "leading_run"],
)
def test_inexact_folds_are_refused_in_one_line(make, dropped, message):
    model = make().float()
    ids = calibration_ids(model)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(EvopError) as error:
        compensate(model, dropped, ids)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing folded
    if dropped[0] != 0:  # the architecture check prune runs before its search says the same
        with pytest.raises(EvopError, match="cannot compensate"):
            check_compensable(model, ids)


def test_compensation_lowers_the_loss_it_was_fitted_on():
    """The fitted objective (each run's hidden-state error) always falls, and with it the calibration KL to the dense
    model; the losses reported with the hooked maps are those of the folded weights."""
    model = build("llama", layers=8).float()
    ids = calibration_ids(model, rows=8, seq=32)
    dropped = [3, 4, 6]
    folded = copy.deepcopy(model)
    maps, losses = compensate(folded, dropped, ids)
    assert all(m.mse_after < m.mse_before for m in maps)
    assert losses["kl"]["compensated"] < losses["kl"]["pruned"], losses
    kept = [i for i in range(8) if i not in dropped]
    runner = BlockRunner(folded)
    ctx = runner.prepare(ids)
    nll, n = runner.nll(runner.run(ctx, kept), ids)
    assert float(nll) / n == pytest.approx(losses["nll"]["compensated"], rel=1e-5)
    assert calibration_losses(model, ids, dropped)["nll"]["pruned"] == pytest.approx(losses["nll"]["pruned"])


def cli(*args):
    return subprocess.run([sys.executable, "-m", "evop_hub.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_drop_compensate_linear_writes_a_standard_checkpoint(llama_dir, tmp_path):  # noqa: F811
    from transformers import AutoTokenizer

    from evop_hub.calibration import CalibrationSet, tokenizer_fingerprint

    meta = {
        "sampler": "random",
        "corpus": "tiny",
        "split": "train",
        "tokenizer_fingerprint": tokenizer_fingerprint(AutoTokenizer.from_pretrained(llama_dir)),
    }
    calibration = CalibrationSet(torch.randint(0, 90, (3, 16)), meta).save(tmp_path / "cal.safetensors")
    out = tmp_path / "pruned"
    result = cli(
        "drop", llama_dir, "--layers", "2-3,5", "--output", out, "--compensate", "linear", "--calibration", calibration
    )
    assert result.returncode == 0, result.stderr
    assert "compensated: calibration NLL" in result.stdout
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(reloaded).__name__ == "LlamaForCausalLM" and reloaded.config.num_hidden_layers == 3
    record = json.loads((out / "evop_pruning.json").read_text())
    comp = record["compensation"]
    assert comp["method"] == "linear" and comp["tokens"] == 48 and comp["calibration"]["corpus"] == "tiny"
    assert [(r["removed_blocks"], r["folded_into_block"], r["folded_into"]) for r in comp["runs"]] == [
        ([2, 3], 1, "model.layers.1.mlp.down_proj"),
        ([5], 4, "model.layers.2.mlp.down_proj"),
    ]
    assert set(comp["calibration_nll"]) == {"dense", "pruned", "compensated"}
    assert comp["calibration_kl"]["compensated"] < comp["calibration_kl"]["pruned"]
    dense = AutoModelForCausalLM.from_pretrained(llama_dir)
    assert not torch.equal(reloaded.model.layers[1].mlp.down_proj.weight, dense.model.layers[1].mlp.down_proj.weight)
    assert torch.equal(reloaded.model.layers[0].mlp.down_proj.weight, dense.model.layers[0].mlp.down_proj.weight)
    assert "`model.layers.1.mlp.down_proj` (original block 1)" in (out / "README.md").read_text()

    for args, message in [
        (["--layers", "0-1", "--compensate", "linear", "--calibration", calibration], "start the model"),
        (["--layers", "2", "--compensate", "linear"], "give --calibration FILE"),
        (["--layers", "2", "--compensate", "cubic", "--calibration", calibration], "unknown --compensate"),
    ]:
        refused = cli("drop", llama_dir, *args, "--output", tmp_path / "o")
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
        assert refused.returncode == 2 and len(errors) == 1 and message in errors[0], refused.stderr
        assert "Traceback" not in refused.stderr
    assert not (tmp_path / "o").exists()


def _prune_setup(tmp_path, name):
    from evop_hub.calibration import CalibrationConfig
    from evop_hub.models import LoadedModel, SourceInfo
    from evop_hub.prune import PruneConfig
    from evop_hub.search import SearchConfig

    from ..tiny import tiny_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog ran under a red rug " * 100)
    loaded = LoadedModel(build(name).float(), tiny_tokenizer(), SourceInfo("tiny", "tiny"))
    config = PruneConfig(
        corpus=str(corpus),
        calibration=CalibrationConfig(sampler="random", clusters=3, seq_len=32),
        num_drop=2,
        search=SearchConfig(method="shortgpt", stages=""),
        output=str(tmp_path / "o"),
        progress=False,
        compensate="linear",
    )
    return loaded, config


def test_prune_api_compensates_the_blocks_the_search_removed(tmp_path):
    from evop_hub.prune import prune

    loaded, config = _prune_setup(tmp_path, "llama")
    result = prune(loaded, config)
    comp = result.record.compensation
    assert sorted(i for run in comp["runs"] for i in run["removed_blocks"]) == result.mask
    assert comp["samples"] == 3 and comp["tokens"] == 96 and comp["calibration"]["sampler"] == "random"
    saved = json.loads((tmp_path / "o" / "evop_pruning.json").read_text())["compensation"]
    assert saved["runs"] == comp["runs"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "o").config.num_hidden_layers == 4


def test_prune_refuses_before_the_search(tmp_path):
    from evop_hub.prune import prune
    from evop_hub.search import SearchConfig

    loaded, config = _prune_setup(tmp_path, "falcon")
    with pytest.raises(EvopError, match="run attention and MLP in parallel"):
        prune(loaded, config)
    assert not (tmp_path / "o" / "evop_pruning.json").exists()
    with pytest.raises(EvopError, match="--compensate replaces removed blocks; wanda removes none"):
        prune(loaded, dataclasses.replace(config, search=SearchConfig(method="wanda")))
    with pytest.raises(EvopError, match="unknown --compensate 'cubic'"):
        prune(loaded, dataclasses.replace(config, compensate="cubic"))


def test_card_says_what_was_compensated():
    from evop_hub.card.card import render
    from evop_hub.record import PruningRecord

    record = PruningRecord("tiny", "LlamaForCausalLM", 6, [2, 3, 5])
    record.compensation = {
        "method": "linear",
        "reference": "ReplaceMe (arXiv 2505.02819)",
        "objective": "least squares",
        "ridge": 0.01,
        "calibration": {"corpus": "wikitext2", "split": "train"},
        "samples": 3,
        "tokens": 48,
        "runs": [
            {
                "removed_blocks": [2, 3],
                "folded_into_block": 1,
                "folded_into": "model.layers.1.mlp.down_proj",
                "hidden_mse": {"uncompensated": 2.0, "compensated": 1.0},
            }
        ],
        "calibration_nll": {"dense": 3.0, "pruned": 4.0, "compensated": 3.5},
        "calibration_kl": {"pruned": 0.5, "compensated": 0.25},
    }
    text = str(render(record))
    assert "model.layers.1.mlp.down_proj" in text and "48 tokens" in text and "corpus `wikitext2`" in text
    assert "pruned 4.0000 -> compensated 3.5000" in text and "0.5000 -> 0.2500" in text


@pytest.mark.integration
def test_smollm2_compensation_lowers_calibration_nll(tmp_path):
    import evop_hub
    from evop_hub.calibration import CalibrationConfig, calibrate
    from evop_hub.compensation.linear import compensated_drop
    from evop_hub.models import prepare_output

    loaded = evop_hub.load("smollm2-135m")
    cal = calibrate("wiki-leads:valid", loaded.tokenizer, CalibrationConfig(sampler="random", clusters=4, seq_len=128))
    compensated_drop(loaded, [12, 13, 14, 15, 25, 26], cal.input_ids, calibration={"corpus": "wiki-leads:valid"})
    comp = loaded.record.compensation
    assert comp["calibration_nll"]["compensated"] < comp["calibration_nll"]["pruned"], comp
    assert comp["calibration_kl"]["compensated"] < comp["calibration_kl"]["pruned"], comp
    assert [r["folded_into"] for r in comp["runs"]] == [
        "model.layers.11.mlp.down_proj",
        "model.layers.20.mlp.down_proj",
    ]
    out = evop_hub.save(loaded, prepare_output(tmp_path / "smol"))
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == 24
    assert json.loads((out / "evop_pruning.json").read_text())["compensation"]["runs"][0]["removed_blocks"] == [
        12,
        13,
        14,
        15,
    ]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_checks_hold_in_half_precision(dtype):
    """Rounding of a half-precision residual stream neither refuses a foldable block nor lets Gemma 3's norms
    (after the attention and after the MLP) pass."""
    ids = calibration_ids(build("llama"))
    check_compensable(build("llama").to(dtype), ids)
    with pytest.raises(EvopError, match="block 0 transforms its MLP output"):
        check_compensable(build("gemma3").to(dtype), ids)
