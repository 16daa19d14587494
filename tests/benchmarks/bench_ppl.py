"""Throughput of `evop_hub.evaluate.perplexity` against a plain Hugging Face loop, in one run.

Both score the same windows of WikiText-2 test (../shared/data/wikitext-2) with the same
model; the plain loop is the usual `model(ids).logits` + float32 cross-entropy, which
materialises the full float32 logits. The two alternate ``--repeats`` times and the best
time of each counts, so load from other processes skews the ratio less. Prints tokens/s of
each, their ratio, and both NLLs (equal up to float32 summation order).

    .venv/bin/python tests/benchmarks/bench_ppl.py [--model smollm2-135m] [--windows 2] [--seq-len 2048] [--repeats 2]
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from evop_hub.data import load_corpus
from evop_hub.evaluate import PerplexityConfig, perplexity
from evop_hub.evaluate.perplexity import make_windows
from evop_hub.models import load

WIKITEXT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext-2"


@torch.no_grad()
def plain_loop(model, windows: torch.Tensor) -> tuple[float, int]:
    total, count = 0.0, 0
    for window in windows:
        ids = window[None]
        logits = model(ids).logits.float()
        total += F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return total, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    loaded = load(args.model)
    corpus = load_corpus("wikitext2:test", data_dir=WIKITEXT)
    config = PerplexityConfig(seq_len=args.seq_len, max_windows=args.windows)
    windows = make_windows(loaded.tokenizer, corpus, args.seq_len, args.windows)
    torch.set_grad_enabled(False)
    perplexity(loaded.model, loaded.tokenizer, corpus, PerplexityConfig(seq_len=64, max_windows=1))  # warm-up

    ours_s = plain_s = math.inf
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = perplexity(loaded.model, loaded.tokenizer, corpus, config)
        ours_s = min(ours_s, time.perf_counter() - start)
        start = time.perf_counter()
        total, count = plain_loop(loaded.model, windows)
        plain_s = min(plain_s, time.perf_counter() - start)

    print(f"model {args.model} ({loaded.model.dtype}), corpus {corpus.name}:{corpus.split} ({corpus.form})")
    print(
        f"{ours.windows} windows x {ours.seq_len} tokens, {ours.tokens} scored tokens; "
        f"best of {args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    for label, tokens, seconds, nll in (
        ("evop-hub ppl ", ours.tokens, ours_s, ours.nll),
        ("plain HF loop", count, plain_s, total / count),
    ):
        print(f"{label}: {tokens / seconds:8.1f} tokens/s  ({seconds:.1f} s)  nll {nll:.6f}  ppl {math.exp(nll):.4f}")
    print(f"ratio (evop-hub / plain): {plain_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
