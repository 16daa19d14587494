"""The held-out oracle: which k-block pattern has the lowest held-out perplexity, over every pattern.

``bench_quality.py`` compares searches that see only the calibration set. When they tie, is that
because they all found the pattern that is best on held-out text too (so no calibration-driven search
can win), or because they all miss it the same way? This scores every C(m, k) pattern on the held-out
windows of ``bench_quality``'s protocol, exactly, with the search evaluator (early termination keeps the
``--top`` lowest exact), and ranks the patterns a ``bench_quality`` run chose among them.

The full scan is ``evop-hub prune --method exhaustive`` on the held-out windows: it checkpoints every
``--chunk`` patterns into ``--state``, and the same command run again resumes there, so a scan longer
than one device call (the 18,564 patterns of k = 6 on Gemma 3) is finished by calling it again.

The held-out windows of all corpora go through one evaluator, each corpus's repeated up to a common
count, so that the mean NLL over all their tokens equals ``bench_quality``'s held-out mean (the mean
over corpora of the per-corpus NLL).

    cd tests/benchmarks && python3 bench_heldout_oracle.py --model gemma3-270m --ks 4,6 --radius 1 \
        --runs bench_quality_gpu_gemma3.json --data-dir ../../.gpudata/wikitext-2 --out $OUT/heldout_oracle_gemma3

``--radius R`` scores only the patterns within R swaps of a chosen one. Without it every pattern is
scored: on Gemma 3 270M (262k-token vocabulary, float32 loss) an H100 scans about 8 patterns a second, so
k = 4's 3,060 took one device call (heldout_oracle_gemma3_full.md) and k = 6's 18,564 take several; their
checkpoint is tracked (heldout_oracle_gemma3_full.state, see gpu_prepare.sh).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from bench_quality import TIERS, hardware, held_out, load_model, write

from evop_hub.search import PAPER_SEARCH, SearchConfig, SerialEvaluator, run_search


def equal_weights(windows: dict[str, torch.Tensor]) -> torch.Tensor:
    """All corpora's windows in one batch, each corpus's repeated up to a common count: the token mean then
    weights corpora equally (duplicating windows leaves a corpus's own mean unchanged)."""
    lengths = {ids.shape[1] for ids in windows.values()}
    if len(lengths) != 1:
        raise SystemExit(
            f"corpora differ in window length: { {spec: tuple(ids.shape) for spec, ids in windows.items()} }"
        )
    common = math.lcm(*(ids.shape[0] for ids in windows.values()))
    return torch.cat([ids.repeat(common // ids.shape[0], 1) for ids in windows.values()])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--ks", type=lambda t: [int(x) for x in t.split(",")], default=[4, 6])
    parser.add_argument(
        "--tier", choices=TIERS, default="gpu", help="bench_quality tier whose held-out protocol to use"
    )
    parser.add_argument("--runs", help="a bench_quality JSON whose chosen patterns to rank")
    parser.add_argument("--top", type=int, default=20, help="patterns scored exactly")
    parser.add_argument("--radius", type=int, help="score only the patterns within this many swaps of a --runs pattern")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=128, help="patterns of the full scan per checkpoint")
    parser.add_argument("--state", help="the full scan's checkpoints, where a rerun resumes (default: OUT.state)")
    parser.add_argument("--heldout-windows", type=int, help="override the tier's windows per corpus")
    parser.add_argument("--heldout-seq-len", type=int, help="override the tier's window length")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    overrides = {name: getattr(args, name) for name in ("data_dir", "heldout_windows", "heldout_seq_len")}
    protocol = replace(TIERS[args.tier], **{name: value for name, value in overrides.items() if value is not None})
    start = time.perf_counter()
    loaded = load_model(args.model, protocol)
    heldout = held_out(loaded, protocol)
    counts = {spec: list(ids.shape) for spec, ids in heldout.windows.items()}  # as JSON gives them back
    windows = equal_weights(heldout.windows).to(protocol.device)
    evaluator = SerialEvaluator(loaded.model, windows, batch_size=args.batch_size, cache_bytes=8 << 30)
    chosen = {}
    if args.runs:
        model = json.loads(Path(args.runs).read_text())["models"][0]
        for cell in model["cells"]:
            for run, r in cell["runs"].items():
                chosen.setdefault(cell["k"], {}).setdefault(tuple(r["mask"]), []).append(f"{run} seed {cell['seed']}")
    blocks = evaluator.num_blocks
    command = shlex.join(["python3", sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    result = {
        "model": args.model,
        "command": command,
        "hardware": hardware(),
        "windows": counts,
        "dense": evaluator.loss(()),
        "ks": {},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for k in args.ks:
        masks = list(itertools.combinations(range(blocks), k))
        scan = None
        if args.radius is not None:
            masks = sorted({m for m in masks for c in chosen.get(k, {}) if len(set(m) - set(c)) <= args.radius})
        else:  # the scan finds the best exactly; the call below then completes whatever may be in the top
            # the settings its tracked checkpoint was made with (an NLL scan, SLEB-seeded defaults of the time)
            config = SearchConfig(**PAPER_SEARCH, method="exhaustive", chunk=args.chunk, exhaustive_limit=len(masks))
            scan = run_search(
                evaluator, k, config, state_dir=Path(args.state or args.out + ".state") / f"k{k}", resume=True
            )
        fits = evaluator.evaluate(masks, survivors=args.top)
        exact = sorted((f for f in fits if f.complete), key=lambda f: f.loss)[: args.top]
        bar = exact[-1].loss
        ranks = {}
        for mask, runs in chosen.get(k, {}).items():
            loss = evaluator.loss(mask)  # completes it if it was stopped early
            better = sum(f.loss < loss for f in exact) if loss <= bar else None
            ranks[str(list(mask))] = {
                "runs": runs,
                "heldout_mean": loss,
                "rank": None if better is None else better + 1,
            }
        result["ks"][k] = {
            "patterns": len(masks),
            "radius": args.radius,
            "scan": scan and {"seconds": scan.seconds, "resumed": scan.resumed},
            "top": [{"mask": list(f.mask), "heldout_mean": f.loss} for f in exact],
            "chosen": ranks,
        }
        print(json.dumps({"k": k, "best": result["ks"][k]["top"][0], "chosen": ranks}), flush=True)
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["evaluator"] = evaluator.stats.as_dict()
        write(Path(args.out + ".json"), json.dumps(result, indent=1))  # after each k: a cut-off run keeps what it did
        write(Path(args.out + ".md"), markdown(args.model, result, args.top))
    return result


def markdown(model: str, result: dict, top: int) -> str:
    lines = [
        f"# Held-out oracle: {model}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Hardware: {result['hardware']}. Wall time {result['seconds']:.0f} s. Held-out windows per corpus "
        f"(windows, tokens), each corpus's repeated up to a common count: {result['windows']}. "
        f"Dense held-out mean log-ppl {result['dense']:.4f}.",
        "",
    ]
    for k, row in result["ks"].items():
        scope = "all of them" if row["radius"] is None else f"those within {row['radius']} swap(s) of a chosen pattern"
        if row.get("scan"):  # absent from runs made before the scan could resume
            scope += (
                f", scanned in {row['scan']['seconds']:.0f} s{' over several calls' if row['scan']['resumed'] else ''}"
            )
        lines += [
            f"## k = {k} ({row['patterns']:,} patterns scored: {scope})",
            "",
            "| rank | mask | held-out mean log-ppl |",
            "|---|---|---|",
        ]
        lines += [f"| {i + 1} | {t['mask']} | {t['heldout_mean']:.4f} |" for i, t in enumerate(row["top"])]
        lines += [
            "",
            "Patterns chosen in the `--runs` benchmark:",
            "",
            "| mask | held-out | rank | chosen by |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {mask} | {c['heldout_mean']:.4f} | {c['rank'] or f'> {top}'} | {', '.join(c['runs'])} |"
            for mask, c in row["chosen"].items()
        ]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
