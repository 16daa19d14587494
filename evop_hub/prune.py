"""The one-call API: ``prune(model_or_id, PruneConfig()) -> PruneResult``.

Load, draw a calibration set (CCDS by default), search for the blocks to drop, remove them,
and save the smaller checkpoint with its record and card. Everything a run needs to
resume (the calibration set, the search checkpoint, the trace) is kept in ``DIR/.evop``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

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
from .methods import METHODS, Method, MethodJob
from .models import LoadConfig, LoadedModel, check_context, drop, find_blocks, load, prepare_output, save
from .models.saving import check_not_source, run_state
from .record import PruningRecord
from .registry import Registry
from .search import PAPER_SEARCH, SearchConfig, SearchResult

log = logging.getLogger(__name__)

# The calibration text when no --corpus is given: a mixture of every general train split that loads here
# (encyclopedic, technical, literary; WikiText-2 needs the Hub or --data-dir), each part about equally.
DEFAULT_MIXTURE = ("wikitext2:train", "wiki-leads:train", "pydoc:train", "shakespeare:train")
CALIBRATION_FILE = "calibration.safetensors"
CALIBRATION_REQUEST = "calibration_request.json"  # the options it was drawn with: a resumed run must ask the same


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
    # Evaluate masks on these devices side by side, one Ray actor with a copy of the model on each (e.g.
    # ["cuda:0", "cuda:1"]); None: on the model's own device(s), serially.
    search_devices: list[str] | None = None
    # Where those actors run: "local" (a Ray instance started on this machine; None means it too), "auto" (the
    # running cluster) or "HOST:PORT".
    ray_address: str | None = None
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
PRESETS: Registry[dict[str, Any]] = Registry(
    "presets", "--preset", describe=lambda p: "; ".join(f"{k}: {v}" for k, v in p.items()) or "PruneConfig's defaults"
)
_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {"corpus": "wikitext2:train", "calibration": {"clusters": 5}, "search": PAPER_SEARCH},
    "quick": {  # a small corpus split keeps CCDS's embedding short (about 1,000 chunks)
        "corpus": "wiki-leads:valid",
        "calibration": {"clusters": 5, "seq_len": 128},
        "search": {"population": 12, "generations": 6, "patience": 3, "stages": "6@32"},
    },
}


for _name, _settings in _PRESETS.items():
    PRESETS.register(_name, _settings)


def apply_preset(config: PruneConfig, name: str) -> PruneConfig:
    preset = PRESETS.lookup(name)
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
    check_context(
        loaded.model,
        seq_len,
        f"calibration samples of {seq_len} tokens exceed the model's context of {{context}}; "
        "use --seq-len {context} or less",
    )


def prune(model: str | LoadedModel, config: PruneConfig | None = None) -> PruneResult:
    """Choose and remove blocks (or, for the width baselines, weights); save to ``config.output`` when set."""
    config = config or PruneConfig()
    method = _check(config)
    resume = config.resume and method.removes_blocks
    output = prepare_output(config.output, overwrite=config.overwrite, resume=resume) if config.output else None
    try:  # the output's lock is released however the run ends, also in a long-lived Python process
        loaded = model if isinstance(model, LoadedModel) else load(model, config.load)
        if loaded.record.dropped_blocks:
            raise EvopError("this model already had blocks removed; prune the original model instead")
        if output:
            check_not_source(output, loaded)
        if not method.removes_blocks:  # a width baseline keeps no run state: nothing resumes it
            return _run(method, loaded, config, output, None)
        with run_state(output) as run_dir:
            return _run(method, loaded, config, output, run_dir)
    finally:
        if output:
            release_output(output)


def _job(config: PruneConfig, loaded: LoadedModel | None, input_ids: Any, run_dir: Path | None) -> MethodJob:
    return MethodJob(
        loaded,
        input_ids,
        sparsity=config.sparsity,
        num_drop=config.num_drop,
        search=config.search,
        pattern=config.pattern,
        batch_size=config.batch_size,
        cache_gib=config.cache_gib,
        search_devices=config.search_devices,
        ray_address=config.ray_address,
        state_dir=run_dir,
        resume=config.resume,
        progress=config.progress,
    )


def _check(config: PruneConfig) -> Method:
    """Every setting is checked before anything slow starts; returns the method to run."""
    method = METHODS.lookup(config.search.method)
    if config.batch_size < 1:
        raise EvopError(f"--batch-size must be at least 1, not {config.batch_size}")
    if config.ray_address and not config.search_devices:
        raise EvopError("--ray-address needs --search-devices: the devices to put an actor on, e.g. cuda:0,cuda:1")
    if config.corpus and not config.calibration_file:
        check_corpus_spec(config.corpus)  # a typo fails now, not after the model has loaded
    if config.calibration_file:
        CalibrationSet.load(config.calibration_file)  # a missing or foreign file fails now; its tokenizer once loaded
    check_method(config.compensate)
    check_ridge(config.compensate_ridge)
    if config.compensate != "none" and not method.removes_blocks:
        raise EvopError(f"--compensate replaces removed blocks; {method.name} removes none")
    method.check(_job(config, None, None, None))
    return method


def _run(
    method: Method, loaded: LoadedModel, config: PruneConfig, output: Path | None, run_dir: Path | None
) -> PruneResult:
    """Calibrate, run the method, remove what it chose (compensating if asked), record, save."""
    if method.removes_blocks:
        _log_drop(loaded, method, config)
    calibration = _calibration(loaded, config, run_dir)
    if config.compensate != "none":  # an architecture that cannot be compensated is refused before the search
        check_compensable(loaded.model, calibration.input_ids)
    result = method.run(_job(config, loaded, calibration.input_ids, run_dir))
    if method.removes_blocks:
        _remove(loaded, result.mask, config, calibration)
        loaded.record.sparsity, loaded.record.sparsity_unit = result.sparsity, method.unit
    record = loaded.record
    record.method = method.name
    record.calibration = calibration.summary()
    record.search = result.summary
    record.scores["calibration_loss"] = result.losses
    if config.command:
        record.command = config.command
    if output:
        save(loaded, output, overwrite=True)  # vetted by prepare_output
    return PruneResult(loaded, list(result.mask), record, result.search, output)


def _log_drop(loaded: LoadedModel, method: Method, config: PruneConfig) -> None:
    blocks = loaded.record.num_blocks
    k = method.blocks_to_drop(blocks, _job(config, None, None, None))
    per_block = sum(p.numel() for p in find_blocks(loaded.model).parameters()) / blocks
    share = 100 * k * per_block / loaded.record.parameters_before
    log.info("dropping k=%d of %d blocks (about %.1f%% of parameters)", k, blocks, share)


def _remove(loaded: LoadedModel, mask: tuple[int, ...], config: PruneConfig, calibration: CalibrationSet) -> None:
    if config.compensate == "none":
        drop(loaded, mask)
        return
    compensated_drop(
        loaded,
        mask,
        calibration.input_ids,
        ridge=config.compensate_ridge,
        batch_size=config.batch_size,
        calibration=calibration_info(calibration),
    )
