"""Fitness of pruning masks: mean next-token NLL on the calibration set with some blocks skipped.

Every search method talks to one ``Evaluator`` interface (as mergekit's evolution strategies
do), so a pool of workers over several GPUs or machines can replace ``SerialEvaluator``
without touching the methods. The serial evaluator is exact (the same numbers as a full
forward of the physically pruned model) and avoids work in three ways:

* memoisation: a mask is computed once per run;
* prefix reuse: the hidden state after blocks ``0..j-1`` depends only on the mask's first
  ``j`` bits, so states are cached (LRU, under a byte budget) and each population is
  evaluated in lexicographic order of its keep-bits, so neighbours share long prefixes;
* exact early termination: NLL sums only grow as batches are added, so once a mask's
  partial sum exceeds the sum it needs to be among the survivors, it stops; the
  selection is the same as with full evaluations. The bar is set early: every new mask
  first gets one batch, then the masks that look best on it are completed first, so the
  survivors' sums (the bar) are low before most masks have spent more than one batch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import EvopError
from ..models.runner import BlockRunner

Mask = tuple[int, ...]  # dropped block indices, sorted


def as_mask(dropped) -> Mask:
    return tuple(sorted(int(i) for i in dropped))


def keep_bits(mask: Mask, num_blocks: int) -> tuple[bool, ...]:
    """Which blocks a mask keeps, in block order: the key of prefix reuse."""
    dropped = set(mask)
    return tuple(i not in dropped for i in range(num_blocks))


@dataclass
class Fitness:
    """A mask's NLL sum over the batches computed so far. Complete when every batch is in."""

    mask: Mask
    nll_sum: float = 0.0
    tokens: int = 0
    batches: int = 0
    complete: bool = False

    @property
    def loss(self) -> float:
        """Mean token NLL; for an incomplete fitness, +inf (it lost its selection)."""
        return self.nll_sum / self.tokens if self.complete else math.inf


@dataclass
class EvaluatorStats:
    """Counters reported in the search trace."""

    evaluations: int = 0  # masks computed (not memoised), early-stopped ones included
    memo_hits: int = 0
    early_stops: int = 0
    block_forwards: int = 0  # single-block calls over one batch
    prefix_hits: int = 0
    blocks_saved: int = 0  # block calls avoided by prefix reuse

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Evaluator(ABC):
    """Computes fitnesses for lists of masks; the one place a search spends compute."""

    num_blocks: int
    stats: EvaluatorStats

    @abstractmethod
    def evaluate(self, masks: Sequence[Mask], survivors: int | None = None) -> list[Fitness]:
        """Fitness of each mask, in the given order.

        With ``survivors=T`` the caller promises to keep only the ``T`` lowest losses among
        these masks, so a mask that provably cannot be among them may come back incomplete
        (``loss == inf``). ``None`` computes every mask fully.
        """

    @abstractmethod
    def layer_cosines(self, distance: int) -> list[float]:
        """Mean cosine similarity, over calibration tokens, between the dense model's hidden
        states before block ``l`` and after block ``l + distance - 1``, for every ``l``.

        One dense pass; the one-shot criteria (ShortGPT, angular distance) and the search's
        seeding read block redundancy from it.
        """

    def loss(self, mask: Mask) -> float:
        return self.evaluate([mask])[0].loss


@dataclass
class SerialEvaluator(Evaluator):
    """All masks in this process, on the model's own device(s)."""

    model: torch.nn.Module
    input_ids: torch.Tensor  # [samples, seq_len] calibration token ids
    batch_size: int = 1
    cache_bytes: int = 1 << 30
    memo: dict[Mask, Fitness] = field(default_factory=dict)
    stats: EvaluatorStats = field(default_factory=EvaluatorStats)

    def __post_init__(self) -> None:
        self.runner = BlockRunner(self.model)
        self.num_blocks = len(self.runner)
        self.batches = list(torch.split(self.input_ids, self.batch_size))
        self.contexts = [None] * len(self.batches)  # prepared lazily: early stops may never need later batches
        self.prefix: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.prefix_bytes = 0

    # ------------------------------------------------------------------ prefix cache
    def _remember(self, key: tuple, hidden: torch.Tensor) -> None:
        size = hidden.numel() * hidden.element_size()
        if size > self.cache_bytes:
            return
        self.prefix[key] = hidden
        self.prefix_bytes += size
        while self.prefix_bytes > self.cache_bytes:
            _, old = self.prefix.popitem(last=False)
            self.prefix_bytes -= old.numel() * old.element_size()

    def _context(self, b: int):
        if self.contexts[b] is None:
            self.contexts[b] = self.runner.prepare(self.batches[b])
        return self.contexts[b]

    def _batch_nll(self, keep: tuple[bool, ...], b: int) -> float:
        ctx = self._context(b)
        hidden, start = ctx.hidden, 0
        for j in range(len(keep), 0, -1):
            cached = self.prefix.get((b, keep[:j]))
            if cached is not None:
                self.prefix.move_to_end((b, keep[:j]))
                hidden, start = cached, j
                self.stats.prefix_hits += 1
                self.stats.blocks_saved += sum(keep[:j])
                break
        with torch.no_grad():
            for i in range(start, len(keep)):
                if keep[i]:
                    hidden = self.runner.block(i, hidden, ctx)
                    self.stats.block_forwards += 1
                    if i < len(keep) - 1:
                        self._remember((b, keep[: i + 1]), hidden)
            total, _ = self.runner.nll(hidden, self.batches[b])
        return float(total)

    # ------------------------------------------------------------------ evaluation
    def _advance(self, fit: Fitness, bound: float, until: int | None = None) -> None:
        """Add batches to ``fit`` until it has ``until`` (default: all) or its partial sum exceeds ``bound``."""
        keep = keep_bits(fit.mask, self.num_blocks)
        until = len(self.batches) if until is None else until
        while fit.batches < until and fit.nll_sum <= bound:
            value = self._batch_nll(keep, fit.batches)
            if not math.isfinite(value):
                raise EvopError(
                    f"dropping blocks {list(fit.mask)} gives a non-finite loss ({value}); "
                    "the model overflows in this dtype: try --dtype float32 or bfloat16"
                )
            fit.nll_sum += value
            fit.tokens += self.batches[fit.batches].shape[0] * (self.batches[fit.batches].shape[1] - 1)
            fit.batches += 1
        fit.complete = fit.batches == len(self.batches)

    @torch.no_grad()
    def layer_cosines(self, distance: int) -> list[float]:
        sums = torch.zeros(self.num_blocks - distance + 1, dtype=torch.float64)
        count = 0
        for b in range(len(self.batches)):
            ctx = self._context(b)
            states = [ctx.hidden]
            for i in range(self.num_blocks):
                states.append(self.runner.block(i, states[-1], ctx))
                self.stats.block_forwards += 1
            for start in range(len(sums)):
                a, z = states[start].float(), states[start + distance].float().to(states[start].device)
                sums[start] += torch.nn.functional.cosine_similarity(a, z, dim=-1).sum().double().cpu()
            count += ctx.hidden.shape[0] * ctx.hidden.shape[1]
        return (sums / count).tolist()

    def evaluate(self, masks: Sequence[Mask], survivors: int | None = None) -> list[Fitness]:
        masks = [as_mask(m) for m in masks]
        for mask in masks:
            if len(mask) >= self.num_blocks or (mask and not 0 <= mask[0] <= mask[-1] < self.num_blocks):
                raise EvopError(f"invalid mask {list(mask)} for a model with {self.num_blocks} blocks")
        unique = list(dict.fromkeys(masks))
        done = sorted((self.memo[m].nll_sum for m in unique if m in self.memo and self.memo[m].complete))

        def bound() -> float:
            return done[survivors - 1] if survivors and len(done) >= survivors else math.inf

        # Lexicographic order of keep-bits puts masks sharing long prefixes next to each other.
        order = sorted(unique, key=lambda m: keep_bits(m, self.num_blocks), reverse=True)
        pending = []
        for mask in order:
            fit = self.memo.get(mask)
            if fit is not None and (fit.complete or fit.nll_sum > bound()):
                self.stats.memo_hits += 1
                continue
            if fit is None:
                fit = self.memo[mask] = Fitness(mask)
                self.stats.evaluations += 1
            pending.append(fit)
        if survivors:  # one batch each, then the most promising complete first and set the bar
            for fit in pending:
                self._advance(fit, bound(), until=1)
            first = {id(f) for f in sorted(pending, key=lambda f: f.nll_sum / f.tokens)[:survivors]}
            pending = [f for f in pending if id(f) in first] + [f for f in pending if id(f) not in first]
        for fit in pending:
            self._advance(fit, bound())
            if fit.complete:
                done.append(fit.nll_sum)
                done.sort()
            else:
                self.stats.early_stops += 1
        return [self.memo[m] for m in masks]
