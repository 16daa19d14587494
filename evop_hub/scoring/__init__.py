"""Scoring: the block runner and the evaluators that turn pruning masks into exact fitnesses.

Everything that needs a masked forward goes through here: the search methods, the staged and
Ray evaluators, held-out perplexity and the baselines' calibration passes.
"""

from .distributed import RayEvaluator
from .evaluator import (
    FITNESSES,
    Evaluator,
    EvaluatorStats,
    Fitness,
    Mask,
    SerialEvaluator,
    StagedEvaluator,
    as_mask,
    parse_stages,
)
from .runner import BlockContext, BlockRunner

__all__ = [
    "FITNESSES",
    "BlockContext",
    "BlockRunner",
    "Evaluator",
    "EvaluatorStats",
    "Fitness",
    "Mask",
    "RayEvaluator",
    "SerialEvaluator",
    "StagedEvaluator",
    "as_mask",
    "parse_stages",
]
