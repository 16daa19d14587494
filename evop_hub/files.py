"""Atomic file writes: a crash or a full disk never leaves a half-written file where a finished one
is expected (records, cards, calibration sets, search checkpoints, cached embeddings, plots); and the
lock that lets only one run write an output directory at a time."""

from __future__ import annotations

import atexit
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import EvopError

try:
    import fcntl
except ImportError:  # Windows: outputs are not locked
    fcntl = None


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


def check_writable(path: str | Path) -> None:
    """Refuse a file that could not be written at ``path`` (its folder, or the nearest existing one that
    ``atomic_path`` would create it in, is not a writable directory): checked before the long work, which
    would otherwise end in a traceback with its result lost."""
    path = Path(path).expanduser().absolute()
    folder = next(p for p in path.parents if p.exists())
    if not folder.is_dir():
        raise EvopError(f"cannot write {path}: {folder} is not a directory; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EvopError(f"cannot write to {folder}; choose another path for {path.name}")


def refuse_existing(path: str | Path, overwrite: bool) -> Path:
    """Check before the long work that an output will not replace a user's file by accident, and can be written."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise EvopError(f"{path} already exists; pass --overwrite to replace it or choose another name")
    if path.is_dir():
        raise EvopError(f"{path} is a directory; give a file name")
    check_writable(path)
    return path


def temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new directory in ``parent``, to be renamed into place when complete. mkdtemp makes it private
    (0700); it gets the mode a plain mkdir would under the user's umask, as the directory it becomes."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    return path


# ---------------------------------------------------------------- where an output is staged
def in_place(output: str | Path) -> bool:
    """Whether the existing directory ``output`` must have its contents replaced, not be renamed: the working
    directory (renamed away, it would leave the calling shell in a deleted directory) or a mount point (a
    container volume: renaming it fails with EBUSY, and its parent is often not writable)."""
    output = Path(output)
    return output.is_dir() and (os.path.ismount(output) or _is_cwd(output))


def staging(output: str | Path) -> Path:
    """Where a save of ``output`` keeps its lock, temporary and previous copies: beside it, or inside it when it
    is replaced in place (the same file system, so every entry still moves by one atomic rename)."""
    output = Path(output)
    return output if in_place(output) else output.parent


def _is_cwd(path: Path) -> bool:
    try:
        return os.path.samestat(os.stat("."), os.stat(path))
    except OSError:
        return False


# ---------------------------------------------------------------- one run per output directory
# A lock file beside each output directory (beside, not inside: the final save renames the directory), or inside
# one replaced in place (see ``staging``).
# flock ties the lock to the open file, so a killed run's lock is released by the kernel and never goes stale;
# the file holds the holder's process id only to name it to the run that is refused.
_held: dict[Path, tuple[int, int]] = {}  # lock file -> (descriptor, process id), for the outputs being written


def lock_file(output: str | Path) -> Path:
    """The lock file of output directory ``output``: ``PARENT/.NAME.lock`` (``NAME/.NAME.lock`` in place)."""
    output = Path(output)
    return staging(output) / f".{output.name}.lock"


def hold_output(output: str | Path) -> bool:
    """Lock ``output`` for this process until ``release_output`` (or its exit); True if this call took it.

    Re-entrant within a process (``prepare_output`` then ``save`` lock the same directory); a second process
    is refused at once, naming the process that holds it, instead of mixing two runs' files and state."""
    path = lock_file(output)
    if fcntl is None or _held.get(path, (None, None))[1] == os.getpid():  # no flock here, or held already
        return False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EvopError(f"cannot create {path} ({exc.strerror}); choose another --output") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EvopError(
                f"{output} is being written by another evop-hub run (process {holder}); wait for it "
                "to finish, or choose another --output"
            ) from None
        except OSError:  # a file system without locks (some network mounts): unlocked, as without fcntl
            os.close(fd)
            path.unlink(missing_ok=True)
            return False
        if _same_file(fd, path):  # else its last holder removed it after we opened it: lock the current file
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[path] = (fd, os.getpid())
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def release_output(output: str | Path) -> None:
    """Unlock ``output`` and remove its lock file (a no-op when this process does not hold it)."""
    _unlock(lock_file(output))


def _unlock(path: Path) -> None:
    fd, pid = _held.pop(path, (None, None))
    if fd is not None and pid == os.getpid():  # a forked worker leaves its parent's lock alone
        path.unlink(missing_ok=True)  # while still locked: a waiter that opened it sees the change and retries
        os.close(fd)


@atexit.register
def _release_all() -> None:
    """A run that stops on an error leaves no lock file beside its output."""
    for path in list(_held):
        _unlock(path)


def cache_dir() -> Path:
    """evop-hub's own cache (converted GGUF checkpoints, embeddings), under the user cache."""
    root = os.environ.get("EVOP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "evop_hub"
    )
    return Path(root)
