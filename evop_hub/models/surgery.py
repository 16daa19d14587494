"""Remove blocks for real: a smaller ``ModuleList``, renumbered layers, a config that matches.

The result is an ordinary transformers model: ``save_pretrained`` writes a checkpoint that
plain ``from_pretrained`` loads with no evop-hub code, and the KV cache, sliding windows
and per-layer attention types line up with the blocks that remain.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

from ..errors import EvopError
from .adapters import INDEX_ATTRIBUTES, block_path, check_prunable, cut_config
from .loading import LoadedModel, count_parameters

MAX_BLOCK_INDEX = 100_000  # far beyond any model's blocks; validate_drop checks against the model's own count


def parse_layers(text: str) -> list[int]:
    """``"3,4,25"`` or ``"3-5,25"`` -> block indices (original numbering)."""
    layers: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise EvopError(f"cannot read block list {text!r}: use indices like 3,4,25 or ranges like 3-5")
        start, end = int(match[1]), int(match[2] or match[1])
        if end < start:
            raise EvopError(f"block range {part!r} runs backwards; write {end}-{start}")
        if end > MAX_BLOCK_INDEX:  # refused before a range of billions of indices fills the memory
            raise EvopError(f"block index {end} is out of range: no model has that many blocks")
        layers.extend(range(start, end + 1))
    if not layers:
        raise EvopError("no blocks given; use --layers 3,4,25")
    _refuse_duplicates(layers)
    return layers


def _refuse_duplicates(blocks: Sequence[int]) -> None:
    if len(set(blocks)) < len(blocks):
        raise EvopError(f"block(s) {sorted({i for i in blocks if blocks.count(i) > 1})} listed more than once")


def validate_drop(dropped: Sequence[int], num_blocks: int) -> list[int]:
    """Sorted unique block indices, or one clear line about what is wrong."""
    _refuse_duplicates(dropped)
    seen = set(dropped)
    bad = [i for i in dropped if not 0 <= i < num_blocks]
    if bad:
        raise EvopError(f"block index {bad[0]} is out of range: this model has blocks 0..{num_blocks - 1}")
    if len(seen) >= num_blocks:
        raise EvopError(f"cannot drop all {num_blocks} blocks; keep at least one")
    return sorted(seen)


def _renumber(block: torch.nn.Module, index: int) -> None:
    for module in block.modules():
        for name in INDEX_ATTRIBUTES:
            if isinstance(getattr(module, name, None), int):
                setattr(module, name, index)


def _renamed_device_map(device_map: dict, prefix: str, keep: Sequence[int]) -> dict:
    """Device-map keys follow the blocks to their new numbers; dropped blocks leave the map."""
    new_index = {old: new for new, old in enumerate(keep)}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)(\..*)?$")
    renamed = {}
    for key, device in device_map.items():
        match = pattern.match(key)
        if match is None:
            renamed[key] = device
        elif int(match[1]) in new_index:
            renamed[f"{prefix}.{new_index[int(match[1])]}{match[2] or ''}"] = device
    return renamed


def drop_blocks(model: torch.nn.Module, dropped: Iterable[int]) -> list[int]:
    """Remove blocks (current numbering) from a transformers model in place; returns the kept indices."""
    check_prunable(model)
    path = block_path(model)
    blocks = model.get_submodule(path)
    dropped = validate_drop(list(dropped), len(blocks))
    keep = [i for i in range(len(blocks)) if i not in set(dropped)]
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name)
    kept = torch.nn.ModuleList([blocks[i] for i in keep])
    for index, block in enumerate(kept):
        _renumber(block, index)
    setattr(parent, attr, kept)
    cut_config(model.config, keep)
    if getattr(model, "hf_device_map", None):
        model.hf_device_map = _renamed_device_map(model.hf_device_map, path, keep)
    return keep


def drop(loaded: LoadedModel, dropped: Iterable[int]) -> LoadedModel:
    """Remove blocks given in the *original* numbering of the source model, and record it.

    Calls can be chained: blocks already removed may not be named again.
    """
    dropped = list(dropped)
    record = loaded.record
    current = record.kept_blocks  # original index of each current block
    already = sorted(set(dropped) & set(record.dropped_blocks))
    if already:
        raise EvopError(f"block(s) {already} were already removed from this model")
    original = validate_drop(dropped, record.num_blocks)
    position = {orig: i for i, orig in enumerate(current)}
    drop_blocks(loaded.model, [position[i] for i in original])
    record.dropped_blocks = sorted(record.dropped_blocks + original)
    record.parameters_after = count_parameters(loaded.model)
    return loaded
