"""Benchmark: how fast CCDS embeds sentence chunks on this machine, and what the clusters are worth.

    .venv/bin/python tests/benchmarks/bench_embed.py [--corpus wiki-leads:valid] [--chunks 1024]

Embedding is the one slow step of `evop-hub calibrate` (splitting, KMeans and sampling take
seconds), so chunks/s tells a user how long a corpus takes before the embedding cache helps.
NMI against wiki-leads' topic labels, next to random clusters of the same sizes, shows the
clusters follow topics. Prints a Markdown report (tests/benchmarks/bench_embed.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time

import numpy as np
import torch

from evop_hub.calibration import DEFAULT_EMBEDDER, load_embedder, split_chunks, topic_nmi
from evop_hub.calibration.ccds import cluster
from evop_hub.data import load_corpus
from evop_hub.record.provenance import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="wiki-leads:valid")
    parser.add_argument("--chunks", type=int, default=512, help="embed the first N chunks")
    parser.add_argument("--sentences-per-chunk", type=int, default=4)
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    parser.add_argument("--clusters", default="5,12", help="k values for the NMI check (needs topic labels)")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    corpus = load_corpus(args.corpus)
    chunks = split_chunks(corpus.documents, args.sentences_per_chunk)[: args.chunks]
    texts = [c.text for c in chunks]
    started = time.perf_counter()
    model = load_embedder(args.embedder, device="cpu")
    load_s = time.perf_counter() - started
    wordpieces = [len(ids) for ids in model.tokenizer(texts)["input_ids"]]
    model.encode(texts[:32], batch_size=32)  # warm-up: first-call allocations are not throughput

    rows = []
    for batch_size in map(int, args.batch_sizes.split(",")):
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            embeddings = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
            times.append(time.perf_counter() - started)
        best = min(times)
        rows.append(
            f"| {batch_size} | {len(texts)} | {best:.1f} | {len(texts) / best:.1f} | {len(texts) / statistics.median(times):.1f} |"
        )

    command = shlex.join([".venv/bin/python", "tests/benchmarks/bench_embed.py", *sys.argv[1:]])
    print("# Chunk embedding speed (CCDS)\n")
    print(f"Command: `{command}`\n")
    print(
        f"- Hardware: {cpu_name()}, {os.cpu_count()} logical CPUs visible, torch threads {torch.get_num_threads()}, no GPU"
    )
    print(f"- Load average (1 min) before the run: {load_before:.2f} (the CPUs are shared; treat numbers as a floor)")
    print(f"- Software: Python {platform.python_version()}, torch {torch.__version__}")
    print(f"- Embedder: {args.embedder} (max {model.max_seq_length} wordpieces), loaded in {load_s:.1f} s")
    print(
        f"- Corpus: {corpus.name}:{corpus.split} ({corpus.form}), first {len(texts)} chunks of {args.sentences_per_chunk} sentences; "
        f"wordpieces per chunk mean {np.mean(wordpieces):.0f}, max {max(wordpieces)} (truncated above {model.max_seq_length})\n"
    )
    print("| batch size | chunks | best time (s) | chunks/s (best) | chunks/s (median) |")
    print("|---:|---:|---:|---:|---:|")
    print("\n".join(rows))

    topics = [c.label for c in chunks]
    if any(t is not None for t in topics):
        print(
            f"\n## Do the clusters follow topics? NMI against {corpus.name} topic labels ({len(set(topics))} topics)\n"
        )
        print("| k | NMI clusters | NMI random, same sizes (mean of 10) |")
        print("|---:|---:|---:|")
        for k in map(int, args.clusters.split(",")):
            labels, _ = cluster(embeddings, k, seed=0)
            nmi = topic_nmi(topics, labels, seed=0)
            print(f"| {k} | {nmi['clusters']:.3f} | {nmi['random_same_sizes']:.3f} |")


if __name__ == "__main__":
    main()
