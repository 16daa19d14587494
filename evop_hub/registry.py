"""One registry shape for everything a user picks by name (methods, corpora, samplers, presets, offline models,
fitnesses, compensations), modelled on lm-evaluation-harness's ``Registry``: every lookup fails with the same
one-line error, and ``evop-hub list`` reads them all from ``REGISTRIES``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from .errors import EvopError

T = TypeVar("T")

# Every registry, by what `evop-hub list` calls it; filled as each registry is created.
REGISTRIES: dict[str, Registry] = {}


class Registry(Mapping[str, T], Generic[T]):
    """Names to objects, read as a mapping (``get`` answers None for an unknown name); ``lookup`` is the checked
    lookup.

    ``option`` is how a user names an entry (``--method``), used in the error; ``describe`` turns an entry into
    the one line ``evop-hub list`` prints beside its name."""

    def __init__(self, kind: str, option: str, describe: Callable[[T], str] | None = None) -> None:
        self.kind, self.option = kind, option
        self._describe = describe
        self._entries: dict[str, T] = {}
        REGISTRIES[kind] = self

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a name taken twice is a programming error, said at import time."""
        if name in self._entries:
            raise ValueError(f"{self.kind}: {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def lookup(self, name: str) -> T:
        """The entry named ``name``; an unknown name is one line listing the known ones."""
        if name in self._entries:
            return self._entries[name]
        raise EvopError(self.unknown(name))

    def unknown(self, name: object, hint: str = "", option: str | None = None) -> str:
        """The message for a name not in this registry; ``hint`` adds other accepted forms (a file path),
        ``option`` names the setting when it is not the flag (a key of a config file)."""
        return f"unknown {option or self.option} {name!r}; choose from {', '.join(self._entries)}{hint}"

    def check(self, name: str) -> str:
        """``name`` if registered, else the one-line error: for settings checked before anything slow starts."""
        self.lookup(name)
        return name

    def describe(self, name: str) -> str:
        return self._describe(self._entries[name]) if self._describe else ""

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
