"""Tiny random Llama and OPT models for the baseline tests (no download, built from configs)."""

from __future__ import annotations

import pytest
import torch
import transformers

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "opt": lambda: transformers.OPTConfig(
        vocab_size=128,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
    ),
}


def tiny_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """A random model whose norms have non-trivial scales and shifts (fresh ones are all ones and zeros)."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[kind]()).eval()
    with torch.no_grad():
        for module in model.modules():
            if "Norm" in type(module).__name__:
                module.weight.normal_(1.0, 0.3)
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_(0.0, 0.3)
    return model


@pytest.fixture
def calibration_ids() -> torch.Tensor:
    return torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
