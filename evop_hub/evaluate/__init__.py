"""Evaluation of a (pruned) model: perplexity on corpora, downstream tasks, speed.

Every function here returns its result and writes nothing; ``evop_hub.record.record_results``
puts a result into a record.
"""

from .perplexity import PerplexityConfig, PerplexityResult, PerplexityResults, evaluate_perplexity, perplexity
from .speed import SpeedConfig, SpeedResult, speed
from .tasks import TasksConfig, TasksResult, tasks

__all__ = [
    "PerplexityConfig",
    "PerplexityResult",
    "PerplexityResults",
    "SpeedConfig",
    "SpeedResult",
    "TasksConfig",
    "TasksResult",
    "evaluate_perplexity",
    "perplexity",
    "speed",
    "tasks",
]
