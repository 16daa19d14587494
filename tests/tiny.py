"""Tiny offline models and a word-level tokenizer, shared by the evaluation and hub tests."""

from __future__ import annotations

import torch

WORDS = "the a cat dog sat ran on under mat rug red blue big small fast slow what where who answer".split()


def tiny_tokenizer():
    """Word-level tokenizer over WORDS: offline, and contexts split cleanly from continuations."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def tiny_llama(layers: int = 2, seed: int = 0, **config):
    """A random Llama; ``config`` overrides the defaults (e.g. vocab_size, initializer_range)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    defaults = dict(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return AutoModelForCausalLM.from_config(LlamaConfig(**{**defaults, **config})).eval()
