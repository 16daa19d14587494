"""Does a short prefix of every calibration sample rank pruning patterns as the full samples do?

Staged selection (``evop_hub.search.StagedEvaluator``) screens candidates on the first TOKENS positions
of every calibration sample before the full evaluation. This scores random k-block patterns (plus
the one-shot criteria's) with the KL fitness on each prefix length and on the whole samples, and
prints the Spearman correlation of each prefix's ranking with the full ranking, and whether the
full best pattern survives a screen keeping the best KEEP of the prefix's ranking.

    OMP_NUM_THREADS=2 python3 tests/benchmarks/bench_stages.py --samples 8 --seq-len 1024 --masks 24 \
        --prefixes 32,64,128,256 --out tests/benchmarks/bench_stages_cpu
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path

from bench_quality import WIKITEXT, hardware, write
from bench_robust import MIXTURE
from scipy.stats import spearmanr

import evop_hub
from evop_hub.calibration import CalibrationConfig, calibrate
from evop_hub.models import LoadConfig
from evop_hub.search import SearchConfig, SerialEvaluator, run_search


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--masks", type=int, default=24)
    parser.add_argument("--prefixes", default="32,64,128,256")
    parser.add_argument("--keep", type=int, default=8)
    parser.add_argument("--corpus", default=MIXTURE, help="calibration text (default: bench_robust's mixture)")
    parser.add_argument("--data-dir", default=str(WIKITEXT))
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    loaded = evop_hub.load(args.model, LoadConfig(dtype="float32"))
    ids = calibrate(
        args.corpus,
        loaded.tokenizer,
        CalibrationConfig(clusters=args.samples, seq_len=args.seq_len, data_dir=args.data_dir),
    ).input_ids
    full = SerialEvaluator(loaded.model, ids, batch_size=1, fitness="kl")
    m = full.num_blocks
    masks = {tuple(sorted(random.Random(i).sample(range(m), args.k))) for i in range(args.masks)}
    for method in ("angular", "shortgpt"):
        masks.add(run_search(full, args.k, SearchConfig(method=method, stages=""), progress=False).mask)
    masks = sorted(masks)
    truth = [f.loss for f in full.evaluate(masks)]
    best = masks[min(range(len(masks)), key=truth.__getitem__)]
    result = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "hardware": hardware(),
        "corpus": args.corpus,
        "k": args.k,
        "samples": args.samples,
        "seq_len": args.seq_len,
        "masks": len(masks),
        "keep": args.keep,
        "rows": [],
    }
    for tokens in map(int, args.prefixes.split(",")):  # written after every prefix: a cut-off run keeps its rows
        prefix = SerialEvaluator(loaded.model, ids[:, :tokens], batch_size=args.samples, fitness="kl")
        scores = [f.loss for f in prefix.evaluate(masks)]
        kept = sorted(masks, key=lambda mask: scores[masks.index(mask)])[: args.keep]
        result["rows"].append(
            {"tokens": tokens, "spearman": spearmanr(scores, truth).statistic, "best_kept": best in kept}
        )
        print(json.dumps(result["rows"][-1]), flush=True)
        result["seconds"] = round(time.perf_counter() - start, 1)
        save(args, result)
    return result


def save(args: argparse.Namespace, result: dict) -> None:
    lines = [
        f"# Screening prefixes against the full KL ranking ({args.model}, k = {args.k})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Hardware: {result['hardware']}. {result['seconds']:.0f} s.",
        "",
        f"{result['masks']} patterns ({args.masks} random draws, angular's, ShortGPT's), KL fitness on CCDS over "
        f"`{result['corpus']}`, {args.samples} x {args.seq_len} tokens.",
        "",
        f"| prefix tokens | Spearman with full | full best in the prefix's top {args.keep} |",
        "|---|---|---|",
    ]
    lines += [f"| {r['tokens']} | {r['spearman']:.3f} | {'yes' if r['best_kept'] else 'no'} |" for r in result["rows"]]
    write(Path(args.out + ".json"), json.dumps(result, indent=1))
    write(Path(args.out + ".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
