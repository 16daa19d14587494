"""Fitness of pruning masks on the calibration set with some blocks skipped: the mean next-token NLL, or the
mean KL divergence of the pruned model's next-token distribution from the dense model's.

KL to the dense model (EvoPress's fitness) scores every position against the dense model's
whole distribution rather than one observed token, so it measures how far pruning moved the
model, not how well the pruned model happens to fit the calibration text.

Every search method talks to one ``Evaluator`` interface (as mergekit's evolution strategies
do), so Ray actors over several GPUs or machines (``distributed.RayEvaluator``) can replace
``SerialEvaluator`` without touching the methods. The serial evaluator is exact (the same numbers as a full
forward of the physically pruned model) and avoids work in three ways, besides stacking the
final states of many masks into one call of the head:

* memoisation: a mask is computed once per run;
* prefix reuse: the hidden state after blocks ``0..j-1`` depends only on the mask's first
  ``j`` bits, so states are cached (LRU, under a byte budget), and the masks of one call walk
  the blocks together: at block ``i`` each distinct prefix that keeps it is computed once, and
  the states of different masks go through the block in one batched call (a small model's
  block on a short sample costs little more for 32 states than for one);
* exact early termination: NLL and KL sums only grow as batches are added, so once a mask's
  partial sum exceeds the sum it needs to be among the survivors, it stops; the
  selection is the same as with full evaluations. The bar is set early: every new mask
  first gets one batch, then the masks that look best on it are completed first, so the
  survivors' sums (the bar) are low before the others spend more than one batch; the others
  then advance one batch at a time, each stopping as soon as it is over the bar.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from ..errors import EvopError
from ..registry import Registry
from .runner import BlockContext, BlockRunner

Mask = tuple[int, ...]  # dropped block indices, sorted
FITNESSES: Registry[str] = Registry("fitnesses", "--fitness", describe=str)
FITNESSES.register("nll", "mean next-token NLL on the calibration set")
FITNESSES.register("kl", "mean KL(dense || pruned) of the next-token distributions")


def as_mask(dropped) -> Mask:
    return tuple(sorted(int(i) for i in dropped))


def keep_bits(mask: Mask, num_blocks: int) -> tuple[bool, ...]:
    """Which blocks a mask keeps, in block order: the key of prefix reuse."""
    dropped = set(mask)
    return tuple(i not in dropped for i in range(num_blocks))


@dataclass
class Fitness:
    """A mask's summed loss (NLL or KL, per ``SerialEvaluator.fitness``) over the batches computed so far.
    Complete when every batch is in."""

    mask: Mask
    loss_sum: float = 0.0
    tokens: int = 0
    batches: int = 0
    complete: bool = False

    @property
    def loss(self) -> float:
        """Mean per-token loss; for an incomplete fitness, +inf (it lost its selection)."""
        return self.loss_sum / self.tokens if self.complete else math.inf


def checked(masks: Sequence[Mask], num_blocks: int) -> list[Mask]:
    masks = [as_mask(m) for m in masks]
    for mask in masks:
        if len(mask) >= num_blocks or (mask and not 0 <= mask[0] <= mask[-1] < num_blocks):
            raise EvopError(f"invalid mask {list(mask)} for a model with {num_blocks} blocks")
    return masks


def _stack(states: list[torch.Tensor]) -> torch.Tensor:
    """Several masks' states along the batch axis. They may come from blocks on different devices (a
    device map): gather them on the first one's."""
    return torch.cat([state.to(states[0].device) for state in states]) if len(states) > 1 else states[0]


@dataclass
class EvaluatorStats:
    """Counters reported in the search trace."""

    evaluations: int = 0  # masks computed (not memoised), early-stopped ones included
    memo_hits: int = 0
    early_stops: int = 0
    block_forwards: int = 0  # single-block calls over one batch
    prefix_hits: int = 0
    blocks_saved: int = 0  # block calls avoided by prefix reuse (cached, or shared by masks evaluated together)
    screened_out: int = 0  # masks a cheaper stage of a StagedEvaluator kept from the full evaluation

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))

    def add_work(self, after: EvaluatorStats, before: dict[str, int]) -> None:
        """Add the compute another evaluator did between ``before`` and ``after`` (a Ray actor, a stage)."""
        for name in ("early_stops", "block_forwards", "prefix_hits", "blocks_saved", "screened_out"):
            setattr(self, name, getattr(self, name) + getattr(after, name) - before[name])


class Evaluator(ABC):
    """Computes fitnesses for lists of masks; the one place a search spends compute."""

    num_blocks: int
    stats: EvaluatorStats
    memo: dict[Mask, Fitness]  # every mask's fitness so far; saved and restored through state_dict

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

    def identity(self) -> list:
        """What its numbers depend on besides the mask (model, dtype, data, batching): a saved search resumes
        only on an evaluator with the same identity."""
        return []

    def counts(self) -> dict[str, int]:
        """The work counters, for a trace row or a summary: read often, so without the memo."""
        return self.stats.as_dict()

    def state_dict(self) -> dict:
        """Every fitness computed so far (partial sums of early-stopped masks included) and the counters, as
        JSON-ready lists: what a checkpoint saves so that a resumed search recomputes nothing."""
        memo = [[list(f.mask), f.loss_sum, f.tokens, f.batches, f.complete] for f in self.memo.values()]
        return {"memo": memo, "stats": self.stats.as_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` saved; the caller has checked its types (a checkpoint may be damaged)."""
        for mask, loss_sum, tokens, batches, complete in state["memo"]:
            self.memo[as_mask(mask)] = Fitness(as_mask(mask), loss_sum, tokens, batches, complete)
        self.stats = EvaluatorStats(**state["stats"])

    def stage_base(self) -> SerialEvaluator:
        """The evaluator in this process whose model, data and settings a ``StagedEvaluator``'s cheap stages
        share."""
        raise EvopError(f"{type(self).__name__} cannot carry staged selection")

    def close(self) -> None:
        """Free what the evaluator holds outside this process (Ray actors); nothing for one in this process."""
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class SerialEvaluator(Evaluator):
    """All masks in this process, on the model's own device(s)."""

    model: torch.nn.Module
    input_ids: torch.Tensor  # [samples, seq_len] calibration token ids
    batch_size: int = 1
    cache_bytes: int = 1 << 30  # the prefix cache, and separately the states one walk of the blocks holds
    group_tokens: int = 16384  # tokens per batched block call when several masks' states share it
    fitness: str = "nll"  # a name in FITNESSES
    memo: dict[Mask, Fitness] = field(default_factory=dict)
    stats: EvaluatorStats = field(default_factory=EvaluatorStats)

    def __post_init__(self) -> None:
        FITNESSES.check(self.fitness)
        self.runner = BlockRunner(self.model)
        self.num_blocks = len(self.runner)
        self.batches = list(torch.split(self.input_ids, self.batch_size))
        # Block arguments per (batch, states stacked), prepared lazily: early stops may never need later batches.
        self.contexts: dict[tuple[int, int], BlockContext] = {}
        self.prefix: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.prefix_bytes = 0
        self.dense: dict[int, torch.Tensor] = {}  # KL: the dense model's final states, per batch
        self.references: dict[int, list[torch.Tensor]] = {}  # KL: dense log-probs of the batches that fit

    def stage_base(self) -> SerialEvaluator:
        return self

    def identity(self) -> list:
        # The model by its class, size, dtype and 256 evenly spaced values of every weight tensor it holds in
        # memory (offloaded ones are on `meta`): a fine-tune that changed only some blocks differs too.
        digest = hashlib.sha256()
        for name, p in self.model.named_parameters():
            if p.device.type != "meta":
                flat = p.detach().flatten()
                digest.update(
                    name.encode() + flat[:: max(1, flat.numel() // 256)][:256].float().cpu().numpy().tobytes()
                )
        parameters = sum(p.numel() for p in self.model.parameters())
        return [
            type(self.model).__name__,
            parameters,
            str(next(self.model.parameters()).dtype),
            digest.hexdigest(),
            hashlib.sha256(self.input_ids.cpu().numpy().tobytes()).hexdigest(),
            self.batch_size,
            *([] if self.fitness == "nll" else [self.fitness]),
        ]  # NLL checkpoints of earlier versions resume

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

    def _context(self, b: int, copies: int = 1) -> BlockContext:
        """Batch ``b``'s block arguments for ``copies`` states stacked along the batch axis (one per mask):
        the model's own forward over the repeated ids gives them, whatever the architecture."""
        if (b, copies) not in self.contexts:
            ids = self.batches[b]
            ctx = self.runner.prepare(ids.repeat(copies, 1) if copies > 1 else ids)
            # Stacked calls read only the arguments: their repeated embeddings would be memory held for nothing.
            self.contexts[b, copies] = replace(ctx, hidden=None) if copies > 1 else ctx
        return self.contexts[b, copies]

    def _apply(self, index: int, states: list[torch.Tensor], b: int) -> list[torch.Tensor]:
        """Block ``index`` on several masks' states of batch ``b``, stacked up to ``group_tokens`` tokens a call.

        Calls stack a power of two of states (8 + 4 + 1 for 13), so a batch needs block
        arguments for a few stack sizes only, each prepared once."""
        group = max(1, self.group_tokens // self.batches[b].numel())
        out, start = [], 0
        while start < len(states):
            size = 1 << (min(group, len(states) - start).bit_length() - 1)
            chunk = states[start : start + size]
            result = self.runner.block(index, _stack(chunk), self._context(b, size))
            # Separate copies: a cached slice would keep the whole stacked tensor alive outside the byte budget.
            out += [part.clone() for part in result.split(chunk[0].shape[0])] if size > 1 else [result]
            self.stats.block_forwards += size
            start += size
        return out

    @torch.no_grad()
    def _batch_nlls(self, keeps: list[tuple[bool, ...]], b: int) -> list[float]:
        """NLL sums of several masks on batch ``b``, walking the blocks once for all of them.

        Each mask starts from its longest cached prefix; at block ``i`` every distinct prefix
        that keeps the block is computed once (masks sharing it share the work), and a prefix
        that skips it passes its parent's state on unchanged.
        """
        entry, frontier = [], {}
        for keep in keeps:
            level, state = 0, self._context(b).hidden
            for j in range(len(keep) - 1, 0, -1):
                cached = self.prefix.get((b, keep[:j]))
                if cached is not None:
                    self.prefix.move_to_end((b, keep[:j]))
                    level, state = j, cached
                    self.stats.prefix_hits += 1
                    self.stats.blocks_saved += sum(keep[:j])
                    break
            entry.append(level)
            frontier.setdefault(keep[:level], state)
        before = self.stats.block_forwards
        for i in range(self.num_blocks):
            needed = sorted({keep[: i + 1] for keep, level in zip(keeps, entry) if level <= i}, reverse=True)
            kept = [prefix for prefix in needed if prefix[-1]]
            states = self._apply(i, [frontier[prefix[:-1]] for prefix in kept], b)
            following = {prefix: frontier[prefix[:-1]] for prefix in needed if not prefix[-1]}
            for prefix, state in zip(kept, states):
                following[prefix] = state
                if i < self.num_blocks - 1:
                    self._remember((b, prefix), state)
            # States of masks that enter from the cache at a later level wait in the frontier.
            frontier = {**{p: h for p, h in frontier.items() if len(p) > i}, **following}
        walked = self.stats.block_forwards - before
        self.stats.blocks_saved += sum(sum(keep[level:]) for keep, level in zip(keeps, entry)) - walked
        return self._nlls([frontier[keep] for keep in keeps], b)

    def _nlls(self, states: list[torch.Tensor], b: int) -> list[float]:
        """Loss sums of several masks' final states of batch ``b``, stacked into head calls of about
        ``chunk_tokens`` positions: with short samples the head (49k x 576 on SmolLM2) costs more than the
        blocks, and one call reads its weights once for all the masks it carries."""
        ids = self.batches[b]
        per_call = max(1, self.runner.chunk_tokens // ids.numel())
        sums = []
        for start in range(0, len(states), per_call):
            chunk = states[start : start + per_call]
            if self.fitness == "kl":
                rows = self.runner.kl_rows(_stack(chunk), self._dense(b), self._reference(b))
            else:
                rows = self.runner.nll_rows(_stack(chunk), ids.repeat(len(chunk), 1))
            sums += rows.view(len(chunk), -1).sum(1).tolist()
        return sums

    def _dense(self, b: int) -> torch.Tensor:
        """The dense model's final states of batch ``b``, computed once: KL's reference distribution."""
        if b not in self.dense:
            self.dense[b] = self.runner.run(self._context(b))
            self.stats.block_forwards += self.num_blocks
        return self.dense[b]

    def _reference(self, b: int) -> Callable[[int], torch.Tensor] | None:
        """Batch ``b``'s dense log-probabilities, chunk by chunk, kept for the batches that fit in ``cache_bytes``
        (a budget of their own), first come first kept: every pass over the batches reads them in the same
        order, so evicting would only trade one recomputation for another. None: ``kl_rows`` recomputes them."""
        if b not in self.references:
            dense = self._dense(b)
            size = dense.shape[0] * (dense.shape[1] - 1) * self.runner.head.weight.shape[0] * 4
            if size * (len(self.references) + 1) > self.cache_bytes:
                return None
            self.references[b] = [
                self.runner.log_probs(dense, start, end) for start, end in self.runner.reference_chunks(dense)
            ]
        return self.references[b].__getitem__

    # ------------------------------------------------------------------ evaluation
    def _advance(self, fits: list[Fitness], bound: Callable[[], float], until: int | None = None) -> None:
        """Add batches, one at a time for all of ``fits`` together, until each has ``until`` (default: all)
        or its partial sum exceeds ``bound()``."""
        for b in range(len(self.batches) if until is None else until):
            keyed = sorted(
                ((keep_bits(f.mask, self.num_blocks), f) for f in fits if f.batches == b and f.loss_sum <= bound()),
                key=lambda pair: pair[0],
                reverse=True,
            )
            if not keyed:
                continue
            keeps, alive = zip(*keyed)
            # A walk holds up to one state per mask: walks of at most `cache_bytes` of states, neighbours together.
            state = self._context(b).hidden
            per_walk = max(1, self.cache_bytes // (state.numel() * state.element_size()))
            values = []
            for start in range(0, len(keeps), per_walk):
                values += self._batch_nlls(list(keeps[start : start + per_walk]), b)
            for fit, value in zip(alive, values):
                if not math.isfinite(value):
                    raise EvopError(self._non_finite(fit.mask, value, b))
                fit.loss_sum += value
                fit.tokens += self.batches[b].shape[0] * (self.batches[b].shape[1] - 1)
                fit.batches += 1
                fit.complete = fit.batches == len(self.batches)

    @torch.no_grad()
    def _non_finite(self, mask: Mask, value: float, b: int) -> str:
        """Why a loss on batch ``b`` is not finite, naming the cause: the dense pass is checked first, block by
        block, since a block that overflows (or NaN/inf weights) spoils every pattern that keeps it. A wider
        dtype is suggested only where there is one."""
        ctx = self._context(b)
        state, where = ctx.hidden, "the embeddings"
        for i in range(-1, self.num_blocks):
            if i >= 0:
                state, where = self.runner.block(i, state, ctx), f"block {i}"
            if not torch.isfinite(state).all():
                break
        else:
            where = "the final norm or output head" if not math.isfinite(self._nlls([state], b)[0]) else None
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        hint = (
            f"it overflows in {dtype}: try --dtype float32"
            if dtype != "float32"
            else "its weights hold NaN or inf, or overflow even in float32: check the checkpoint"
        )
        if where is None:
            return f"dropping blocks {list(mask)} gives a non-finite loss ({value}) where the dense model's is finite; {hint}"
        return f"{where} of the dense model gives non-finite values (calibration batch {b}); {hint}"

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
        masks = checked(masks, self.num_blocks)
        unique = list(dict.fromkeys(masks))
        done = sorted(self.memo[m].loss_sum for m in unique if m in self.memo and self.memo[m].complete)

        def bound() -> float:
            return done[survivors - 1] if survivors and len(done) >= survivors else math.inf

        pending = []
        for mask in unique:
            fit = self.memo.get(mask)
            if fit is not None and (fit.complete or fit.loss_sum > bound()):
                self.stats.memo_hits += 1
                continue
            if fit is None:
                fit = self.memo[mask] = Fitness(mask)
                self.stats.evaluations += 1
            pending.append(fit)
        groups = [pending]
        if survivors:  # one batch each, then the most promising complete first and set the bar
            self._advance(pending, bound, until=1)
            first = {id(f) for f in sorted(pending, key=lambda f: f.loss_sum / f.tokens)[:survivors]}
            groups = [[f for f in pending if id(f) in first], [f for f in pending if id(f) not in first]]
        for group in groups:
            self._advance(group, bound)
            done.extend(f.loss_sum for f in group if f.complete)
            done.sort()
        self.stats.early_stops += sum(not f.complete for f in pending)
        return [self.memo[m] for m in masks]


def parse_stages(text: str | None) -> list[tuple[int, int]]:
    """``"8@64,4@256"`` -> [(8, 64), (4, 256)]: keep the best KEEP candidates on the first TOKENS tokens of
    every calibration sample, stage after stage, before the full evaluation."""
    stages = []
    for part in filter(None, (text or "").replace(" ", "").split(",")):
        keep, _, tokens = part.partition("@")
        if not (keep.isdigit() and tokens.isdigit() and int(keep) >= 1 and int(tokens) >= 2):
            raise EvopError(f"invalid stage {part!r} in --stages; write KEEP@TOKENS[,KEEP@TOKENS...], e.g. 8@64,4@256")
        stages.append((int(keep), int(tokens)))
    if [t for _, t in stages] != sorted({t for _, t in stages}):
        raise EvopError(f"--stages {text!r}: each stage must score more tokens than the one before")
    return stages


@dataclass
class StagedEvaluator(Evaluator):
    """Staged (multi-fidelity) selection in front of an exact evaluator, as EvoPress selects offspring.

    When a caller wants only the best ``survivors`` of many masks, each stage ranks the masks not
    yet known on the first ``tokens`` positions of every calibration sample (a prefix of a causal
    LM's sequence is scored exactly as in the full sequence, so a stage sees every cluster of the
    calibration set, only with shorter context) and passes on its best ``keep``; only those reach
    the full, exact evaluation. This is what buys a calibration set many times larger at the same
    cost: most candidates of a generation never touch it. Masks whose full fitness is already
    known skip the stages. Callers that want every mask (``survivors=None``) get full evaluations.
    Masks a stage screened out come back incomplete (``loss == inf``), as early-stopped ones do.
    """

    final: Evaluator  # a SerialEvaluator, or a RayEvaluator over several devices
    stages: list[tuple[int, SerialEvaluator]]  # (keep, an evaluator over a shorter prefix of each sample)

    def __post_init__(self) -> None:
        self.num_blocks = self.final.num_blocks

    @classmethod
    def build(cls, final: Evaluator, stages: list[tuple[int, int]]) -> StagedEvaluator:
        """Stage evaluators on prefixes of ``final``'s samples, sharing its model, fitness and memory budget (a
        Ray evaluator's model in this process: the stages are cheap, the full evaluations are what actors spread)."""
        base = final.stage_base()
        ids = base.input_ids
        evaluators = []
        for keep, tokens in stages:
            if tokens >= ids.shape[1]:  # short samples (a CPU run): such a stage would save nothing, so it is left out
                continue
            batch = max(1, min(ids.shape[0], base.group_tokens // tokens))
            evaluators.append(
                (
                    keep,
                    SerialEvaluator(
                        base.model,
                        ids[:, :tokens],
                        batch_size=batch,
                        cache_bytes=base.cache_bytes,
                        fitness=base.fitness,
                    ),
                )
            )
        return cls(final, evaluators)

    @property
    def memo(self) -> dict[Mask, Fitness]:  # what a checkpoint saves: the exact fitnesses only
        return self.final.memo

    @property
    def stats(self) -> EvaluatorStats:
        return self.final.stats

    @stats.setter
    def stats(self, value: EvaluatorStats) -> None:
        self.final.stats = value

    def evaluate(self, masks: Sequence[Mask], survivors: int | None = None) -> list[Fitness]:
        masks = checked(masks, self.num_blocks)
        if survivors is None:
            return self.final.evaluate(masks)
        known = [m for m in dict.fromkeys(masks) if m in self.memo and self.memo[m].complete]
        open_ = [m for m in dict.fromkeys(masks) if m not in known]
        for keep, stage in self.stages:
            keep = max(keep, survivors)
            if len(open_) <= keep:
                continue
            before = stage.stats.as_dict()
            fits = sorted(stage.evaluate(open_, survivors=keep), key=lambda f: f.loss)
            self.stats.add_work(stage.stats, before)
            self.stats.screened_out += len(open_) - keep
            open_ = [f.mask for f in fits[:keep]]
        self.final.evaluate(open_ + known, survivors)
        return [self.memo.get(m) or Fitness(m) for m in masks]

    def layer_cosines(self, distance: int) -> list[float]:
        return self.final.layer_cosines(distance)

    def identity(self) -> list:
        return [*self.final.identity(), [(keep, stage.input_ids.shape[1]) for keep, stage in self.stages]]
