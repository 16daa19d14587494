"""Load a causal LM from the Hub, a local directory, a GGUF file, or the offline default.

Everything returns a ``LoadedModel``: the transformers model and tokenizer plus where
they came from, so the pruning record and the model card can cite the exact source.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..errors import EvopError
from ..record import RECORD_NAME, PruningRecord
from .adapters import context_length, find_blocks
from .devices import accelerator_present, device_map, dtype_name, placement, torch_dtype
from .devices import check_device as check_device  # kept importable here for scoring/evaluator.py
from .gguf import convert_gguf
from .hub_errors import hub_error
from .offline import OFFLINE_MODELS, locate_offline_model
from .provenance import LICENSE_KEYS, card_license, hub_commit

log = logging.getLogger(__name__)


@dataclass
class LoadConfig:
    """How to load a model. Mirrors the arguments of ``from_pretrained`` that matter for pruning."""

    revision: str | None = None
    dtype: str = "auto"
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[int | str, str] | None = None
    offload_folder: str | None = None
    trust_remote_code: bool = False
    token: str | bool | None = None  # None: HF_TOKEN or the cached login, as huggingface_hub does


@dataclass
class SourceInfo:
    """Where the weights came from, as the record and the card cite it."""

    name: str  # what the user typed
    path: str  # what was passed to from_pretrained (a Hub id or a local directory)
    hub_id: str | None = None
    revision: str | None = None
    format: str = "transformers"
    license: str | None = None
    license_name: str | None = None  # the Hub's keys for a license of type `other`
    license_link: str | None = None
    derived_from: dict[str, Any] | None = None  # an evop-hub output's own record (PruningRecord.lineage())


@dataclass
class LoadedModel:
    """A model ready for pruning, with its tokenizer, source and the record of what was done to it."""

    model: torch.nn.Module
    tokenizer: Any
    source: SourceInfo
    dtype: str | None = None  # the precision the output is saved in; None: the weights' own, as loaded
    record: PruningRecord = field(init=False)

    def __post_init__(self) -> None:
        self.record = PruningRecord(
            source_model=self.source.name,
            source_hub_id=self.source.hub_id,
            source_revision=self.source.revision,
            source_format=self.source.format,
            license=self.source.license,
            license_name=self.source.license_name,
            license_link=self.source.license_link,
            derived_from=self.source.derived_from,
            architecture=type(self.model).__name__,
            model_type=self.model.config.model_type,
            num_blocks=len(find_blocks(self.model)),
            dropped_blocks=[],
            parameters_before=count_parameters(self.model),
            parameters_after=count_parameters(self.model),
        )


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings once), including ones offloaded to meta/disk."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _pretrained_kwargs(config: LoadConfig, accelerator: bool | None = None) -> dict[str, Any]:
    """``from_pretrained``'s loading arguments. Without a --device-map, a machine with a GPU loads onto it
    (accelerate's "auto": the GPUs first, then the CPU): a search of a 13B model on the CPU takes days, and
    nothing would say why. ``--device-map cpu`` keeps it on the CPU. ``accelerator`` overrides the probe."""
    kwargs: dict[str, Any] = {"dtype": torch_dtype(config.dtype)}
    mapping = device_map(config.device_map)
    if mapping is None and not config.max_memory and (accelerator_present() if accelerator is None else accelerator):
        mapping = "auto"
    if mapping is not None:
        kwargs["device_map"] = mapping
    if config.max_memory:
        kwargs["max_memory"] = config.max_memory
        kwargs.setdefault("device_map", "auto")
    if config.offload_folder:
        kwargs["offload_folder"] = config.offload_folder
    return kwargs


def _resolve(name: str, config: LoadConfig) -> SourceInfo:
    if name in OFFLINE_MODELS:
        spec = OFFLINE_MODELS[name]
        path = convert_gguf(locate_offline_model(name))
        quant = re.split(r"[.-]", Path(spec.filename).stem)[-1].upper()  # Q4_1, Q4_K_M
        return SourceInfo(name, str(path), hub_id=spec.hub_id, format=f"gguf:{quant}", license=spec.license)
    local = Path(name).expanduser()
    if local.suffix == ".gguf":
        if not local.is_file():
            raise EvopError(f"GGUF file {local} does not exist")
        return SourceInfo(name, str(convert_gguf(local)), format="gguf")
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise EvopError(f"{local} has no config.json: not a transformers model directory")
        return SourceInfo(name, str(local))
    if local.exists() or name.startswith((".", "/", "~")):
        raise EvopError(f"{local} is neither a model directory nor a .gguf file")
    return SourceInfo(name, name, hub_id=name, revision=config.revision)


def load_tokenizer(name: str, config: LoadConfig | None = None) -> Any:
    """Only the tokenizer of a model spec (calibration needs no weights)."""
    from transformers import AutoTokenizer

    config = config or LoadConfig()
    source = _resolve(name, config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, revision=source.revision, token=config.token, trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise hub_error(exc, name) from exc
    tokenizer.name_or_path = name
    return tokenizer


def leading_bos(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer starts every text with it (Llama, Gemma, Mistral), else None (GPT-2, SmolLM2).

    Evaluation windows and calibration samples are built from text tokenized without special
    tokens and led by this id, so the search scores patterns on inputs shaped like the evaluation's."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else None


def _read_config(path: Path) -> dict[str, Any]:
    """A local model's config.json, or one line saying it is damaged (the JSON error alone names no file)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # not UTF-8 or not JSON
        raise EvopError(f"{path} is not valid JSON ({exc}); restore the model's config.json") from None
    if not isinstance(config, dict):
        raise EvopError(f"{path} is not a JSON object; restore the model's config.json")
    return config


def load(name: str, config: LoadConfig | None = None) -> LoadedModel:
    """Load a causal LM for pruning: a Hub id, a local directory, a ``.gguf`` file or an offline name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config or LoadConfig()
    source = _resolve(name, config)
    local_config = Path(source.path) / "config.json"
    if not config.trust_remote_code and local_config.is_file() and "auto_map" in _read_config(local_config):
        # transformers would build its own class from model_type and fail on the weights' shapes (SliceGPT's).
        raise EvopError(
            f"{name} needs code from its repository (auto_map in its config.json); "
            "re-run with --trust-remote-code if you trust it"
        )
    common = {"revision": source.revision, "token": config.token, "trust_remote_code": config.trust_remote_code}
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, **common, **_pretrained_kwargs(config))
        tokenizer = AutoTokenizer.from_pretrained(source.path, **common)
    except EvopError:
        raise
    except SafetensorError as exc:  # a truncated or damaged download
        raise EvopError(f"the weights of {name} are damaged ({exc}); download them again") from exc
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise EvopError(
                f"{name} needs code from its repository; re-run with --trust-remote-code if you trust it"
            ) from exc
        raise hub_error(exc, name) from exc
    model.eval()
    tokenizer.name_or_path = model.name_or_path = name  # records cite what the user typed, not a cache path
    _cite(source, config.token)
    log.info("loaded %s", placement(model))
    return LoadedModel(model, tokenizer, source, dtype=_output_dtype(name, config))


def _cite(source: SourceInfo, token: str | bool | None) -> None:
    """Fill in what the record cites beyond the name: the commit and license of a Hub or local model, or,
    for an evop-hub output, the license and lineage its own record carries. An output is its own source
    (block numbers count from it), but its weights keep the license of the model they came from, and its
    record says what was done to them: a card made from it again must say both."""
    if (Path(source.path) / RECORD_NAME).is_file():
        record = PruningRecord.load(source.path)
        terms = {key: getattr(record, key) for key in LICENSE_KEYS}
        source.derived_from = record.lineage()
    elif source.format == "transformers":
        if source.hub_id:
            source.revision = hub_commit(source.hub_id, source.revision) or source.revision
        terms = card_license(source.hub_id, source.revision, source.path, token)
    else:
        terms = {}
    for key, value in terms.items():
        setattr(source, key, value)


def _output_dtype(name: str, config: LoadConfig) -> str | None:
    """The precision the output is saved in, when not the loaded weights' own: an offline GGUF is searched
    dequantized to float32 (exact, and fast on a CPU), but published in its Hub base's precision, not at
    twice the base's size. ``--dtype`` other than auto loads, searches and saves in that dtype."""
    return OFFLINE_MODELS[name].dtype if name in OFFLINE_MODELS and config.dtype == "auto" else None


def check_is_source(record: PruningRecord, model: torch.nn.Module, name: str) -> None:
    """A figure recorded as "the dense source against this model" must come from that source: the same
    number of blocks and, where recorded, of parameters (a GGUF source dequantizes to the same count)."""
    blocks, parameters = len(find_blocks(model)), count_parameters(model)
    if blocks != record.num_blocks or parameters != (record.parameters_before or parameters):
        raise EvopError(
            f"{name} ({blocks} blocks, {parameters:,} parameters) is not the model this output was pruned "
            f"from: {record.source_model} ({record.num_blocks} blocks, {record.parameters_before or 0:,} "
            "parameters); compare with that one"
        )


def describe(loaded: LoadedModel) -> dict[str, Any]:
    """Facts `evop-hub info` prints: what a user needs to choose how many blocks to drop."""
    model = loaded.model
    params = count_parameters(model)
    blocks = find_blocks(model)
    # The mean: MoE models may mix dense and expert blocks of very different sizes.
    per_block = sum(p.numel() for p in blocks.parameters()) // len(blocks) if len(blocks) else 0
    dtype = next(model.parameters()).dtype
    facts: dict[str, Any] = {
        "source": loaded.source.name,
        "hub_id": loaded.source.hub_id,
        "format": loaded.source.format,
        "architecture": type(model).__name__,
        "model_type": model.config.model_type,
        "blocks": len(blocks),
        "parameters": params,
        "parameters_per_block": per_block,
        "blocks_share_of_parameters": round(per_block * len(blocks) / params, 4) if params else None,
        "dtype": dtype_name(model),
        "memory_bytes": params * dtype.itemsize,
        "context_length": context_length(model),
    }
    mapping = getattr(model, "hf_device_map", None)
    if mapping:
        facts["devices"] = sorted({str(d) for d in mapping.values()})
    return facts
