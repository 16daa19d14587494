"""Removing blocks gives the same model as skipping them, and saves a standard checkpoint.

The reference is the *dense* model with the dropped blocks bypassed by forward hooks, which
shares no code with the surgery: if renumbering, config cutting or per-layer attention types
go wrong, the logits differ.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from evop_hub.errors import EvopError
from evop_hub.models import drop_blocks, find_blocks, parse_layers, validate_drop
from evop_hub.scoring import BlockRunner

from .conftest import LAYERS, build

DROP = [1, 4]  # one sliding and one global layer in the patterns above
SEQ = 16


def bypassed_logits(model, dropped, ids):
    """Dense model whose dropped blocks return their input unchanged (hooks, no surgery)."""

    def skip(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    blocks = find_blocks(model)
    handles = [blocks[i].register_forward_hook(skip, with_kwargs=True) for i in dropped]
    try:
        with torch.no_grad():
            return model(ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


def ids_for(model, seed=1):
    return torch.randint(0, model.config.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def test_pruned_checkpoint_matches_bypassed_dense(arch, tmp_path):
    dense = build(arch)
    ids = ids_for(dense)
    expected = bypassed_logits(dense, DROP, ids)

    pruned = copy.deepcopy(dense)
    keep = drop_blocks(pruned, DROP)
    assert keep == [i for i in range(LAYERS) if i not in DROP]
    pruned.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()

    assert len(find_blocks(reloaded)) == LAYERS - len(DROP)
    assert saved.get("num_hidden_layers", saved.get("n_layer")) == LAYERS - len(DROP)
    if dense.config.get_text_config().__dict__.get("layer_types"):
        assert saved["layer_types"] == [dense.config.layer_types[i] for i in keep]
    with torch.no_grad():
        got = reloaded(ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if dense.config.tie_word_embeddings:
        assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight


def test_generation_with_cache_equals_without(arch, tmp_path):
    pruned = build(arch)
    drop_blocks(pruned, DROP)
    pruned.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    prompt = ids_for(model)[:1, :6]
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)  # past the 4-token window
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape[1] == 18
    assert torch.equal(cached, uncached)


def test_runner_matches_model_forward_for_any_subset(arch):
    model = build(arch)
    ids = ids_for(model)
    runner = BlockRunner(model)
    ctx = runner.prepare(ids)
    kept = [i for i in range(LAYERS) if i not in DROP]
    with torch.no_grad():
        logits = runner.logits(runner.run(ctx, kept))
        full = runner.logits(runner.run(ctx))
        dense = model(ids, use_cache=False).logits
    torch.testing.assert_close(logits, bypassed_logits(model, DROP, ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, dense, rtol=1e-5, atol=1e-5)


def test_runner_nll_equals_plain_cross_entropy(arch):
    model = build(arch)
    ids = ids_for(model)
    runner = BlockRunner(model, chunk_tokens=5)  # chunks that do not divide the sequence and cross sequences
    hidden = runner.run(runner.prepare(ids))
    total, count = runner.nll(hidden, ids)
    rows = runner.nll_rows(hidden, ids)
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits.float()
    reference = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").sum(1)
    assert count == ids.numel() - ids.shape[0]
    assert float(total) == pytest.approx(float(reference.sum()), rel=1e-6)
    torch.testing.assert_close(rows, reference.double(), rtol=1e-6, atol=0)


def test_qwen3_moe_sparse_layers_survive_renumbering():
    model = build("qwen3_moe")  # decoder_sparse_step=2: blocks 1, 3, 5 are MoE
    kinds = ["moe" if "Moe" in type(b.mlp).__name__ else "dense" for b in find_blocks(model)]
    drop_blocks(model, [0])
    config = model.config
    rebuilt = type(model)(config)
    assert ["moe" if "Moe" in type(b.mlp).__name__ else "dense" for b in find_blocks(rebuilt)] == kinds[1:]


@pytest.mark.parametrize(("dropped", "period"), [([0, 3], 2), ([5], 3), ([1], None)])
def test_gemma3_sliding_window_period_agrees_with_the_cut_layer_types(dropped, period):
    """Gemma 3 also states its layer types as a period (every 3rd layer full here): kept where one still fits,
    gone where none does, so a loader deriving the types from it cannot get them wrong."""
    model = build("gemma3")
    drop_blocks(model, dropped)
    saved = model.config.to_dict()
    types = saved["layer_types"]
    for name in ("sliding_window_pattern", "_sliding_window_pattern"):
        assert saved.get(name) == period
    if period:
        assert types == ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(len(types))]


def test_gpt2_inverse_layer_scaling_is_refused():
    model = build("gpt2")
    model.config.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(EvopError, match="scale_attn_by_inverse_layer_idx"):
        drop_blocks(model, [1])


@pytest.mark.parametrize(
    "dropped, message",
    [([6], "out of range"), ([1, 1], "more than once"), (list(range(6)), "cannot drop all"), ([-1], "out of range")],
)
def test_bad_masks_are_refused(dropped, message):
    with pytest.raises(EvopError, match=message):
        validate_drop(dropped, 6)


def test_parse_layers():
    assert parse_layers("3,4,25") == [3, 4, 25]
    assert parse_layers("3-5, 9") == [3, 4, 5, 9]
    with pytest.raises(EvopError):
        parse_layers("a,b")
    with pytest.raises(EvopError):
        parse_layers("5-3")
