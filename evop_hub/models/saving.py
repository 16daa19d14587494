"""Write a pruned model as exactly what will be published, atomically.

The output directory holds a standard checkpoint (safetensors, config, tokenizer,
generation config), ``evop_pruning.json`` and the model card. Run state (search
checkpoints, traces) lives in ``DIR/.evop/`` and survives the final save, but is never
published. Nothing is written into the final path until everything is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import EvopError
from ..hub.card import write_card
from ..record import STATE_DIR
from .loading import LoadedModel


def prepare_output(path: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Check an output directory can be written, before any long work starts.

    An existing directory is refused unless ``overwrite`` (start over) or ``resume``
    (continue the run whose state is in ``DIR/.evop``).
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise EvopError(f"output {path} exists and is not a directory; choose another --output")
    if path.is_dir() and any(path.iterdir()):
        if resume:
            return path
        if not overwrite:
            raise EvopError(f"output directory {path} already exists; pass --overwrite to replace it (or --resume)")
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


def save(loaded: LoadedModel, output: str | Path, *, command: str | None = None) -> Path:
    """Save model, tokenizer, record and card into ``output``, replacing it atomically.

    The previous content of ``output`` (already vetted by ``prepare_output``) is removed,
    except its ``.evop`` run state.
    """
    output = Path(output).expanduser()
    if command:
        loaded.record.command = command
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    try:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        loaded.record.save(tmp)
        write_card(tmp)
        if output.exists():
            if (output / STATE_DIR).exists():
                os.replace(output / STATE_DIR, tmp / STATE_DIR)
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            os.replace(output, old)
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    except OSError as exc:
        raise EvopError(f"cannot write {output} ({exc.strerror or exc}); check free space and permissions") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output
