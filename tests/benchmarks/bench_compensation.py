"""Compensation after block removal (issue 24, item 4): how much of the dense-to-pruned held-out gap it recovers.

For every model, sparsity (k = ceil(sparsity x blocks), as ``evop-hub prune --sparsity`` rounds it) and
calibration seed: a calibration set drawn as ``evop-hub prune`` draws it (the default mixture of train splits,
CCDS), the mask a cheap block method chooses on it (``--mask-method``: ``angular`` by default, or the evop search
with a small budget), and one row per method:

* ``dense``: nothing removed;
* ``pruned``: the mask's blocks removed, no compensation;
* ``linear``: ``evop_hub.compensation`` as ``--compensate linear`` runs it (ReplaceMe's least squares per run of
  removed blocks, ridge toward the identity at ``DEFAULT_RIDGE``), folded into the MLP down projection;
* ``ridge=X``: the same least squares with ridge X (``ridge=0`` is ReplaceMe's plain least squares);
* ``cosine``: ReplaceMe's cosine objective, implemented here only: per run, the map ``T`` minimising the mean
  cosine distance between ``y + m T`` and the dense hidden state after the run (``m`` the MLP output of the block
  before the run, ``y`` its attention-residual part), fitted by full-batch Adam from the identity, folded the
  same way.

Each row holds the held-out mean next-token NLL (log-perplexity) per corpus (the first WINDOWS windows of
SEQ_LEN tokens of WikiText-2 test, wiki-leads test, pydoc test, Shakespeare test; a corpus that cannot be
loaded here is left out and named in the output), and for the compensated rows the fraction of the gap
recovered per corpus, ``(pruned - compensated) / (pruned - dense)``. Scoring folds the maps into a copy of the
model and skips the mask's blocks: the numbers are those of the saved checkpoint.

``OUT.json`` holds ``{"protocol", "command", "hardware", "rows", "summary"}``; ``OUT.md`` the tables. Rows are
written as they finish (atomically), and a run whose ``OUT.json`` exists skips the rows it holds (the protocol
must match), so a run cut by a device call's time limit continues on the next call.

    OMP_NUM_THREADS=2 python3 tests/benchmarks/bench_compensation.py --tier cpu \
        --out tests/benchmarks/bench_compensation_cpu
    python3 tests/benchmarks/bench_compensation.py --tier gpu --data-dir .gpudata/wikitext-2 \
        --out $OUT/bench_compensation_gpu

The acceptance test of issue 24: averaged over seeds and corpora, ``linear`` recovers at least 25 % of the gap at
20 % sparsity on every model, and no corpus's seed-mean NLL is above the pruned one (``summary[...]["meets"]``).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from bench_quality import HELDOUT, WIKITEXT, hardware, write

import evop_hub
from evop_hub.calibration import CalibrationConfig, calibrate
from evop_hub.compensation import DEFAULT_RIDGE
from evop_hub.compensation.linear import (
    applied,
    check_fold_exact,
    fit_linear,
    fold,
    projection,
    removed_runs,
)
from evop_hub.data import load_corpus
from evop_hub.data.corpora import load_mixture
from evop_hub.errors import EvopError
from evop_hub.evaluate.heldout import HeldOut
from evop_hub.models import LoadConfig, input_device
from evop_hub.prune import DEFAULT_MIXTURE
from evop_hub.scoring import BlockRunner
from evop_hub.search import SearchConfig, evaluator_for, num_drop, run_search

COMPENSATIONS = ("linear", "cosine")  # and ridge=X
ROW_KEYS = ("model", "k", "seed", "method")
GRID = ("models", "sparsities", "seeds", "methods")  # a resumed run may extend these; the rest must match


@dataclass
class Protocol:
    """One tier's settings, recorded in the JSON; any field can be overridden from the command line."""

    models: list[str]
    sparsities: list[float]
    seeds: list[int]
    samples: int  # calibration samples (CCDS clusters x 1)
    seq_len: int
    methods: list[str] = field(default_factory=lambda: ["dense", "pruned", "linear", "ridge=0", "cosine"])
    mask_method: str = "angular"  # "angular", "shortgpt" (one dense pass) or "evop" (the search, small budget)
    mask: list[int] | None = None  # this mask for every seed instead (mask_method is then "given")
    search: dict[str, Any] = field(default_factory=lambda: {"population": 8, "generations": 4, "patience": 2})
    sampler: str = "ccds"
    mixture: list[str] = field(default_factory=lambda: list(DEFAULT_MIXTURE))
    heldout: list[str] = field(default_factory=lambda: list(HELDOUT))
    heldout_windows: int = 8
    heldout_seq_len: int = 512
    cosine_steps: int = 200
    cosine_lr: float = 1e-3
    data_dir: str = str(WIKITEXT)
    dtype: str = "float32"
    device: str = "cpu"
    cache_gib: float = 1.0
    batch_size: int = 1  # calibration samples per forward while fitting


TIERS = {
    "cpu": Protocol(  # what a shared 2-core box finishes in about 15 minutes (bench_compensation_cpu.md)
        ["smollm2-135m"],
        [0.2],
        [0, 1],
        samples=16,
        seq_len=256,
        methods=["dense", "pruned", "linear", "cosine"],
        heldout_windows=4,
        heldout_seq_len=256,
        cosine_steps=100,
    ),
    "gpu": Protocol(
        ["smollm2-135m", "gemma3-270m"],
        [0.2, 0.3],
        [0, 1, 2],
        samples=40,
        seq_len=2048,
        heldout_windows=16,
        heldout_seq_len=2048,
        cosine_steps=500,
        dtype="bfloat16",
        device="cuda",
        cache_gib=4.0,
        batch_size=4,
    ),
}


def load_model(spec: str, protocol: Protocol):
    """NAME or NAME=PATH (loaded from PATH, recorded as NAME), in the protocol's dtype, on its device."""
    name, _, path = spec.partition("=")
    device_map = None if protocol.device == "cpu" else protocol.device
    loaded = evop_hub.load(path or name, LoadConfig(dtype=protocol.dtype, device_map=device_map))
    loaded.model.to(protocol.device)
    return name, loaded


def heldout_specs(protocol: Protocol) -> tuple[list[str], dict[str, str]]:
    """The held-out corpora that load here, and why the others were left out."""
    specs, missing = [], {}
    for spec in protocol.heldout:
        try:
            load_corpus(spec, data_dir=protocol.data_dir)
        except EvopError as error:
            missing[spec] = str(error)
            print(f"held-out: {spec} left out ({error})", file=sys.stderr, flush=True)
        else:
            specs.append(spec)
    return specs, missing


def missing_specs(specs: list[str], data_dir: str) -> list[str]:
    """The corpora of ``specs`` that cannot be loaded here (the mixture leaves them out, as prune's does)."""
    missing = []
    for spec in specs:
        try:
            load_corpus(spec, data_dir=data_dir)
        except EvopError:
            missing.append(spec)
    return missing


def calibration_ids(loaded, protocol: Protocol, seed: int) -> torch.Tensor:
    corpus = load_mixture(protocol.mixture, protocol.data_dir, skip_missing=True)
    config = CalibrationConfig(
        sampler=protocol.sampler,
        clusters=protocol.samples,
        seq_len=protocol.seq_len,
        seed=seed,
        data_dir=protocol.data_dir,
    )
    return calibrate(corpus, loaded.tokenizer, config).input_ids


def choose_mask(model, ids: torch.Tensor, k: int, protocol: Protocol, seed: int) -> list[int]:
    """The blocks ``protocol.mask_method`` removes on this calibration set (the evop search with its small budget)."""
    if protocol.mask is not None:
        return sorted(protocol.mask)
    if protocol.mask_method == "evop":
        config = replace(SearchConfig(seed=seed), **protocol.search)
    else:
        config = SearchConfig(method=protocol.mask_method, seed=seed, stages="")
    evaluator = evaluator_for(model, ids.to(input_device(model)), config, batch_size=protocol.batch_size)
    return sorted(run_search(evaluator, k, config, progress=False).mask)


def _batches(ids: torch.Tensor, size: int):
    for start in range(0, ids.shape[0], size):
        yield ids[start : start + size]


def _cosine_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1 - torch.nn.functional.cosine_similarity(pred, target, dim=-1).mean()


def fit_cosine(model, dropped: list[int], ids: torch.Tensor, protocol: Protocol) -> list[Any]:
    """ReplaceMe's cosine objective: per run (in order, later runs seeing the earlier maps as the folded model
    will), ``argmin_T mean cos_dist(y + m T, dense)`` by full-batch Adam from the identity, float32."""
    from evop_hub.compensation.linear import RunMap

    runner = BlockRunner(model)
    ids = ids.to(input_device(model))
    maps: list[RunMap] = []
    for run in removed_runs(dropped):
        if run[0] == 0:
            raise EvopError("cannot compensate a run that starts the model")
        j, last = run[0] - 1, run[-1]
        skip = {i for m in maps for i in m.removed}
        before = [i for i in range(j) if i not in skip]
        _, proj = projection(runner.blocks[j], j)
        ms, ys, targets = [], [], []
        for n, batch in enumerate(_batches(ids, protocol.batch_size)):
            ctx = runner.prepare(batch)
            seen: dict[str, torch.Tensor] = {}
            with torch.no_grad(), applied(model, maps):
                hidden = runner.run(ctx, before)
                if n == 0:
                    check_fold_exact(runner, ctx, j, hidden)
                handle = proj.register_forward_hook(lambda _m, _a, o: seen.update(m=o))
                try:
                    out = runner.block(j, hidden, ctx)
                finally:
                    handle.remove()
                dense = runner.run(ctx, range(last + 1))
            d = out.shape[-1]
            m = seen["m"].reshape(-1, d).float()
            ms.append(m)
            ys.append(out.reshape(-1, d).float() - m)
            targets.append(dense.reshape(-1, d).float())
        m, y, target = torch.cat(ms), torch.cat(ys), torch.cat(targets)
        eye = torch.eye(m.shape[1], device=m.device)
        t = eye.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([t], lr=protocol.cosine_lr)
        with torch.no_grad():
            start = float(_cosine_distance(y + m, target))
        for _ in range(protocol.cosine_steps):
            optimizer.zero_grad()
            loss = _cosine_distance(y + m @ t, target)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            end = float(_cosine_distance(y + m @ t, target))
            mse = [float(((y + m @ x - target) ** 2).sum(1).mean()) for x in (eye, t)]
        maps.append(RunMap(run, j, t.detach().double().cpu(), m.shape[0], *mse))
        maps[-1].cosine = (start, end)  # type: ignore[attr-defined]
        del m, y, target, ms, ys, targets
    return maps


def fit(method: str, model, mask: list[int], ids: torch.Tensor, protocol: Protocol) -> tuple[list[Any], dict]:
    """The maps of one compensation method and what to record about the fit."""
    if method == "cosine":
        maps = fit_cosine(model, mask, ids, protocol)
        info = {"objective": "cosine", "steps": protocol.cosine_steps, "lr": protocol.cosine_lr}
    else:
        ridge = DEFAULT_RIDGE if method == "linear" else float(method.partition("=")[2])
        maps = fit_linear(model, mask, ids.to(input_device(model)), ridge=ridge, batch_size=protocol.batch_size)
        info = {"objective": "least squares", "ridge": ridge}
    info["runs"] = [
        {
            "removed": m.removed,
            "folded_into_block": m.block,
            "hidden_mse": [m.mse_before, m.mse_after],
            **({"cosine_distance": list(m.cosine)} if hasattr(m, "cosine") else {}),
        }
        for m in maps
    ]
    return maps, info


def recovered(dense: dict[str, float], pruned: dict[str, float], comp: dict[str, float]) -> dict[str, float]:
    """Fraction of the dense-to-pruned gap closed, per corpus: 1 is the dense model, 0 the pruned, < 0 worse."""
    return {c: (pruned[c] - comp[c]) / (pruned[c] - dense[c]) for c in comp}


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, k, compensation): seed means per corpus, the mean recovered fraction over seeds and corpora
    (and the fraction of the seed- and corpus-mean gap), and whether no corpus got worse than the pruned model."""
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        if r.get("heldout") is not None:
            cells.setdefault((r["model"], r["k"]), {}).setdefault(r["method"], []).append(r)
    out = []
    for (model, k), methods in cells.items():
        if "dense" not in methods or "pruned" not in methods:
            continue
        dense = methods["dense"][0]["heldout"]
        pruned_rows = {r["seed"]: r for r in methods["pruned"]}
        for method, rs in methods.items():
            if method in ("dense", "pruned"):
                continue
            seeds = sorted(r["seed"] for r in rs if r["seed"] in pruned_rows)
            by_seed = {r["seed"]: r for r in rs}
            corpora = list(dense)
            comp = {c: mean(by_seed[s]["heldout"][c] for s in seeds) for c in corpora}
            pruned = {c: mean(pruned_rows[s]["heldout"][c] for s in seeds) for c in corpora}
            per_corpus = {c: mean(by_seed[s]["recovered"][c] for s in seeds) for c in corpora}
            recovered_mean = mean(per_corpus.values())
            gap = mean(pruned.values()) - mean(dense.values())
            of_mean_gap = (mean(pruned.values()) - mean(comp.values())) / gap
            worst = max(comp[c] - pruned[c] for c in corpora)
            out.append(
                {
                    "model": model,
                    "k": k,
                    "sparsity": rs[0]["sparsity"],
                    "method": method,
                    "seeds": seeds,
                    "recovered": per_corpus,
                    "recovered_mean": recovered_mean,
                    "recovered_of_mean_gap": of_mean_gap,
                    "worst_corpus_change": worst,
                    "hurts_none": worst <= 0,
                    "meets": recovered_mean >= 0.25 and worst <= 0,
                }
            )
    return out


def fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    rows, protocol = result["rows"], result["protocol"]
    corpora = list(next((r["heldout"] for r in rows if r.get("heldout")), {}))
    short = [c.split(":")[0] for c in corpora]
    lines = [
        "| model | k | seed | method | mask | " + " | ".join(short) + " | mean | recovered (mean of corpora) |",
        "|---" * (7 + len(short)) + "|",
    ]
    for r in rows:
        if r.get("heldout") is None:
            lines.append(f"| {r['model']} | {r['k']} | {r['seed']} | {r['method']} | - | refused: {r['error']} |")
            continue
        rec = r.get("recovered")
        cells = [fmt(r["heldout"][c]) for c in corpora]
        mask = ",".join(map(str, r["mask"])) if r["mask"] else "-"
        lines.append(
            f"| {r['model']} | {r['k']} | {r['seed']} | {r['method']} | {mask} | "
            + " | ".join(cells)
            + f" | {fmt(r['heldout_mean'])} | {fmt(mean(rec.values()), 3) if rec else '-'} |"
        )
    lines += [
        "",
        "Summary over seeds (recovered = (pruned - compensated) / (pruned - dense), per corpus, averaged over seeds):",
        "",
        "| model | k | method | seeds | "
        + " | ".join(short)
        + " | mean recovered | of the mean gap | worst corpus change | meets (>= 0.25, none hurt) |",
        "|---" * (8 + len(short)) + "|",
    ]
    for s in result["summary"]:
        lines.append(
            f"| {s['model']} | {s['k']} | {s['method']} | {len(s['seeds'])} | "
            + " | ".join(fmt(s["recovered"][c], 3) for c in corpora)
            + f" | {fmt(s['recovered_mean'], 3)} | {fmt(s['recovered_of_mean_gap'], 3)} | "
            f"{s['worst_corpus_change']:+.4f} | {'yes' if s['meets'] else 'no'} |"
        )
    missing = result.get("heldout_missing") or {}
    notes = [f"Held-out corpora left out (not loadable here): {', '.join(missing)}."] if missing else []
    if result.get("calibration_missing"):
        notes.append(
            f"Calibration mixture parts left out (not loadable here): {', '.join(result['calibration_missing'])}."
        )
    models = ", ".join(dict.fromkeys(r["model"] for r in rows))
    header = [
        f"# Compensation after block removal: dense, pruned, compensated on held-out text ({models})",
        "",
        "Command"
        + ("s (run, then resumed)" if len(result.get("commands", [])) > 1 else "")
        + ": "
        + "; ".join(f"`{c}`" for c in result.get("commands", [result.get("command", "")])),
        "",
        f"Hardware: {result.get('hardware', '')}. {result.get('seconds', 0):.0f} s.",
        "",
        (
            f"Masks: {protocol['mask_method']} on the calibration set"
            if protocol["mask"] is None
            else f"Mask: {','.join(map(str, protocol['mask']))} for every seed"
        )
        + f"; calibration: {protocol['sampler']} over "
        f"{'+'.join(protocol['mixture'])}, {protocol['samples']} x {protocol['seq_len']} tokens; held-out: "
        f"{protocol['heldout_windows']} x {protocol['heldout_seq_len']} tokens per corpus, mean NLL per token.",
        *notes,
        "",
    ]
    return "\n".join(header + lines) + "\n"


def run_model(spec: str, protocol: Protocol, result: dict[str, Any], save) -> None:
    rows = result["rows"]
    name = spec.partition("=")[0]
    done = {tuple(r[key] for key in ROW_KEYS) for r in rows}
    loaded = heldout = None
    for sparsity in protocol.sparsities:
        for seed in protocol.seeds:
            if loaded is None:
                name, loaded = load_model(spec, protocol)
            k = num_drop(len(loaded.record.kept_blocks), sparsity)
            todo = [m for m in protocol.methods if (name, k, seed, m) not in done]
            if not todo:
                continue
            if heldout is None:
                specs, result["heldout_missing"] = heldout_specs(protocol)
                result["calibration_missing"] = missing_specs(protocol.mixture, protocol.data_dir)
                heldout = HeldOut.from_corpora(
                    loaded.model,
                    loaded.tokenizer,
                    specs,
                    protocol.heldout_seq_len,
                    protocol.heldout_windows,
                    protocol.data_dir,
                    int(protocol.cache_gib * (1 << 30)),
                )
            start = time.perf_counter()
            ids = calibration_ids(loaded, protocol, seed)
            previous = next((r for r in rows if (r["model"], r["k"], r["seed"]) == (name, k, seed) and r["mask"]), None)
            mask = previous["mask"] if previous else choose_mask(loaded.model, ids, k, protocol, seed)
            base = {
                "model": name,
                "k": k,
                "sparsity": sparsity,
                "seed": seed,
                "mask_method": protocol.mask_method,
                "calibration_tokens": int(ids.numel()),
            }
            mask_seconds = round(time.perf_counter() - start, 2)
            scores = {}  # the gap's ends: from earlier rows of a resumed run, else scored now
            for method, skipped in (("dense", ()), ("pruned", mask)):
                found = [r for r in rows if (r["model"], r["k"], r["seed"], r["method"]) == (name, k, seed, method)]
                scores[method] = found[0]["heldout"] if found else heldout.score(skipped)
            for method in todo:
                start = time.perf_counter()
                row = {**base, "method": method, "mask": [] if method == "dense" else mask}
                if method in scores:
                    per_corpus, info = scores[method], {"mask_seconds": mask_seconds}
                else:
                    try:
                        maps, info = fit(method, loaded.model, mask, ids, protocol)
                    except EvopError as error:
                        rows.append({**row, "heldout": None, "heldout_mean": None, "error": str(error)})
                        save()
                        print(json.dumps({"method": method, "error": str(error)}), flush=True)
                        continue
                    model = copy.deepcopy(loaded.model)
                    for m in maps:
                        fold(model, m.block, m.transform)
                    per_corpus = heldout.on(model).score(mask)
                    del model
                rows.append(
                    {
                        **row,
                        "heldout": per_corpus,
                        "heldout_mean": mean(per_corpus.values()),
                        "recovered": None
                        if method in ("dense", "pruned")
                        else recovered(scores["dense"], scores["pruned"], per_corpus),
                        "seconds": round(time.perf_counter() - start, 2),
                        "fit": info,
                    }
                )
                save()
                print(
                    json.dumps({key: rows[-1][key] for key in ("model", "k", "seed", "method", "heldout_mean")}),
                    flush=True,
                )


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Protocol]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=TIERS, default="cpu")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--overwrite", action="store_true", help="start again instead of resuming OUT.json")
    floats = lambda text: [float(x) for x in text.split(",")]  # noqa: E731
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    words = lambda text: text.split(",")  # noqa: E731
    parser.add_argument("--models", type=words, help="comma-separated NAME or NAME=PATH")
    parser.add_argument("--sparsities", type=floats)
    parser.add_argument("--seeds", type=ints, help="calibration (and mask search) seeds")
    parser.add_argument("--samples", type=int, help="calibration samples")
    parser.add_argument("--seq-len", type=int, help="calibration tokens per sample")
    parser.add_argument("--methods", type=words, help="dense,pruned,linear,ridge=X,cosine")
    parser.add_argument("--mask-method", choices=("angular", "shortgpt", "evop"))
    parser.add_argument("--mask", type=ints, help="remove these blocks for every seed (no mask method)")
    parser.add_argument("--search", type=json.loads, help='evop search overrides, JSON: {"population": 8}')
    parser.add_argument("--sampler", choices=("ccds", "random"))
    parser.add_argument("--mixture", type=lambda t: t.split("+"), help="calibration corpora, joined by +")
    parser.add_argument("--heldout", type=words, help="held-out corpus specs")
    parser.add_argument("--heldout-windows", type=int)
    parser.add_argument("--heldout-seq-len", type=int)
    parser.add_argument("--cosine-steps", type=int)
    parser.add_argument("--cosine-lr", type=float)
    parser.add_argument("--data-dir")
    parser.add_argument("--dtype")
    parser.add_argument("--device")
    parser.add_argument("--cache-gib", type=float)
    parser.add_argument("--batch-size", type=int)
    args = parser.parse_args(argv)
    overrides = {
        f.name: getattr(args, f.name)
        for f in Protocol.__dataclass_fields__.values()
        if getattr(args, f.name, None) is not None
    }
    protocol = replace(TIERS[args.tier], **overrides)
    if protocol.mask is not None:
        protocol = replace(protocol, mask_method="given")
    for method in protocol.methods:
        if method not in ("dense", "pruned", *COMPENSATIONS) and not method.startswith("ridge="):
            parser.error(f"unknown method {method!r}")
    if not {"dense", "pruned"} <= set(protocol.methods):
        parser.error("--methods must include dense and pruned (the gap is theirs)")
    return args, protocol


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, protocol = parse_args(argv)
    out = Path(args.out)
    path = out.with_suffix(".json")
    result: dict[str, Any] = {"protocol": asdict(protocol), "rows": []}
    if path.is_file() and not args.overwrite:
        previous = json.loads(path.read_text())
        if any(previous["protocol"].get(key) != value for key, value in result["protocol"].items() if key not in GRID):
            raise SystemExit(f"{path} was written with another protocol; pass --overwrite or another --out")
        result = {**previous, "protocol": result["protocol"]}
    result["command"] = shlex.join([Path(sys.executable).name, *(sys.argv if argv is None else ["bench", *argv])])
    result["commands"] = [*result.get("commands", []), result["command"]]  # a resumed run adds its command
    result["hardware"] = hardware()
    start = time.perf_counter()
    seconds = result.get("seconds", 0.0)

    def save() -> None:
        result["seconds"] = round(seconds + time.perf_counter() - start, 1)
        result["summary"] = summary(result["rows"])
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path, json.dumps(result, indent=1) + "\n")
        write(out.with_suffix(".md"), markdown(result))

    for spec in protocol.models:
        run_model(spec, protocol, result, save)
    save()
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
