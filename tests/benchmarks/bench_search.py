"""Search cost: evop-hub's evaluator against the reference implementations' way, in one run.

The reference way (SLEB's and EvoP's research code): for every candidate pattern, one full
Hugging Face forward of the model with those blocks removed, one calibration sample at a
time, nothing reused. Both sides run the *same* search method with the same seed behind
the same ``Evaluator`` interface, so they visit the same patterns and must return the same
answer; only the cost differs. Forward hooks on the decoder blocks (not the evaluator's own
counter) count block passes, one block over one sample, which is the work compared, and module
calls, which evop-hub makes fewer of by stacking several masks' states into one call. Wall time
comes from perf_counter.

    .venv/bin/python tests/benchmarks/bench_search.py --blocks 30 --k 6 --samples 4 --seq-len 128

GPU tier (``--model llama-2-13b-shape --device cuda``): random weights in Llama-2-13B's shapes,
bfloat16, 5 x 2048 random calibration tokens, the *default* search of ``evop-hub prune``
(20 %: 8 of 40 blocks). The reference GA (EvoP's code: population 50, 100 generations, one
full forward per candidate) would take hours, so its time is the measured time of one full
forward with its loss over the 5 samples (median of several, batch 1 as the scripts run it)
times 5,000: an extrapolation, said as such in the output. Also printed: tokens/s of the
evaluator's block-by-block pass of the dense model, loss included, against that forward.
``--narrow`` runs the same search on 40 blocks 64 wide on CPU, to count the passes it asks for.

    python tests/benchmarks/bench_search.py --model llama-2-13b-shape --device cuda --samples 5 --seq-len 2048
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import torch
import transformers
from bench_speed import LLAMA_2_13B

import evop_hub
from evop_hub.models import find_blocks
from evop_hub.scoring import BlockRunner, EvaluatorStats
from evop_hub.search import Evaluator, Fitness, SearchConfig, SerialEvaluator, run_search

NARROW = {"hidden_size": 64, "intermediate_size": 172, "num_attention_heads": 4, "num_key_value_heads": 4}


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
    """Forward hooks on the decoder blocks: module calls, and block-sample passes (the sequences each call
    carried: evop-hub stacks several masks' states into one call, the reference runs one sample per call).

    While the block runner records a batch's block arguments, the blocks are called with recorders in
    place of their forwards; only block 0 computes there, so only its calls count then."""
    counter = {"calls": 0, "passes": 0, "recording": False}
    blocks = find_blocks(model)

    def hook(module, args, kwargs, _output):
        if counter["recording"] and module is not blocks[0]:
            return
        counter["calls"] += 1
        counter["passes"] += (args[0] if args else kwargs["hidden_states"]).shape[0]

    prepare = BlockRunner.prepare

    def recording(self, input_ids):
        counter["recording"] = True
        try:
            return prepare(self, input_ids)
        finally:
            counter["recording"] = False

    BlockRunner.prepare = recording
    handles = [b.register_forward_hook(hook, with_kwargs=True) for b in blocks]
    return counter, [*handles, SimpleNamespace(remove=lambda: setattr(BlockRunner, "prepare", prepare))]


def prefix_bound(masks, num_blocks: int, samples: int) -> int:
    """Block passes that computing every one of ``masks`` fully costs with unlimited prefix reuse: one per
    distinct prefix of keep bits that ends in a kept block, per sample. Only early termination goes below it."""
    nodes = set()
    for mask in masks:
        keep = tuple(i not in mask for i in range(num_blocks))
        nodes.update(keep[: i + 1] for i in range(num_blocks) if keep[i])
    return len(nodes) * samples


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def gpu_tier(args) -> None:
    """The default search on a random-weight 13B shape against the reference GA's extrapolated cost."""
    torch.manual_seed(0)
    shape = {**LLAMA_2_13B, **(NARROW if args.narrow else {})}
    with torch.device(args.device):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.LlamaConfig(**shape), dtype=getattr(torch, args.dtype)
        ).eval()
    blocks = shape["num_hidden_layers"]
    calibration = torch.randint(
        0, shape["vocab_size"], (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0)
    ).to(args.device)
    defaults = evop_hub.PruneConfig()
    k = math.ceil(0.2 * blocks)

    def hf_forward():  # one candidate's evaluation the reference way: a forward with its loss, per sample
        with torch.no_grad():
            for row in calibration:
                model(row[None], labels=row[None], use_cache=False)

    # The evaluator's dense pass, block by block, with nothing to reuse (no prefix cache, memo cleared). The
    # block arguments of each batch are recorded once per run, at the warm-up, as in a search.
    dense = SerialEvaluator(model, calibration, cache_bytes=0)

    def our_pass():
        dense.memo.clear()
        dense.loss(())

    for _ in range(2):  # warm-up: kernels, allocator
        hf_forward(), our_pass()
    hf = sorted(timed(hf_forward, args.device) for _ in range(args.repeats))[args.repeats // 2]
    ours_pass = sorted(timed(our_pass, args.device) for _ in range(args.repeats))[args.repeats // 2]
    tokens = calibration.numel()
    print(
        json.dumps(
            {
                "full_forward_s": round(hf, 4),
                "hf_tokens_per_s": round(tokens / hf),
                "evaluator_dense_pass_s": round(ours_pass, 4),
                "evaluator_tokens_per_s": round(tokens / ours_pass),
                "evaluator_vs_hf_tokens_per_s": round(hf / ours_pass, 3),
            }
        ),
        flush=True,
    )

    counter, handles = count_block_calls(model)
    evaluator = SerialEvaluator(
        model, calibration, batch_size=defaults.batch_size, cache_bytes=int(args.cache_gib * (1 << 30))
    )
    found = {}

    def search():
        found["result"] = run_search(evaluator, k, defaults.search, progress=True)

    seconds = timed(search, args.device)
    for h in handles:
        h.remove()
    result = found["result"]
    reference_s = hf * args.reference_forwards
    print(
        json.dumps(
            {
                "search": asdict(defaults.search),
                "k": k,
                "mask": list(result.mask),
                "loss": result.loss,
                "seconds": round(seconds, 1),
                "block_calls": counter["calls"],
                "block_passes": counter["passes"],
                "full_forward_equivalents": round(counter["passes"] / (blocks * args.samples), 1),
                "block_pass_ratio": round(args.reference_forwards * blocks * args.samples / counter["passes"], 2),
                "evaluator": result.stats,
                "steps": len(result.trace),
                "reference_forwards": args.reference_forwards,
                "reference_s_extrapolated": round(reference_s, 1),
                "speedup_vs_reference": round(reference_s / seconds, 2),
                "hardware": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        ),
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2-135m", "llama-2-13b-shape"], default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-gib", type=float, default=40.0, help="GPU tier: prefix cache budget")
    parser.add_argument(
        "--reference-forwards", type=int, default=50 * 100, help="GPU tier: the reference GA's forwards"
    )
    parser.add_argument("--repeats", type=int, default=5, help="GPU tier: timings per median")
    parser.add_argument("--dtype", default="bfloat16", help="GPU tier: the model's dtype")
    parser.add_argument(
        "--narrow",
        action="store_true",
        help="GPU tier on CPU: 40 blocks of width 64, to count the search's passes (timings mean nothing)",
    )
    parser.add_argument("--blocks", type=int, default=30, help="use the first N blocks of SmolLM2-135M")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    defaults = SearchConfig()
    parser.add_argument("--population", type=int, default=defaults.population)
    parser.add_argument("--generations", type=int, default=defaults.generations)
    parser.add_argument("--seed-sleb", action=argparse.BooleanOptionalAction, default=defaults.seed_sleb)
    parser.add_argument("--method", default="evop")
    parser.add_argument("--data", default="../shared/data/wikitext-2/valid.txt")
    args = parser.parse_args()
    if args.model == "llama-2-13b-shape":
        return gpu_tier(args)
    torch.manual_seed(0)
    loaded = evop_hub.load("smollm2-135m")
    if args.blocks < 30:
        evop_hub.drop(loaded, range(args.blocks, 30))
    ids = loaded.tokenizer(open(args.data).read()[:400_000], return_tensors="pt").input_ids[0]
    starts = torch.randint(0, len(ids) - args.seq_len, (args.samples,), generator=torch.Generator().manual_seed(0))
    calibration = torch.stack([ids[s : s + args.seq_len] for s in starts])
    config = SearchConfig(
        method=args.method, population=args.population, generations=args.generations, seed_sleb=args.seed_sleb
    )
    rows, ours_evaluator, cosine_calls = {}, SerialEvaluator(loaded.model, calibration), []
    dense_cosines = ours_evaluator.layer_cosines  # one dense walk per call, outside the masks' prefix tree
    ours_evaluator.layer_cosines = lambda distance: cosine_calls.append(distance) or dense_cosines(distance)
    for name, evaluator in (("evop-hub", ours_evaluator), ("reference", ReferenceEvaluator(loaded.model, calibration))):
        counter, handles = count_block_calls(loaded.model)
        start = time.perf_counter()
        result = run_search(evaluator, args.k, config, progress=False)
        seconds = time.perf_counter() - start
        for h in handles:
            h.remove()
        rows[name] = {
            "mask": list(result.mask),
            "loss": result.loss,
            "block_passes": counter["passes"],
            "block_calls": counter["calls"],
            "seconds": round(seconds, 2),
            "masks_requested": result.stats["evaluations"],
        }
        print(name, json.dumps(rows[name]), flush=True)
    ours, ref = rows["evop-hub"], rows["reference"]
    dense_walks = ours_evaluator.num_blocks * len(calibration) * len(cosine_calls)
    bound = prefix_bound(list(ours_evaluator.memo), ours_evaluator.num_blocks, len(calibration)) + dense_walks
    summary = {
        "same_answer": ours["mask"] == ref["mask"],
        "block_pass_ratio": round(ref["block_passes"] / ours["block_passes"], 2),
        "prefix_bound_passes": bound,
        "block_pass_ratio_at_bound": round(ref["block_passes"] / bound, 2),
        "block_call_ratio": round(ref["block_calls"] / ours["block_calls"], 2),
        "wall_time_ratio": round(ref["seconds"] / ours["seconds"], 2),
        "args": vars(args),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
