"""A calibration set on disk: one safetensors file, token ids plus JSON metadata.

Safetensors rather than pickle so a file downloaded from someone else cannot run code when
loaded. The file records the tokenizer's fingerprint because token ids are meaningless, and
silently wrong, under any other tokenizer. It also keeps each chunk's cluster and 2-D position,
so the cluster picture can be redrawn from the file alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import EvopError
from ..files import atomic_path, refuse_existing

FORMAT = "evop-hub-calibration"
VERSION = 2  # 2: samples are BOS-led where the tokenizer uses BOS
METADATA_KEY = "evop_calibration"  # the only metadata key: safetensors does not fix the order of several


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the vocabulary: equal for copies of one tokenizer wherever they were loaded from."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def _metadata(path: Path, raw: str) -> dict[str, Any]:
    """The file's metadata as a dict; damaged or foreign metadata is refused in one line."""
    try:
        metadata = json.loads(raw)
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("version", 0), int):
        raise EvopError(f"{path} has damaged calibration metadata; make a new file with `evop-hub calibrate`")
    if metadata.get("version", 0) > VERSION:
        raise EvopError(
            f"{path} was written by a newer evop-hub (format version {metadata['version']}); upgrade evop-hub"
        )
    return metadata


def _ids_problem(ids: torch.Tensor) -> str | None:
    """What makes ``ids`` unusable as calibration samples (a damaged or hand-made file), or None. Checked on
    load: such ids would otherwise fail deep inside the model (``check_vocab`` adds the model's own bound)."""
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        return f"its token ids are {ids.dtype}, not integers"
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        return f"its input_ids have shape {list(ids.shape)}, not [samples, tokens] with 2 or more tokens"
    if int(ids.min()) < 0:
        return f"its token ids run from {int(ids.min())} to {int(ids.max())}; ids are 0 or more"
    return None


@dataclass
class CalibrationSet:
    input_ids: torch.Tensor  # [samples, seq_len], int64
    metadata: dict[str, Any]
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)  # chunk_cluster [chunks], chunk_xy [chunks, 2]

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        from safetensors.torch import save

        tensors = {"input_ids": self.input_ids.contiguous(), **{k: v.contiguous() for k, v in self.arrays.items()}}
        data = save(tensors, metadata={METADATA_KEY: json.dumps(self.metadata, ensure_ascii=False)})
        with atomic_path(refuse_existing(path, overwrite)) as tmp:
            tmp.write_bytes(data)
        return Path(path).expanduser()

    @classmethod
    def load(cls, path: str | Path, tokenizer: Any = None) -> CalibrationSet:
        """Read a file written by :meth:`save`; with ``tokenizer``, refuse one made with another tokenizer."""
        from safetensors import safe_open

        path = Path(path).expanduser()
        if not path.is_file():
            raise EvopError(f"calibration file {path} not found; make one with `evop-hub calibrate`")
        try:
            with safe_open(path, framework="pt") as f:
                raw = (f.metadata() or {}).get(METADATA_KEY)
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise EvopError(
                f"{path} is not a readable safetensors file ({exc}); make one with `evop-hub calibrate`"
            ) from None
        if raw is None or "input_ids" not in tensors:
            raise EvopError(f"{path} is not an evop-hub calibration file; make one with `evop-hub calibrate`")
        metadata = _metadata(path, raw)
        calibration = cls(tensors.pop("input_ids"), metadata, tensors)
        if tokenizer is not None:
            calibration.check_tokenizer(tokenizer, where=str(path))
        problem = _ids_problem(calibration.input_ids)
        if problem:
            raise EvopError(f"{path} is not a usable calibration set: {problem}; make one with `evop-hub calibrate`")
        calibration.input_ids = calibration.input_ids.long()
        return calibration

    def check_tokenizer(self, tokenizer: Any, where: str = "the calibration set") -> None:
        expected, actual = self.metadata.get("tokenizer_fingerprint"), tokenizer_fingerprint(tokenizer)
        if expected != actual:
            raise EvopError(
                f"{where} was made with tokenizer {self.metadata.get('tokenizer')!r} (fingerprint {expected}), "
                f"not with this model's {getattr(tokenizer, 'name_or_path', '?')!r} ({actual}); "
                f"run `evop-hub calibrate` again with this model"
            )

    def check_vocab(self, vocab_size: int, where: str = "the calibration set") -> None:
        """Refuse ids the model cannot embed (a hand-edited file): they would fail deep inside its first layer."""
        high = int(self.input_ids.max())
        if high >= vocab_size:
            raise EvopError(
                f"{where} holds token id {high}, but the model embeds only ids 0..{vocab_size - 1}; "
                "make one with `evop-hub calibrate` for this model"
            )

    def summary(self) -> dict[str, Any]:
        """What the model card and ``evop_pruning.json`` keep: provenance, cluster sizes, snippets, top terms."""
        hidden = {"format", "version", "samples", "source", "tokenizer_fingerprint"}
        info = {key: value for key, value in self.metadata.items() if key not in hidden}
        if "clusters" in info:
            info["snippets"] = [c["snippets"][0] if c["snippets"] else "" for c in info["clusters"]]
        return info

    def plot(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """The paper's Fig. 1b: chunk embeddings in 2-D, coloured by cluster."""
        import matplotlib
        from matplotlib.figure import Figure  # no pyplot: leave the caller's backend and global state alone

        if "chunk_xy" not in self.arrays:
            raise EvopError(
                f"a calibration set drawn with sampler {self.metadata.get('sampler')!r} has no clusters to plot; use --sampler ccds"
            )
        meta = self.metadata
        xy, labels = self.arrays["chunk_xy"].numpy(), self.arrays["chunk_cluster"].numpy()
        colours = matplotlib.colormaps["tab10" if meta["k"] <= 10 else "tab20"]
        fig = Figure(figsize=(8, 6.5), dpi=120, layout="constrained")
        ax = fig.add_subplot()
        for j, info in enumerate(meta["clusters"]):
            mask = labels == j
            terms = ", ".join(info["top_terms"][:3])
            ax.scatter(
                xy[mask, 0],
                xy[mask, 1],
                s=5,
                alpha=0.6,
                color=colours(j % colours.N),
                label=f"{j} ({info['size']}): {terms}",
            )
        ax.legend(fontsize=7, markerscale=3, title="cluster (chunks): top terms", title_fontsize=7)
        title = f"{meta['corpus']}:{meta['split']}, {meta['chunks']} chunks of {meta['sentences_per_chunk']} sentences, k={meta['k']}"
        subtitle = f"embedder {meta['embedder']}; {meta['projection']} projection"
        if "nmi" in meta:
            subtitle += f"; NMI vs topics {meta['nmi']['clusters']:.3f} (random, same sizes: {meta['nmi']['random_same_sizes']:.3f})"
        ax.set_title(f"{title}\n{subtitle}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        with atomic_path(refuse_existing(path, overwrite)) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".").lower() or "png")
        return Path(path).expanduser()
