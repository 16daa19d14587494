"""What differs between architectures, kept as small as possible.

Most decoder-only models in transformers look alike: one ``ModuleList`` of blocks whose
length is the config's layer count, attention modules that know their ``layer_idx``, and
a few config fields indexed per layer. Those are found generically here; the registries
below hold only the exceptions, keyed by ``model_type``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import EvopError

# model_type -> dotted path of the block list, for models the generic search gets wrong.
BLOCK_PATHS: dict[str, str] = {}

# Attributes inside a block that hold the block's own index and must follow a renumbering.
INDEX_ATTRIBUTES = ("layer_idx",)


def _refuse_gpt2(config: Any) -> str | None:
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        return (
            "this GPT-2 config scales attention by 1/(layer index + 1) "
            "(scale_attn_by_inverse_layer_idx), so removing blocks would change every later block"
        )
    return None


# model_type -> check returning why blocks of this model cannot be removed exactly (None if they can).
REFUSALS: dict[str, Callable[[Any], str | None]] = {"gpt2": _refuse_gpt2}


def text_config(model_or_config: Any) -> Any:
    """The decoder's config (multimodal configs nest it under ``text_config``)."""
    config = getattr(model_or_config, "config", model_or_config)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def context_length(model_or_config: Any) -> int | None:
    """The decoder's context in tokens (``max_position_embeddings``), or None where the config states none:
    the one place every length check (calibration samples, perplexity windows, generation) reads it."""
    return getattr(text_config(model_or_config), "max_position_embeddings", None)


def check_context(model_or_config: Any, tokens: int, message: str) -> None:
    """Refuse ``tokens`` past the model's context before any work: longer inputs fail deep in the embeddings
    (GPT-2) or are scored past the training length (RoPE models). ``message`` may name ``{context}``."""
    context = context_length(model_or_config)
    if context is not None and tokens > context:
        raise EvopError(message.format(context=context))


def num_layers(config: Any) -> int:
    """The layer count through the config's attribute map (GPT-2's ``n_layer`` and the like)."""
    value = getattr(text_config(config), "num_hidden_layers", None)
    if not isinstance(value, int):
        raise EvopError(f"{type(config).__name__} has no layer count; this model type is not supported")
    return value


def block_path(model: torch.nn.Module) -> str:
    """Dotted name of the decoder's block ``ModuleList``.

    Generic rule: the ``ModuleList`` whose length is the layer count, whose children share
    one class, holding the most parameters (so per-layer side lists lose to the blocks).
    """
    override = BLOCK_PATHS.get(getattr(model.config, "model_type", ""))
    if override:
        return override
    n = num_layers(model.config)
    best, best_size = None, -1
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n > 0:
            if len({type(child) for child in module}) != 1:
                continue
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = name, size
    if best is None:
        raise EvopError(
            f"cannot find the transformer blocks of {type(model).__name__}; "
            "this architecture needs an entry in evop_hub.models.adapters.BLOCK_PATHS"
        )
    return best


def find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.get_submodule(block_path(model))


def check_prunable(model: torch.nn.Module) -> None:
    """Refuse, with the reason, models whose blocks cannot be removed without changing the rest."""
    config = text_config(model)
    reason = REFUSALS.get(getattr(config, "model_type", ""), lambda _: None)(config)
    if reason:
        raise EvopError(f"cannot remove blocks from {type(model).__name__}: {reason}")


# ----------------------------------------------------------------- per-layer config fields


def _threshold(value: int, keep: Sequence[int]) -> int:
    """A field meaning 'layers below N' becomes the number of kept layers below N."""
    return sum(1 for i in keep if i < value)


def _index_list(value: Sequence[int], keep: Sequence[int]) -> list[int]:
    """A list of layer indices keeps the survivors, renumbered."""
    new = {old: i for i, old in enumerate(keep)}
    return [new[i] for i in value if i in new]


# Config fields indexed by layer that are not plain per-layer lists.
THRESHOLD_FIELDS = ("max_window_layers", "first_k_dense_replace")
INDEX_LIST_FIELDS = ("mlp_only_layers",)


def _explicit_sparse_layers(config: Any, n: int) -> None:
    """MoE models choosing sparse layers by ``(i + 1) % decoder_sparse_step`` cannot keep the
    rule after a removal, so the dense layers are listed explicitly (still in the old
    numbering; ``mlp_only_layers`` is renumbered with the other index lists) and the step set to 1."""
    if not hasattr(config, "mlp_only_layers"):
        raise EvopError(f"{type(config).__name__} picks MoE layers by a step that cannot survive removing blocks")
    step, only = config.decoder_sparse_step, set(config.mlp_only_layers or [])
    config.mlp_only_layers = [i for i in range(n) if i in only or (i + 1) % step != 0]
    config.decoder_sparse_step = 1


def cut_config(config: Any, keep: Sequence[int]) -> None:
    """Make every per-layer field of the config describe only the kept layers."""
    config = text_config(config)
    n = num_layers(config)
    if getattr(config, "decoder_sparse_step", 1) not in (None, 1):
        _explicit_sparse_layers(config, n)
    for name in THRESHOLD_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(config, name, _threshold(value, keep))
    for name in INDEX_LIST_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)) and value:
            setattr(config, name, _index_list(value, keep))
    # Any other list with one entry per layer (layer_types, no_rope_layers, ...) is cut to the kept layers;
    # token ids (eos_token_id = [...]) and the architectures list are never per layer, whatever their length.
    for name, value in list(vars(config).items()):
        if name in INDEX_LIST_FIELDS or name.startswith("_") or "token" in name or name == "architectures":
            continue
        if isinstance(value, (list, tuple)) and len(value) == n:
            setattr(config, name, type(value)(value[i] for i in keep))
    _pattern_after_cut(config)
    config.num_hidden_layers = len(keep)


PATTERN_FIELDS = ("sliding_window_pattern", "_sliding_window_pattern")


def _pattern_after_cut(config: Any) -> None:
    """Gemma-style configs also state ``layer_types`` as a period (every p-th layer full attention). transformers
    reads ``layer_types``, but other loaders derive the types from the period: keep a period that still gives
    the cut ``layer_types``, or drop it when none does."""
    types = getattr(config, "layer_types", None)
    stated = [name for name in PATTERN_FIELDS if isinstance(vars(config).get(name), int)]
    if not types or not stated:
        return
    fits = [
        p
        for p in range(1, len(types) + 1)
        if [("sliding_attention" if (i + 1) % p else "full_attention") for i in range(len(types))] == list(types)
    ]
    for name in stated:
        if fits:
            setattr(config, name, fits[0])
        else:
            delattr(config, name)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where input ids go: the embeddings' device; for embeddings that accelerate offloads (their
    weights sit on "meta"), the device its hook runs them on, else the first device holding weights."""
    embed = model.get_input_embeddings()
    hook_device = getattr(getattr(embed, "_hf_hook", None), "execution_device", None)
    if hook_device is not None:
        return torch.device(hook_device)
    if embed.weight.device.type != "meta":
        return embed.weight.device
    return next(p.device for p in model.parameters() if p.device.type != "meta")
