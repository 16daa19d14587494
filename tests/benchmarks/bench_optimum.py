"""Does `evop` (without SLEB seeding) reach the exhaustive optimum, and at what cost?

Real weights small enough for a CPU: the first 12 blocks of SmolLM2-135M, k = 3, a few WikiText-2
calibration tokens. Cost is block calls (the evaluator's counter) as a fraction of evaluating all
C(12,3) patterns fully, the naive exhaustive cost.

    .venv/bin/python tests/benchmarks/bench_optimum.py --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

import evop_hub
from evop_hub.search import PAPER_SEARCH, SearchConfig, SerialEvaluator, run_search
from evop_hub.search.methods import swap_neighbours


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument(
        "--local-search",
        action=argparse.BooleanOptionalAction,
        default=SearchConfig().local_search,
        help="end with the swap local search (--no-local-search: the paper's EPPS alone)",
    )
    parser.add_argument("--data", default="../shared/data/wikitext-2/valid.txt")
    args = parser.parse_args()
    loaded = evop_hub.load("smollm2-135m")
    evop_hub.drop(loaded, range(args.blocks, 30))
    ids = loaded.tokenizer(open(args.data).read()[:100_000], return_tensors="pt").input_ids[0]
    starts = torch.randint(0, len(ids) - args.seq_len, (args.samples,), generator=torch.Generator().manual_seed(0))
    calibration = torch.stack([ids[s : s + args.seq_len] for s in starts])
    naive = math.comb(args.blocks, args.k) * (args.blocks - args.k) * args.samples

    def run(config):
        evaluator = SerialEvaluator(loaded.model, calibration)
        start = time.perf_counter()
        result = run_search(evaluator, args.k, config, progress=False)
        return result, evaluator.stats, time.perf_counter() - start

    exhaustive, stats, seconds = run(SearchConfig(**PAPER_SEARCH, method="exhaustive"))
    print(
        json.dumps(
            {
                "method": "exhaustive",
                "mask": list(exhaustive.mask),
                "loss": round(exhaustive.loss, 6),
                "block_calls": stats.block_forwards,
                "share_of_naive": round(stats.block_forwards / naive, 3),
                "seconds": round(seconds, 1),
            }
        ),
        flush=True,
    )
    # A lower bound for any search that ends, as ours does, on a pattern no single swap improves: checking
    # that of the optimum alone, on a cold evaluator (computing the optimum, then its k x (m - k) neighbours racing it).
    evaluator = SerialEvaluator(loaded.model, calibration)
    evaluator.evaluate([exhaustive.mask, *swap_neighbours(exhaustive.mask, args.blocks)], survivors=1)
    print(
        json.dumps(
            {
                "method": "swap_check_of_optimum",
                "masks": evaluator.stats.evaluations,
                "block_calls": evaluator.stats.block_forwards,
                "share_of_naive": round(evaluator.stats.block_forwards / naive, 3),
            }
        ),
        flush=True,
    )
    # The prior the first population is drawn from: blocks from most to least redundant (1 - cos(input, output)).
    cosines = SerialEvaluator(loaded.model, calibration).layer_cosines(1)
    print(json.dumps({"redundancy_rank": sorted(range(args.blocks), key=lambda i: 1 - cosines[i])}), flush=True)
    for seed in args.seeds:
        config = SearchConfig(
            **{**PAPER_SEARCH, "seed_sleb": False}, method="evop", seed=seed, local_search=args.local_search
        )
        result, stats, seconds = run(config)
        # When the search first held the optimum (trace rows carry the evaluator's counters at each step's end);
        # what follows it is the search certifying it: generations without improvement, then the swap local search.
        reached = next((row for row in result.trace if row.get("best_mask") == list(exhaustive.mask)), None)
        when = (
            {}
            if reached is None
            else {
                "reached_at_step": reached["step"],
                "reached_masks": reached["evaluations"],
                "reached_block_calls": reached["block_forwards"],
                "reached_share_of_naive": round(reached["block_forwards"] / naive, 3),
            }
        )
        print(
            json.dumps(
                {
                    "method": "evop",
                    "seed": seed,
                    "mask": list(result.mask),
                    "loss": round(result.loss, 6),
                    "optimum": result.mask == exhaustive.mask,
                    **when,
                    "masks": stats.evaluations,
                    "block_calls": stats.block_forwards,
                    "share_of_naive": round(stats.block_forwards / naive, 3),
                    "seconds": round(seconds, 1),
                }
            ),
            flush=True,
        )
    print(
        json.dumps(
            {
                "args": vars(args),
                "naive_block_calls": naive,
                "torch": torch.__version__,
                "hardware": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            }
        )
    )


if __name__ == "__main__":
    main()
