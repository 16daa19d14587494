"""Models: loading (Hub, local, GGUF, offline default), architecture adapters, block surgery
and saving a standard checkpoint."""

from .adapters import block_path, check_prunable, find_blocks, input_device, num_layers, text_config
from .loading import (
    DEFAULT_MODEL,
    OFFLINE_MODELS,
    LoadConfig,
    LoadedModel,
    SourceInfo,
    count_parameters,
    describe,
    leading_bos,
    load,
    load_tokenizer,
    parse_max_memory,
)
from .saving import prepare_output, save, state_dir
from .surgery import drop, drop_blocks, parse_layers, validate_drop

__all__ = [
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
