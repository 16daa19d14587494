"""The files that travel with a saved checkpoint besides its weights: the model card and the base model's
license files, written by the layer that saves (the card itself is rendered from the record alone)."""

from __future__ import annotations

import logging
import shutil
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, is_offline_mode

from ..card import render
from ..files import atomic_path
from ..record import PruningRecord, check_output_dir

log = logging.getLogger(__name__)

# Files of the base repository that travel with derived weights (Llama 2 ships both).
LICENSE_PATTERNS = ("LICENSE", "LICENSE.*", "LICENCE", "LICENCE.*", "USE_POLICY", "USE_POLICY.*")


def _is_license_file(name: str) -> bool:
    return "/" not in name and any(fnmatch(name.upper(), p) for p in LICENSE_PATTERNS)


def present_license_files(output_dir: Path) -> list[str]:
    return sorted(p.name for p in output_dir.iterdir() if p.is_file() and _is_license_file(p.name))


def base_license_files(record: PruningRecord, output_dir: Path) -> dict[str, Path] | None:
    """LICENSE / USE_POLICY files of the base repo: name -> local path (a source dir or the Hub cache).

    None when the base could not be asked (offline, gated, no Hub id): the card then says so
    instead of silently omitting them.
    """
    local = Path(record.source_spec(output_dir)).expanduser()
    if local.is_dir():
        return {p.name: p for p in sorted(local.iterdir()) if p.is_file() and _is_license_file(p.name)}
    if not record.source_hub_id or is_offline_mode():
        return None
    try:
        # model_info is one request without retries, so an offline machine fails fast here.
        info = HfApi().model_info(record.source_hub_id, revision=record.source_revision, timeout=10)
        names = [s.rfilename for s in info.siblings or [] if _is_license_file(s.rfilename)]
        return {
            n: Path(hf_hub_download(record.source_hub_id, n, revision=record.source_revision)) for n in sorted(names)
        }
    except Exception as exc:  # noqa: BLE001 - offline or gated: the card notes it, the run goes on
        log.debug("license files of %s not fetched: %s", record.source_hub_id, type(exc).__name__)
        return None


def write_card(output_dir: str | Path, repo_id: str | None = None, fetch_license: bool = True) -> Path:
    """(Re)write ``output_dir/README.md`` from its ``evop_pruning.json``; returns the card's path."""
    output_dir = Path(output_dir)
    record = check_output_dir(output_dir)
    found = base_license_files(record, output_dir) if fetch_license else None
    for name, src in (found or {}).items():
        with atomic_path(output_dir / name) as tmp:
            shutil.copyfile(src, tmp)
    present = present_license_files(output_dir)
    copied = present if present or found is not None else None
    path = output_dir / "README.md"
    with atomic_path(path) as tmp:
        render(record, repo_id=repo_id, license_files=copied).save(tmp)
    return path
