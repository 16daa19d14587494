"""Robust pruning (issue 26): the default against every block method on held-out text, resumable.

For every model, k (a fraction of its blocks, rounded up as ``evop-hub prune --sparsity`` rounds it)
and calibration seed, one row per method:

* ``default``: ``evop-hub prune``'s defaults: CCDS over a mixture of general train splits (WikiText-2
  valid stands in for its train split, which is not offline here), KL(dense || pruned) with staged
  selection, the evolutionary search;
* ``paper``: ``--preset paper``: CCDS of 5 x 2048 WikiText-2 valid tokens, the NLL-driven GA (the
  default before issue 26, so its seconds are "today's default" on the same machine);
* ``sleb``: SLEB on random windows of WikiText-2 valid (5 x 2048), its own recipe;
* ``shortgpt`` and ``angular``: the one-shot criteria, on SLEB's windows;
* ``oracle``: where a full held-out oracle was run (Gemma 3 at k = 4), its best pattern.

Held-out: the mean over WikiText-2 test, wiki-leads test, pydoc test and Shakespeare test of the
per-token NLL on the first 16 windows of 2048 tokens (the whole split when shorter). The mixture
takes only train splits of those corpora (and WikiText-2 valid): nothing scored is calibrated on.

``OUT.json`` is the issue's JSON list of rows, ``{"model", "k", "seed", "method", "mask", "heldout_mean",
"heldout", "calibration_tokens", "seconds"}``; ``OUT.meta.json`` holds the command, hardware, protocol, each
row's search details (fitness, stages, calibration fitness, block forwards) and the summary; ``OUT.md`` the
tables. Rows are written as they finish (atomically), and a run whose ``OUT.json`` exists skips the rows it
holds: a run cut by a device call's time limit continues on the next call. A model given as NAME=PATH
(``smollm2-135m=/root/SmolLM2-135M-Instruct.Q4_1.gguf``) is loaded from PATH and recorded as NAME.

    python3 tests/benchmarks/bench_robust.py --tier gpu --models smollm2-135m \
        --data-dir .gpudata/wikitext-2 --out $OUT/bench_robust_gpu
    OMP_NUM_THREADS=1 python3 tests/benchmarks/bench_robust.py --tier cpu --out /tmp/bench_robust_cpu
    python3 tests/benchmarks/bench_robust.py --merge RUN_S0 RUN_S1 RUN_S2 OUT   # per-seed runs into one table

The CPU tier is the machinery only (the first 12 blocks of SmolLM2, short samples): see
bench_quality.py for why a truncated model says nothing about generalisation.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_quality import HELDOUT, WIKITEXT, hardware, load_model, write

from evop_hub.calibration import CalibrationConfig, calibrate
from evop_hub.data import load_corpus
from evop_hub.evaluate.heldout import HeldOut
from evop_hub.search import PAPER_SEARCH, SearchConfig, evaluator_for, num_drop, run_search

MIXTURE = "wikitext2:valid+wiki-leads:train+pydoc:train+shakespeare:train"
METHODS = ("default", "paper", "sleb", "shortgpt", "angular", "oracle")
ROW_KEYS = ("model", "k", "seed", "method", "mask", "heldout_mean", "heldout", "calibration_tokens", "seconds")
ORACLES = {"gemma3-270m": Path(__file__).with_name("heldout_oracle_gemma3_full.json")}


@dataclass
class Protocol:
    """One tier's settings, recorded in the JSON; any field can be overridden from the command line."""

    models: list[str]
    blocks: int | None  # keep only the first N blocks (CPU tier)
    sparsities: list[float]
    seeds: list[int]
    samples: int  # the default's calibration samples (CCDS clusters x 1)
    seq_len: int
    mixture: str = MIXTURE  # the default's calibration text
    paper_samples: int = 5  # the paper's and SLEB's calibration samples
    stages: str | None = None  # None: SearchConfig's default stages
    search: dict[str, Any] = field(default_factory=dict)  # SearchConfig overrides for every search (CPU tier)
    heldout: list[str] = field(default_factory=lambda: list(HELDOUT))
    heldout_windows: int = 16
    heldout_seq_len: int = 2048
    data_dir: str = str(WIKITEXT)
    dtype: str = "bfloat16"
    device: str = "cuda"
    cache_gib: float = 4.0
    batch_size: int = 1  # calibration samples per forward of every search (prune's --batch-size)


TIERS = {
    "gpu": Protocol(["smollm2-135m", "gemma3-270m"], None, [0.2, 0.3], [0, 1, 2], samples=40, seq_len=2048),
    "cpu": Protocol(
        ["smollm2-135m"],
        12,
        [0.25],
        [0],
        samples=8,
        seq_len=64,
        mixture="wiki-leads:valid",
        paper_samples=3,
        stages="4@16",
        search={"population": 8, "generations": 3, "patience": 2},
        heldout_windows=1,
        heldout_seq_len=64,
        dtype="float32",
        device="cpu",
        cache_gib=1.0,
    ),
}


def calibration_ids(corpus, tokenizer, protocol: Protocol, seed: int, sampler: str, samples: int):
    config = CalibrationConfig(
        sampler=sampler, clusters=samples, seq_len=protocol.seq_len, seed=seed, data_dir=protocol.data_dir
    )
    return calibrate(corpus, tokenizer, config).input_ids.to(protocol.device)


def searches(protocol: Protocol, seed: int) -> dict[str, SearchConfig]:
    """Each method's search settings; the calibration set it runs on is named by ``CALIBRATION``."""
    base = replace(SearchConfig(seed=seed), **protocol.search)
    default = base if protocol.stages is None else replace(base, stages=protocol.stages)
    paper = replace(base, **PAPER_SEARCH)
    return {
        "default": default,
        "paper": paper,
        **{m: replace(paper, method=m) for m in ("sleb", "shortgpt", "angular")},
    }


CALIBRATION = {"default": "mixture", "paper": "wikitext", "sleb": "random", "shortgpt": "random", "angular": "random"}


def run_seed(name: str, loaded, protocol: Protocol, seed: int, todo: list[tuple[int, str]], corpora, emit) -> None:
    """Every row of one model and seed still missing (``todo``: (k, method)), sharing calibration sets."""
    configs, evaluators = searches(protocol, seed), {}
    for k, method in todo:
        if method == "oracle":
            emit(k, method, oracle_mask(name, k), {"calibration_tokens": 0, "seconds": 0.0})
            continue
        name = CALIBRATION[method]
        config = configs[method]
        if (name, config.fitness, config.stages) not in evaluators:
            start = time.perf_counter()
            sampler, corpus, samples = {
                "mixture": ("ccds", "mixture", protocol.samples),
                "wikitext": ("ccds", "wikitext", protocol.paper_samples),
                "random": ("random", "wikitext", protocol.paper_samples),
            }[name]
            ids = calibration_ids(corpora[corpus], loaded.tokenizer, protocol, seed, sampler, samples)
            evaluator = evaluator_for(
                loaded.model,
                ids,
                config,
                batch_size=protocol.batch_size,
                cache_bytes=int(protocol.cache_gib * (1 << 30)),
            )
            evaluators[name, config.fitness, config.stages] = (evaluator, ids.numel(), time.perf_counter() - start)
        evaluator, tokens, calibration_seconds = evaluators[name, config.fitness, config.stages]
        start = time.perf_counter()
        result = run_search(evaluator, k, config, progress=False)
        emit(
            k,
            method,
            list(result.mask),
            {
                "calibration_tokens": tokens,
                "seconds": round(time.perf_counter() - start, 2),
                "calibration_seconds": round(calibration_seconds, 2),
                "fitness": config.fitness,
                "stages": config.stages,
                "calibration_fitness": result.loss,
                "block_forwards": result.stats["block_forwards"],
            },
        )


def oracle_mask(name: str, k: int) -> list[int] | None:
    """The best pattern of a full held-out oracle of this model at this k, if one was run (on its own, shorter
    held-out protocol: 6 windows a corpus, so here it is a strong row, not a proven bound)."""
    path = ORACLES.get(name)
    scan = json.loads(path.read_text())["ks"].get(str(k)) if path and path.is_file() else None
    return scan["top"][0]["mask"] if scan and scan.get("radius") is None else None


def run_model(spec: str, protocol: Protocol, rows: list[dict[str, Any]], save) -> None:
    name, _, path = spec.partition("=")
    done = {(r["k"], r["seed"], r["method"]) for r in rows if r["model"] == name}
    loaded = heldout = corpora = None
    for seed in protocol.seeds:
        if loaded is None:
            loaded = load_model(path or name, protocol)
            heldout = HeldOut.from_corpora(
                loaded.model,
                loaded.tokenizer,
                protocol.heldout,
                protocol.heldout_seq_len,
                protocol.heldout_windows,
                protocol.data_dir,
                int(protocol.cache_gib * (1 << 30)),
            )
            corpora = {
                "mixture": load_corpus(protocol.mixture, protocol.data_dir),
                "wikitext": load_corpus("wikitext2:valid", protocol.data_dir),
            }
        blocks = len(loaded.record.kept_blocks)
        ks = [num_drop(blocks, s) for s in protocol.sparsities]
        todo = [(k, m) for k in ks for m in METHODS if (k, seed, m) not in done]
        if not todo:
            continue

        def emit(k: int, method: str, mask: list[int] | None, extra: dict[str, Any]) -> None:
            if mask is None:
                return
            per_corpus = heldout.score(mask)
            rows.append(
                {
                    "model": name,
                    "k": k,
                    "seed": seed,
                    "method": method,
                    "mask": mask,
                    "heldout_mean": sum(per_corpus.values()) / len(per_corpus),
                    "heldout": per_corpus,
                    **extra,
                }
            )
            save()
            print(
                json.dumps(
                    {key: rows[-1][key] for key in ("model", "k", "seed", "method", "mask", "heldout_mean", "seconds")}
                ),
                flush=True,
            )

        run_seed(name, loaded, protocol, seed, todo, corpora, emit)


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, k, method): held-out mean over seeds, mean search seconds; and whether the default wins."""
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["k"]), {}).setdefault(r["method"], []).append(r)
    out = []
    for (model, k), methods in cells.items():
        means = {m: sum(r["heldout_mean"] for r in rs) / len(rs) for m, rs in methods.items()}
        seconds = {m: sum(r["seconds"] for r in rs) / len(rs) for m, rs in methods.items()}
        others = [v for m, v in means.items() if m not in ("default", "oracle")]
        default = means.get("default")
        oracle = means.get("oracle")
        wins = (
            default is not None
            and all(default < v for v in others)
            or (oracle is not None and default is not None and abs(default - oracle) < 1e-9)
        )
        out.append(
            {
                "model": model,
                "k": k,
                "seeds": {m: len(rs) for m, rs in methods.items()},
                "heldout_mean": means,
                "seconds": seconds,
                "default_lowest": bool(wins),
                "default_not_slower_than_paper": default is not None
                and "paper" in seconds
                and seconds["default"] <= seconds["paper"],
            }
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    p = result["protocol"]
    lines = [
        f"# Robust pruning: every block method on held-out text ({result['tier']} tier)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Hardware: {result['hardware']}. Date: {result['date']}.",
        "",
        f"Protocol: sparsities {p['sparsities']} of each model's blocks, seeds {p['seeds']}; `default` calibrates on "
        f"CCDS over `{p['mixture']}` ({p['samples']} x {p['seq_len']} tokens, KL fitness, staged selection), `paper` on CCDS "
        f"of {p['paper_samples']} x {p['seq_len']} WikiText-2 valid tokens (NLL), `sleb`, `shortgpt` and `angular` on "
        f"{p['paper_samples']} random windows of WikiText-2 valid. Held-out mean log-perplexity = mean over "
        f"{', '.join(p['heldout'])} of the per-token NLL on the first {p['heldout_windows']} windows of "
        f"{p['heldout_seq_len']} tokens.",
        "",
        "Averaged over seeds (held-out mean log-perplexity, lower is better; search seconds in brackets):",
        "",
        "| model | k | " + " | ".join(METHODS) + " | default lowest | default's search no slower than paper's |",
        "|---|---|" + "---|" * len(METHODS) + "---|---|",
    ]
    for s in result["summary"]:
        cells = [
            f"{s['heldout_mean'][m]:.4f} ({s['seconds'][m]:.0f} s)" if m in s["heldout_mean"] else "-" for m in METHODS
        ]
        lines.append(
            f"| {s['model']} | {s['k']} | "
            + " | ".join(cells)
            + f" | {'yes' if s['default_lowest'] else 'no'} | {'yes' if s['default_not_slower_than_paper'] else 'no'} |"
        )
    lines += [
        "",
        "Per seed:",
        "",
        "| model | k | seed | method | mask | held-out mean | "
        + " | ".join(p["heldout"])
        + " | calib. tokens | search s |",
        "|---|---|---|---|---|---|" + "---|" * len(p["heldout"]) + "---|---|",
    ]
    for r in result["rows"]:
        per = " | ".join(f"{r['heldout'][c]:.4f}" for c in p["heldout"])
        lines.append(
            f"| {r['model']} | {r['k']} | {r['seed']} | {r['method']} | {r['mask']} | {r['heldout_mean']:.4f} | "
            f"{per} | {r['calibration_tokens']} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Protocol]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=TIERS, default="cpu")
    parser.add_argument("--out", required=True, help="writes OUT.json (the rows, resumed when it exists) and OUT.md")
    split = lambda t: t.split(",")  # noqa: E731
    parser.add_argument("--models", type=split)
    parser.add_argument("--blocks", type=int)
    parser.add_argument("--sparsities", type=lambda t: [float(x) for x in t.split(",")])
    parser.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")])
    parser.add_argument("--samples", type=int)
    parser.add_argument("--mixture", help="the default's calibration corpus (a NAME:SPLIT+NAME:SPLIT mixture)")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--paper-samples", type=int)
    parser.add_argument("--stages")
    parser.add_argument("--heldout", type=split)
    parser.add_argument("--heldout-windows", type=int)
    parser.add_argument("--heldout-seq-len", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--dtype")
    parser.add_argument("--device")
    parser.add_argument("--batch-size", type=int)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in Protocol.__dataclass_fields__ and v is not None}
    return args, replace(TIERS[args.tier], **overrides)


def read(part: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (with their details) and metadata of a run written as PART.json and PART.meta.json."""
    meta = json.loads(Path(part + ".meta.json").read_text())
    return [{**row, **extra} for row, extra in zip(json.loads(Path(part + ".json").read_text()), meta["details"])], meta


def write_result(out: str, info: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    result = {**info, "rows": rows, "summary": summary(rows)}
    write(Path(out + ".json"), json.dumps([{key: r[key] for key in ROW_KEYS} for r in rows], indent=1))
    details = [{key: value for key, value in r.items() if key not in ROW_KEYS} for r in rows]
    write(Path(out + ".meta.json"), json.dumps({**info, "details": details, "summary": result["summary"]}, indent=1))
    write(Path(out + ".md"), markdown(result))
    return result


def merge(parts: list[str], out: str) -> dict[str, Any]:
    """One table from runs of the same protocol on other seeds (gpu_robust.sh runs one process per seed)."""
    runs = [read(part) for part in parts]
    metas = [meta for _, meta in runs]
    protocol = {**metas[0]["protocol"], "seeds": sorted({s for m in metas for s in m["protocol"]["seeds"]})}
    if any({**m["protocol"], "seeds": protocol["seeds"]} != protocol for m in metas):
        sys.exit("error: the runs to merge differ in more than their seeds")
    info = {
        **{k: metas[0][k] for k in ("tier", "hardware", "date")},
        "protocol": protocol,
        "command": " ; ".join(m["command"] for m in metas),
    }
    rows = sorted(
        (r for rs, _ in runs for r in rs), key=lambda r: (r["model"], r["seed"], r["k"], METHODS.index(r["method"]))
    )
    return write_result(out, info, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None and sys.argv[1:2] == ["--merge"] or argv and argv[:1] == ["--merge"]:
        args = (argv or sys.argv[1:])[1:]
        return merge(args[:-1], args[-1])
    args, protocol = parse_args(argv)
    out_json = Path(args.out + ".json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    rows, meta = read(args.out) if out_json.is_file() else ([], {})
    info = {
        "tier": args.tier,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "hardware": meta.get("hardware") or hardware(),
        "date": meta.get("date") or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "protocol": asdict(protocol),
    }
    if rows and meta.get("protocol") != info["protocol"]:
        sys.exit(f"error: {out_json} holds rows of another protocol; use another --out")

    def save() -> dict[str, Any]:
        return write_result(args.out, info, rows)

    for spec in protocol.models:
        run_model(spec, protocol, rows, save)
    return save()


if __name__ == "__main__":
    main()
