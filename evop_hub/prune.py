"""The one-call API: ``prune(model_or_id, PruneConfig()) -> PruneResult``.

Load, draw a calibration set (CCDS by default), search for the blocks to drop, remove them,
and save the smaller checkpoint with its record and card. Everything a run needs to
resume (the calibration set, the search checkpoint, the trace) is kept in ``DIR/.evop``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .baselines import BASELINES, calibration_loss
from .calibration import CalibrationConfig, CalibrationSet, calibrate
from .compensation import (
    DEFAULT_RIDGE,
    calibration_info,
    check_compensable,
    check_method,
    check_ridge,
    compensated_drop,
)
from .data.corpora import check_corpus_spec, load_mixture
from .errors import EvopError
from .files import atomic_path, release_output
from .models import LoadConfig, LoadedModel, drop, find_blocks, input_device, load, prepare_output, save, text_config
from .models.saving import check_not_source, run_state
from .record import PruningRecord
from .scoring import FITNESSES, parse_stages
from .search import METHODS, PAPER_SEARCH, SearchConfig, SearchResult, evaluator_for, num_drop, run_search

log = logging.getLogger(__name__)

# The calibration text when no --corpus is given: a mixture of every general train split that loads here
# (encyclopedic, technical, literary; WikiText-2 needs the Hub or --data-dir), each part about equally.
DEFAULT_MIXTURE = ("wikitext2:train", "wiki-leads:train", "pydoc:train", "shakespeare:train")
CALIBRATION_FILE = "calibration.safetensors"
CALIBRATION_REQUEST = "calibration_request.json"  # the options it was drawn with: a resumed run must ask the same
DEFAULT_BLOCK_SPARSITY = 0.2  # the paper's 20 % setting


@dataclass
class PruneConfig:
    """Everything ``evop-hub prune`` does, as data. ``num_drop`` wins over ``sparsity``."""

    # In the method's own unit; None is the method's default: 20 % of blocks for the block searches
    # (k = ceil(sparsity x blocks) as EvoP computes it), 50 % of weights for wanda, 25 % of channels for slicegpt.
    sparsity: float | None = None
    num_drop: int | None = None  # blocks, for the block searches only (the width baselines take ``sparsity``)
    search: SearchConfig = field(default_factory=SearchConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    corpus: str | None = None  # None: the DEFAULT_MIXTURE parts that load here
    calibration_file: str | None = None  # a file from `evop-hub calibrate`, instead of drawing one
    batch_size: int = 1  # calibration samples per forward; 1 lets early termination stop soonest
    cache_gib: float = 1.0  # memory for cached prefix hidden states
    # Evaluate masks on these devices side by side, one copy of the model on each (e.g. ["cuda:0", "cuda:1"]);
    # None: on the model's own device(s), serially.
    search_devices: list[str] | None = None
    load: LoadConfig = field(default_factory=LoadConfig)
    output: str | None = None  # None: nothing saved
    overwrite: bool = False
    resume: bool = False
    progress: bool = True
    command: str | None = None
    pattern: str | None = None  # wanda only: N:M semi-structured sparsity, e.g. "2:4"
    # After removal, "linear" folds a least-squares map per run of removed blocks into the MLP projection of the
    # block before it (ReplaceMe), fitted on the calibration set; "none" leaves the kept weights untouched.
    compensate: str = "none"
    compensate_ridge: float = DEFAULT_RIDGE  # the map's ridge toward identity, relative to tr(MᵀM) / hidden


# Named settings for common cases. `default`: the defaults of PruneConfig; `paper`: EvoP as the paper describes it (CCDS of 5 x 2048 WikiText-2 tokens,
# the NLL-driven GA with SLEB seeding); `quick` runs on the offline model in minutes on 2 CPU cores.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {"corpus": "wikitext2:train", "calibration": {"clusters": 5}, "search": PAPER_SEARCH},
    "quick": {  # a small corpus split keeps CCDS's embedding short (about 1,000 chunks)
        "corpus": "wiki-leads:valid",
        "calibration": {"clusters": 5, "seq_len": 128},
        "search": {"population": 12, "generations": 6, "patience": 3, "stages": "6@32"},
    },
}


def apply_preset(config: PruneConfig, name: str) -> PruneConfig:
    if name not in PRESETS:
        raise EvopError(f"unknown --preset {name!r}; choose from {', '.join(PRESETS)}")
    preset = PRESETS[name]
    return replace(
        config,
        corpus=preset.get("corpus", config.corpus),
        calibration=replace(config.calibration, **preset.get("calibration", {})),
        search=replace(config.search, **preset.get("search", {})),
    )


@dataclass
class PruneResult:
    """The pruned model (in memory), the chosen mask in original numbering, and the record saved with it."""

    model: LoadedModel
    mask: list[int]
    record: PruningRecord
    search: SearchResult | None  # None for the width baselines (evop_hub.baselines): nothing is searched
    output: Path | None = None


def _calibration(loaded: LoadedModel, config: PruneConfig, run_dir: Path | None) -> CalibrationSet:
    """The calibration set: a given file, the one a resumed run saved, or a fresh draw."""
    saved = run_dir / CALIBRATION_FILE if run_dir else None
    if config.calibration_file:
        calibration = CalibrationSet.load(config.calibration_file, loaded.tokenizer)
        calibration.check_vocab(loaded.model.get_input_embeddings().num_embeddings, config.calibration_file)
        _check_context(loaded, calibration.input_ids.shape[1])
        return calibration
    _check_context(loaded, config.calibration.seq_len)
    # Everything the draw depends on (where the embeddings are cached does not change them).
    request = {
        "corpus": config.corpus,
        **{k: v for k, v in asdict(config.calibration).items() if k not in ("cache_dir", "batch_size")},
    }
    if saved and config.resume and saved.is_file():
        if _saved_request(run_dir / CALIBRATION_REQUEST) != request:
            raise EvopError(
                "the run to resume drew its calibration set with other options (--corpus, --sampler, "
                "--calib-seed, --clusters, --seq-len, --embedder ...); resume with the same options, "
                "or --overwrite to start over"
            )
        return CalibrationSet.load(saved, loaded.tokenizer)
    corpus = config.corpus or load_mixture(list(DEFAULT_MIXTURE), config.calibration.data_dir, skip_missing=True)
    calibration = calibrate(corpus, loaded.tokenizer, config.calibration)
    log.info(
        "calibration: %s from %s:%s, %d x %d tokens",
        config.calibration.sampler,
        calibration.metadata["corpus"],
        calibration.metadata["split"],
        *calibration.input_ids.shape,
    )
    if saved:
        calibration.save(saved, overwrite=True)
        with atomic_path(run_dir / CALIBRATION_REQUEST) as path:
            path.write_text(json.dumps(request) + "\n")
    return calibration


def _saved_request(path: Path) -> Any:
    """The options a resumed run's calibration set was drawn with (None if it has no such file); a damaged
    file (a disk error, an edit) is one line saying how to start over, not a traceback."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:  # bad JSON or UTF-8
        raise EvopError(f"{path} is damaged ({exc}); pass --overwrite to start the run over") from None


def _check_context(loaded: LoadedModel, seq_len: int) -> None:
    """Samples longer than the model's positions fail deep in its embeddings (GPT-2) or are scored past its
    training length (RoPE models): refused, as the context is known before any work."""
    context = getattr(text_config(loaded.model), "max_position_embeddings", None)
    if context is not None and seq_len > context:
        raise EvopError(
            f"calibration samples of {seq_len} tokens exceed the model's context of {context}; "
            f"use --seq-len {context} or less"
        )


def prune(model: str | LoadedModel, config: PruneConfig | None = None) -> PruneResult:
    """Choose and remove blocks (or, for the width baselines, weights); save to ``config.output`` when set."""
    config = config or PruneConfig()
    _check(config)
    width = config.search.method in BASELINES
    resume = config.resume and not width
    output = prepare_output(config.output, overwrite=config.overwrite, resume=resume) if config.output else None
    try:  # the output's lock is released however the run ends, also in a long-lived Python process
        loaded = model if isinstance(model, LoadedModel) else load(model, config.load)
        if loaded.record.dropped_blocks:
            raise EvopError("this model already had blocks removed; prune the original model instead")
        if output:
            check_not_source(output, loaded)
        if width:
            return _prune_width(loaded, config, output)
        with run_state(output) as run_dir:
            return _search_and_drop(loaded, config, output, run_dir)
    finally:
        if output:
            release_output(output)


def _check(config: PruneConfig) -> None:
    """Every setting is checked before anything slow starts."""
    if config.batch_size < 1:
        raise EvopError(f"--batch-size must be at least 1, not {config.batch_size}")
    if config.corpus and not config.calibration_file:
        check_corpus_spec(config.corpus)  # a typo fails now, not after the model has loaded
    if config.calibration_file:
        CalibrationSet.load(config.calibration_file)  # a missing or foreign file fails now; its tokenizer once loaded
    check_method(config.compensate)
    check_ridge(config.compensate_ridge)
    method = config.search.method
    if method in BASELINES:
        if config.compensate != "none":
            raise EvopError(f"--compensate replaces removed blocks; {method} removes none")
        if config.resume:
            raise EvopError(f"--resume continues a block search; {method} runs in one go, re-run without --resume")
        if config.num_drop is not None:
            raise EvopError(f"--num-drop counts blocks; {method} removes weights, set how many with --sparsity")
        BASELINES[method].settings(config.sparsity, config.pattern, config.batch_size, config.progress)
        return
    if method not in METHODS:
        raise EvopError(f"unknown --method {method!r}; choose from {', '.join([*METHODS, *BASELINES])}")
    if config.pattern:
        raise EvopError(f"--pattern is Wanda's N:M weight sparsity; {method} removes whole blocks")
    if config.search.population < 2 or config.search.generations < 1:
        raise EvopError("--population must be at least 2 and --generations at least 1")
    if config.search.fitness not in FITNESSES:  # else refused only once the model has loaded
        raise EvopError(f"unknown --fitness {config.search.fitness!r}; choose from {', '.join(FITNESSES)}")
    parse_stages(config.search.stages)
    if config.sparsity is not None and config.num_drop is None and not 0 < config.sparsity < 1:
        raise EvopError(f"--sparsity must be strictly between 0 and 1 (got {config.sparsity})")


def _prune_width(loaded: LoadedModel, config: PruneConfig, output: Path | None) -> PruneResult:
    """A width baseline: calibrate, prune the weights in place, record; ``sparsity`` None is the method's
    default (Wanda 0.5 or as ``pattern`` implies, SliceGPT 0.25). Nothing resumes it: it keeps no run state."""
    method = config.search.method
    baseline = BASELINES[method]
    settings = baseline.settings(config.sparsity, config.pattern, config.batch_size, config.progress)
    calibration = _calibration(loaded, config, None)
    ids = calibration.input_ids
    dense = calibration_loss(loaded.model, ids, config.batch_size)
    start = time.perf_counter()
    details = baseline.run(loaded, ids, settings)
    search = {"method": method, "seconds": time.perf_counter() - start, **details}
    losses = {"dense": dense, "pruned": calibration_loss(loaded.model, ids, config.batch_size)}
    _record(loaded.record, config, calibration, search, losses)
    if output:
        save(loaded, output, overwrite=True)  # vetted by prepare_output
    return PruneResult(loaded, [], loaded.record, None, output)


def _record(
    record: PruningRecord,
    config: PruneConfig,
    calibration: CalibrationSet,
    search: dict[str, Any],
    losses: dict[str, float],
) -> None:
    """What every method's run leaves in the record besides what the method itself set."""
    record.method = config.search.method
    record.calibration = calibration.summary()
    record.search = search
    record.scores["calibration_loss"] = losses
    if config.command:
        record.command = config.command


def _search_and_drop(
    loaded: LoadedModel, config: PruneConfig, output: Path | None, run_dir: Path | None
) -> PruneResult:
    blocks = loaded.record.num_blocks
    k = num_drop(blocks, DEFAULT_BLOCK_SPARSITY if config.sparsity is None else config.sparsity, config.num_drop)
    per_block = sum(p.numel() for p in find_blocks(loaded.model).parameters()) / blocks
    log.info(
        "dropping k=%d of %d blocks (about %.1f%% of parameters)",
        k,
        blocks,
        100 * k * per_block / loaded.record.parameters_before,
    )
    calibration = _calibration(loaded, config, run_dir)
    if config.compensate != "none":  # an architecture that cannot be compensated is refused before the search
        check_compensable(loaded.model, calibration.input_ids)
    settings = {"batch_size": config.batch_size, "cache_bytes": int(config.cache_gib * (1 << 30))}
    ids = calibration.input_ids if config.search_devices else calibration.input_ids.to(input_device(loaded.model))
    evaluator = evaluator_for(loaded.model, ids, config.search, config.search_devices, **settings)
    result = run_search(evaluator, k, config.search, state_dir=run_dir, resume=config.resume, progress=config.progress)
    if config.compensate == "none":
        drop(loaded, result.mask)
    else:
        compensated_drop(
            loaded,
            result.mask,
            calibration.input_ids,
            ridge=config.compensate_ridge,
            batch_size=config.batch_size,
            calibration=calibration_info(calibration),
        )
    loaded.record.sparsity, loaded.record.sparsity_unit = k / blocks, "blocks"
    _record(loaded.record, config, calibration, result.summary(), {"dense": result.dense_loss, "pruned": result.loss})
    if output:
        save(loaded, output, overwrite=True)  # vetted by prepare_output
    return PruneResult(loaded, list(result.mask), loaded.record, result, output)
