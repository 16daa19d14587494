"""Publish an output directory: the model repo (weights, record, card) and its demo Space.

One ``create_commit`` per repository (rather than ``upload_folder``): the card is rendered
in memory for the target repo id, so a failed push leaves the local directory exactly as it
was, and the file list is computed here, so ``--dry-run`` shows exactly what is sent. Only
files evop-hub wrote into the output directory (plus the base repo's license files) are sent,
never its run state (``.evop/``) nor the user's own files, which are listed as left out.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import constants, is_offline_mode

from ..card import default_repo_name, render
from ..errors import EvopError
from ..models.card_files import base_license_files, present_license_files
from ..models.saving import previous_save
from ..record import RECORD_NAME, STATE_DIR, PruningRecord, check_output_dir
from .space import FREE_HARDWARE, SpaceFiles, space_files

# Never published: run state and partial writes; README.md is rendered for the target repo instead.
# huggingface_hub's DEFAULT_IGNORE_PATTERNS (.git, caches) are added on top.
IGNORE_PATTERNS = [STATE_DIR, f"{STATE_DIR}/*", "*.tmp", "README.md"]


@dataclass
class PushConfig:
    """Where and how to publish. ``token`` None means HF_TOKEN or the cached `hf auth login`."""

    repo_id: str | None = None  # default: {user}/{model}-evop-{kept}L
    private: bool = True
    revision: str | None = None  # branch of the model repo; created when missing
    commit_message: str | None = None
    dry_run: bool = False
    space: bool = True
    space_hardware: str | None = None
    token: str | None = None


@dataclass
class PushResult:
    repo_id: str
    files: list[str]  # paths in the model repo, exactly as committed (or as they would be)
    space_repo_id: str | None = None
    space_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # entries of the output directory evop-hub did not write
    dry_run: bool = False
    url: str | None = None  # where the model goes (a dry run's too); after a push, as the Hub answered
    commit: str | None = None
    space_url: str | None = None
    private: bool = True  # the model repo's visibility, and the Space's
    space_hardware: str = FREE_HARDWARE
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of each of ``files``
    space_sizes: dict[str, int] = field(default_factory=dict)  # bytes of each of ``space_files``

    def listing(self) -> str:
        """What a dry run would send, and where: each repo's URL and visibility, the Space's hardware, each
        file's size and the totals, so a user sees a 13B model's 26 GB upload or a public repo before it goes."""
        visibility = "private" if self.private else "public"
        lines = [
            f"dry run: would upload {_files(self.sizes)} to the {visibility} model repo {self.repo_id}",
            f"  {self.url}",
            *_rows(self.sizes),
        ]
        if self.space_repo_id:
            hardware = f"{self.space_hardware}{' (free)' if self.space_hardware == FREE_HARDWARE else ''}"
            lines += [
                f"and {_files(self.space_sizes)} to the {visibility} Space {self.space_repo_id}, hardware {hardware}",
                f"  {self.space_url}",
                *_rows(self.space_sizes),
            ]
        return "\n".join(lines)


def human_size(size: int) -> str:
    """Bytes in the Hub's units (decimal: 1 MB = 10^6 bytes)."""
    exponent = min(len(str(size)) - 1, 9) // 3  # 0 for B, 1 for kB, ... 3 for GB
    return f"{size} B" if exponent == 0 else f"{size / 1000**exponent:.1f} {('kB', 'MB', 'GB')[exponent - 1]}"


def _files(sizes: dict[str, int]) -> str:
    return f"{len(sizes)} files ({human_size(sum(sizes.values()))})"


def _rows(sizes: dict[str, int]) -> list[str]:
    width = max(map(len, sizes), default=0)
    return [f"    {name:<{width}}  {human_size(size):>8}" for name, size in sorted(sizes.items())]


def repo_url(repo_id: str, revision: str | None = None, space: bool = False) -> str:
    """The page of ``repo_id`` on the Hub this client talks to (HF_ENDPOINT), on ``revision`` when not main."""
    url = f"{constants.ENDPOINT}/{'spaces/' if space else ''}{repo_id}"
    return f"{url}/tree/{revision}" if revision and revision != "main" else url


def upload_files(output_dir: Path) -> tuple[list[str], list[str]]:
    """(Files of ``output_dir`` that go to the Hub, sorted; its entries left out). Only what evop-hub wrote goes:
    the last save's files (its list in ``.evop``; without one, those named like a checkpoint's), the record and the
    license files `card` copies. A user's own files there (.env, notes, a clone's .git) stay local; README.md is
    rendered separately."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    root = output_dir.resolve()
    ours = previous_save(root) | {"config.json", RECORD_NAME, "README.md", *present_license_files(root)}
    left_out = sorted(p.name + "/" * p.is_dir() for p in root.iterdir() if p.name not in ours | {STATE_DIR})
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel.split("/")[0] not in ours:
                continue
            if not path.resolve().is_relative_to(root):
                raise EvopError(
                    f"{output_dir}/{rel} links outside the output directory; replace it with a copy, then push"
                )
            if path.is_file():
                found.append(rel)
    return sorted(filter_repo_objects(found, ignore_patterns=IGNORE_PATTERNS + DEFAULT_IGNORE_PATTERNS)), left_out


@contextlib.contextmanager
def hub_errors(what: str, repo_id: str | None, token: str | None):
    """One actionable line for each way the Hub refuses; the token never reaches a message."""
    try:
        yield
    except EvopError:
        raise
    except Exception as exc:
        error = _explain(exc, what, repo_id, token)
        if error is None:
            raise
        raise error from None


def _explain(exc: BaseException, what: str, repo_id: str | None, token: str | None) -> EvopError | None:
    """The user's view of a failure anywhere in the cause chain (LFS errors arrive wrapped)."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for err in chain:
        if isinstance(err, HFValidationError):
            return EvopError(f"invalid repo id {repo_id!r}: use USER/NAME with letters, digits, '-', '_' or '.'")
        if isinstance(err, (OfflineModeIsEnabled, httpx2.TransportError, ConnectionError)):
            return EvopError(
                f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} to {what} ({type(err).__name__}); "
                "check the network (and HF_ENDPOINT / HF_HUB_OFFLINE), then push again"
            )
        if isinstance(err, HfHubHTTPError):
            status = err.response.status_code if err.response is not None else None
            if status == 401:
                return EvopError(
                    f"the Hub rejected the token while trying to {what} (401); set a valid HF_TOKEN or run `hf auth login`"
                )
            if status == 403:
                return EvopError(
                    f"no permission to {what} (403); use a token with write access to {repo_id or 'that namespace'} "
                    "or choose --repo-id under your own user"
                )
            return EvopError(f"the Hub refused to {what}: {_scrub(str(err).splitlines()[0], token)}")
    if isinstance(chain[0], ValueError):  # e.g. card metadata the Hub's validate-yaml rejects
        return EvopError(f"cannot {what}: {_scrub(' '.join(str(chain[0]).split()), token)[:400]}")
    return None


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def resolve_repo_id(config: PushConfig, name: str) -> tuple[str, str | None]:
    """(USER/NAME to push to, token). ``name`` is used when --repo-id has no namespace or is unset.

    Without a token only a dry run goes on, with a placeholder user; a dry run asks the Hub for the token's
    account only when --repo-id names no namespace, and not in offline mode (HF_HUB_OFFLINE).
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import validate_repo_id

    token = config.token or get_token()
    if token is None and not config.dry_run:
        raise EvopError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")
    repo_id = config.repo_id
    named = repo_id is not None and "/" in repo_id
    if not named and (token is None or (config.dry_run and is_offline_mode())):
        return f"{{your-user}}/{repo_id or name}", token
    if not (config.dry_run and named):  # asked even when --repo-id names the namespace: a rejected token fails now
        with hub_errors("read the account of the token", None, token):
            user = HfApi(token=token).whoami()["name"]
        repo_id = repo_id if named else f"{user}/{repo_id or name}"
    with hub_errors("check the repo id", repo_id, token):
        validate_repo_id(repo_id)
    return repo_id, token


def check_push(config: PushConfig) -> None:
    """For `prune --push`, before hours of search: a token the Hub accepts and a valid --repo-id."""
    resolve_repo_id(config, "name-checked-later")


def _gated(api, base: str | None, token: str | None) -> bool:
    """Best effort: whether the base repo is gated (then its license usually limits redistribution)."""
    if not base or is_offline_mode():
        return False
    try:
        return bool(api.model_info(base, token=token).gated)
    except Exception:  # noqa: BLE001 - a missing/unreachable base only loses the warning
        return False


def push(output_dir: str | Path, config: PushConfig | None = None) -> PushResult:
    """Publish ``output_dir`` (written by `evop-hub prune`/`drop`) and, unless disabled, its Space."""
    from huggingface_hub import HfApi

    config = config or PushConfig()
    output_dir = Path(output_dir)
    record = check_output_dir(output_dir)
    files, left_out = upload_files(output_dir)
    if RECORD_NAME not in files:
        raise EvopError(f"{output_dir}/{RECORD_NAME} would not be uploaded; do not ignore it")
    repo_id, token = resolve_repo_id(config, default_repo_name(record))
    api = HfApi(token=token)
    gated = _gated(api, record.source_hub_id, token)
    warnings = [_gated_warning(record.source_hub_id, config.private)] if gated else []
    extra, card = _license_files_and_card(output_dir, record, repo_id, config.revision)
    space = None
    if config.space:
        space = space_files(
            output_dir,
            record,
            repo_id,
            config.revision,
            base_gated=gated,
            private=config.private,
            hardware=config.space_hardware,
        )
        warnings += space.warnings
    result = PushResult(
        repo_id=repo_id,
        files=sorted([*files, *extra, "README.md"]),
        space_repo_id=repo_id if space else None,
        space_files=sorted(space.files) if space else [],
        warnings=warnings,
        left_out=left_out,
        dry_run=config.dry_run,
        url=repo_url(repo_id, config.revision),
        space_url=repo_url(repo_id, space=True) if space else None,
        private=config.private,
        space_hardware=config.space_hardware or FREE_HARDWARE,
        sizes=_sizes(output_dir, files, extra, card),
        space_sizes={name: len(data) for name, data in space.files.items()} if space else {},
    )
    if config.dry_run:
        return result
    result.url, result.commit = _commit_model(api, token, output_dir, files, extra, card, record, repo_id, config)
    # The local card now names the repo it was published to, like the pushed one.
    tmp = output_dir / "README.md.tmp"
    tmp.write_bytes(card)
    tmp.replace(output_dir / "README.md")
    if space is not None:
        result.space_url = _commit_space(api, token, space, repo_id, config)
    return result


def _gated_warning(base: str | None, private: bool) -> str:
    return f"the base model {base} is gated: its license terms apply to this derivative; " + (
        "keep it private unless they allow redistribution" if not private else "the repo stays private"
    )


def _license_files_and_card(
    output_dir: Path, record: PruningRecord, repo_id: str, revision: str | None
) -> tuple[dict[str, Path], bytes]:
    """(License files to send from the base's repo, by name; the card rendered for ``repo_id``). Those `evop-hub
    card` already copied into ``output_dir`` go with its files instead, and the card links whichever are sent."""
    present = present_license_files(output_dir)
    extra = {} if present else base_license_files(record, output_dir)
    license_names = present or (sorted(extra) if extra is not None else None)
    card = str(render(record, repo_id=repo_id, license_files=license_names, revision=revision)).encode()
    return extra or {}, card


def _sizes(output_dir: Path, files: list[str], extra: dict[str, Path], card: bytes) -> dict[str, int]:
    """Bytes of each file the model repo gets, as ``PushResult.sizes``."""
    sizes = {rel: (output_dir / rel).stat().st_size for rel in files}
    return sizes | {name: path.stat().st_size for name, path in extra.items()} | {"README.md": len(card)}


def _commit_model(
    api,
    token: str | None,
    output_dir: Path,
    files: list[str],
    extra: dict[str, Path],
    card: bytes,
    record: PruningRecord,
    repo_id: str,
    config: PushConfig,
) -> tuple[str, str]:
    """Create the model repo (and branch) when missing and send everything in one commit: (its URL, commit id)."""
    from huggingface_hub import CommitOperationAdd

    operations = [CommitOperationAdd(rel, str(output_dir / rel)) for rel in files]
    operations += [CommitOperationAdd(name, str(path)) for name, path in extra.items()]
    operations.append(CommitOperationAdd("README.md", card))
    message = (
        config.commit_message
        or f"evop-hub: {record.source_hub_id or record.source_model} with {len(record.kept_blocks)} of {record.num_blocks} blocks"
    )
    with hub_errors(f"create {repo_id}", repo_id, token):
        url = api.create_repo(repo_id, private=config.private, exist_ok=True)
    if config.revision and config.revision != "main":
        with hub_errors(f"create branch {config.revision} of {repo_id}", repo_id, token):
            api.create_branch(repo_id, branch=config.revision, exist_ok=True)
    with hub_errors(f"upload to {repo_id}", repo_id, token):
        commit = api.create_commit(repo_id, operations, commit_message=message, revision=config.revision)
    return str(url), commit.oid


def _commit_space(api, token: str | None, space: SpaceFiles, repo_id: str, config: PushConfig) -> str:
    """Create the Space (on the requested hardware) and send its files in one commit; returns its URL."""
    from huggingface_hub import CommitOperationAdd

    with hub_errors(f"create the Space {repo_id}", repo_id, token):
        url = str(
            api.create_repo(
                repo_id,
                repo_type="space",
                space_sdk="gradio",
                private=config.private,
                space_hardware=config.space_hardware,
                exist_ok=True,
            )
        )
        if config.space_hardware:
            api.request_space_hardware(repo_id, config.space_hardware)
        api.create_commit(
            repo_id,
            [CommitOperationAdd(name, data) for name, data in sorted(space.files.items())],
            repo_type="space",
            commit_message=f"evop-hub demo of {repo_id}",
        )
    return url
