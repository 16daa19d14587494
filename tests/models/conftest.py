"""Tiny random models of every supported architecture, built from configs (no downloads).

Sliding windows (4 tokens) are shorter than the test sequences (16 tokens), so windowed
attention and per-layer attention types are really exercised.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_attention_heads=4, max_position_embeddings=64)
WINDOW = 4
LAYERS = 6

# name -> (config class, model class, config kwargs)
ARCHITECTURES = {
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(COMMON, num_key_value_heads=2)),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(COMMON, num_key_value_heads=2, sliding_window=WINDOW)),
    "qwen2": (
        tf.Qwen2Config,
        tf.Qwen2ForCausalLM,
        dict(COMMON, num_key_value_heads=2, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=3),
    ),
    "qwen3": (
        tf.Qwen3Config,
        tf.Qwen3ForCausalLM,
        dict(
            COMMON,
            num_key_value_heads=2,
            head_dim=8,
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=3,
        ),
    ),
    "qwen3_moe": (
        tf.Qwen3MoeConfig,
        tf.Qwen3MoeForCausalLM,
        dict(
            COMMON,
            num_key_value_heads=2,
            head_dim=8,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            decoder_sparse_step=2,
        ),
    ),
    "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, dict(COMMON, num_key_value_heads=2, head_dim=8)),
    "gemma2": (
        tf.Gemma2Config,
        tf.Gemma2ForCausalLM,
        dict(COMMON, num_key_value_heads=2, head_dim=8, sliding_window=WINDOW, final_logit_softcapping=5.0),
    ),
    "gemma3": (
        tf.Gemma3TextConfig,
        tf.Gemma3ForCausalLM,
        dict(
            COMMON,
            num_key_value_heads=2,
            head_dim=8,
            sliding_window=WINDOW,
            sliding_window_pattern=3,
            final_logit_softcapping=5.0,
        ),
    ),
    "phi3": (
        tf.Phi3Config,
        tf.Phi3ForCausalLM,
        dict(COMMON, num_key_value_heads=2, sliding_window=WINDOW, pad_token_id=0),
    ),
    "opt": (
        tf.OPTConfig,
        tf.OPTForCausalLM,
        dict(
            vocab_size=96,
            hidden_size=32,
            ffn_dim=64,
            num_attention_heads=4,
            max_position_embeddings=64,
            word_embed_proj_dim=16,
        ),
    ),
    "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel, dict(vocab_size=96, n_embd=32, n_head=4, n_positions=64)),
    "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, dict(COMMON, rotary_pct=0.5)),
    "falcon": (
        tf.FalconConfig,
        tf.FalconForCausalLM,
        dict(vocab_size=96, hidden_size=32, num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True),
    ),
    "falcon_alibi": (
        tf.FalconConfig,
        tf.FalconForCausalLM,
        dict(
            vocab_size=96,
            hidden_size=32,
            num_attention_heads=4,
            alibi=True,
            multi_query=True,
            new_decoder_architecture=False,
        ),
    ),
}


def build(name: str, layers: int = LAYERS, seed: int = 0) -> torch.nn.Module:
    config_cls, model_cls, kwargs = ARCHITECTURES[name]
    layer_key = "n_layer" if config_cls is tf.GPT2Config else "num_hidden_layers"
    config = config_cls(**{layer_key: layers}, initializer_range=0.2, **kwargs)
    torch.manual_seed(seed)
    return model_cls(config).eval()


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request) -> str:
    return request.param
