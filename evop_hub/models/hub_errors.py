"""The many ways a load from the Hub fails (gated, no such revision, no such repository, offline), each
turned into one actionable line instead of huggingface_hub's chained tracebacks."""

from __future__ import annotations

from ..errors import EvopError
from .offline import OFFLINE_MODELS


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or during: transformers wraps the Hub's own errors."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


def hub_error(exc: Exception, name: str) -> EvopError:
    """Turn the many ways a Hub load fails into one actionable line."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain = _chain(exc)
    kinds = tuple(type(e) for e in chain)
    text = " ".join(str(e) for e in chain).lower()
    if any(issubclass(k, GatedRepoError) for k in kinds) or "gated repo" in text:
        return EvopError(f"{name} is gated: accept its license on the Hub, then set HF_TOKEN (or `hf auth login`)")
    if any(issubclass(k, RevisionNotFoundError) for k in kinds):
        return EvopError(f"{name} has no such revision; check --revision")
    if (
        any(issubclass(k, RepositoryNotFoundError) for k in kinds)
        or "is not a local folder and is not a valid model" in text
    ):
        return EvopError(
            f"model {name!r} not found: not a local directory, .gguf file, offline name "
            f"({', '.join(OFFLINE_MODELS)}) or Hub repository you can access"
        )
    if any(issubclass(k, LocalEntryNotFoundError) for k in kinds) or "connect" in text or "offline" in text:
        return EvopError(
            f"cannot reach the Hugging Face Hub to fetch {name!r} and it is not in the local cache; "
            "connect, or pass a local model directory or .gguf file"
        )
    return EvopError(f"cannot load {name!r}: {str(exc).splitlines()[0][:300]}")
