"""The model card, rendered from a pruning record alone (no files read, nothing run)."""

from .card import PROJECT_URL, RESULTS_URL, card_data, corpus_dataset, default_repo_name, render

__all__ = ["PROJECT_URL", "RESULTS_URL", "card_data", "corpus_dataset", "default_repo_name", "render"]
