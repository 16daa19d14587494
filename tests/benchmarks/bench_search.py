"""Search cost: evop-hub's evaluator against the reference implementations' way, in one run.

The reference way (SLEB's and EvoP's research code): for every candidate pattern, one full
Hugging Face forward of the model with those blocks removed, one calibration sample at a
time, nothing reused. Both sides run the *same* search method with the same seed behind
the same ``Evaluator`` interface, so they visit the same patterns and must return the same
answer; only the cost differs. Block calls are counted by forward hooks on the decoder
blocks (not by the evaluator's own counter), and wall time by perf_counter.

    .venv/bin/python tests/benchmarks/bench_search.py --blocks 30 --k 6 --samples 4 --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass, field

import torch

import evop_hub
from evop_hub.models import find_blocks
from evop_hub.search import Evaluator, EvaluatorStats, Fitness, SearchConfig, SerialEvaluator, run_search


@dataclass
class ReferenceEvaluator(Evaluator):
    """One full forward per candidate and sample, as the research scripts do."""

    model: torch.nn.Module
    input_ids: torch.Tensor
    stats: EvaluatorStats = field(default_factory=EvaluatorStats)

    def __post_init__(self):
        self.blocks = find_blocks(self.model)
        self.parent, self.attr = self.model.model, "layers"
        self.num_blocks = len(self.blocks)

    def evaluate(self, masks, survivors=None):
        fits = []
        for mask in masks:
            setattr(self.parent, self.attr, torch.nn.ModuleList(b for i, b in enumerate(self.blocks) if i not in mask))
            self.model.config.num_hidden_layers = self.num_blocks - len(mask)
            total = 0.0
            with torch.no_grad():
                for row in self.input_ids:
                    out = self.model(row[None], labels=row[None], use_cache=False)
                    total += float(out.loss) * (row.numel() - 1)
            tokens = self.input_ids.shape[0] * (self.input_ids.shape[1] - 1)
            fits.append(Fitness(tuple(mask), total, tokens, len(self.input_ids), True))
            self.stats.evaluations += 1
        setattr(self.parent, self.attr, self.blocks)
        self.model.config.num_hidden_layers = self.num_blocks
        return fits

    def layer_cosines(self, distance):
        return SerialEvaluator(self.model, self.input_ids).layer_cosines(distance)


def count_block_calls(model):
    counter = {"calls": 0}

    def hook(*_):
        counter["calls"] += 1

    handles = [b.register_forward_hook(hook) for b in find_blocks(model)]
    return counter, handles


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=30, help="use the first N blocks of SmolLM2-135M")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--method", default="evop")
    parser.add_argument("--data", default="../shared/data/wikitext-2/valid.txt")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = evop_hub.load("smollm2-135m")
    if args.blocks < 30:
        evop_hub.drop(loaded, range(args.blocks, 30))
    ids = loaded.tokenizer(open(args.data).read()[:400_000], return_tensors="pt").input_ids[0]
    starts = torch.randint(0, len(ids) - args.seq_len, (args.samples,), generator=torch.Generator().manual_seed(0))
    calibration = torch.stack([ids[s : s + args.seq_len] for s in starts])
    config = SearchConfig(method=args.method, population=args.population, generations=args.generations,
                          seed_sleb=False)
    rows = {}
    for name, make in (("evop-hub", lambda: SerialEvaluator(loaded.model, calibration)),
                       ("reference", lambda: ReferenceEvaluator(loaded.model, calibration))):
        counter, handles = count_block_calls(loaded.model)
        start = time.perf_counter()
        result = run_search(make(), args.k, config, progress=False)
        seconds = time.perf_counter() - start
        for h in handles:
            h.remove()
        rows[name] = {"mask": list(result.mask), "loss": result.loss, "block_calls": counter["calls"],
                      "seconds": round(seconds, 2), "masks_requested": result.stats["evaluations"]}
        print(name, json.dumps(rows[name]), flush=True)
    ours, ref = rows["evop-hub"], rows["reference"]
    summary = {
        "same_answer": ours["mask"] == ref["mask"],
        "block_call_ratio": round(ref["block_calls"] / ours["block_calls"], 2),
        "wall_time_ratio": round(ref["seconds"] / ours["seconds"], 2),
        "args": vars(args),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
