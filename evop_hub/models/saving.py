"""Write a pruned model as exactly what will be published, atomically.

The output directory holds a standard checkpoint (safetensors, config, tokenizer,
generation config), ``evop_pruning.json`` and the model card. Run state (search
checkpoints, traces) is written into ``DIR/.evop/`` during the run, survives the final save,
and is never published. The published files are written beside the output and moved into
place by renames once all of them are complete. One run at a time writes an output: it is
locked from ``prepare_output`` to the end of ``save``.
"""

from __future__ import annotations

import copy
import glob
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path

import torch

from ..errors import EvopError
from ..files import atomic_path, hold_output, in_place, release_output, staging, temp_dir
from ..record import RECORD_NAME, STATE_DIR
from .card_files import write_card
from .devices import dtype_name
from .loading import LoadedModel

log = logging.getLogger(__name__)

MANIFEST = "published.json"  # in DIR/.evop: the files the last save wrote
# Files a checkpoint save writes whose names vary from save to save (shards, tokenizer formats, SliceGPT's code).
# Without the last save's file list (a clone or download of a pushed model: .evop is never published), only these
# and what the new save writes are taken for evop-hub's; everything else there is the user's and stays.
CHECKPOINT_FILES = (
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "modeling_slicegpt.py",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.*",
)
# Config keys that name something other than the published model: transformers' GGUF reader maps the file's
# internal `general.name` ("Smollm2 135M 8k Lc100K Mix1 Ep2") to this one.
STALE_CONFIG_KEYS = ("_model_name_or_path",)
# Outputs whose previous run state an --overwrite run discards once every check has passed (see prepare_output).
_stale_state: set[Path] = set()


def prepare_output(path: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Check an output directory can be written, before any long work starts, and lock it for this run.

    An existing directory is refused unless ``overwrite`` (start over) or ``resume`` (continue the run whose
    state is in ``DIR/.evop``; with ``overwrite`` too, start over when there is none). ``overwrite`` replaces
    only what evop-hub wrote: a directory holding neither an output nor a run is refused, whatever the flags.
    Nothing is deleted here: the previous run's state goes only when the run starts writing (``run_state`` or
    ``save``), after the model has loaded and proved not to be the output's own source, so a refused run loses
    no resumable search. The lock (``hold_output``) keeps a second run off this directory until ``save``.
    """
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise EvopError(f"output {path} exists and is not a directory; choose another --output")
    _check_parent(path)
    took = hold_output(path)
    try:
        if took:  # no other run is writing it: whatever a run left beside it was left by a killed one
            _recover_leftovers(path)
        _stale_state.discard(path)
        if _vet_existing(path, overwrite=overwrite, resume=resume):
            _stale_state.add(path)
    except BaseException:
        if took:
            release_output(path)
        raise
    return path


def _recover_leftovers(path: Path) -> None:
    """Undo what a run killed while saving ``path`` left beside it (see ``_write`` and ``_swap_in``): its
    full-size temporary checkpoint goes; the previous output, renamed away by an overwrite killed before the
    new one took its place, is put back (with its run state, so --resume finds it), or goes when the new one
    is in place. Each step is logged: the user sees what happened to a hidden folder."""
    prefix = f".{glob.escape(path.name)}"
    if path.is_dir():
        _recover_in_place(path, prefix)
    for leftover in sorted(path.parent.glob(f"{prefix}.tmp-*")) + sorted(path.parent.glob(f"{prefix}.old-*")):
        if leftover.name.startswith(f".{path.name}.old-") and not path.exists():
            os.replace(leftover, path)
            log.info("restored %s from %s, where a run killed while saving it had left it", path, leftover.name)
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            log.info("removed %s, left beside %s by a run killed while saving it", leftover.name, path)


def _recover_in_place(path: Path, prefix: str) -> None:
    """Undo an in-place save killed half way (see ``_replace_contents``): its journal says which entries it was
    moving in; while any of them is still in the temporary directory the previous save is put back whole,
    otherwise the new one is complete and the previous copy goes."""
    for journal in sorted(path.glob(f"{prefix}.old-*.json")):
        old, data = journal.with_suffix(""), json.loads(journal.read_text())
        new = path / data["new"]
        if old.is_dir() and new.is_dir() and any(new.iterdir()):
            for name in data["incoming"]:
                if not (new / name).exists():
                    _remove(path / name)
            _move(sorted(p.name for p in old.iterdir()), old, path)
            log.info("restored the previous save in %s, which a run killed while saving it had half replaced", path)
        shutil.rmtree(old, ignore_errors=True)
        journal.unlink()
    for leftover in sorted(path.glob(f"{prefix}.tmp-*")) + sorted(path.glob(f"{prefix}.old-*")):
        shutil.rmtree(leftover, ignore_errors=True)
        log.info("removed %s, left inside %s by a run killed while saving it", leftover.name, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _check_parent(path: Path) -> None:
    """The output's parent must take the temporary directory the save is written into, and the lock file;
    an output replaced in place (a mount point, see ``files.in_place``) takes them itself."""
    if in_place(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise EvopError(f"cannot write to {path}; choose another --output")
        return
    parent = path.parent
    if parent == path:
        raise EvopError(f"--output {path} is the file system's root; choose a directory for the model")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvopError(f"cannot create {parent} ({exc.strerror}); choose another --output") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EvopError(f"cannot write to {parent}; choose another --output")


def _vet_existing(path: Path, *, overwrite: bool, resume: bool) -> bool:
    """Refuse what the flags do not allow for what ``path`` holds; True when the run, an --overwrite that does
    not resume, is to discard a previous run's state."""
    if resume and has_run(path):
        return False
    if resume and not overwrite:  # a mistyped --output must not quietly start hours of work from scratch
        raise EvopError(
            f"{path} holds no run to resume (no {STATE_DIR}/); drop --resume to start one, or check --output"
        )
    if not (path.is_dir() and any(path.iterdir())):
        return False
    if not ((path / RECORD_NAME).is_file() or (path / STATE_DIR).is_dir()):
        raise EvopError(
            f"{path} holds files evop-hub did not write; choose a new or empty --output "
            "(--overwrite replaces only an evop-hub output)"
        )
    if not overwrite:
        hint = " (or --resume to continue its run)" if has_run(path) else ""
        raise EvopError(f"output directory {path} already exists; pass --overwrite to replace it{hint}")
    return has_run(path)


def _discard_stale_state(output: Path) -> None:
    """Start an --overwrite run afresh: its previous run's state goes, except the last save's file list, which
    tells that save's files from the user's. Called once every check has passed (see prepare_output)."""
    if output not in _stale_state:
        return
    _stale_state.discard(output)
    state = output / STATE_DIR
    for entry in state.iterdir() if state.is_dir() else []:
        if entry.name != MANIFEST:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def has_run(path: Path) -> bool:
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
    (a calibration error, say) leaves no empty state behind, which a retry would take for a run to resume,
    and unlocks its output for the next run."""
    if output is None:
        yield None
        return
    _discard_stale_state(output)
    created = not output.exists()
    path = state_dir(output)
    try:
        yield path
    except BaseException:
        try:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
                if created and not any(output.iterdir()):
                    output.rmdir()
        finally:
            release_output(output)
        raise


def check_not_source(output: Path, loaded: LoadedModel) -> None:
    """Writing the output over its own source would destroy the model that `ppl --dense`, `card` and the
    Space compare with; refused before any work."""
    source = Path(loaded.source.path).expanduser()
    if source.is_dir() and source.resolve() == Path(output).expanduser().resolve():
        raise EvopError(f"--output {output} is the source model's own directory; choose another --output")


def save(loaded: LoadedModel, output: str | Path, *, command: str | None = None, overwrite: bool = False) -> Path:
    """Save model, tokenizer, record and card into ``output``.

    An existing non-empty ``output`` is refused unless ``overwrite``; then what evop-hub wrote there is
    replaced, and its ``.evop`` run state and the user's own files stay (``prune`` and the CLI vet the path
    with ``prepare_output`` before their long work, and pass ``overwrite=True`` here). The output is locked
    while it is written, and unlocked after: the run is over.
    """
    output = Path(output).expanduser().resolve()
    _check_parent(output)
    hold_output(output)
    try:
        if not overwrite:
            prepare_output(output)
        check_not_source(output, loaded)
        _discard_stale_state(output)
        if command:
            loaded.record.command = command
        source = Path(loaded.source.path)
        if loaded.source.format == "transformers" and not loaded.source.hub_id and source.is_dir():
            # Commands run later from elsewhere (card, space, ppl --dense) find the source through this.
            loaded.record.source_relative = os.path.relpath(source.resolve(), output)
        _write(loaded, output)
    finally:
        release_output(output)
    return output


def _write(loaded: LoadedModel, output: Path) -> None:
    """Write the checkpoint beside ``output`` and move it into place once complete (see ``_swap_in``)."""
    tmp = temp_dir(staging(output), f".{output.name}.tmp-")
    try:
        loaded.record.dtype = _save_weights(loaded.model, tmp, loaded.dtype)
        loaded.tokenizer.save_pretrained(tmp)
        loaded.record.save(tmp)
        write_card(tmp)
        _same_mode(tmp)
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


def _save_weights(model: torch.nn.Module, directory: Path, dtype: str | None) -> str:
    """``save_pretrained`` in ``dtype`` (None: the weights' own); returns the dtype written.

    The model in memory is left as it is: only the saved copy is cast, each tensor once, so tied weights stay
    tied. Offloaded weights (on the meta device) cannot be cast here; they are saved as loaded, with a
    warning. The config names the dtype written, and none of STALE_CONFIG_KEYS."""
    for key in STALE_CONFIG_KEYS:
        vars(model.config).pop(key, None)
    loaded_as = dtype_name(model)
    if dtype is not None and dtype != loaded_as and any(p.device.type == "meta" for p in model.parameters()):
        log.warning("offloaded weights are saved as loaded (%s); pass --dtype %s to load them so", loaded_as, dtype)
        dtype = None
    if dtype is None or dtype == loaded_as:
        model.save_pretrained(directory)
        return loaded_as
    target, cast = getattr(torch, dtype), {}
    state = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.dtype, tensor.shape)  # tied weights share one storage: cast once
        if key not in cast:
            cast[key] = tensor.to(target) if tensor.is_floating_point() else tensor
        state[name] = cast[key]
    model.save_pretrained(directory, state_dict=state)
    config = copy.copy(model.config)  # save_pretrained wrote the dtype of the weights in memory
    config.dtype = dtype
    config.save_pretrained(directory)
    return dtype


def _same_mode(directory: Path) -> None:
    """Give every file of the output the mode a new file gets under the user's umask: safetensors writes the
    weights 0600, every other writer 0644, and a published directory with one file unreadable to the group is
    a surprise on a shared machine."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _carried(old: Path, new: Path) -> list[str]:
    """What of ``old`` stays in the new output: its run state, and whatever neither the new save nor the previous
    one wrote (the user's own files: notes, a clone's .git). The previous save's files are listed in its run
    state; without that list (a clone or download of a pushed model) they are the CHECKPOINT_FILES there."""
    written = {p.name for p in new.iterdir()}
    previous = previous_save(old)
    return sorted(
        p.name for p in old.iterdir() if p.name == STATE_DIR or (p.name not in written and p.name not in previous)
    )


def previous_save(output: Path) -> set[str]:
    """The files the last save wrote into ``output``: its manifest, or those named like CHECKPOINT_FILES.

    A manifest that is not a list of plain file names, or that names a hidden one (a save writes none), is
    damaged or edited: trusted, it would let `push` upload a `.env` and `--overwrite` delete a `.git`."""
    try:
        names = json.loads((output / STATE_DIR / MANIFEST).read_text())
        if isinstance(names, list) and all(isinstance(n, str) and n and "/" not in n and n[0] != "." for n in names):
            return set(names)
    except (OSError, ValueError):  # none (or unreadable)
        pass
    return {p.name for p in output.iterdir() if any(fnmatchcase(p.name, name) for name in CHECKPOINT_FILES)}


def _swap_in(new: Path, output: Path) -> None:
    """Replace directory ``output`` by ``new``, carrying over its run state and the user's files (see
    ``_carried``); on any failure the previous directory is put back whole. The working directory is
    replaced in place instead (``_replace_contents``), as is a mount point (see ``files.in_place``)."""
    if in_place(output):
        _replace_contents(new, output)
        return
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    os.replace(output, old)
    try:
        carried = _carried(old, new)
        _move(carried, old, new)
        try:
            os.replace(new, output)
        except BaseException:
            _move(carried, new, old)
            raise
    except BaseException:
        os.replace(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _replace_contents(new: Path, output: Path) -> None:
    """Replace what the last save wrote in ``output`` by the entries of ``new``, keeping the directory itself;
    each entry moves by one rename, and on any failure the previous entries are put back."""
    old = temp_dir(output, f".{output.name}.old-")
    journal = old.with_name(old.name + ".json")  # for _recover_in_place, should this run be killed half way
    incoming = sorted(p.name for p in new.iterdir())
    with atomic_path(journal) as path:
        path.write_text(json.dumps({"new": new.name, "incoming": incoming}))
    replaced = sorted({p.name for p in output.iterdir()} - set(_carried(output, new)) - {journal.name})
    _move(replaced, output, old)
    try:
        _move(incoming, new, output)
    except BaseException:
        _move(replaced, old, output)
        old.rmdir()
        journal.unlink()
        raise
    shutil.rmtree(old, ignore_errors=True)
    journal.unlink()


def _move(names: list[str], src: Path, dst: Path) -> None:
    """Move entries ``names`` of ``src`` into ``dst`` by renames: all of them, or (on a failure) none."""
    moved = []
    try:
        for name in names:
            os.replace(src / name, dst / name)
            moved.append(name)
    except BaseException:
        for name in reversed(moved):
            os.replace(dst / name, src / name)
        raise
