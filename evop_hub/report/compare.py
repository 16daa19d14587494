"""`evop-hub compare`: the EvoP paper's experiments on any model, as resumable cells.

A *cell* is one (method, calibration sampler, sparsity, seed [, single cluster]) run: draw the
calibration set, search (or width-prune), score held-out perplexity on every evaluation corpus,
and, for the first seed, measure speed against the dense model. Each finished cell is written
atomically to ``REPORT_DIR/cells/<id>.json`` with its command, seeds, versions, hardware and
time; a rerun with ``resume`` reuses every cell whose settings are unchanged. Calibration sets
are drawn once per (sampler, seed, cluster) and share one ``SerialEvaluator``, so a pattern
that several methods visit is computed once.

Which cells run:

* main rows (Tables 1-3): dense, then every method at every sparsity and seed; EvoP calibrates
  with CCDS, the other methods with ``baseline_sampler`` (SLEB's random windows by default);
* ablations (Table 4): EvoP on random windows (w/o CCDS) and SLEB on the CCDS set (w/o EPPS);
* Fig. 1a: calibration loss of SLEB, EvoP and (when ``C(blocks, k) <= exhaustive_limit``)
  exhaustive search, all on the same CCDS set;
* Fig. 1c: SLEB and EvoP calibrated on the samples of one CCDS cluster at a time.

Block-dropping masks are scored on the held-out windows by skipping blocks (``HeldOut``);
width baselines (wanda, slicegpt) are scored on their real pruned copy.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import tomllib

from ..calibration import CalibrationConfig, calibrate
from ..errors import EvopError
from ..evaluate.heldout import HeldOut
from ..evaluate.speed import SpeedConfig, speed
from ..evaluate.tasks import TasksConfig, TasksUnavailable, tasks
from ..files import atomic_path
from ..methods import METHODS, MethodJob
from ..models import LoadConfig, LoadedModel, count_parameters, find_blocks, input_device, load
from ..models.devices import check_device
from ..models.surgery import drop, drop_blocks
from ..progress import bar
from ..record.provenance import hardware, versions
from ..record.results import PAPER_TASKS
from ..registry import Registry
from ..search import PAPER_SEARCH, SearchConfig, evaluator_for, num_drop
from .layout import CELLS_DIR, FIG1A, FIG1C, FORMAT, REPORT, RESULTS, VERSION, cluster_sparsity, own_sampler
from .tables import write_report

log = logging.getLogger(__name__)

OWNED = (CELLS_DIR, RESULTS, REPORT, FIG1A, FIG1C)  # what --overwrite may delete in REPORT_DIR, nothing else


@dataclass
class CompareConfig:
    """Everything `evop-hub compare` runs, as data; loadable from TOML (field names as keys, ``[search]`` a table)."""

    sparsities: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3])  # each method's own unit (see report)
    methods: list[str] = field(
        default_factory=lambda: ["evop", "sleb", "shortgpt", "angular", "random", "wanda", "slicegpt"]
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # calibration and search seed of each cell
    calibration: str = "wikitext2:valid"  # one calibration corpus (NAME[:SPLIT] or a local file)
    eval: list[str] = field(default_factory=lambda: ["wikitext2:test", "wiki-leads:test", "pydoc:test"])
    samples: int = 5  # calibration samples: CCDS clusters x 1, or as many random windows
    seq_len: int = 2048  # tokens per calibration sample
    eval_seq_len: int = 2048  # tokens per held-out window
    eval_windows: int | None = None  # first N windows of each evaluation corpus; None: all
    blocks: int | None = None  # keep only the first N blocks of the model (small CPU protocols); None: all
    baseline_sampler: str = "random"  # calibration of every method but evop (SLEB's own recipe)
    ablations: bool = True  # Table 4
    fig1a: bool = True
    exhaustive_limit: int = 5000  # Fig. 1a's exhaustive search only where C(blocks, k) is at most this
    fig1c: bool = True
    fig1c_sparsity: float | None = None  # None: the largest of `sparsities`
    fig1c_methods: list[str] = field(default_factory=lambda: ["sleb", "evop"])
    search: dict[str, Any] = field(default_factory=dict)  # SearchConfig overrides, e.g. {"population": 12}
    tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS))  # lm-eval tasks; [] for none
    task_limit: int | None = None  # examples per task (quick looks only)
    speed: bool = True  # dense vs pruned prefill/decode tokens/s, first seed of each main cell
    speed_prompt_len: int = 512
    speed_new_tokens: int = 128
    speed_repeats: int = 5
    speed_warmup: int = 2
    device: str = "cpu"
    dtype: str = "float32"
    data_dir: str | None = None  # local copies of Hub corpora (else $EVOP_DATA_DIR, else the Hub)
    embedder: str | None = None  # CCDS sentence embedder; None: the bundled default
    batch_size: int = 1
    cache_gib: float = 1.0  # prefix-cache memory per evaluator

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse bad settings before anything loads, in one line each."""
        for name in [*self.methods, *self.fig1c_methods]:
            if name not in METHODS:
                raise EvopError(METHODS.unknown(name, " (dense is always the reference)", option="method"))
        for name in self.fig1c_methods:
            if not METHODS[name].removes_blocks:
                raise EvopError(f"fig1c_methods must be block searches; {name} prunes widths")
        for s in [*self.sparsities, *([self.fig1c_sparsity] if self.fig1c_sparsity is not None else [])]:
            if not (isinstance(s, (int, float)) and 0 < s < 1):
                raise EvopError(f"sparsities must be strictly between 0 and 1 (got {s!r})")
        if not self.sparsities or not self.seeds or not self.eval:
            raise EvopError("give at least one sparsity, one seed and one evaluation corpus")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.sparsities)) != len(self.sparsities):
            raise EvopError("seeds and sparsities must not repeat")
        for name in ("samples", "seq_len", "eval_seq_len", "batch_size", "speed_prompt_len", "speed_repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise EvopError(f"{name} must be a whole number of at least 1, not {getattr(self, name)!r}")
        if self.speed_new_tokens < 2:
            raise EvopError("speed_new_tokens must be at least 2")
        if self.blocks is not None and self.blocks < 2:
            raise EvopError(f"blocks must be at least 2, not {self.blocks}")
        if self.baseline_sampler not in ("random", "ccds"):
            raise EvopError(f"baseline_sampler must be random or ccds, not {self.baseline_sampler!r}")
        unknown = set(self.search) - {f.name for f in fields(SearchConfig)} | {"method", "seed"} & set(self.search)
        if unknown:
            raise EvopError(f"unknown or fixed [search] settings {sorted(unknown)}; method and seed are set per cell")

    # ------------------------------------------------------------------ TOML
    @classmethod
    def from_dict(cls, data: dict[str, Any], base: CompareConfig | None = None) -> CompareConfig:
        hints = get_type_hints(cls)
        unknown = sorted(set(data) - set(hints))
        if unknown:
            raise EvopError(f"unknown compare setting(s) {', '.join(unknown)}; known: {', '.join(sorted(hints))}")
        for key, value in data.items():
            if not _fits(value, hints[key]):
                raise EvopError(f"compare setting {key} = {value!r} is not a {_type_name(hints[key])}")
        try:
            return replace(base or cls(), **data)
        except TypeError as exc:
            raise EvopError(f"bad compare setting: {exc}") from None

    @classmethod
    def load(cls, path: str | Path, base: CompareConfig | None = None) -> CompareConfig:
        path = Path(path).expanduser()
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise EvopError(f"config file {path} not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise EvopError(f"{path} is not valid TOML ({exc})") from None
        except OSError as exc:  # a directory, a file that may not be read
            raise EvopError(f"cannot read config file {path} ({exc.strerror or exc})") from None
        return cls.from_dict(data, base)

    def to_toml(self) -> str:
        """TOML that ``load`` reads back to an equal config (None fields are left out: they are the defaults)."""
        lines, tables = [], []
        for key, value in asdict(self).items():
            if isinstance(value, dict):
                tables += ["", f"[{key}]", *(f"{k} = {_toml(v)}" for k, v in value.items() if v is not None)]
            elif value is not None:
                lines.append(f"{key} = {_toml(value)}")
        return "\n".join(lines + tables) + "\n"

    # ------------------------------------------------------------------ derived
    @property
    def cluster_sparsity(self) -> float:
        return cluster_sparsity(self.fig1c_sparsity, self.sparsities)

    def search_config(self) -> SearchConfig:
        """The paper's search (compare reproduces the paper's experiments) with the ``[search]`` overrides: its
        fitness and stages are the evaluator's, shared by every method on a calibration set."""
        return SearchConfig(**{**PAPER_SEARCH, **self.search})

    @property
    def method_exhaustive_limit(self) -> int:
        """The limit of the exhaustive *method*'s cells: never below the search's own default."""
        return max(self.exhaustive_limit, SearchConfig.exhaustive_limit)

    def own_sampler(self, method: str) -> str:
        return own_sampler(method, self.baseline_sampler)

    def fingerprint(self, model: str) -> str:
        """What a cell's numbers depend on besides its own key; resuming with another value is refused."""
        data = asdict(self)
        # Not in it: which cells to run, and settings that change no number (where the data lies, cache memory).
        for name in (
            "sparsities",
            "methods",
            "seeds",
            "ablations",
            "fig1a",
            "fig1c",
            "fig1c_methods",
            "fig1c_sparsity",
            "data_dir",
            "cache_gib",
        ):
            data.pop(name)
        return hashlib.sha256(json.dumps([model, data], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fits(value: Any, hint: Any) -> bool:
    """Whether a TOML value has a field's type (int is accepted for float; bool is not an int here)."""
    if hint is Any:
        return True
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise EvopError(f"cannot write {value!r} to TOML")


# Named protocols; `--preset gpu` is the paper-like run, `--preset cpu` a small one for 2 CPU cores.
PRESETS: Registry[dict[str, Any]] = Registry(
    "compare-presets", "--preset", describe=lambda p: ", ".join(f"{k}={v}" for k, v in p.items() if k != "methods")
)
_PRESETS: dict[str, dict[str, Any]] = {
    # The paper's protocol on one GPU: 5 x 2048 calibration tokens, sparsities 0.1/0.2/0.3, seeds 0-2, all
    # held-out windows of 2048 tokens; a shorter speed workload (block methods at equal k time alike).
    "gpu": {"device": "cuda", "dtype": "float32", "speed_new_tokens": 64, "speed_repeats": 3, "speed_warmup": 1},
    "cpu": {
        # First 12 of the model's blocks, short calibration samples and windows, a small search, 2 seeds:
        # it checks the machinery and shows the tables' shape; the numbers say nothing about the full model.
        "blocks": 12,
        "seeds": [0, 1],
        "calibration": "wiki-leads:valid",
        "samples": 5,
        "seq_len": 32,
        "eval_seq_len": 64,
        "eval_windows": 2,
        "methods": ["evop", "sleb", "shortgpt", "wanda", "slicegpt"],
        "search": {"population": 8, "generations": 4, "patience": 2, "local_search": False},
        "exhaustive_limit": 100,
        "tasks": [],
        "speed_prompt_len": 64,
        "speed_new_tokens": 8,
        "speed_repeats": 2,
        "speed_warmup": 1,
    },
}


for _name, _settings in _PRESETS.items():
    PRESETS.register(_name, _settings)


def preset(name: str) -> CompareConfig:
    return CompareConfig.from_dict(PRESETS.lookup(name))


# ---------------------------------------------------------------------- cells
@dataclass(frozen=True)
class CellKey:
    method: str  # "dense", a search method or a width baseline
    sampler: str | None = None
    sparsity: float | None = None
    seed: int | None = None
    cluster: int | None = None  # Fig. 1c: calibrated on this CCDS cluster only

    @property
    def id(self) -> str:
        if self.method == "dense":
            return "dense"
        text = f"{self.method}-{self.sampler}-s{self.sparsity:g}-seed{self.seed}"
        return text if self.cluster is None else f"{text}-cluster{self.cluster}"


def plan(config: CompareConfig, num_blocks: int) -> list[CellKey]:
    """Every cell, without repeats, grouped by calibration set so one evaluator is alive at a time."""
    if "exhaustive" in config.methods:
        limit = config.method_exhaustive_limit
        for s in config.sparsities:
            if (count := math.comb(num_blocks, num_drop(num_blocks, s))) > limit:
                raise EvopError(
                    f"method exhaustive at sparsity {s} would evaluate C({num_blocks},{num_drop(num_blocks, s)}) "
                    f"= {count:,} patterns, over exhaustive_limit = {limit:,}; raise exhaustive_limit in the "
                    "config file or leave exhaustive out of methods"
                )
    keys: list[CellKey] = [CellKey("dense")]
    for seed in config.seeds:
        for s in config.sparsities:
            keys += [CellKey(m, config.own_sampler(m), s, seed) for m in config.methods]
            if config.ablations:
                keys += [
                    CellKey("evop", "ccds", s, seed),
                    CellKey("evop", "random", s, seed),
                    CellKey("sleb", "ccds", s, seed),
                ]
            if config.fig1a:
                keys += [CellKey("evop", "ccds", s, seed), CellKey("sleb", "ccds", s, seed)]
                if math.comb(num_blocks, num_drop(num_blocks, s)) <= config.exhaustive_limit:
                    keys.append(CellKey("exhaustive", "ccds", s, seed))
        if config.fig1c:
            keys += [
                CellKey(m, "ccds", config.cluster_sparsity, seed, c)
                for c in range(config.samples)
                for m in config.fig1c_methods
            ]
    unique = list(dict.fromkeys(keys))
    order = {k: i for i, k in enumerate(unique)}
    calibration = lambda k: (k.seed is not None, k.seed or 0, k.sampler or "", -1 if k.cluster is None else k.cluster)  # noqa: E731
    ordered = sorted(unique, key=lambda k: (calibration(k), _prunes_width(k.method), order[k]))
    return ordered


class Workspace:
    """The model, held-out windows and calibration evaluators, made only when a cell needs them."""

    def __init__(self, model: Any, config: CompareConfig):
        self.source, self.config = model, config
        self._loaded = self._heldout = None
        self._evaluator_key, self._evaluator, self._calibration = None, None, None
        self.tasks_unavailable: str | None = None

    @property
    def loaded(self):
        if self._loaded is None:
            c = self.config
            # Checked here: a report from finished cells needs no device.
            device = check_device(c.device, fix='set device = "cpu" (or --preset cpu)')
            loaded = (
                self.source if isinstance(self.source, LoadedModel) else load(self.source, LoadConfig(dtype=c.dtype))
            )
            loaded.model.to(device)
            total = loaded.record.num_blocks - len(loaded.record.dropped_blocks)
            if c.blocks is not None and c.blocks < total:
                drop(loaded, range(c.blocks, total))
            self._loaded = loaded
        return self._loaded

    @property
    def heldout(self):
        if self._heldout is None:
            c = self.config
            self._heldout = HeldOut.from_corpora(
                self.loaded.model,
                self.loaded.tokenizer,
                c.eval,
                c.eval_seq_len,
                c.eval_windows,
                c.data_dir,
                int(c.cache_gib * (1 << 30)),
            )
        return self._heldout

    def evaluator(self, key: CellKey):
        """The calibration set of ``key`` and its SerialEvaluator, shared by every cell on that set."""
        ident = (key.sampler, key.seed, key.cluster)
        if ident != self._evaluator_key:
            c = self.config
            extra = {"embedder": c.embedder} if c.embedder else {}
            cal_config = CalibrationConfig(
                sampler=key.sampler,
                clusters=c.samples,
                samples_per_cluster=1,
                seq_len=c.seq_len,
                seed=key.seed,
                data_dir=c.data_dir,
                cluster=key.cluster,
                **extra,
            )
            self._evaluator = None  # free the previous set's prefix cache first
            self._calibration = calibrate(c.calibration, self.loaded.tokenizer, cal_config)
            ids = self._calibration.input_ids.to(input_device(self.loaded.model))
            self._evaluator = evaluator_for(
                self.loaded.model,
                ids,
                c.search_config(),
                batch_size=c.batch_size,
                cache_bytes=int(c.cache_gib * (1 << 30)),
            )
            self._evaluator_key = ident
        return self._calibration, self._evaluator


def _heldout_numbers(nll: dict[str, float]) -> dict[str, dict[str, float]]:
    return {spec: {"nll": value, "ppl": math.exp(value)} for spec, value in nll.items()}


def _extras(ws: Workspace, key: CellKey, pruned) -> dict[str, Any]:
    """Speed (first seed of main cells) and zero-shot tasks of a pruned model, when asked for."""
    c, out = ws.config, {}
    main = key.cluster is None and key.sampler == c.own_sampler(key.method)
    if c.speed and main and key.seed == c.seeds[0]:
        config = SpeedConfig(
            prompt_len=c.speed_prompt_len,
            new_tokens=c.speed_new_tokens,
            warmup=c.speed_warmup,
            repeats=c.speed_repeats,
            dtype=c.dtype,
        )
        out["speed"] = speed(ws.loaded.model, pruned, config).to_dict()
    if c.tasks and main:
        out["tasks"] = _tasks(ws, pruned)
    return out


def _tasks(ws: Workspace, model) -> dict[str, Any]:
    """lm-eval scores, or ``{"unavailable": reason}`` when the harness or the task data cannot be had: that never
    stops the report and is tried once. Any other failure is this model's and stops the run (``--resume`` goes on)."""
    if ws.tasks_unavailable:
        return {"unavailable": ws.tasks_unavailable}

    try:
        return tasks(
            model, ws.loaded.tokenizer, TasksConfig(tasks=list(ws.config.tasks), limit=ws.config.task_limit)
        ).to_dict()
    except TasksUnavailable as exc:
        ws.tasks_unavailable = str(exc).splitlines()[0][:300]
        log.warning("zero-shot tasks unavailable: %s", ws.tasks_unavailable)
        return {"unavailable": ws.tasks_unavailable}


def _prunes_width(name: str) -> bool:
    return name in METHODS and not METHODS[name].removes_blocks


def run_cell(ws: Workspace, key: CellKey) -> dict[str, Any]:
    """Compute one cell's numbers (no provenance)."""
    c = ws.config
    if key.method == "dense":
        out: dict[str, Any] = {"heldout": _heldout_numbers(ws.heldout.score(()))}
        if c.tasks:
            out["tasks"] = _tasks(ws, ws.loaded.model)
        return out
    calibration, evaluator = ws.evaluator(key)
    method, ids = METHODS[key.method], calibration.input_ids
    search = replace(c.search_config(), method=key.method, seed=key.seed, exhaustive_limit=c.method_exhaustive_limit)
    job = MethodJob(None, ids, key.sparsity, search=search, batch_size=c.batch_size, progress=False)
    if not method.removes_blocks:
        clone = copy.copy(ws.loaded)
        clone.model, clone.record = copy.deepcopy(ws.loaded.model), copy.deepcopy(ws.loaded.record)
        job.loaded, job.dense_loss = clone, evaluator.loss(())
        result = method.run(job)
        details = {k: v for k, v in result.summary.items() if k not in ("method", "seconds")}
        out = {
            "unit": clone.record.sparsity_unit,
            "achieved_sparsity": clone.record.sparsity,
            "parameters_after": clone.record.parameters_after,
            "parameters_before": clone.record.parameters_before,
            "calibration_loss": result.losses["pruned"],
            "dense_calibration_loss": job.dense_loss,
            "details": {k: v for k, v in details.items() if isinstance(v, (int, float, str))},
            "heldout": _heldout_numbers(ws.heldout.on(clone.model).score(())),
        }
        return {**out, **_extras(ws, key, clone.model)}
    job.evaluator = evaluator
    before = evaluator.stats.as_dict()
    result = method.run(job).search
    blocks = find_blocks(ws.loaded.model)
    out = {
        "unit": "blocks",
        "k": result.k,
        "blocks": evaluator.num_blocks,
        "mask": list(result.mask),
        "calibration_loss": result.loss,
        "dense_calibration_loss": result.dense_loss,
        # cost on this calibration set's shared memo: patterns another method already visited cost nothing here
        "evaluations": evaluator.stats.evaluations - before["evaluations"],
        "block_forwards": evaluator.stats.block_forwards - before["block_forwards"],
        "heldout": _heldout_numbers(ws.heldout.score(result.mask)),
        # Table 1's "parameters removed" without a pruned copy (speed off): the dropped blocks' own parameters
        "parameters_before": (total := count_parameters(ws.loaded.model)),
        "parameters_after": total - sum(p.numel() for i in result.mask for p in blocks[i].parameters()),
    }
    if (c.speed or c.tasks) and key.cluster is None:
        pruned = copy.deepcopy(ws.loaded.model)
        drop_blocks(pruned, result.mask)
        out.update(_extras(ws, key, pruned))
    return out


# ---------------------------------------------------------------------- the run
def prepare_report_dir(path: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """As `evop-hub prune`: an existing non-empty REPORT_DIR is refused unless ``resume`` (reuse its finished
    cells) or ``overwrite`` (delete what compare wrote there, nothing else, and start over). ``resume`` wins."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise EvopError(f"{path} exists and is not a directory; choose another --output")
    if path.is_dir() and any(path.iterdir()) and not resume:
        if not overwrite:
            raise EvopError(
                f"report directory {path} already exists; pass --resume to reuse its finished cells or --overwrite to start over"
            )
        for name in OWNED:
            target = path / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    (path / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    return path


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def _model_name(model: Any) -> str:
    return model if isinstance(model, str) else getattr(getattr(model, "source", None), "name", type(model).__name__)


def compare(
    model: Any,
    config: CompareConfig,
    output: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) every cell, then write results.json, report.md and the figures into ``output``.

    ``model`` is anything ``evop_hub.load`` takes, or a ``LoadedModel``. Returns the results dict.
    """
    config.check()
    name = _model_name(model)
    out = prepare_report_dir(output, resume=resume, overwrite=overwrite)
    fingerprint = config.fingerprint(name)
    recorded = _recorded_blocks(out, fingerprint)
    ws = Workspace(model, config)
    blocks = recorded or len(find_blocks(ws.loaded.model))
    keys = plan(config, blocks)
    run = _Run(name, command, fingerprint, hardware(), versions())
    started = time.perf_counter()
    cells, reused = _run_cells(ws, keys, out, run, progress)
    log.info("%d cells: %d computed, %d reused from %s", len(keys), len(keys) - reused, reused, out / CELLS_DIR)
    heldout = ws._heldout.info if ws._heldout is not None else _saved_windows(out)
    results = {
        "format": FORMAT,
        "version": VERSION,
        "model": name,
        "command": command,
        "config": asdict(config),
        "blocks": blocks,
        "hardware": run.hardware,
        "versions": run.versions,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.perf_counter() - started, 1),
        "cells_reused": reused,
        "heldout_windows": heldout,
        "cells": cells,
    }
    _write_json(out / RESULTS, results)
    write_report(out, results)
    return results


@dataclass(frozen=True)
class _Run:
    """What every cell computed by one `compare` run records of that run."""

    model: str
    command: str | None
    fingerprint: str
    hardware: str
    versions: dict[str, str]


def _run_cells(
    ws: Workspace, keys: list[CellKey], out: Path, run: _Run, progress: bool
) -> tuple[list[dict[str, Any]], int]:
    """(Every cell of ``keys``, in order; how many were reused). A cell with a file in ``out`` is read back, any
    other computed and written at once, so an interrupted run resumes where it stopped."""
    cells, reused = [], 0
    with bar(keys, desc="compare", unit="cell", disable=not progress) as cells_bar:
        for key in cells_bar:
            cells_bar.set_postfix_str(key.id)
            path = out / CELLS_DIR / f"{key.id}.json"
            if path.is_file():
                cell = json.loads(path.read_text())
                if cell.get("tasks", {}).get("unavailable") and key.method == "dense":
                    ws.tasks_unavailable = cell["tasks"]["unavailable"]
                cells.append(cell)
                reused += 1
                continue
            cell = _computed_cell(ws, key, run)
            _write_json(path, cell)
            cells.append(cell)
    return cells, reused


def _computed_cell(ws: Workspace, key: CellKey, run: _Run) -> dict[str, Any]:
    """One cell's numbers (``run_cell``) with its settings' fingerprint and its provenance."""
    start = time.perf_counter()
    numbers = run_cell(ws, key)
    return {
        "id": key.id,
        **asdict(key),
        **numbers,
        "fingerprint": run.fingerprint,
        "provenance": {
            "command": run.command,
            "model": run.model,
            "seeds": {"calibration": key.seed, "search": key.seed},
            "versions": run.versions,
            "hardware": run.hardware,
            "device": ws.config.device,
            "dtype": ws.config.dtype,
            "seconds": round(time.perf_counter() - start, 3),
            "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        },
    }


def _recorded_blocks(out: Path, fingerprint: str) -> int | None:
    """The model's block count from the finished cells, after refusing any made with other settings: both before
    anything loads, so that a resumed run with nothing left to compute (a report over fewer seeds, made on another
    machine than the cells) never loads the model."""
    blocks = None
    for path in sorted((out / CELLS_DIR).glob("*.json")):
        cell = json.loads(path.read_text())
        if cell.get("fingerprint") != fingerprint:
            raise EvopError(
                f"{path} was computed with other settings (model, corpora, lengths, search, device); "
                "use another --output, the same settings, or --overwrite"
            )
        blocks = blocks or cell.get("blocks")
    return blocks


def _saved_windows(out: Path) -> dict[str, Any] | None:
    """Held-out window counts from the previous results.json when every cell was reused (nothing re-tokenized)."""
    path = out / RESULTS
    return json.loads(path.read_text()).get("heldout_windows") if path.is_file() else None
