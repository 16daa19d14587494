"""Atomic file writes: a crash or a full disk never leaves a half-written file where a finished one
is expected (records, cards, calibration sets, search checkpoints, cached embeddings, plots)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # created by the writer: the user's umask applies
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new directory in ``parent``, to be renamed into place when complete. mkdtemp makes it private
    (0700); it gets the mode a plain mkdir would under the user's umask, as the directory it becomes."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    return path
