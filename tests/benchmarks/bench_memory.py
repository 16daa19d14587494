"""Issue 3 on a GPU: `evop-hub ppl` scores a 7B-shape bf16 model under a 24 GiB ``--max-memory`` cap.

Random weights in Llama-2-7B's shapes stand in for the real model (memory depends on shapes
only), with a byte-level BPE tokenizer of Llama-2's vocabulary size trained here on the
corpus (no Hub). The checkpoint is written to ``--workdir``, then the real command line runs
in a child process:

    python -m evop_hub.cli ppl DIR --dtype bfloat16 --max-memory 0=24GiB,cpu=100GiB ...

while this process samples the GPU's used memory through NVML every 20 ms. The peak, the
CUDA context included, is what the cap has to hold.

    python tests/benchmarks/bench_memory.py --data-dir data/wikitext-2 --output $OUT/bench_memory.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import transformers

LLAMA_2_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
)


def build(workdir: Path, text: str) -> None:
    """A random 7B-shape checkpoint with a tokenizer trained on ``text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=LLAMA_2_7B["vocab_size"],
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator([text], trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.LlamaConfig(**LLAMA_2_7B, bos_token_id=0, eos_token_id=1), dtype=torch.bfloat16
        )
    model.save_pretrained(workdir)
    tokenizer.save_pretrained(workdir)
    del model
    torch.cuda.empty_cache()


def gpu_used_bytes() -> int:
    import pynvml

    return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="WikiText-2 folder (../shared/data/wikitext-2)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/evop-bench-7b"))
    parser.add_argument("--cap", default="24GiB")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seq-len", default="2048")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    import pynvml

    pynvml.nvmlInit()
    text = (Path(args.data_dir) / "test.txt").read_text()
    started = time.perf_counter()
    build(args.workdir, text)
    built_s = time.perf_counter() - started
    baseline = gpu_used_bytes()
    command = [
        sys.executable,
        "-m",
        "evop_hub.cli",
        "ppl",
        str(args.workdir),
        "--dtype",
        "bfloat16",
        "--max-memory",
        f"0={args.cap},cpu=100GiB",
        "--corpus",
        "wikitext2:test",
        "--data-dir",
        args.data_dir,
        "--seq-len",
        args.seq_len,
        "--max-windows",
        str(args.windows),
        "--json",
    ]
    peak, running = [baseline], True

    def sample() -> None:
        while running:
            peak[0] = max(peak[0], gpu_used_bytes())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    child = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    running = False
    sampler.join()
    if child.returncode:
        sys.exit(f"evop-hub ppl failed ({child.returncode}):\n{child.stderr[-3000:]}")
    gib = (peak[0] - baseline) / 2**30
    cap = float(args.cap.removesuffix("GiB"))
    report = "\n".join(
        [
            "# `evop-hub ppl` on a 7B shape (bf16) under a --max-memory cap",
            "",
            f"Command: `{shlex.join(['python', *sys.argv])}`  ",
            f"Date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}  ",
            f"Hardware: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, transformers {transformers.__version__}  ",
            f"Model: random weights in Llama-2-7B's shapes (checkpoint written in {built_s:.0f} s), "
            f"byte-level BPE tokenizer of {LLAMA_2_7B['vocab_size']} tokens trained on WikiText-2 test.",
            "",
            f"Child command: `{shlex.join(command)}` ({seconds:.1f} s)",
            "",
            f"Peak GPU memory of the child (NVML, CUDA context included): **{gib:.2f} GiB**, "
            f"{'under' if gib < cap else 'OVER'} the {args.cap} cap.",
            "",
            "```json",
            child.stdout.strip(),
            "```",
            "",
        ]
    )
    print(report)
    print(json.dumps({"peak_gib": round(gib, 3), "cap_gib": cap, "under_cap": gib < cap, "seconds": round(seconds, 1)}))
    if args.output:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
