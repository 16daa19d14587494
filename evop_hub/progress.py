"""One switch for the progress bars of a run: evop-hub's own and those its libraries draw (`--quiet`)."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

_shown = True


def bar(*args: Any, disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar, hidden when its caller says so or when progress is silenced."""
    return tqdm(*args, disable=disable or not _shown, **kwargs)


def shown() -> bool:
    """Whether bars are drawn: for libraries that take a flag (sentence-transformers' encode)."""
    return _shown


def silence() -> None:
    """No bar for the rest of the process: ours, transformers' (loading, saving) and huggingface_hub's."""
    global _shown
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    _shown = False
    disable_progress_bars()
    transformers_logging.disable_progress_bar()
