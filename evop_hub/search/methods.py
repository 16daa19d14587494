"""Search methods: which ``k`` blocks to drop. One function per method, in a registry.

Each method receives a ``SearchContext`` (the evaluator, ``k``, its settings, a seeded RNG,
and resume state) and returns the mask it chose. Methods checkpoint after every step
(generation, greedy step, chunk of patterns): a run killed at any moment resumes from the
last checkpoint and, the evaluations being deterministic, ends exactly as an uninterrupted
run would.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import EvopError
from ..scoring import Evaluator, Fitness, Mask, as_mask


@dataclass
class SearchConfig:
    """Settings of the search methods and of the fitness they search on; each method reads the fields it needs.

    The fitness is KL(dense || pruned) (``fitness="kl"``) with staged selection (``stages``), EvoPress's
    recipe, because what a user wants is a pruned model that stays close to the dense one on text
    unlike the calibration set: the NLL of the calibration tokens rewards fitting that text.
    ``--preset paper`` restores EvoP's own settings (NLL, no stages, 5 x 2048 WikiText-2 tokens).

    Beyond the paper, and why: the initial population is seeded from one dense pass (block
    redundancy, as ShortGPT reads it, and the angular criterion's run of blocks) instead of purely
    at random, which finds good regions with far fewer evaluations; mutation swaps a dropped block
    for a kept one so every child has exactly ``k`` blocks without repair noise; and the best
    pattern is polished by a swap local search, so the answer is a local optimum under single swaps.
    With ``seed_sleb`` SLEB's greedy answer joins the first population, so the search never ends
    above SLEB on the same calibration (it costs a greedy pass over the full calibration set, so
    the default leaves it to the paper preset). A generation never holds more than about the
    square root of the number of possible patterns, so small spaces are searched, not swept.
    """

    method: str = "evop"
    seed: int = 0
    fitness: str = "kl"  # "kl": mean KL(dense || pruned) per token; "nll": mean next-token NLL
    # KEEP@TOKENS stages of staged selection (see StagedEvaluator); "" scores every candidate on everything
    stages: str = "8@64,2@256"
    population: int = 32
    generations: int = 40
    survivors: float = 0.0625  # parents: with staged selection only they are scored on everything
    mutation: float = 0.15
    elites: int = 2
    patience: int = 6
    seed_sleb: bool = False
    seed_angular: bool = True
    local_search: bool = True
    budget: int | None = None  # random search: masks to try (default population x generations)
    exhaustive_limit: int = 50_000
    chunk: int = 64  # patterns per checkpoint for exhaustive and random search


# EvoP's EPPS as the paper runs it (with this library's seeding and local search): `--preset paper`, and the
# search of `evop-hub compare`, which reproduces the paper's experiments.
PAPER_SEARCH: dict[str, Any] = {
    "fitness": "nll",
    "stages": "",
    "survivors": 0.3,
    "seed_sleb": True,
    "seed_angular": False,
}


@dataclass
class SearchContext:
    """What a method may use: compute goes through ``evaluator`` only."""

    evaluator: Evaluator
    k: int
    config: SearchConfig
    rng: random.Random
    state: dict[str, Any] = field(default_factory=dict)  # the method's last checkpoint, when resuming
    checkpoint: Callable[[dict[str, Any]], None] = lambda state: None
    report: Callable[[dict[str, Any]], None] = lambda row: None  # one trace row per step

    @property
    def num_blocks(self) -> int:
        return self.evaluator.num_blocks


def _best(fits: list[Fitness]) -> Fitness:
    return min(fits, key=lambda f: f.loss)


def _row(step: int, fits: list[Fitness], best: Fitness, **extra) -> dict[str, Any]:
    losses = [f.loss for f in fits if f.complete]
    return {
        "step": step,
        "best": best.loss,
        "best_mask": list(best.mask),
        "mean": sum(losses) / len(losses) if losses else None,
        "candidates": len(fits),
        **extra,
    }


# ------------------------------------------------------------------------------- greedy


def sleb(ctx: SearchContext) -> Mask:
    """SLEB (Song et al., ICML 2024): remove, one at a time, the block whose removal hurts least."""
    dropped = as_mask(ctx.state.get("dropped", []))
    while len(dropped) < ctx.k:
        candidates = [as_mask((*dropped, i)) for i in range(ctx.num_blocks) if i not in dropped]
        fits = ctx.evaluator.evaluate(candidates, survivors=1)
        best = _best(fits)
        dropped = best.mask
        ctx.report(_row(len(dropped), fits, best))
        ctx.checkpoint({"dropped": list(dropped)})
    return dropped


# ------------------------------------------------------------------------------- one-shot


def shortgpt(ctx: SearchContext) -> Mask:
    """ShortGPT (Men et al., 2024): drop the k blocks of lowest Block Influence, 1 - cos(input, output)."""
    influence = [1 - c for c in ctx.evaluator.layer_cosines(1)]
    mask = as_mask(sorted(range(ctx.num_blocks), key=lambda i: influence[i])[: ctx.k])
    ctx.report({"step": 1, "block_influence": influence, "best_mask": list(mask)})
    return mask


def angular(ctx: SearchContext) -> Mask:
    """Gromov et al. (2024): the k consecutive blocks whose input and output are closest in angle.

    One difference from their recipe: the angle is taken from the cosine averaged over every
    calibration token, where they use the last token of each sample and average the angles. It
    shares the dense pass with ShortGPT and the search's seeding. On SmolLM2 with 8 x 128
    WikiText-2 tokens both chose the same blocks for k = 2 to 8 of 30, and at k = 9 a run one
    block earlier (blocks 10-18 against 11-19)."""
    distance = [math.acos(max(-1.0, min(1.0, c))) / math.pi for c in ctx.evaluator.layer_cosines(ctx.k)]
    start = min(range(len(distance)), key=lambda i: distance[i])
    mask = as_mask(range(start, start + ctx.k))
    ctx.report({"step": 1, "angular_distance": distance, "best_mask": list(mask)})
    return mask


# ------------------------------------------------------------------------------- enumeration


def _chunked(ctx: SearchContext, patterns: Iterator[Mask], total: int) -> Mask:
    """Evaluate patterns chunk by chunk, keeping the best, with a checkpoint per chunk."""
    done = ctx.state.get("done", 0)
    best = as_mask(ctx.state["best"]) if "best" in ctx.state else None
    patterns = itertools.islice(patterns, done, None)
    while done < total:
        chunk = list(itertools.islice(patterns, ctx.config.chunk))
        fits = ctx.evaluator.evaluate(chunk + ([best] if best is not None else []), survivors=1)
        leader = _best(fits)
        best, done = leader.mask, done + len(chunk)
        ctx.report(_row(done, fits, leader, of=total))
        ctx.checkpoint({"done": done, "best": list(best)})
    return best


def exhaustive(ctx: SearchContext) -> Mask:
    """Every C(m, k) pattern, when there are few enough to afford."""
    total = math.comb(ctx.num_blocks, ctx.k)
    if total > ctx.config.exhaustive_limit:
        raise EvopError(
            f"exhaustive search would evaluate C({ctx.num_blocks},{ctx.k}) = {total:,} patterns, over the limit "
            f"of {ctx.config.exhaustive_limit:,}; raise --exhaustive-limit or use --method evop"
        )
    return _chunked(ctx, (as_mask(c) for c in itertools.combinations(range(ctx.num_blocks), ctx.k)), total)


def random_search(ctx: SearchContext) -> Mask:
    """Uniformly random patterns with the evolutionary search's evaluation budget."""
    total = ctx.config.budget or ctx.config.population * ctx.config.generations
    rng = random.Random(ctx.config.seed)  # the pattern stream is replayed on resume, so it has its own RNG
    stream = (as_mask(rng.sample(range(ctx.num_blocks), ctx.k)) for _ in range(total))
    return _chunked(ctx, stream, total)


# ------------------------------------------------------------------------------- evolutionary


def _weighted_sample(rng: random.Random, weights: list[float], k: int) -> list[int]:
    """k distinct indices, each draw proportional to the remaining weights."""
    pool, chosen = dict(enumerate(weights)), []
    for _ in range(k):
        pick = rng.choices(list(pool), weights=list(pool.values()))[0]
        chosen.append(pick)
        del pool[pick]
    return chosen


def population_size(ctx: SearchContext) -> int:
    return min(ctx.config.population, max(6, math.isqrt(math.comb(ctx.num_blocks, ctx.k))))


def _initial_population(ctx: SearchContext) -> list[Mask]:
    """Redundancy-seeded: the k most redundant blocks, the angular criterion's run of k blocks when
    ``seed_angular``, SLEB's answer when ``seed_sleb``, then draws
    biased toward redundant blocks up to two thirds of the population and uniform draws for the rest."""
    m, k, size = ctx.num_blocks, ctx.k, population_size(ctx)
    influence = [1 - c for c in ctx.evaluator.layer_cosines(1)]
    rank = sorted(range(m), key=lambda i: influence[i])
    weights = [0.0] * m
    for position, block in enumerate(rank):
        weights[block] = math.exp(-3.0 * position / m)
    population = [as_mask(rank[:k])]
    if ctx.config.seed_angular:
        population.append(angular(SearchContext(ctx.evaluator, k, ctx.config, ctx.rng)))
    if ctx.config.seed_sleb:
        population.append(sleb(SearchContext(ctx.evaluator, k, ctx.config, ctx.rng)))
    population = list(dict.fromkeys(population))
    # The seeds are scored on the whole calibration set, so a cheaper stage never screens them out: the search's
    # answer is never worse on the calibration set than the one-shot criteria (and SLEB) it starts from.
    ctx.evaluator.evaluate(population)
    attempts = 0
    while len(population) < size and attempts < 50 * size:
        attempts += 1
        biased = len(population) < (2 * size) // 3
        mask = as_mask(_weighted_sample(ctx.rng, weights, k) if biased else ctx.rng.sample(range(m), k))
        if mask not in population:
            population.append(mask)
    return population


def _child(ctx: SearchContext, a: Mask, b: Mask) -> Mask:
    """Uniform crossover that keeps exactly k dropped blocks, then swap mutation."""
    common = set(a) & set(b)
    rest = sorted(set(a) ^ set(b))
    dropped = common | set(ctx.rng.sample(rest, ctx.k - len(common)))
    for block in sorted(dropped):
        if ctx.rng.random() < ctx.config.mutation:
            kept = [i for i in range(ctx.num_blocks) if i not in dropped]
            dropped = (dropped - {block}) | {ctx.rng.choice(kept)}
    return as_mask(dropped)


def swap_neighbours(mask: Mask, m: int) -> list[Mask]:
    kept = [i for i in range(m) if i not in mask]
    return [as_mask((set(mask) - {out}) | {into}) for out in mask for into in kept]


def local_search(ctx: SearchContext, start: Fitness, step: int) -> Fitness:
    """Best-improvement swap descent: stop where no single swap lowers the loss. Each round is reported (a row
    of the trace, a tick of the bar): on a large model a round is k x (blocks - k) patterns, minutes of work
    that must not look like a hang."""
    best = start
    while True:
        step += 1
        fits = ctx.evaluator.evaluate([best.mask, *swap_neighbours(best.mask, ctx.num_blocks)], survivors=1)
        leader = _best(fits)
        improved = leader.loss < best.loss
        best = leader if improved else best
        ctx.report(_row(step, fits, best, phase="local_search"))
        if not improved:
            return best


def evop(ctx: SearchContext) -> Mask:
    """EPPS (EvoP's evolutionary pruning-pattern search) with the refinements in ``SearchConfig``."""
    cfg, size = ctx.config, population_size(ctx)
    survivors = max(2, math.ceil(cfg.survivors * size))
    if ctx.state:
        population = [as_mask(m) for m in ctx.state["population"]]
        generation, stale, best_loss = ctx.state["generation"], ctx.state["stale"], ctx.state["best_loss"]
        ctx.rng.setstate(_rng_state(ctx.state["rng"]))
    else:
        population, generation, stale, best_loss = _initial_population(ctx), 0, 0, math.inf
    while generation < cfg.generations and stale < cfg.patience:
        fits = sorted(ctx.evaluator.evaluate(population, survivors=survivors), key=lambda f: f.loss)
        parents = [f.mask for f in fits[:survivors]]
        improved = fits[0].loss < best_loss - 1e-12
        stale = 0 if improved else stale + 1
        best_loss = min(best_loss, fits[0].loss)
        generation += 1
        ctx.report(_row(generation, fits, fits[0]))
        children = parents[: cfg.elites]
        attempts = 0
        while len(children) < size and attempts < 50 * size:
            attempts += 1
            child = _child(ctx, *ctx.rng.sample(parents, 2))
            if child not in children:
                children.append(child)
        population = children
        ctx.checkpoint(
            {
                "population": [list(m) for m in population],
                "generation": generation,
                "stale": stale,
                "best_loss": best_loss,
                "rng": ctx.rng.getstate(),
            }
        )
    # The last children are scored too: the answer may be among them, and the trace must end on the answer.
    best = _best(ctx.evaluator.evaluate(population, survivors=1))
    ctx.report(_row(generation + 1, [best], best, phase="last_children"))
    if cfg.local_search:
        best = local_search(ctx, best, generation + 1)
    return best.mask


def _rng_state(saved: Any) -> tuple:
    """random.Random state from its JSON form (lists instead of tuples)."""
    version, internal, gauss = saved
    return version, tuple(internal), gauss


# What evop's checkpoint holds, every entry of it: a resumed evop reads them all.
EVOP_STATE = ("population", "generation", "stale", "best_loss", "rng")


def check_state(method: str, state: Any, num_blocks: int) -> None:
    """Raise ValueError (or TypeError, KeyError) at the first value of a saved method state that no checkpoint
    of ``method`` writes: a damaged or hand-edited file is refused with its name by ``run_search``, instead of
    a traceback from deep inside the method that trips over it."""
    if not isinstance(state, dict):
        raise TypeError(f"method_state is {type(state).__name__}, not an object")
    if method == "evop" and state:
        missing = [key for key in EVOP_STATE if key not in state]
        if missing:
            raise KeyError(f"method_state lacks {', '.join(missing)}")
    for key, value in state.items():
        if key in ("dropped", "best"):
            valid = is_saved_mask(value, num_blocks)
        elif key == "population":
            valid = isinstance(value, list) and bool(value) and all(is_saved_mask(m, num_blocks) for m in value)
        elif key in ("done", "generation", "stale"):
            valid = type(value) is int and value >= 0
        elif key == "best_loss":
            valid = type(value) in (int, float)
        elif key == "rng":
            valid = random.Random().setstate(_rng_state(value)) is None  # raises on anything else
        else:
            valid = True  # read by no method: harmless
        if not valid:
            raise ValueError(f"method_state {key} = {str(value)[:60]} is not what a checkpoint writes")


def is_saved_mask(value: Any, num_blocks: int) -> bool:
    """Whether a checkpoint's ``value`` is a mask: a list of block indices of this model."""
    return isinstance(value, list) and all(type(i) is int and 0 <= i < num_blocks for i in value)


# The block-search algorithms, by the name run_search runs; evop_hub.methods.METHODS is what users choose from.
SEARCHES: dict[str, Callable[[SearchContext], Mask]] = {
    "evop": evop,
    "sleb": sleb,
    "exhaustive": exhaustive,
    "random": random_search,
    "shortgpt": shortgpt,
    "angular": angular,
}
