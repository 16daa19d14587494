"""The compare report, from results.json alone: Markdown tables (Tables 1-4, Figs. 1a and 1c as numbers) and plots.

``render(results)`` is a pure function of the JSON, so ``regenerate(REPORT_DIR)`` rewrites exactly
the report the run wrote (the tests check this), and anyone can re-render after editing this file.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import EvopError
from ..files import atomic_path
from ..methods import METHODS
from ..record.markdown import markdown_table
from ..search import num_drop
from . import layout
from .plots import bars_plot, lines_plot

ABLATIONS = (
    ("EvoP (CCDS + EPPS)", "evop", "ccds"),
    ("w/o CCDS (random samples)", "evop", "random"),
    ("w/o EPPS (SLEB search on CCDS)", "sleb", "ccds"),
)
FIG1A = (("SLEB", "sleb"), ("EvoP (GA)", "evop"), ("exhaustive", "exhaustive"))


def mean_sd(values: list[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value); None for no values."""
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], digits: int = 2) -> str:
    stats = mean_sd(values)
    if stats is None:
        return "–"
    return f"{stats[0]:.{digits}f} ± {stats[1]:.{digits}f}" if len(values) > 1 else f"{stats[0]:.{digits}f}"


class Cells:
    """The cells of a results dict, looked up by (method, sampler, sparsity, cluster) across seeds."""

    def __init__(self, results: dict[str, Any]):
        self.results, self.config = results, results["config"]
        self.groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for cell in results["cells"]:
            self.groups[(cell["method"], cell["sampler"], cell["sparsity"], cell["cluster"])].append(cell)
        self.dense = next((c for c in results["cells"] if c["method"] == "dense"), None)

    def own_sampler(self, method: str) -> str:
        return layout.own_sampler(method, self.config["baseline_sampler"])

    def get(self, method: str, sampler: str, sparsity: float, cluster: int | None = None) -> list[dict[str, Any]]:
        return self.groups.get((method, sampler, sparsity, cluster), [])

    def main(self, method: str, sparsity: float) -> list[dict[str, Any]]:
        return self.get(method, self.own_sampler(method), sparsity)


def _ppl(cells: list[dict[str, Any]], spec: str) -> str:
    return fmt([c["heldout"][spec]["ppl"] for c in cells])


def _unit(method: str) -> str:
    return METHODS[method].unit if method in METHODS else "blocks"


def _protocol(results: dict[str, Any]) -> list[str]:
    c, blocks = results["config"], results["blocks"]
    ks = ", ".join(f"{s:g} → k={num_drop(blocks, s)}" for s in c["sparsities"])
    windows = results.get("heldout_windows") or {}
    held = "; ".join(
        f"{spec}{' (' + w['form'] + ')' if w.get('form') else ''}: {w['windows']} × {w['seq_len']} tokens"
        for spec, w in windows.items()
    )
    truncated = (
        f" — only the first {c['blocks']} of the model's blocks are kept, so its perplexities say nothing "
        "about the whole model: this protocol checks the machinery"
        if c["blocks"]
        else ""
    )
    search = ", ".join(f"{k}={v}" for k, v in c["search"].items()) or "evop-hub's defaults"
    return [
        "## Protocol",
        "",
        f"- Model: {results['model']}, {blocks} blocks{truncated}; {c['dtype']} on {c['device']}.",
        f"- Calibration: {c['calibration']}, {c['samples']} samples × {c['seq_len']} tokens. EvoP draws them with CCDS "
        f"({c['samples']} clusters × 1 sample); every other method with `{c['baseline_sampler']}` sampling. Seeds "
        f"{c['seeds']}: each cell's calibration and search seed.",
        f"- Held-out perplexity: non-overlapping windows, exp of the token-weighted mean NLL; {held or 'no windows recorded'}"
        f"{' (first windows only)' if c['eval_windows'] else ''}.",
        f"- Sparsity: block methods drop k = ceil(s × blocks) blocks ({ks}); wanda zeroes the fraction s of each block's "
        "weights (unstructured, nothing is removed from storage or time); slicegpt removes the fraction s of hidden "
        "channels. The same nominal s is therefore not the same parameter count: Table 1 gives the parameters removed.",
        f"- Search settings: {search}; exhaustive search (Fig. 1a) only where C(blocks, k) ≤ {c['exhaustive_limit']}.",
        *(
            [
                f"- Zero-shot tasks: only the first {c['task_limit']} examples of each task (`task_limit`): a quick look, "
                "not comparable with published numbers."
            ]
            if c.get("task_limit")
            else []
        ),
        f"- Every number is the mean ± sample standard deviation over the {len(c['seeds'])} seed(s) (a single value when "
        "one seed). Cells are in results.json with their command, seeds, versions, hardware and seconds.",
    ]


def _table1(cells: Cells) -> list[str]:
    c = cells.config
    lines = ["## Table 1: zero-shot tasks and speedup", ""]
    dense_tasks = (cells.dense or {}).get("tasks")
    unavailable = (dense_tasks or {}).get("unavailable")
    if not c["tasks"]:
        lines.append("Zero-shot tasks: not requested (`tasks = []`).")
    elif unavailable:
        lines.append(f"Zero-shot tasks ({', '.join(c['tasks'])}): unavailable: {unavailable}")
    with_tasks = bool(c["tasks"]) and not unavailable
    head = ["method", "sparsity", "parameters removed", "prefill speedup", "decode speedup"]
    head += [f"{t} acc" for t in c["tasks"]] + ["mean acc"] if with_tasks else []
    rows, missing = [], []
    if cells.dense is not None:
        row = ["dense", "0", "0.0%", "1.00", "1.00"]
        if with_tasks:
            row += [fmt([dense_tasks["scores"].get(t, {}).get("acc", math.nan)], 4) for t in c["tasks"]]
            row.append(fmt([dense_tasks["mean"].get("acc", math.nan)], 4))
        rows.append(row)
    for method in c["methods"]:
        for s in c["sparsities"]:
            group = cells.main(method, s)
            if not group:
                continue
            timed = [g["speed"] for g in group if "speed" in g]
            removed = [t["parameters_removed"] for t in timed] or [
                1 - g["parameters_after"] / g["parameters_before"] for g in group if "parameters_after" in g
            ]
            row = [
                method,
                f"{s:g} ({_unit(method)})",
                fmt([100 * r for r in removed], 1) + ("%" if removed else ""),
                fmt([t["speedup"]["prefill"] for t in timed]),
                fmt([t["speedup"]["decode"] for t in timed]),
            ]
            if with_tasks:
                scored = [g["tasks"] for g in group if "scores" in g.get("tasks", {})]
                row += [
                    fmt([t["scores"][name]["acc"] for t in scored if name in t["scores"]], 4) for name in c["tasks"]
                ]
                row.append(fmt([t["mean"]["acc"] for t in scored if "acc" in t["mean"]], 4))
                if len(scored) < len(group):
                    missing.append(_unscored(method, s, group, len(scored)))
            rows.append(row)
    lines += ["", *markdown_table(head, rows), *(["", *missing] if missing else [])]
    timed = next((g["speed"] for group in cells.groups.values() for g in group if "speed" in g), None)
    if timed:
        t = timed["config"]
        lines += [
            "",
            f"Speed: greedy generation, batch {t['batch_size']}, prompt {t['prompt_len']} tokens, "
            f"{t['new_tokens']} new tokens, median of {t['repeats']} after {t['warmup']} warm-up, first seed's "
            f"model only; speedup = dense time / pruned time on {timed['device']} ({timed['hardware']}).",
        ]
    elif not c["speed"]:
        lines += ["", "Speed: not measured (`speed = false`)."]
    return lines


def _unscored(method: str, sparsity: float, group: list[dict[str, Any]], scored: int) -> str:
    """A mean over some seeds would pass for the mean over all: say which seeds lack scores, and why."""
    reasons: dict[str, list[str]] = defaultdict(list)
    for cell in group:
        if "scores" not in cell.get("tasks", {}):
            reasons[cell.get("tasks", {}).get("unavailable", "not scored")].append(str(cell["seed"]))
    why = "; ".join(
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}: {reason}" for reason, seeds in reasons.items()
    )
    return f"- Zero-shot tasks of {method} at {sparsity:g}: {scored} of {len(group)} seeds ({why})."


def _domain_tables(cells: Cells) -> list[str]:
    c = cells.config
    calibration = c["calibration"].split(":")[0]
    inside = [spec for spec in c["eval"] if spec.split(":")[0] == calibration]
    outside = [spec for spec in c["eval"] if spec not in inside]
    lines = []
    for number, title, specs in ((2, "in-domain", inside), (3, "out-of-domain", outside)):
        lines += ["", f"## Table {number}: {title} perplexity (calibrated on {c['calibration']})", ""]
        if not specs:
            lines.append(f"No {title} evaluation corpus was given.")
            continue
        rows = [["dense", "0", *(_ppl([cells.dense], spec) for spec in specs)]] if cells.dense else []
        for s in c["sparsities"]:
            for method in c["methods"]:
                group = cells.main(method, s)
                if group:
                    rows.append(
                        [f"{method} ({cells.own_sampler(method)})", f"{s:g}", *(_ppl(group, spec) for spec in specs)]
                    )
        lines += markdown_table(["method (calibration)", "sparsity", *specs], rows)
    return lines


def _table4(cells: Cells) -> list[str]:
    c = cells.config
    lines = ["", "## Table 4: ablations", ""]
    if not c["ablations"]:
        return lines + ["Not run (`ablations = false`)."]
    rows = []
    for s in c["sparsities"]:
        for label, method, sampler in ABLATIONS:
            group = cells.get(method, sampler, s)
            rows.append(
                [
                    label,
                    f"{s:g}",
                    fmt([g["calibration_loss"] for g in group], 4),
                    *(_ppl(group, spec) for spec in c["eval"]),
                ]
            )
    lines += markdown_table(["variant", "sparsity", "calibration loss", *c["eval"]], rows)
    return lines + ["", "Calibration losses of w/o CCDS are on its own (random) samples, the others' on the CCDS set."]


def fig1a_series(cells: Cells) -> dict[str, list[tuple[float, float, float]]]:
    series = {}
    for label, method in FIG1A:
        points = []
        for s in cells.config["sparsities"]:
            stats = mean_sd([g["calibration_loss"] for g in cells.get(method, "ccds", s)])
            if stats:
                points.append((s, *stats))
        if points:
            series[label] = points
    return series


def _fig1a(cells: Cells, blocks: int) -> list[str]:
    c = cells.config
    lines = ["", "## Figure 1a: calibration loss against sparsity", ""]
    if not c["fig1a"]:
        return lines + ["Not run (`fig1a = false`)."]
    lines += [
        f"![calibration loss against sparsity]({layout.FIG1A})",
        "",
        "Mean NLL on the CCDS calibration set (the same set for the three searches at each seed); dense: "
        + fmt([g["dense_calibration_loss"] for g in cells.get("evop", "ccds", c["sparsities"][0])], 4)
        + ".",
        "",
    ]
    rows = []
    for s in c["sparsities"]:
        k = num_drop(blocks, s)
        patterns = math.comb(blocks, k)
        row = [f"{s:g}", str(k), f"{patterns:,}"]
        for _, method in FIG1A:
            group = cells.get(method, "ccds", s)
            row.append(
                fmt([g["calibration_loss"] for g in group], 4)
                if group
                else f"not run ({patterns:,} > {c['exhaustive_limit']:,})"
            )
        rows.append(row)
    return lines + markdown_table(["sparsity", "k", "patterns", *(label for label, _ in FIG1A)], rows)


def fig1c_series(cells: Cells, spec: str) -> tuple[list[str], dict[str, list[tuple[float, float]]]]:
    c = cells.config
    s = layout.cluster_sparsity(c["fig1c_sparsity"], c["sparsities"])
    groups = [f"C{j}" for j in range(c["samples"])] + ["all (CCDS)"]
    series = {}
    for method in c["fig1c_methods"]:
        values = []
        for j in [*range(c["samples"]), None]:
            stats = mean_sd([g["heldout"][spec]["ppl"] for g in cells.get(method, "ccds", s, j)])
            values.append(stats or (math.nan, 0.0))
        series[method] = values
    return groups, series


def _fig1c(cells: Cells) -> list[str]:
    c = cells.config
    lines = ["", "## Figure 1c: calibrating on a single cluster", ""]
    if not c["fig1c"]:
        return lines + ["Not run (`fig1c = false`)."]
    s = layout.cluster_sparsity(c["fig1c_sparsity"], c["sparsities"])
    lines += [
        f"![perplexity when calibrating on each cluster]({layout.FIG1C})",
        "",
        f"Sparsity {s:g}. C_j: all {c['samples']} calibration samples drawn from CCDS cluster j of "
        f"{c['calibration']}; all (CCDS): one sample per cluster (present when {s:g} is among the sparsities and "
        f"the method ran on CCDS there). The plot shows {c['eval'][0]}.",
        "",
    ]
    rows = []
    for method in c["fig1c_methods"]:
        for j in [*range(c["samples"]), None]:
            group = cells.get(method, "ccds", s, j)
            rows.append([method, "all (CCDS)" if j is None else f"C{j}", *(_ppl(group, spec) for spec in c["eval"])])
    return lines + markdown_table(["method", "calibration", *c["eval"]], rows)


def _cell_list(results: dict[str, Any]) -> list[str]:
    rows = []
    for cell in results["cells"]:
        what = cell.get("mask", cell.get("unit", ""))
        rows.append(
            [
                cell["id"],
                str(what),
                f"{cell['calibration_loss']:.4f}" if "calibration_loss" in cell else "–",
                str(cell.get("evaluations", "–")),
                f"{cell['provenance']['seconds']:.1f}",
            ]
        )
    return [
        "",
        "## Cells",
        "",
        "Dropped blocks (mask, numbering of the evaluated model) or pruning unit; new patterns "
        "evaluated on the calibration set's shared memo; seconds of the cell.",
        "",
        *markdown_table(["cell", "mask / unit", "calibration loss", "evaluations", "seconds"], rows),
    ]


def render(results: dict[str, Any]) -> str:
    """report.md from a results dict (results.json)."""
    if results.get("format") != layout.FORMAT:
        raise EvopError("not an evop-hub compare results.json; run `evop-hub compare` first")
    cells = Cells(results)
    head = [f"# evop-hub compare: {results['model']}", ""]
    if results.get("command"):
        head += [f"Command: `{results['command']}`", ""]
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    head += [
        f"Hardware: {results['hardware']}. Versions: {versions}. Report written {results['date']}; wall time of "
        f"the last run {results['seconds']:.0f} s ({results['cells_reused']} of {len(results['cells'])} cells "
        "reused from earlier runs).",
        "",
    ]
    # Reused cells may come from another machine (a GPU run, reported elsewhere): say where the numbers were made.
    made = sorted(
        {
            (
                c["provenance"]["hardware"].split(", load average")[0],
                ", ".join(f"{k} {v}" for k, v in c["provenance"]["versions"].items()),
            )
            for c in results["cells"]
            if c.get("provenance")
        }
    )
    if made and made != [(results["hardware"].split(", load average")[0], versions)]:
        head += ["Cells computed on: " + "; ".join(f"{hw} ({v})" for hw, v in made) + ".", ""]
    body = [
        *_protocol(results),
        "",
        *_table1(cells),
        *_domain_tables(cells),
        *_table4(cells),
        *_fig1a(cells, results["blocks"]),
        *_fig1c(cells),
        *_cell_list(results),
    ]
    return "\n".join(head + body) + "\n"


def write_report(out: str | Path, results: dict[str, Any]) -> Path:
    """Write report.md and the PNGs of ``results`` into ``out``."""
    out = Path(out)
    cells = Cells(results)
    with atomic_path(out / layout.REPORT) as tmp:
        tmp.write_text(render(results))
    if results["config"]["fig1a"]:
        lines_plot(
            fig1a_series(cells),
            "sparsity",
            "calibration loss (mean NLL)",
            f"{results['model']}: calibration loss",
            out / layout.FIG1A,
        )
    if results["config"]["fig1c"]:
        spec = results["config"]["eval"][0]
        groups, series = fig1c_series(cells, spec)
        bars_plot(
            groups,
            series,
            f"perplexity on {spec}",
            f"{results['model']}: calibrating on one cluster",
            out / layout.FIG1C,
        )
    return out / layout.REPORT


def regenerate(out: str | Path) -> Path:
    """Rewrite report.md and the figures of REPORT_DIR from its results.json (no model, no computation)."""
    path = Path(out).expanduser() / layout.RESULTS
    if not path.is_file():
        raise EvopError(f"{path} not found; run `evop-hub compare MODEL --output {out}` first")
    try:
        results = json.loads(path.read_text())
    except ValueError as exc:
        raise EvopError(f"{path} is not valid JSON ({exc}); run the comparison again with --resume") from None
    return write_report(path.parent, results)
