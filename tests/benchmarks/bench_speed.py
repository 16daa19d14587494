"""Speed of a dense model against the same model with blocks removed, written as a markdown report.

Which blocks go does not change the cost of the rest, so a fixed set stands in for a
searched one. Two models:

- ``smollm2-135m`` (default): the real offline SmolLM2-135M, 6 of 30 blocks (20 %) dropped;
- ``llama-2-13b-shape``: random weights in Llama-2-13B's shapes (speed depends on shapes
  only), for the paper's GPU comparison: ``--device cuda --drop 4`` (10 %) and ``--drop 8`` (20 %).

    python tests/benchmarks/bench_speed.py --threads 1 --output tests/benchmarks/bench_speed.md
    python tests/benchmarks/bench_speed.py --model llama-2-13b-shape --device cuda --drop 8 --output bench_13b.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
from pathlib import Path

import torch
import transformers

from evop_hub.evaluate import SpeedConfig, speed
from evop_hub.models import drop, find_blocks, load

LLAMA_2_13B = dict(
    vocab_size=32000,
    hidden_size=5120,
    intermediate_size=13824,
    num_hidden_layers=40,
    num_attention_heads=40,
    num_key_value_heads=40,
    max_position_embeddings=4096,
)


def build(name: str, n_drop: int, device: str | None) -> tuple[torch.nn.Module, torch.nn.Module, list[int]]:
    """Dense and pruned models on ``device``; the dropped blocks sit just above the middle-late blocks."""
    if name == "smollm2-135m":
        dense = load(name).model
        blocks = len(find_blocks(dense))
        dropped = list(range(blocks - 6 - n_drop, blocks - 6))
        pruned = drop(load(name), dropped).model
        return dense.to(device or "cpu"), pruned.to(device or "cpu"), dropped
    blocks = LLAMA_2_13B["num_hidden_layers"]
    dropped = list(range(blocks - 6 - n_drop, blocks - 6))
    dtype = torch.float16 if device and device.startswith("cuda") else torch.float32
    with torch.device(device or "cpu"):  # random weights either way: same shapes as dropping blocks
        dense, pruned = (
            transformers.AutoModelForCausalLM.from_config(
                transformers.LlamaConfig(**{**LLAMA_2_13B, "num_hidden_layers": layers}), dtype=dtype
            ).eval()
            for layers in (blocks, blocks - n_drop)
        )
    return dense, pruned, dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2-135m", "llama-2-13b-shape"], default="smollm2-135m")
    parser.add_argument("--drop", type=int, default=6, help="number of blocks removed")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None, help="cpu (default), cuda, ...")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads; 1 on a machine shared with other jobs (waiting threads stall)"
    )
    parser.add_argument("--output", type=Path, help="markdown file to write (default: print only)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = SpeedConfig(args.batch_size, args.prompt_len, args.new_tokens, args.warmup, args.repeats)
    dense, pruned, dropped = build(args.model, args.drop, args.device)
    started, load_before = dt.datetime.now(dt.timezone.utc), os.getloadavg()[0]
    result = speed(dense, pruned, config)
    elapsed = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()

    report = "\n".join(
        [
            f"# Speed: {args.model}, dense ({result.dense.blocks} blocks) vs {len(dropped)} blocks dropped",
            "",
            f"Command: `{shlex.join(['python', *sys.argv])}`  ",
            f"Date: {started.isoformat(timespec='seconds')}; measurement took {elapsed:.0f} s; "
            f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
            "(other jobs share this machine)  ",
            f"Hardware: {result.hardware}; torch {torch.__version__}, transformers {transformers.__version__}  ",
            f"Dropped blocks (original numbering): {dropped}; dtype {next(dense.parameters()).dtype}",
            "",
            result.table(),
            "",
            "<details><summary>Raw result (JSON)</summary>",
            "",
            "```json",
            json.dumps(result.to_dict(), indent=2),
            "```",
            "</details>",
            "",
        ]
    )
    print(report)
    if args.output:
        tmp = args.output.with_suffix(".tmp")
        tmp.write_text(report)
        tmp.replace(args.output)


if __name__ == "__main__":
    main()
