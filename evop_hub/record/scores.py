"""Recording evaluations: the one place that puts a result into a record's ``scores``.

Evaluating and recording are kept apart (as lm-eval keeps ``simple_evaluate`` apart from its
``EvaluationTracker``): ``evaluate`` measures and returns a result, and only this module decides
where in the record each kind of result goes and what of an earlier figure survives it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EvopError
from .record import PruningRecord
from .results import PerplexityResults, SpeedResult, TasksResult

Result = TasksResult | SpeedResult | PerplexityResults


def record_results(where: str | Path | PruningRecord, result: Result) -> Path | None:
    """Put ``result`` into the record behind ``where``: an evop-hub output directory (its ``evop_pruning.json``
    is loaded, updated and saved; returns its path) or an in-memory record such as a LoadedModel's, which a
    later ``save`` writes (returns None).

    Tasks go under ``scores["tasks"]``, speed under ``scores["speed"]``, perplexity under
    ``scores["perplexity"]["CORPUS:SPLIT"]`` (see ``_put_perplexity``).
    """
    if isinstance(result, PerplexityResults) and result.partial:
        raise EvopError("perplexity on part of a corpus (max_windows) is never recorded as the model's number")
    record = where if isinstance(where, PruningRecord) else PruningRecord.load(where)
    if isinstance(result, TasksResult):
        record.scores["tasks"] = result.to_dict()
    elif isinstance(result, SpeedResult):
        record.scores["speed"] = result.to_dict()
    elif isinstance(result, PerplexityResults):
        _put_perplexity(record, result)
    else:
        raise TypeError(f"cannot record a {type(result).__name__}")
    return None if isinstance(where, PruningRecord) else record.save(where)


def _put_perplexity(record: PruningRecord, run: PerplexityResults) -> None:
    """Each corpus's entry holds the result, its ppl as ``pruned``, and the source's as ``dense`` when given.

    A ``dense`` figure already there is kept only if it was measured with the same window
    length, text form and dtype; otherwise the two numbers would not be comparable.
    """
    table = record.scores.setdefault("perplexity", {})
    for i, result in enumerate(run.results):
        key = f"{result.corpus}:{result.split}"
        old = table.get(key) if isinstance(table.get(key), dict) else {}
        same = (old.get("seq_len"), old.get("form"), old.get("dtype", result.dtype)) == (
            result.seq_len,
            result.form,
            result.dtype,
        )
        dense = run.dense
        kept = {"dense": dense[i].ppl} if dense else {"dense": old["dense"]} if same and "dense" in old else {}
        table[key] = {**kept, "pruned": result.ppl, **result.to_dict()}
