"""Held-out NLL of block-dropping masks without copying the model.

The perplexity windows of each corpus (cut as :func:`evop_hub.evaluate.perplexity.make_windows`
cuts them) go through one memoising ``SerialEvaluator`` per corpus, which runs the kept blocks
only: the numbers are those of a forward of the physically pruned model (the tests check this
against ``perplexity``), patterns repeated across methods and seeds are computed once, and a
width-pruned model is scored on the very same windows with ``HeldOut.on(model)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..data import load_corpus
from ..models import input_device
from ..scoring import SerialEvaluator
from .perplexity import make_windows, window_length


class HeldOut:
    """Mean next-token NLL per held-out corpus of a model with some blocks skipped."""

    def __init__(
        self,
        model: torch.nn.Module,
        windows: dict[str, torch.Tensor],
        info: dict[str, dict[str, Any]] | None = None,
        cache_bytes: int = 1 << 30,
    ):
        self.windows = windows
        self.info = info or {spec: {"windows": ids.shape[0], "seq_len": ids.shape[1]} for spec, ids in windows.items()}
        self.cache_bytes = cache_bytes
        device = input_device(model)
        self.evaluators = {
            spec: SerialEvaluator(model, ids.to(device), cache_bytes=cache_bytes) for spec, ids in windows.items()
        }

    @classmethod
    def from_corpora(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        specs: Iterable[str],
        seq_len: int | str,
        max_windows: int | None = None,
        data_dir: str | None = None,
        cache_bytes: int = 1 << 30,
    ) -> HeldOut:
        """The first ``max_windows`` windows (None: all) of ``seq_len`` tokens of each corpus spec."""
        windows, info = {}, {}
        length = window_length(model, seq_len)
        for spec in specs:
            corpus = load_corpus(spec, data_dir=data_dir)
            windows[spec] = make_windows(tokenizer, corpus, length, max_windows)
            info[spec] = {"form": corpus.form, "windows": windows[spec].shape[0], "seq_len": windows[spec].shape[1]}
        return cls(model, windows, info, cache_bytes)

    def on(self, model: torch.nn.Module) -> HeldOut:
        """The same windows, scored on another model (a width-pruned copy)."""
        return HeldOut(model, self.windows, self.info, self.cache_bytes)

    def score(self, mask: Iterable[int] = ()) -> dict[str, float]:
        """Mean NLL per corpus with the blocks of ``mask`` (current numbering) skipped."""
        return {spec: evaluator.loss(tuple(mask)) for spec, evaluator in self.evaluators.items()}
