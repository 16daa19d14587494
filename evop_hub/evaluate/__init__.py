"""Evaluation of a (pruned) model: perplexity on corpora, downstream tasks, speed."""

from .perplexity import PerplexityConfig, PerplexityResult, perplexity
from .speed import SpeedConfig, SpeedResult, speed
from .tasks import TasksConfig, TasksResult, tasks

__all__ = [
    "PerplexityConfig",
    "PerplexityResult",
    "SpeedConfig",
    "SpeedResult",
    "TasksConfig",
    "TasksResult",
    "perplexity",
    "speed",
    "tasks",
]
