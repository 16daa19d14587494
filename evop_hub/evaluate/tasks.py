"""Zero-shot downstream accuracy through lm-evaluation-harness.

The paper reports ARC-e, ARC-c, HellaSwag, PIQA and Winogrande accuracy from LM-Harness, so
this runs the harness itself (``lm_eval.simple_evaluate`` on an ``HFLM`` wrapping the
in-memory model) rather than re-implementing its prompts and scoring: numbers stay
comparable with every other paper that uses it, and any harness task name works.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import EvopError
from ..models import LoadConfig, LoadedModel, load
from ..record.results import PAPER_TASKS, TABLE_METRICS, TasksResult


class TasksUnavailable(EvopError):
    """The harness or the tasks' data cannot be had: the same for every model, so a report of many
    models says so once instead of failing each one (a failure while scoring a model is not this)."""


@dataclass
class TasksConfig:
    """Which harness tasks to run and how."""

    tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS))
    num_fewshot: int = 0  # the paper's tables are zero-shot; EvoP's released code defaulted to 3
    batch_size: int = 8
    limit: int | None = None  # examples per task; for quick looks only, the numbers are then not comparable
    include_path: str | None = None  # folder of task YAMLs (with local data files) added to the harness's own
    load: LoadConfig | None = None  # how to load a model given as a path; in-memory models stay as they are


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise TasksUnavailable("downstream tasks need lm-evaluation-harness: pip install 'evop-hub[eval]'") from exc
    return lm_eval, HFLM, TaskManager


def open_model(model: Any, tokenizer: Any = None, load_config: LoadConfig | None = None) -> tuple[torch.nn.Module, Any]:
    """Model and tokenizer from a LoadedModel, a bare model, or a path/Hub id (loaded with ``load_config``)."""
    if isinstance(model, (str, Path)):
        loaded = load(str(model), load_config)
        return loaded.model, tokenizer or loaded.tokenizer
    if isinstance(model, LoadedModel):
        return model.model, tokenizer or model.tokenizer
    return model, tokenizer


def out_of_memory(exc: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; the CPU allocator and older paths raise a RuntimeError saying so."""
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def check_task_names(names: list[str], known: list[str]) -> None:
    """Fail before any model work on a typo, naming the closest harness tasks."""
    unknown = [n for n in names if n not in set(known)]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hints.append(f"{name!r} (close: {', '.join(close)})" if close else repr(name))
    raise EvopError(
        f"unknown lm-eval task {'; '.join(hints)}; `lm-eval ls tasks` lists all, "
        "or add your own YAMLs with --include-path"
    )


def _summarise(raw: dict[str, Any], config: TasksConfig, version: str) -> TasksResult:
    """Harness keys look like ``acc,none`` / ``acc_stderr,none`` (metric,filter); keep the numbers."""
    scores: dict[str, dict[str, float | None]] = {}
    for task, metrics in raw["results"].items():
        row: dict[str, float | None] = {}
        for key, value in metrics.items():
            if "," not in key:
                continue  # "alias", "name", "sample_len"
            metric, filt = key.split(",", 1)
            name = metric if filt == "none" else f"{metric}[{filt}]"
            row[name] = float(value) if isinstance(value, (int, float)) else None  # "N/A" stderrs
        scores[task] = row
    mean: dict[str, float | None] = {}
    for metric in TABLE_METRICS:
        values = [row[metric] for row in scores.values() if row.get(metric) is not None]
        errors = [row.get(f"{metric}_stderr") for row in scores.values() if row.get(metric) is not None]
        if values and len(values) == len(scores):  # a mean over some of the tasks would pass for the mean over all
            mean[metric] = sum(values) / len(values)
            complete = all(e is not None for e in errors)
            mean[f"{metric}_stderr"] = math.sqrt(sum(e * e for e in errors)) / len(errors) if complete else None
    samples = {task: int(n["effective"]) for task, n in raw.get("n-samples", {}).items() if task in scores}
    return TasksResult(scores, samples, mean, config.num_fewshot, config.limit, version)


def tasks(model: Any, tokenizer: Any = None, config: TasksConfig | None = None) -> TasksResult:
    """Run lm-evaluation-harness tasks on a model (LoadedModel, transformers model, or path/Hub id).

    Writes nothing: ``evop_hub.record.record_results`` puts the result into a record.
    """
    config = config or TasksConfig()
    lm_eval, HFLM, TaskManager = _lm_eval()
    if not config.tasks:
        raise EvopError("no tasks given; name lm-eval tasks, e.g. --tasks arc_easy,piqa")
    if config.include_path and not Path(config.include_path).is_dir():
        raise EvopError(f"--include-path {config.include_path} is not a directory of task YAML files")
    manager = TaskManager(include_path=config.include_path)
    check_task_names(config.tasks, manager.all_tasks)
    try:  # builds the tasks, which fetches their data; done here to report a failed fetch precisely
        loaded_tasks = manager.load(list(config.tasks))["tasks"]
    except ConnectionError as exc:
        raise TasksUnavailable(
            f"cannot fetch task data from the Hugging Face Hub ({exc}); connect, or pass --include-path "
            "with task YAMLs whose dataset_path is json/csv and data_files point at local files"
        ) from exc
    except FileNotFoundError as exc:
        raise TasksUnavailable(f"task data file not found ({exc}); check data_files in the task YAML") from exc

    net, tokenizer = open_model(model, tokenizer, config.load)
    if tokenizer is None:
        raise EvopError("a transformers model needs its tokenizer: pass tokenizer=, or pass a LoadedModel")
    lm = HFLM(pretrained=net, tokenizer=tokenizer, batch_size=config.batch_size)
    try:
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(loaded_tasks.values()),
            num_fewshot=config.num_fewshot,
            limit=config.limit,
            log_samples=False,
            task_manager=manager,
        )
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not out_of_memory(exc):
            raise
        raise EvopError(f"out of memory at batch size {config.batch_size}; use a smaller --batch-size") from exc
    return _summarise(raw, config, lm_eval.__version__)
