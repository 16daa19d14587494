"""Models: loading (Hub, local, GGUF, offline default), architecture adapters, block surgery
and saving a standard checkpoint."""

from .adapters import (
    block_path,
    check_context,
    check_prunable,
    context_length,
    find_blocks,
    input_device,
    num_layers,
    text_config,
)
from .devices import parse_max_memory
from .loading import LoadConfig, LoadedModel, SourceInfo, count_parameters, describe, leading_bos, load, load_tokenizer
from .offline import DEFAULT_MODEL, OFFLINE_MODELS
from .saving import prepare_output, save, state_dir
from .surgery import drop, drop_blocks, parse_layers, validate_drop

__all__ = [
    "check_context",
    "context_length",
    "DEFAULT_MODEL",
    "OFFLINE_MODELS",
    "LoadConfig",
    "LoadedModel",
    "SourceInfo",
    "block_path",
    "check_prunable",
    "count_parameters",
    "describe",
    "drop",
    "drop_blocks",
    "find_blocks",
    "input_device",
    "leading_bos",
    "load",
    "load_tokenizer",
    "num_layers",
    "parse_layers",
    "parse_max_memory",
    "prepare_output",
    "save",
    "state_dir",
    "text_config",
    "validate_drop",
]
