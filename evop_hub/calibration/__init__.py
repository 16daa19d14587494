"""Calibration data for the pruning search: CCDS (EvoP's cluster-based sampling) or SLEB's random
windows, saved as a reusable file that remembers its corpus, seed and tokenizer.

    from evop_hub.calibration import CalibrationConfig, calibrate, CalibrationSet
    cal = calibrate("wikitext2:train", tokenizer, CalibrationConfig(sampler="ccds", clusters=5))
    cal.save("calib.safetensors"); cal.plot("clusters.png")
    cal = CalibrationSet.load("calib.safetensors", tokenizer)  # refuses another tokenizer's file
"""

from .calibration_set import CalibrationSet, tokenizer_fingerprint
from .ccds import DEFAULT_EMBEDDER, embed_chunks, load_embedder, split_chunks, topic_nmi
from .sampling import SAMPLERS, CalibrationConfig, Drawn, calibrate, register_sampler

__all__ = [
    "DEFAULT_EMBEDDER",
    "SAMPLERS",
    "CalibrationConfig",
    "CalibrationSet",
    "Drawn",
    "calibrate",
    "embed_chunks",
    "load_embedder",
    "register_sampler",
    "split_chunks",
    "tokenizer_fingerprint",
    "topic_nmi",
]
