"""End to end at real scale (issue 23): `evop-hub prune` on a Llama-2-13B-shape checkpoint, as a user runs it.

Builds a random-weight checkpoint in a model's shapes with a real tokenizer (SmolLM2's, the one offline; the
vocabulary is the tokenizer's), runs the real CLI on it in a child process with default settings (no
--device-map: the default must pick the GPU), timestamps the lines the CLI prints to split the wall time
into phases (load, calibration, search, save), samples the device's memory in use every half second, and
reloads the output with plain transformers to check its block count. Prints and writes OUT.json / OUT.md.

    python3 tests/benchmarks/bench_e2e.py --shape llama-2-13b --out $OUT/bench_e2e_13b -- --corpus wiki-leads:valid
    python3 tests/benchmarks/bench_e2e.py --shape tiny --out /tmp/e2e      # the CPU tier: the machinery only

Arguments after ``--`` go to `evop-hub prune` unchanged. Random weights make every pattern about equally bad,
so the search's answer means nothing here; its cost and the phases' are what is measured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from bench_quality import hardware, write

SHAPES = {  # LlamaConfig fields; the vocabulary is the tokenizer's
    "llama-2-13b": dict(
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        max_position_embeddings=4096,
    ),
    "llama-2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    ),
}
# A phase ends at the first CLI line starting with its marker.
PHASES = (("load", "loaded on"), ("calibration", "calibration:"), ("search", "dropped blocks"), ("save", "saved "))


def build(shape: str, folder: Path, dtype: torch.dtype) -> int:
    """A random checkpoint of ``shape`` with SmolLM2's tokenizer, saved to ``folder``; its block count."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    import evop_hub

    tokenizer = evop_hub.models.load_tokenizer("smollm2-135m")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SHAPES[shape],
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache() if device == "cuda" else None
    return config.num_hidden_layers


def sample_memory(stop: threading.Event, peak: list[int]) -> None:
    """Device memory in use (all processes), sampled every half second: the child's peak."""
    while not stop.wait(0.5):
        free, total = torch.cuda.mem_get_info()
        peak[0] = max(peak[0], total - free)


def run_cli(model_dir: Path, output: Path, extra: list[str]) -> tuple[dict[str, float], list[str], float]:
    """The CLI in a child process; seconds since start at which each phase's line appeared, the lines, wall."""
    command = [sys.executable, "-m", "evop_hub.cli", "prune", str(model_dir), "--output", str(output), *extra]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    seen, lines = {}, []
    for line in child.stdout:
        lines.append(line.rstrip())
        print(line, end="", flush=True)
        for phase, marker in PHASES:
            if phase not in seen and line.lstrip().startswith(marker):
                seen[phase] = time.perf_counter() - start
    if child.wait() != 0:
        sys.exit(f"error: evop-hub prune failed ({child.returncode}): {' '.join(lines[-3:])}")
    return seen, lines, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--work", default=None, help="folder for the checkpoint and the output (default: OUT.work)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(ours)
    work = Path(args.work or args.out + ".work")
    dense, output = work / "dense", work / "pruned"
    gpu = torch.cuda.is_available()
    blocks = build(args.shape, dense, torch.bfloat16 if gpu else torch.float32)
    peak, stop = [0], threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(stop, peak), daemon=True) if gpu else None
    if sampler:
        sampler.start()
    seen, lines, wall = run_cli(dense, output, [*extra, "--overwrite"])
    stop.set()
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(output)
    phases, previous = {}, 0.0
    for phase, _ in PHASES:  # a phase lasts from the line that ends the one before it to its own line
        end = seen.get(phase)
        phases[phase] = None if end is None or previous is None else round(end - previous, 1)
        previous = end
    search = json.loads((output / "evop_pruning.json").read_text()).get("search") or {}
    result = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "hardware": hardware(),
        "shape": args.shape,
        "blocks": blocks,
        "blocks_after": reloaded.config.num_hidden_layers,
        "wall_seconds": round(wall, 1),
        "phases_seconds": phases,
        "peak_device_gib": round(peak[0] / (1 << 30), 2) if gpu else None,
        "output_gib": round(sum(f.stat().st_size for f in output.glob("*.safetensors")) / (1 << 30), 2),
        "search": {key: search.get(key) for key in ("method", "k", "seconds", "stats")},
        "placement": next((line for line in lines if line.lstrip().startswith("loaded on")), None),
    }
    assert result["blocks_after"] == blocks - (search.get("k") or 0), "the output does not reload with its blocks"
    lines_md = [
        f"# evop-hub prune end to end ({args.shape})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Hardware: {result['hardware']}.",
        "",
        "| what | value |",
        "|---|---|",
    ]
    lines_md += [f"| {key} | {value} |" for key, value in result.items() if key not in ("command", "hardware")]
    write(Path(args.out + ".json"), json.dumps(result, indent=1))
    write(Path(args.out + ".md"), "\n".join(lines_md) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
