"""Where one pattern's held-out score spends its time, and cheaper exact float32 losses, in one run.

With a large vocabulary the loss, not the blocks, bounds how fast the search and the held-out oracle
go: on Gemma 3 270M (262k tokens) a pattern's 24 x 2048 held-out positions need 6.4 G logits. The
runner (``BlockRunner.nll_rows``) computes them in the model's dtype, casts each chunk to float32 and
takes ``cross_entropy``: on a GPU that writes and reads a float32 copy of every logit. This script
times, on the same final states, the dense walk of all blocks, the head's matmul alone, the runner's
loss, and candidate replacements for its loss, each with its ratio to the runner and the largest
difference of a sequence's NLL sum from the runner's (a replacement must keep the numbers):

* ``log_softmax_dtype``: ``log_softmax(logits, dtype=float32)``; on CUDA, float16 logits are converted
  by the kernel as it reads them (the other dtypes are cast first, as in the runner);
* ``half_to_float``: ``torch._log_softmax(logits, dim, True)``, that kernel asked for directly (CUDA
  only; whether it takes bfloat16 depends on the torch build);
* ``mm_float32_out``: float32 logits straight from the matmul (``torch.mm(..., out_dtype=float32)``,
  CUDA, torch >= 2.8): one rounding fewer than the runner, so slightly different numbers;
* ``compiled``: ``torch.compile`` of the runner's cast and cross-entropy, so that Inductor fuses the
  cast into the reductions.

A variant that fails on this machine is reported as unsupported with its error's first line. The text
does not change the cost, so the windows are random token ids.

    python3 tests/benchmarks/bench_head.py --model gemma3-270m --device cuda --dtype bfloat16 \
        --windows 24 --seq-len 2048 --out $OUT/bench_head_gemma3
    .venv/bin/python tests/benchmarks/bench_head.py --model smollm2-135m --windows 2 --seq-len 512 \
        --out tests/benchmarks/bench_head_cpu
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_quality import TIERS, hardware, load_model, write
from bench_search import timed

from evop_hub.scoring import BlockRunner

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (final states [n, d], targets [n]) -> float32 NLL [n]


def rows(runner: BlockRunner, hidden: torch.Tensor, ids: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Per-sequence NLL sums over ``chunk_tokens`` positions a call, as the runner cuts them."""
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = ids[:, 1:].reshape(-1)
    step = runner.chunk_tokens
    parts = [
        loss(states[start : start + step], targets[start : start + step]) for start in range(0, len(targets), step)
    ]
    return torch.cat(parts).double().cpu().view(ids.shape[0], -1).sum(1)


def logits(runner: BlockRunner, states: torch.Tensor) -> torch.Tensor:
    return runner.logits(states[None])[0]


def variants(runner: BlockRunner) -> dict[str, Loss]:
    def mm_float32_out(states, targets):
        if runner.transforms or runner.head.bias is not None:
            raise RuntimeError("the head adds a bias or a logit transform, which this variant leaves out")
        for module in runner.tail:
            states = module(states)
        return F.cross_entropy(
            torch.mm(states, runner.head.weight.t(), out_dtype=torch.float32), targets, reduction="none"
        )

    cast_loss = torch.compile(lambda x, t: F.cross_entropy(x.float(), t, reduction="none"), dynamic=False)
    return {
        "log_softmax_dtype": lambda s, t: F.nll_loss(
            F.log_softmax(logits(runner, s), -1, dtype=torch.float32), t, reduction="none"
        ),
        "half_to_float": lambda s, t: F.nll_loss(torch._log_softmax(logits(runner, s), -1, True), t, reduction="none"),
        "mm_float32_out": mm_float32_out,
        "compiled": lambda s, t: cast_loss(logits(runner, s), t),
    }


def median_timed(fn: Callable[[], object], device: str, repeats: int) -> tuple[float, object]:
    """Median seconds over ``repeats`` calls after a warm-up call, whose result it returns (all are equal)."""
    result = fn()
    return statistics.median(timed(fn, device) for _ in range(repeats)), result


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument(
        "--batch-size", type=int, default=4, help="windows per block call and per loss call, as the oracle's"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    loaded = load_model(args.model, replace(TIERS["cpu"], blocks=None, dtype=args.dtype, device=args.device))
    runner = BlockRunner(loaded.model)
    vocab = runner.head.weight.shape[0]
    ids = torch.randint(vocab, (args.windows, args.seq_len), generator=torch.Generator().manual_seed(0)).to(args.device)
    batches = list(torch.split(ids, args.batch_size))
    contexts = [runner.prepare(batch) for batch in batches]

    def walk():
        return [runner.run(ctx) for ctx in contexts]

    def scored(loss: Loss) -> torch.Tensor:
        return torch.cat([rows(runner, h, b, loss) for h, b in zip(finals, batches)])

    blocks_s, finals = median_timed(walk, args.device, args.repeats)
    # The head alone: the same chunks, one logit a position kept so that nothing else is computed.
    head_s, _ = median_timed(lambda: scored(lambda s, t: logits(runner, s)[:, 0].float()), args.device, args.repeats)
    runner_s, reference = median_timed(
        lambda: torch.cat([runner.nll_rows(h, b) for h, b in zip(finals, batches)]), args.device, args.repeats
    )
    result = {
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "vocab": vocab,
        "windows": args.windows,
        "seq_len": args.seq_len,
        "chunk_tokens": runner.chunk_tokens,
        "command": shlex.join(["python3", sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "hardware": hardware(),
        "ms": {
            "blocks (dense walk)": blocks_s * 1e3,
            "head matmul only": head_s * 1e3,
            "head and loss, runner (nll_rows)": runner_s * 1e3,
        },
        "variants": {},
    }
    for name, loss in variants(runner).items():
        try:
            seconds, values = median_timed(lambda loss=loss: scored(loss), args.device, args.repeats)
        except Exception as error:  # noqa: BLE001 - a variant this torch or device lacks is a result, not a failure
            result["variants"][name] = {"unsupported": str(error).strip().splitlines()[0].split(". ")[0]}
            continue
        result["variants"][name] = {
            "ms": seconds * 1e3,
            "speedup": runner_s / seconds,
            "max_abs_diff": float((values - reference).abs().max()),
            "max_rel_diff": float(((values - reference).abs() / reference.abs()).max()),
        }
    print(json.dumps(result, indent=1))
    write(Path(args.out + ".json"), json.dumps(result, indent=1))
    write(Path(args.out + ".md"), markdown(result))
    return result


def markdown(result: dict) -> str:
    lines = [
        f"# Loss cost: {result['model']} ({result['vocab']:,}-token vocabulary), {result['dtype']} on {result['device']}",
        "",
        f"Command: `{result['command']}`",
        "",
        (
            f"Hardware: {result['hardware']}. {result['windows']} windows of "
            f"{result['seq_len']} random tokens; {result['chunk_tokens']} positions per loss call. Medians."
        ),
        "",
        "| part | ms |",
        "|---|---|",
    ]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in result["ms"].items()]
    lines += [
        "",
        "| head and loss, variant | ms | speedup over the runner | max abs diff of a sequence's NLL sum | max rel diff |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["variants"].items():
        if "unsupported" in row:
            lines.append(f"| {name} | unsupported: {row['unsupported']} | | | |")
        else:
            lines.append(
                f"| {name} | {row['ms']:.1f} | {row['speedup']:.2f}x | {row['max_abs_diff']:.3g} | {row['max_rel_diff']:.3g} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
