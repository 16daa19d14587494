"""Output directories written by the real evop_hub.models.save from tiny random Llamas."""

from __future__ import annotations

import hashlib
from pathlib import Path

import huggingface_hub
import pytest

from ..tiny import WORDS, tiny_tokenizer  # noqa: F401  (re-exported for the hub tests)
from ..tiny import tiny_llama as shared_tiny_llama

FAKE_TOKEN = "hf_FAKEtokenEvopHubTests0123456789abcdef"
USER = "evop-tester"


def tiny_llama(layers: int = 4, seed: int = 0):
    return shared_tiny_llama(
        layers,
        seed,
        vocab_size=len(WORDS) + 2,
        initializer_range=0.5,  # large weights: greedy continuations vary with the prompt
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=1,
    )


# Records as the other evop_hub modules write them: record.record_results (perplexity: dense kept),
# TasksResult.to_dict(), CalibrationSet.summary(), SearchResult.summary(); speed is measured.
PERPLEXITY = {
    "wikitext2:test": {
        "dense": 21.5,
        "pruned": 25.25,
        "corpus": "wikitext2",
        "split": "test",
        "form": "wikitext-2-raw-v1",
        "seq_len": 2048,
        "windows": 140,
        "tokens": 286_000,
        "nll": 3.2288,
        "ppl": 25.25,
    },
    "c4:valid": {
        "dense": 30.0,
        "pruned": 36.5,
        "corpus": "c4",
        "split": "valid",
        "form": "c4-en",
        "seq_len": 2048,
        "windows": 256,
        "tokens": 524_000,
        "nll": 3.5973,
        "ppl": 36.5,
    },
}
TASKS = {
    "scores": {
        "arc_easy": {"acc": 0.58, "acc_stderr": 0.01, "acc_norm": 0.55, "acc_norm_stderr": 0.01},
        "winogrande": {"acc": 0.52, "acc_stderr": 0.014},
    },
    "samples": {"arc_easy": 2376, "winogrande": 1267},
    "mean": {"acc": 0.55, "acc_norm": 0.55},
    "num_fewshot": 0,
    "limit": None,
    "lm_eval_version": "0.4.9",
}
CALIBRATION = {
    "corpus": "wikitext2",
    "split": "train",
    "form": "wikitext-2-raw-v1",
    "license": "CC BY-SA 3.0",
    "sampler": "ccds",
    "seed": 0,
    "k": 2,
    "n": 2,
    "seq_len": 64,
    "tokenizer": "tiny",
    "embedder": "sentence-transformers/all-MiniLM-L6-v2",
    "sentences_per_chunk": 4,
    "chunks": 10,
    "projection": "PCA",
    "cluster_sizes": [7, 3],
    "clusters": [
        {"size": 7, "top_terms": ["cat", "mat"], "snippets": ["the cat sat on the mat", "a cat ran"]},
        {"size": 3, "top_terms": ["rug", "big"], "snippets": ["who ran under the big rug"]},
    ],
    "snippets": ["the cat sat on the mat", "who ran under the big rug"],
}
SEARCH = {
    "mask": [1, 0, 1, 1],
    "loss": 3.2101,
    "dense_loss": 3.0012,
    "method": "evop",
    "k": 1,
    "config": {"method": "evop", "seed": 0, "population": 32, "generations": 40},
    "stats": {
        "evaluations": 37,
        "memo_hits": 80,
        "early_stops": 4,
        "block_forwards": 120,
        "prefix_hits": 9,
        "blocks_saved": 30,
    },
    "seconds": 12.5,
    "steps": 9,
    "resumed": False,
}


def speed_result() -> dict:
    """A SpeedResult as evop_hub.evaluate.speed stores it (fixed numbers: measuring takes seconds)."""
    from evop_hub.evaluate.speed import ModelSpeed, SpeedConfig, SpeedResult

    dense = ModelSpeed(38_560, 4, 0.02, 0.30, 0.32, 400.0, 420.0, 8_000_000)
    pruned = ModelSpeed(29_280, 3, 0.015, 0.225, 0.24, 533.3, 560.0, 7_000_000)
    speedup = {"prefill": 0.02 / 0.015, "decode": 0.30 / 0.225, "latency": 0.32 / 0.24}
    result = SpeedResult(SpeedConfig(), "cpu", "test CPU", "time.perf_counter", "VmHWM", dense, pruned, speedup, 0.241)
    return result.to_dict()


@pytest.fixture
def make_output(tmp_path, monkeypatch):
    """Build ``tmp/base`` (dense) and ``tmp/<name>`` (pruned with evop_hub.models.drop + save).

    ``hub_base`` puts a Hub id in the record (source_model and source_hub_id) instead of
    the local base directory, as `evop-hub prune org/model` would.
    """
    from evop_hub.models import LoadedModel, SourceInfo, drop, save

    def build(name="out", dropped=(1,), hub_base=None, source_format="transformers", license="llama2", extras=True):
        base_dir = tmp_path / "base"
        if not base_dir.exists():
            tiny_llama().save_pretrained(base_dir)
            tiny_tokenizer().save_pretrained(base_dir)
        source_name = hub_base or str(base_dir)
        source = SourceInfo(source_name, str(base_dir), hub_id=hub_base, format=source_format, license=license)
        loaded = LoadedModel(tiny_llama(), tiny_tokenizer(), source)
        drop(loaded, list(dropped))
        loaded.record.method = "evop"
        if extras:
            loaded.record.scores = {"perplexity": PERPLEXITY, "tasks": TASKS, "speed": speed_result()}
            loaded.record.calibration = CALIBRATION
            loaded.record.search = SEARCH
        with monkeypatch.context() as offline:  # the card written by save must not reach out
            offline.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
            out = save(loaded, tmp_path / name, command=f"evop-hub prune {source_name} --output {name}")
        state = out / ".evop"
        state.mkdir(exist_ok=True)
        (state / "search_state.json").write_text('{"private": "run state, never published"}')
        return out

    return build


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path``: to prove a failed command changed nothing."""
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }
