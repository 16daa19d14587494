"""Every pruning method behind one interface, in one registry.

A method is named, prunes in a unit (blocks, weights, hidden channels), has a default amount, and either searches
patterns with the calibration fitness or prunes in one shot. ``prune``, ``compare``, the tables and the CLI read
these attributes instead of asking which of two registries a name is in; ``evop-hub list`` prints them.

    from evop_hub.methods import METHODS, MethodJob
    result = METHODS.lookup("evop").run(MethodJob(loaded, ids, sparsity=0.2))
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..baselines import calibration_loss
from ..baselines.slicegpt import SliceGPTConfig
from ..baselines.slicegpt import run as run_slicegpt
from ..baselines.slicegpt import settings as slicegpt_settings
from ..baselines.wanda import run as run_wanda
from ..baselines.wanda import settings as wanda_settings
from ..errors import EvopError
from ..models import LoadedModel, input_device
from ..registry import Registry
from ..scoring import FITNESSES, Evaluator, parse_stages
from ..search import SearchConfig, SearchResult, evaluator_for, num_drop, run_search


@dataclass
class MethodJob:
    """What a method is given: the model, the calibration set, how much to prune and how to search.

    ``sparsity`` is in the method's unit (None: its default); ``num_drop`` counts blocks and wins over it.
    ``evaluator``, when given, is a block search's shared evaluator (``compare`` keeps one per calibration set,
    so patterns another method already scored cost nothing); ``dense_loss``, when given, is the dense model's
    calibration loss already known to the caller, which a width method then does not measure again."""

    loaded: LoadedModel | None
    input_ids: torch.Tensor
    sparsity: float | None = None
    num_drop: int | None = None
    search: SearchConfig = field(default_factory=SearchConfig)
    pattern: str | None = None
    batch_size: int = 1
    cache_gib: float = 1.0
    search_devices: list[str] | None = None
    ray_address: str | None = None  # where the search_devices actors run (None: a local Ray instance)
    state_dir: Path | None = None
    resume: bool = False
    progress: bool = True
    evaluator: Evaluator | None = None
    dense_loss: float | None = None


@dataclass
class MethodResult:
    """``mask``: the blocks to remove (none for a width method, which has already changed the model in place);
    ``summary``: the record's ``search`` entry; ``losses``: calibration loss of the dense and the pruned model."""

    mask: tuple[int, ...]
    summary: dict[str, Any]
    losses: dict[str, float]
    sparsity: float | None = None  # achieved, in the method's unit, for the block methods (k / blocks)
    search: SearchResult | None = None


@dataclass(frozen=True)
class Method(ABC):
    name: str
    unit: str  # what its sparsity counts: "blocks", "weights", "hidden channels"
    default_sparsity: float
    searches: bool  # scores candidate patterns with the calibration fitness (else prunes in one shot)
    description: str

    @property
    def removes_blocks(self) -> bool:
        """Whether the result is a mask of whole blocks to remove (and so resumable, compensable, plottable)."""
        return self.unit == "blocks"

    @abstractmethod
    def check(self, job: MethodJob) -> None:
        """Refuse settings this method cannot use, in one line, before any model loads."""

    @abstractmethod
    def run(self, job: MethodJob) -> MethodResult: ...


@dataclass(frozen=True)
class BlockMethod(Method):
    """A block-removal method: one of ``search.SEARCHES``, run by ``run_search`` (progress, checkpoints, resume)."""

    def check(self, job: MethodJob) -> None:
        if job.pattern:
            raise EvopError(f"--pattern is Wanda's N:M weight sparsity; {self.name} removes whole blocks")
        if job.search.population < 2 or job.search.generations < 1:
            raise EvopError("--population must be at least 2 and --generations at least 1")
        FITNESSES.check(job.search.fitness)
        parse_stages(job.search.stages)
        if job.sparsity is not None and job.num_drop is None and not 0 < job.sparsity < 1:
            raise EvopError(f"--sparsity must be strictly between 0 and 1 (got {job.sparsity})")

    def blocks_to_drop(self, num_blocks: int, job: MethodJob) -> int:
        sparsity = self.default_sparsity if job.sparsity is None else job.sparsity
        return num_drop(num_blocks, sparsity, job.num_drop)

    def run(self, job: MethodJob) -> MethodResult:
        evaluator = job.evaluator
        if evaluator is None:
            model = job.loaded.model
            ids = job.input_ids if job.search_devices else job.input_ids.to(input_device(model))
            settings = {"batch_size": job.batch_size, "cache_bytes": int(job.cache_gib * (1 << 30))}
            evaluator = evaluator_for(model, ids, job.search, job.search_devices, job.ray_address, **settings)
        k = self.blocks_to_drop(evaluator.num_blocks, job)
        search = replace(job.search, method=self.name)
        result = run_search(evaluator, k, search, state_dir=job.state_dir, resume=job.resume, progress=job.progress)
        losses = {"dense": result.dense_loss, "pruned": result.loss}
        return MethodResult(result.mask, result.summary(), losses, k / evaluator.num_blocks, result)


@dataclass(frozen=True)
class WidthMethod(Method):
    """A width baseline (evop_hub.baselines): prunes weights or channels of ``job.loaded`` in place, in one go."""

    settings: Callable[[float | None, str | None, int, bool], Any]  # -> the method's config, validated
    apply: Callable[[LoadedModel, torch.Tensor, Any], dict[str, Any]]  # -> the record's details; edits in place

    def check(self, job: MethodJob) -> None:
        if job.resume:
            raise EvopError(f"--resume continues a block search; {self.name} runs in one go, re-run without --resume")
        if job.num_drop is not None:
            raise EvopError(f"--num-drop counts blocks; {self.name} removes weights, set how many with --sparsity")
        self._settings(job)

    def _settings(self, job: MethodJob) -> Any:
        return self.settings(job.sparsity, job.pattern, job.batch_size, job.progress)

    def run(self, job: MethodJob) -> MethodResult:
        settings, ids, model = self._settings(job), job.input_ids, job.loaded.model
        dense = calibration_loss(model, ids, job.batch_size) if job.dense_loss is None else job.dense_loss
        start = time.perf_counter()
        details = self.apply(job.loaded, ids, settings)
        summary = {"method": self.name, "seconds": time.perf_counter() - start, **details}
        losses = {"dense": dense, "pruned": calibration_loss(job.loaded.model, ids, job.batch_size)}
        return MethodResult((), summary, losses)


METHODS: Registry[Method] = Registry(
    "methods", "--method", describe=lambda m: f"{m.unit}, {'searches' if m.searches else 'one shot'}: {m.description}"
)
_BLOCKS = 0.2  # the paper's 20 % setting
for _method in (
    BlockMethod(
        "evop", "blocks", _BLOCKS, True, "EvoP's evolutionary pattern search (EPPS), with this library's fitness"
    ),
    BlockMethod("sleb", "blocks", _BLOCKS, True, "SLEB: removes, one at a time, the block whose removal hurts least"),
    BlockMethod("exhaustive", "blocks", _BLOCKS, True, "every pattern of k blocks, when there are few enough"),
    BlockMethod(
        "random", "blocks", _BLOCKS, True, "the best of random patterns, with the evolutionary search's budget"
    ),
    BlockMethod("shortgpt", "blocks", _BLOCKS, False, "ShortGPT: the k blocks of lowest Block Influence"),
    BlockMethod("angular", "blocks", _BLOCKS, False, "Gromov et al.: the k consecutive blocks closest in angle"),
    WidthMethod(
        "wanda", "weights", 0.5, False, "Wanda: zeroes single weights by |W| x ||X||", wanda_settings, run_wanda
    ),
    WidthMethod(
        "slicegpt",
        "hidden channels",
        SliceGPTConfig.sparsity,
        False,
        "SliceGPT: removes hidden channels after a PCA rotation",
        slicegpt_settings,
        run_slicegpt,
    ),
):
    METHODS.register(_method.name, _method)

__all__ = ["METHODS", "BlockMethod", "Method", "MethodJob", "MethodResult", "WidthMethod"]
