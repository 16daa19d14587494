"""Search for the blocks to drop: evaluator, methods, and a resumable run.

``run_search`` wraps any algorithm of ``SEARCHES`` with what a long run needs: a progress
bar showing the best loss, a JSONL trace (one row per generation or step), and a
checkpoint in the run's state directory after every step, holding the method's state and
every fitness computed so far. Resuming replays nothing: the evaluations are restored from
the checkpoint and the method continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EvopError
from ..files import atomic_path
from ..progress import bar
from ..scoring import (
    FITNESSES,
    Evaluator,
    Fitness,
    Mask,
    RayEvaluator,
    SerialEvaluator,
    StagedEvaluator,
    as_mask,
    parse_stages,
)
from .methods import PAPER_SEARCH, SEARCHES, SearchConfig, SearchContext, check_state, is_saved_mask

STATE_FILE = "search_state.json"
TRACE_FILE = "trace.jsonl"

__all__ = [
    "FITNESSES",
    "PAPER_SEARCH",
    "SEARCHES",
    "Evaluator",
    "Fitness",
    "Mask",
    "SearchConfig",
    "RayEvaluator",
    "SearchResult",
    "SerialEvaluator",
    "StagedEvaluator",
    "evaluator_for",
    "num_drop",
    "run_search",
]


def num_drop(num_blocks: int, sparsity: float | None = None, k: int | None = None) -> int:
    """Blocks to drop: ``k`` if given, else ceil(sparsity x blocks) as EvoP's code computes it."""
    if k is None:
        if sparsity is None or not 0 < sparsity < 1:
            raise EvopError(f"--sparsity must be strictly between 0 and 1 (got {sparsity})")
        k = math.ceil(sparsity * num_blocks)
    if not 0 < k < num_blocks:
        raise EvopError(f"cannot drop {k} of {num_blocks} blocks; choose between 1 and {num_blocks - 1}")
    return k


def evaluator_for(
    model, input_ids, config: SearchConfig, devices: list[str] | None = None, ray_address: str | None = None, **settings
) -> Evaluator:
    """The evaluator ``config`` asks for: its fitness, on one Ray actor per device in ``devices`` (at ``ray_address``,
    by default a Ray instance started on this machine; None: serially on the model's own device), staged when
    ``config.stages`` names stages (the cheap stages run in this process, on the model as loaded)."""
    stages = parse_stages(config.stages)
    if ray_address and not devices:
        raise EvopError("--ray-address needs --search-devices: the devices to put an actor on, e.g. cuda:0,cuda:1")
    if devices:
        final = RayEvaluator(model, input_ids, devices, ray_address or "local", fitness=config.fitness, **settings)
    else:
        final = SerialEvaluator(model, input_ids, fitness=config.fitness, **settings)
    return StagedEvaluator.build(final, stages) if stages else final


@dataclass
class SearchResult:
    """The chosen mask and how the search got there."""

    mask: Mask
    loss: float
    dense_loss: float
    method: str
    k: int
    config: dict[str, Any]
    stats: dict[str, int]
    seconds: float
    steps: int
    resumed: bool
    trace: list[dict[str, Any]] = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """What the record and the card keep (the trace stays in the run state)."""
        data = asdict(self)
        data.pop("trace")
        data["mask"] = list(self.mask)
        return data


# Settings added after checkpoints were first written, with the value that reproduces the searches before them:
# at that value they stay out of the fingerprint, so an NLL search saved by an earlier version still resumes.
LATER_SETTINGS = {"fitness": "nll", "stages": "", "seed_angular": False}


def _fingerprint(evaluator: Evaluator, k: int, config: SearchConfig) -> str:
    """Identifies a run: resuming with another model, dtype, calibration set, batching or setting is refused
    (saved partial sums count batches, so they only continue under the same ones)."""
    settings = {key: value for key, value in asdict(config).items() if LATER_SETTINGS.get(key, object()) != value}
    parts = [evaluator.num_blocks, k, sorted(settings.items()), *evaluator.identity()]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _restore(state_path: Path, evaluator: Evaluator, fingerprint: str, method: str) -> dict[str, Any]:
    """The checkpoint to resume from, its evaluations restored into ``evaluator``; a damaged file (a disk
    error, an edit) is one line saying how to start over, not a traceback."""
    try:
        saved = json.loads(state_path.read_text())
        if saved.get("fingerprint") != fingerprint:
            raise EvopError(
                "the saved search used another model, calibration set or settings; "
                "re-run with the same options, or --overwrite to start over"
            )
        _check_saved(saved, evaluator.num_blocks, method)
        evaluator.load_state_dict({"memo": saved["memo"], "stats": saved["stats"]})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EvopError(
            f"{state_path} is damaged ({type(exc).__name__}: {exc}); pass --overwrite to start the search over"
        ) from None
    return saved


def _check_saved(saved: dict[str, Any], num_blocks: int, method: str) -> None:
    """Raise ValueError (or TypeError, KeyError) at the first entry of a checkpoint that ``run_search`` never
    writes, before any of it is used: the values are read again long after ``_restore`` (the trace, the
    elapsed time, the method's state), where a wrong type would end the run in a traceback."""
    check_state(method, saved.get("method_state", {}), num_blocks)
    for entry in saved["memo"]:
        mask, loss_sum, tokens, batches, complete = entry
        numbers = type(loss_sum) in (int, float) and type(tokens) is int and type(batches) is int
        if not (is_saved_mask(mask, num_blocks) and numbers and type(complete) is bool):
            raise ValueError(f"memo entry {str(entry)[:80]} is not what a checkpoint writes")
    if not all(type(value) is int for value in saved["stats"].values()):
        raise ValueError(f"stats {saved['stats']} are not all counts")
    trace = saved.get("trace", [])
    if not (isinstance(trace, list) and all(isinstance(row, dict) for row in trace)):
        raise ValueError("trace is not a list of rows")
    last = trace[-1] if trace else {}
    if "of" in last and not (type(last["of"]) is int and type(last.get("step")) is int):
        raise ValueError(f"the last trace row {str(last)[:80]} counts no patterns")
    if type(saved.get("seconds", 0.0)) not in (int, float):
        raise ValueError(f"seconds = {saved['seconds']!r} is not a number")


def run_search(
    evaluator: Evaluator,
    k: int,
    config: SearchConfig | None = None,
    *,
    state_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> SearchResult:
    """Run ``config.method`` to choose ``k`` blocks; checkpoint into ``state_dir`` when given."""
    config = config or SearchConfig()
    if config.method not in SEARCHES:
        raise EvopError(f"unknown --method {config.method!r}; choose from {', '.join(SEARCHES)}")
    k = num_drop(evaluator.num_blocks, k=k)
    fingerprint = _fingerprint(evaluator, k, config)
    state_path = Path(state_dir) / STATE_FILE if state_dir else None
    saved: dict[str, Any] = {}
    if state_path and state_path.is_file():
        if not resume:
            raise EvopError(f"{state_path.parent} holds an earlier search; pass --resume to continue it or --overwrite")
        saved = _restore(state_path, evaluator, fingerprint, config.method)
    trace: list[dict[str, Any]] = saved.get("trace", [])
    elapsed = saved.get("seconds", 0.0)
    started = time.perf_counter()
    # An enumeration (exhaustive, random) reports patterns done "of" all: its bar counts patterns, with an ETA.
    # The other methods' bars count steps, whose number the method decides as it goes.
    last = trace[-1] if trace else {}
    desc = f"{config.method} k={k} {config.fitness}" + (f" staged {config.stages}" if config.stages else "")
    progress_bar = bar(
        desc=desc,
        unit="pattern" if "of" in last else "step",
        total=last.get("of"),
        initial=last["step"] if "of" in last else len(trace),
        disable=not progress,
    )

    def report(row: dict[str, Any]) -> None:
        row = {
            **row,
            **evaluator.counts(),
            "fitness": config.fitness,
            "stages": config.stages,
            "seconds": round(elapsed + time.perf_counter() - started, 3),
        }
        trace.append(row)
        if "of" in row:
            progress_bar.total, progress_bar.unit = row["of"], "pattern"
            progress_bar.update(row["step"] - progress_bar.n)
        else:
            progress_bar.update(1)
        if row.get("best") is not None:
            progress_bar.set_postfix(best=f"{row['best']:.4f}", evals=row["evaluations"])

    def write_trace() -> None:
        if state_path is not None:
            with atomic_path(state_path.with_name(TRACE_FILE)) as tmp:
                tmp.write_text("".join(json.dumps(row) + "\n" for row in trace))

    def checkpoint(method_state: dict[str, Any]) -> None:
        if state_path is None:
            return
        with atomic_path(state_path) as tmp:
            tmp.write_text(
                json.dumps(
                    {
                        "fingerprint": fingerprint,
                        "method_state": method_state,
                        **evaluator.state_dict(),  # "memo" and "stats"
                        "trace": trace,
                        "seconds": elapsed + time.perf_counter() - started,
                    }
                )
            )
        write_trace()

    context = SearchContext(
        evaluator, k, config, random.Random(config.seed), saved.get("method_state", {}), checkpoint, report
    )
    try:
        mask = as_mask(SEARCHES[config.method](context))
        loss = evaluator.loss(mask)
        dense = evaluator.loss(())
    finally:
        progress_bar.close()
    write_trace()  # steps after the last checkpoint (evop's local search) belong in the trace too
    return SearchResult(
        mask=mask,
        loss=loss,
        dense_loss=dense,
        method=config.method,
        k=k,
        config=asdict(config),
        stats=evaluator.counts(),
        seconds=round(elapsed + time.perf_counter() - started, 3),
        steps=len(trace),
        resumed=bool(saved),
        trace=trace,
    )
