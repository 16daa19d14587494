"""The Gradio Space that serves a pruned model next to its base, and the same app run locally.

The app itself lives in ``spaces/`` and is uploaded unchanged: a Space cannot install
evop-hub, so this module only adds what differs per model (README metadata and
``evop_space.json``, the repo ids the app serves).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import SpaceCard, SpaceCardData

from ..card.card import license_link
from ..errors import EvopError
from ..models.gguf import convert_gguf
from ..models.offline import OFFLINE_MODELS, locate_offline_model
from ..record import PruningRecord, check_output_dir

SPACE_DIR = Path(__file__).resolve().parents[2] / "spaces"  # a source checkout
INSTALLED_SPACE_DIR = Path(sys.prefix) / "share" / "evop-hub" / "spaces"  # pyproject's data-files
APP_FILES = ("app.py", "requirements.txt")
CONFIG_NAME = "evop_space.json"

# The free Space hardware ("cpu-basic": 2 vCPU, 16 GB RAM) and what an app needs besides weights.
FREE_HARDWARE = "cpu-basic"
FREE_MEMORY_GB = 16.0
RUNTIME_OVERHEAD_GB = 2.0  # python, torch, gradio, activations of a short generation
BYTES_PER_PARAM = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass
class SpaceFiles:
    """Everything uploaded to the Space: file name -> bytes, plus warnings for the user."""

    files: dict[str, bytes]
    warnings: list[str]
    memory_gb: float | None


def template_dir() -> Path:
    for path in (SPACE_DIR, INSTALLED_SPACE_DIR):
        if (path / "app.py").is_file():
            return path
    raise EvopError(
        f"the Space app is missing (no app.py in {SPACE_DIR} or {INSTALLED_SPACE_DIR}); reinstall evop-hub, or use --no-space"
    )


def base_repo(record: PruningRecord) -> str | None:
    """The base the Space compares with: only a Hub repo can be loaded from a Space."""
    return record.source_hub_id


def memory_gb(output_dir: Path, record: PruningRecord) -> float | None:
    """RAM the Space needs for both models in their saved dtype (the app loads with dtype="auto")."""
    if record.parameters_after is None:
        return None
    config = json.loads((output_dir / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    width = BYTES_PER_PARAM.get(str(dtype), 4)
    params = record.parameters_after + ((record.parameters_before or 0) if base_repo(record) else 0)
    return params * width / 1e9 + RUNTIME_OVERHEAD_GB


def space_files(
    output_dir: Path,
    record: PruningRecord,
    repo_id: str,
    revision: str | None = None,
    *,
    base_gated: bool = False,
    private: bool = True,
    hardware: str | None = None,
) -> SpaceFiles:
    """README (Space metadata), app, requirements and the served repo ids, ready to upload."""
    source = template_dir()
    base = base_repo(record)
    notes, warnings = _access_notes(record, base, base_gated, private)
    need = memory_gb(output_dir, record)
    if need is not None and need > FREE_MEMORY_GB and hardware in (None, FREE_HARDWARE):
        text = (
            f"the two models need about {need:.0f} GB of RAM, more than the {FREE_MEMORY_GB:.0f} GB of the free "
            f"{FREE_HARDWARE} Space; pass --space-hardware (e.g. cpu-upgrade or a GPU such as a10g-large)"
        )
        notes.append(text)
        warnings.append(text)
    card = SpaceCard.from_template(
        _card_data(record, repo_id, base),
        template_str=(source / "README.md").read_text(),
        model=repo_id,
        model_url=f"https://huggingface.co/{repo_id}"
        + (f"/tree/{revision}" if revision and revision != "main" else ""),
        base=base,
        pruning=_pruning(record),
        notes=notes,
    )
    config = {"model": repo_id, "revision": revision, "base": base, "base_revision": record.source_revision}
    config["trust_remote_code"] = record.method == "slicegpt"  # its modeling file, pushed by this user with it
    files = {name: (source / name).read_bytes() for name in APP_FILES}
    files["README.md"] = str(card).encode()
    files[CONFIG_NAME] = (json.dumps(config, indent=2) + "\n").encode()
    return SpaceFiles(files, warnings, need)


def _access_notes(
    record: PruningRecord, base: str | None, base_gated: bool, private: bool
) -> tuple[list[str], list[str]]:
    """(Notes for the Space's README, warnings for the user) on what the Space can load and compare: a gated
    base or private repo needs a token secret; a base off the Hub is not served; a GGUF source differs by more
    than pruning."""
    notes, warnings = [], []
    if base_gated or private:
        why = "the base model is gated" if base_gated else "the model repository is private"
        notes.append(
            f"{why}: add a Space secret named `HF_TOKEN` (Settings → Variables and secrets) holding a "
            "read token of an account that can access it, then restart the Space."
        )
        warnings.append(f"{why}: the Space needs an HF_TOKEN secret to load it (see its README)")
    if base is None:
        notes.append("the base model is not on the Hub, so the Space serves the pruned model alone.")
    elif record.source_format.startswith("gguf"):
        notes.append(
            f"the pruned model was dequantized from a {record.source_format.removeprefix('gguf:')} GGUF file, "
            f"while {base} is served in full precision: part of the difference between them is quantization."
        )
    return notes, warnings


def _card_data(record: PruningRecord, repo_id: str, base: str | None) -> SpaceCardData:
    """The Space README's metadata: a Gradio app of the installed version, serving the model (and its base)."""
    import gradio

    return SpaceCardData(
        title=repo_id.split("/")[-1][:30],
        emoji="✂️",
        colorFrom="indigo",
        colorTo="gray",
        sdk="gradio",
        sdk_version=gradio.__version__,
        app_file="app.py",
        pinned=False,
        license=record.license,
        license_name=record.license_name,
        license_link=license_link(record, None),  # the Space holds no license file: point into the base repo
        models=[m for m in (repo_id, base) if m],
        short_description=(f"{_pruned_kind(record)} pruned model" + (" vs. its base" if base else ""))[:60],
    )


def _pruned_kind(record: PruningRecord) -> str:
    if record.sparsity_unit == "blocks":
        return f"{record.num_blocks - len(record.dropped_blocks)}-block"
    return f"{record.method}"


def _pruning(record: PruningRecord) -> str:
    """What was removed, as the README's sentence says it: blocks, or for a width baseline its unit."""
    if record.sparsity_unit == "blocks":
        return f"removing {len(record.dropped_blocks)} of the {record.num_blocks} transformer blocks of"
    share = (
        f"{record.sparsity:.0%} of the {record.sparsity_unit}" if record.sparsity is not None else record.sparsity_unit
    )
    return f"pruning {share} ({record.method}, every block kept) of"


def _load_app():
    path = template_dir() / "app.py"
    spec = importlib.util.spec_from_file_location("evop_space_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def local_base(record: PruningRecord, output_dir: Path) -> str | None:
    """A base that loads here: the local source directory, the converted offline GGUF, or the Hub id."""
    source = Path(record.source_spec(output_dir)).expanduser()
    if source.is_dir():
        return str(source)
    if (record.source_format or "").startswith("gguf"):
        if record.source_model in OFFLINE_MODELS:
            return str(convert_gguf(locate_offline_model(record.source_model)))
        if source.suffix == ".gguf" and source.is_file():
            return str(convert_gguf(source))
    return record.source_hub_id


def runs_code(output_dir: Path, record: PruningRecord) -> bool:
    """Whether loading ``output_dir`` would run Python from it: an ``auto_map`` in its config or tokenizer
    config (how transformers finds a checkpoint's own code), or a SliceGPT record."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            if "auto_map" in json.loads((output_dir / name).read_text()):
                return True
        except (OSError, ValueError, TypeError):  # absent or unreadable: loading fails on it, running nothing
            pass
    return record.method == "slicegpt"


def build_local_demo(
    output_dir: str | Path, base: str | None = None, with_base: bool = True, trust_remote_code: bool = False
):
    """The Space's Gradio app for a local output directory (nothing is uploaded). Code shipped in the directory
    runs only with ``trust_remote_code``: the folder may come from anyone, and its own files cannot vouch for it."""

    output_dir = Path(output_dir)
    record = check_output_dir(output_dir)
    if not trust_remote_code and runs_code(output_dir, record):
        raise EvopError(
            f"{output_dir} holds model code (modeling_*.py) that loading it would run; pass "
            "--trust-remote-code if you trust that code"
        )
    base = (base or local_base(record, output_dir)) if with_base else None
    if not any(output_dir.glob("*.safetensors")):
        raise EvopError(f"{output_dir} holds no weights (*.safetensors); is the directory complete?")
    try:
        return _load_app().build_demo(str(output_dir), base=base, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise EvopError(
            f"cannot load the base model {base!r} for the demo ({str(exc).splitlines()[0][:200]}); "
            "pass --base DIR or --no-base"
        ) from exc


def serve(
    output_dir: str | Path,
    port: int = 7860,
    base: str | None = None,
    with_base: bool = True,
    trust_remote_code: bool = False,
) -> None:
    """`evop-hub space DIR`: the same app on 127.0.0.1 only, blocking until interrupted."""
    demo = build_local_demo(output_dir, base=base, with_base=with_base, trust_remote_code=trust_remote_code)
    try:
        demo.launch(server_name="127.0.0.1", server_port=port, share=False)
    except OSError as exc:
        raise EvopError(f"cannot serve on 127.0.0.1:{port} ({exc}); pass another --port") from exc
