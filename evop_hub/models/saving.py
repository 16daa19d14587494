"""Write a pruned model as exactly what will be published, atomically.

The output directory holds a standard checkpoint (safetensors, config, tokenizer,
generation config), ``evop_pruning.json`` and the model card. Run state (search
checkpoints, traces) is written into ``DIR/.evop/`` during the run, survives the final save,
and is never published. The published files are written beside the output and moved into
place by renames once all of them are complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import EvopError
from ..files import atomic_path, temp_dir
from ..hub.card import write_card
from ..record import RECORD_NAME, STATE_DIR
from .loading import LoadedModel

MANIFEST = "published.json"  # in DIR/.evop: the files the last save wrote


def prepare_output(path: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Check an output directory can be written, before any long work starts.

    An existing directory is refused unless ``overwrite`` (start over) or ``resume`` (continue the run whose
    state is in ``DIR/.evop``; with ``overwrite`` too, start over when there is none). ``overwrite`` replaces
    only what evop-hub wrote: a directory holding neither an output nor a run is refused, whatever the flags.
    """
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise EvopError(f"output {path} exists and is not a directory; choose another --output")
    if resume and _has_run(path):
        return path
    if resume and not overwrite:  # a mistyped --output must not quietly start hours of work from scratch
        raise EvopError(f"{path} holds no run to resume (no {STATE_DIR}/); drop --resume to start one, "
                        "or check --output")
    if path.is_dir() and any(path.iterdir()):
        ours = (path / RECORD_NAME).is_file() or (path / STATE_DIR).is_dir()
        if not ours:
            raise EvopError(f"{path} holds files evop-hub did not write; choose a new or empty --output "
                            "(--overwrite replaces only an evop-hub output)")
        if not overwrite:
            hint = " (or --resume to continue its run)" if _has_run(path) else ""
            raise EvopError(f"output directory {path} already exists; pass --overwrite to replace it{hint}")
        for entry in (path / STATE_DIR).iterdir() if (path / STATE_DIR).is_dir() else []:
            if entry.name != MANIFEST:  # the last save's file list stays: it tells its files from the user's
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvopError(f"cannot create {parent} ({exc.strerror}); choose another --output") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EvopError(f"cannot write to {parent}; choose another --output")
    return path


def _has_run(path: Path) -> bool:
    """Whether ``DIR/.evop`` holds a run's state (not only the last save's file list)."""
    state = path / STATE_DIR
    return state.is_dir() and any(entry.name != MANIFEST for entry in state.iterdir())


def state_dir(output: str | Path) -> Path:
    """``DIR/.evop``: where a run keeps what it needs to resume."""
    path = Path(output) / STATE_DIR
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvopError(f"cannot create {path} ({exc.strerror or exc}); choose another --output") from exc
    return path


@contextmanager
def run_state(output: Path | None) -> Iterator[Path | None]:
    """``DIR/.evop`` for a run (None without an output). A run that fails before it saved anything there
    (a calibration error, say) leaves no empty state behind, which a retry would take for a run to resume."""
    if output is None:
        yield None
        return
    created = not output.exists()
    path = state_dir(output)
    try:
        yield path
    except BaseException:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
            if created and not any(output.iterdir()):
                output.rmdir()
        raise


def check_not_source(output: Path, loaded: LoadedModel) -> None:
    """Writing the output over its own source would destroy the model that `ppl --dense`, `card` and the
    Space compare with; refused before any work."""
    source = Path(loaded.source.path).expanduser()
    if source.is_dir() and source.resolve() == Path(output).expanduser().resolve():
        raise EvopError(f"--output {output} is the source model's own directory; choose another --output")


def save(loaded: LoadedModel, output: str | Path, *, command: str | None = None, overwrite: bool = False) -> Path:
    """Save model, tokenizer, record and card into ``output``.

    An existing non-empty ``output`` is refused unless ``overwrite``; then its content is
    replaced, except its ``.evop`` run state (``prune`` and the CLI vet the path with
    ``prepare_output`` before their long work, and pass ``overwrite=True`` here).
    """
    output = Path(output).expanduser().resolve()
    if not overwrite:
        prepare_output(output)
    check_not_source(output, loaded)
    if command:
        loaded.record.command = command
    source = Path(loaded.source.path)
    if loaded.source.format == "transformers" and not loaded.source.hub_id and source.is_dir():
        # Commands run later from elsewhere (card, space, ppl --dense) find the source through this.
        loaded.record.source_relative = os.path.relpath(source.resolve(), output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(output.parent, f".{output.name}.tmp-")
    try:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        loaded.record.save(tmp)
        write_card(tmp)
        written = sorted(p.name for p in tmp.iterdir())
        if output.exists():
            _swap_in(tmp, output)
        else:
            os.replace(tmp, output)
        with atomic_path(state_dir(output) / MANIFEST) as path:  # what the next save may replace (see _carried)
            path.write_text(json.dumps(written) + "\n")
    except OSError as exc:
        raise EvopError(f"cannot write {output} ({exc.strerror or exc}); check free space and permissions") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def _carried(old: Path, new: Path) -> list[str]:
    """What of ``old`` moves into the new output: its run state, and whatever the new save does not write and
    the previous save did not write either (the user's own files). The previous save's files are listed in its
    run state; an output saved before that list existed is replaced whole, as it then was."""
    manifest = old / STATE_DIR / MANIFEST
    if manifest.is_file():
        previous = set(json.loads(manifest.read_text()))
    else:
        previous = {p.name for p in old.iterdir()} if (old / RECORD_NAME).is_file() else set()
    written = {p.name for p in new.iterdir()}
    return [p.name for p in old.iterdir() if p.name == STATE_DIR or (p.name not in written and p.name not in previous)]


def _swap_in(new: Path, output: Path) -> None:
    """Replace directory ``output`` by ``new``, carrying over its run state and the user's files (see
    ``_carried``); on any failure the previous directory is put back whole."""
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    os.replace(output, old)
    moved = []
    try:
        for name in _carried(old, new):
            os.replace(old / name, new / name)
            moved.append(name)
        os.replace(new, output)
    except BaseException:
        for name in moved:
            if (new / name).exists():
                os.replace(new / name, old / name)
        os.replace(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)
