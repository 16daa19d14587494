"""Write a pruned model as exactly what will be published, atomically.

The output directory holds a standard checkpoint (safetensors, config, tokenizer,
generation config), ``evop_pruning.json`` and the model card. Run state (search
checkpoints, traces) is written into ``DIR/.evop/`` during the run, survives the final save,
and is never published. The published files are written beside the output and moved into
place by renames once all of them are complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import EvopError
from ..files import temp_dir
from ..hub.card import write_card
from ..record import STATE_DIR
from .loading import LoadedModel


def prepare_output(path: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Check an output directory can be written, before any long work starts.

    An existing directory is refused unless ``overwrite`` (start over) or ``resume``
    (continue the run whose state is in ``DIR/.evop``).
    """
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise EvopError(f"output {path} exists and is not a directory; choose another --output")
    if path.is_dir() and any(path.iterdir()):
        if resume and (path / STATE_DIR).is_dir():
            return path
        if resume and not overwrite:
            raise EvopError(f"output directory {path} holds no run to resume (no {STATE_DIR}/); "
                            "pass --overwrite to replace it, or choose another --output")
        if not overwrite:
            hint = " (or --resume to continue its run)" if (path / STATE_DIR).is_dir() else ""
            raise EvopError(f"output directory {path} already exists; pass --overwrite to replace it{hint}")
        shutil.rmtree(path / STATE_DIR, ignore_errors=True)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvopError(f"cannot create {parent} ({exc.strerror}); choose another --output") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EvopError(f"cannot write to {parent}; choose another --output")
    return path


def state_dir(output: str | Path) -> Path:
    """``DIR/.evop``: where a run keeps what it needs to resume."""
    path = Path(output) / STATE_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(loaded: LoadedModel, output: str | Path, *, command: str | None = None, overwrite: bool = False) -> Path:
    """Save model, tokenizer, record and card into ``output``.

    An existing non-empty ``output`` is refused unless ``overwrite``; then its content is
    replaced, except its ``.evop`` run state (``prune`` and the CLI vet the path with
    ``prepare_output`` before their long work, and pass ``overwrite=True`` here).
    """
    output = Path(output).expanduser().resolve()
    if not overwrite:
        prepare_output(output)
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
        if output.exists():
            _swap_in(tmp, output)
        else:
            os.replace(tmp, output)
    except OSError as exc:
        raise EvopError(f"cannot write {output} ({exc.strerror or exc}); check free space and permissions") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def _swap_in(new: Path, output: Path) -> None:
    """Replace directory ``output`` by ``new``, carrying ``output``'s run state over; on any failure
    the previous directory, run state included, is put back."""
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    os.replace(output, old)
    try:
        if (old / STATE_DIR).exists():
            os.replace(old / STATE_DIR, new / STATE_DIR)
        os.replace(new, output)
    except BaseException:
        if (new / STATE_DIR).exists() and not (old / STATE_DIR).exists():
            os.replace(new / STATE_DIR, old / STATE_DIR)
        os.replace(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)
