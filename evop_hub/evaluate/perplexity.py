"""Perplexity by the standard pruning-paper protocol, computed through the block runner.

Protocol (SLEB, Wanda, EvoP): tokenize the whole joined split once, cut it into
non-overlapping windows of ``seq_len`` tokens (the incomplete tail is dropped), score every
next-token prediction inside each window, and report exp of the token-weighted mean NLL.
C4 is theirs too: the first 1100 validation documents joined with spaces, 256 windows
(``Corpus.max_windows``).

BOS: when the tokenizer puts a BOS token in front of what it encodes (Llama, Mistral,
Gemma), every window starts with BOS followed by ``seq_len - 1`` text tokens, so each window
looks like the start of a document, as the model saw in training; Wanda and SLEB add BOS to
the first window only, which gives slightly different numbers for those models. Tokenizers
that add no BOS (GPT-2, SmolLM2, Qwen) get plain ``seq_len``-token slices, identical to theirs.

The loss goes through ``BlockRunner.nll``: float32 cross-entropy over chunks of positions,
so full float32 logits of a large vocabulary never exist at once, and the same code path
as the search, which makes its scores and these numbers the same measurement.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..data import Corpus
from ..errors import EvopError
from ..models import LoadConfig, context_length, input_device, leading_bos, load
from ..models.devices import dtype_name
from ..models.loading import check_is_source
from ..progress import bar
from ..record import RECORD_NAME, PruningRecord
from ..record.results import PerplexityResult, PerplexityResults
from ..scoring import BlockRunner

log = logging.getLogger(__name__)

DEFAULT_SEQ_LEN = 2048  # SLEB's window; EvoP's and Wanda's code use the model's full context ("max")


@dataclass
class PerplexityConfig:
    seq_len: int | str = DEFAULT_SEQ_LEN  # tokens per window, or "max" for the model's context length
    batch_size: int = 1  # windows per forward pass
    max_windows: int | None = None  # score only the first N windows (quick looks; numbers then not comparable)


def parse_seq_len(text: str) -> int | str:
    """``--seq-len`` as typed: a number of tokens or "max"."""
    if text == "max":
        return text
    try:
        return int(text)
    except ValueError:
        raise EvopError(f"--seq-len must be a number of tokens or 'max', not {text!r}") from None


def window_length(model: torch.nn.Module, seq_len: int | str) -> int:
    """The window length actually used: ``seq_len`` capped at the model's context, or the context for "max"."""
    context = context_length(model)
    if seq_len == "max":
        if context is None:
            raise EvopError("the model config has no max_position_embeddings; pass an explicit --seq-len")
        return context
    if not isinstance(seq_len, int) or seq_len < 2:
        raise EvopError(f"seq_len must be an integer of at least 2 or 'max', not {seq_len!r}")
    if context is not None and seq_len > context:
        log.warning("seq_len %d exceeds the model's context of %d tokens; using %d", seq_len, context, context)
        return context
    return seq_len


def make_windows(tokenizer, corpus: Corpus, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """The (windows, seq_len) token matrix of the protocol, BOS-led when the tokenizer uses BOS."""
    ids = tokenizer(corpus.text, add_special_tokens=False, verbose=False)["input_ids"]
    bos = leading_bos(tokenizer)
    uses_bos = bos is not None
    step = seq_len - 1 if uses_bos else seq_len
    count = len(ids) // step
    if count == 0:
        raise EvopError(
            f"{corpus.name}:{corpus.split} has only {len(ids)} tokens, fewer than one window of {seq_len}; "
            "pass a smaller --seq-len or a larger split"
        )
    for cap in (corpus.max_windows, max_windows):  # the corpus protocol's own cap (C4's 256), then the user's
        if cap is not None:
            count = min(count, cap)
    windows = torch.tensor(ids[: count * step], dtype=torch.long).view(count, step)
    if uses_bos:
        windows = torch.cat([torch.full((count, 1), bos, dtype=torch.long), windows], dim=1)
    return windows


@torch.no_grad()
def perplexity(
    model: torch.nn.Module, tokenizer, corpus: Corpus, config: PerplexityConfig | None = None
) -> PerplexityResult:
    """Perplexity of ``model`` on ``corpus``; works on device-mapped models (blocks run where they live)."""
    config = config or PerplexityConfig()
    if config.batch_size < 1 or (config.max_windows is not None and config.max_windows < 1):
        raise EvopError(
            f"batch_size and max_windows must be at least 1, not {config.batch_size} and {config.max_windows}"
        )
    seq_len = window_length(model, config.seq_len)
    windows = make_windows(tokenizer, corpus, seq_len, config.max_windows)
    batches = windows.split(config.batch_size)
    desc = f"ppl {corpus.name}:{corpus.split} ({seq_len} tokens/window)"
    total, tokens = total_nll(model, bar(batches, desc=desc, unit="batch"))
    nll = total / tokens
    return PerplexityResult(
        corpus.name, corpus.split, corpus.form, seq_len, len(windows), tokens, nll, math.exp(nll), dtype_name(model)
    )


@torch.no_grad()
def total_nll(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> tuple[float, int]:
    """(Summed next-token NLL in nats, number of predicted tokens) of ``model`` over ``batches`` of token ids,
    through ``BlockRunner.nll``: the search's own loss, so perplexity, the baselines' calibration loss and the
    search's scores are one measurement."""
    runner = BlockRunner(model)
    device = input_device(model)
    total, tokens = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        nll_sum, count = runner.nll(runner.run(runner.prepare(batch)), batch)
        total += nll_sum.item()
        tokens += count
    return total, tokens


def evaluate_perplexity(
    model: str | Path,
    corpora: Sequence[Corpus],
    config: PerplexityConfig | None = None,
    load_config: LoadConfig | None = None,
    dense: bool = False,
) -> PerplexityResults:
    """Load ``model`` (a Hub id or directory) and score it on ``corpora``; writes nothing.

    With ``dense``, ``model`` must be an evop-hub output: its source, found through the record, is
    scored on the same windows, refused unless it is the model the output was pruned from, and
    loaded at the pruned model's dtype (with "auto" each would get its own checkpoint's, and the
    change the card shows would mix pruning with precision).
    """
    model, config, load_config = str(model), config or PerplexityConfig(), load_config or LoadConfig()
    if dense and not (Path(model) / RECORD_NAME).is_file():
        raise EvopError(f"--dense scores the source named in an evop-hub output's record; {model} has none")
    source = PruningRecord.load(model) if dense else None  # a broken record fails before any loading
    results = _score(model, corpora, config, load_config)
    run = PerplexityResults(results, partial=config.max_windows is not None)
    if source is not None:
        source_load = replace(load_config, revision=source.source_revision, dtype=results[0].dtype)
        run.dense = _score(source.source_spec(model), corpora, config, source_load, source)
        run.dense_model = source.source_model
    return run


def _score(
    name: str,
    corpora: Sequence[Corpus],
    config: PerplexityConfig,
    load_config: LoadConfig,
    source_of: PruningRecord | None = None,
) -> list[PerplexityResult]:
    """Perplexity of the model ``name`` on each corpus; with ``source_of``, only if it is that record's source."""
    loaded = load(name, load_config)
    if source_of is not None:
        check_is_source(source_of, loaded.model, name)
    return [perplexity(loaded.model, loaded.tokenizer, corpus, config) for corpus in corpora]
