"""SliceGPT on tiny Llama (tied embeddings) and OPT (LayerNorm with biases) models."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from evop_hub.baselines import SliceGPTConfig, slicegpt
from evop_hub.errors import EvopError
from evop_hub.models import count_parameters

from .conftest import tiny_model


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_rotation_without_slicing_keeps_the_logits(kind, calibration_ids):
    dense = tiny_model(kind)
    rotated = slicegpt(copy.deepcopy(dense), calibration_ids, SliceGPTConfig(sparsity=0.0, progress=False))
    ids = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(5))  # not the calibration data
    with torch.no_grad():
        expected, got = dense(ids).logits, rotated(ids).logits
    assert rotated.config.sliced_hidden_size == dense.config.hidden_size
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # the rotation really happened: the embeddings are no longer the dense ones
    assert not torch.allclose(rotated.get_input_embeddings().weight, dense.get_input_embeddings().weight, atol=1e-3)


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_sliced_model_saves_loads_and_runs(kind, calibration_ids, tmp_path):
    dense = tiny_model(kind)
    params = count_parameters(dense)
    sliced = slicegpt(copy.deepcopy(dense), calibration_ids, SliceGPTConfig(sparsity=0.25, progress=False))
    type(sliced).register_for_auto_class("AutoModelForCausalLM")
    sliced.save_pretrained(tmp_path)
    assert (tmp_path / "modeling_slicegpt.py").is_file()

    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    ids = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = loaded(ids).logits
        torch.testing.assert_close(logits, sliced(ids).logits)
        dense_logits = dense(ids).logits
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits, dense_logits, atol=1e-3)  # slicing changed the function
    assert loaded.config.sliced_hidden_size == 24  # 32 x 0.75, a multiple of 8
    assert loaded.get_input_embeddings().weight.shape == (128, 24)
    assert loaded.get_output_embeddings().weight.shape == (128, 24)
    assert count_parameters(loaded) == count_parameters(sliced) < params
    generated = loaded.generate(ids[:1, :4], max_new_tokens=4, do_sample=False)  # with the KV cache
    assert generated.shape == (1, 8)


def test_unsupported_architecture_is_refused(calibration_ids):
    config = transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(EvopError, match="slicegpt supports"):
        slicegpt(model, calibration_ids)
