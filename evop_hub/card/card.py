"""The model card (README.md) of a pruned checkpoint, rendered from ``evop_pruning.json``.

One Jinja template plus small pure functions that turn the record into the Hub's metadata
and into Markdown tables. The card is derived data: ``evop-hub card DIR`` rebuilds it any
time (after new evaluations), so nothing in it is ever edited by hand or stored elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..record import PruningRecord
from ..record.markdown import markdown_table
from ..record.results import SpeedResult, TasksResult

PROJECT_URL = "https://github.com/evop-hub/evop-hub"

# Corpora of evop_hub.data that live on the Hub, as the Hub names them (dataset id, config); only these
# can be a card's `datasets:` (the others, wiki-leads, pydoc, shakespeare and local files, appear in its text).
HUB_DATASETS: dict[str, tuple[str, str | None]] = {
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
    "c4": ("allenai/c4", "en"),
}

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{{ load_id }}"{{ load_kwargs }})
tokenizer = AutoTokenizer.from_pretrained("{{ load_id }}"{{ tokenizer_kwargs }})
```

{{ format_note }}
{% if source_note %}
{{ source_note }}
{% endif %}{% if width %}
## What was pruned

- {{ width_summary }}
- Sparsity: {{ sparsity }}
- Parameters: {{ parameters }}
{% else %}
## What was removed

- Blocks dropped (original numbering, 0-based): **{{ dropped }}**
- Blocks kept: {{ kept_count }} of {{ num_blocks }}
- Parameters: {{ parameters }}

Block pattern (1 = kept, 0 = dropped), original numbering:

{{ pattern_table }}

Mapping of the new block index to the original one:

{{ mapping_table }}
{% if compensation_lines %}
Compensation (training-free, folded into the kept weights; the checkpoint's shapes and config are unchanged):
{% for line in compensation_lines %}
- {{ line }}
{%- endfor %}
{% endif %}{% endif %}{% if calibration_loss or scores_table or tasks_table or speed_table %}
## Results
{% if calibration_loss %}
{{ calibration_loss }}
{% endif %}{% if scores_table %}
Perplexity (lower is better), dense source against this model:

{{ scores_table }}
{% endif %}{% if tasks_table %}
Zero-shot tasks of this model ([lm-evaluation-harness](https://github.com/EleutherAI/lm-evaluation-harness)):

{{ tasks_table }}
{% endif %}{% if speed_table %}
Speed, dense source against this model:

{{ speed_table }}
{% endif %}{% endif %}
## How it was found

- Method: {{ method }}
{%- for line in search_lines %}
- {{ line }}
{%- endfor %}
{% if calibration_lines %}
### Calibration data
{% for line in calibration_lines %}
- {{ line }}
{%- endfor %}
{% if clusters_table %}
{{ clusters_table }}
{% endif %}{% endif %}
## Reproduce

```bash
{{ command }}
```

Software: {{ versions }}. Created {{ created }}.

## License

{{ license_note }}
"""


# ---------------------------------------------------------------- pure helpers
def table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table, values written as the card writes numbers (``_cell``)."""
    return "\n".join(markdown_table(header, rows, cell=_cell))


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def pattern_table(num_blocks: int, dropped: list[int], width: int = 16) -> str:
    """The 0/1 keep pattern, `width` blocks per row so 80-block models stay readable."""
    gone = set(dropped)
    rows = []
    for start in range(0, num_blocks, width):
        stop = min(start + width, num_blocks)
        rows.append([f"{start}–{stop - 1}", *("0" if i in gone else "1" for i in range(start, stop))])
    header = ["blocks", *(f"+{i}" for i in range(min(width, num_blocks)))]  # offsets from the row's first block
    return table(header, [row + [""] * (len(header) - len(row)) for row in rows])


def mapping_table(kept: list[int], width: int = 16) -> str:
    rows = []
    for start in range(0, len(kept), width):
        chunk = kept[start : start + width]
        rows.append([f"new {start}–{start + len(chunk) - 1}", *chunk, *[""] * (width - len(chunk))])
    header = ["", *(f"+{i}" for i in range(min(width, len(kept))))]
    return table(header, [row[: len(header)] for row in rows])


def corpus_dataset(corpus_key: str) -> tuple[str, str | None, str | None]:
    """'wikitext2:test' -> (hub dataset id, config, split); unknown corpora keep their own name."""
    name, _, split = corpus_key.partition(":")
    dataset, config = HUB_DATASETS.get(name.lower(), (name, None))
    if name.lower() in HUB_DATASETS and split == "valid":
        split = "validation"  # the Hub datasets' own split name
    return dataset, config, split or None


def default_repo_name(record: PruningRecord) -> str:
    """``{model}-evop-{kept}L`` for evop's search, ``{model}-evop-{method}-{kept}L`` for the other block methods and
    ``{model}-evop-{method}-{percent}pct`` for the width baselines: models pruned differently never share a name."""
    base = (record.source_hub_id or Path(record.source_model).name or "model").split("/")[-1]
    method = "" if record.method == "evop" else f"{record.method}-"
    size = (
        f"{len(record.kept_blocks)}L"
        if record.sparsity_unit == "blocks"
        else f"{round(100 * (record.sparsity or 0))}pct"
    )
    name = f"{base}-evop-{method}{size}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:96]


def perplexity_rows(scores: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for corpus, entry in (scores.get("perplexity") or {}).items():
        dense, pruned = entry.get("dense"), entry.get("pruned")
        change = f"{pruned / dense - 1:+.1%}" if dense and pruned is not None else None
        rows.append([corpus, entry.get("form"), entry.get("seq_len"), dense, pruned, change])
    return rows


def task_metric(metrics: dict[str, float | None]) -> tuple[str, float] | None:
    """The headline metric of a harness task: acc_norm where the task has it, else acc."""
    for name in ("acc_norm", "acc"):
        if metrics.get(name) is not None:
            return name, metrics[name]
    return None


def eval_results(record: PruningRecord) -> list[EvalResult]:
    """model-index entries: the pruned model's own numbers, with window length and text form."""
    results = []
    for corpus, entry in (record.scores.get("perplexity") or {}).items():
        if entry.get("pruned") is None:
            continue
        dataset, config, split = corpus_dataset(corpus)
        args = {k: entry[k] for k in ("seq_len", "form") if entry.get(k) is not None}
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="Language modelling",
                dataset_type=dataset,
                dataset_name=corpus,
                dataset_config=config,
                dataset_split=split,
                dataset_args=args or None,
                metric_type="perplexity",
                metric_name="perplexity" + "".join(f", {k} {v}" for k, v in args.items()),
                metric_value=float(entry["pruned"]),
            )
        )
    tasks = record.scores.get("tasks") or {}
    if tasks.get("limit") is None:  # numbers from a --limit subset are not comparable: card body only
        for task, metrics in (tasks.get("scores") or {}).items():
            if (headline := task_metric(metrics)) is None:
                continue
            results.append(
                EvalResult(
                    task_type="text-generation",
                    task_name=f"{tasks.get('num_fewshot', 0)}-shot {task} (lm-eval {tasks.get('lm_eval_version', '')})",
                    dataset_type=task,
                    dataset_name=task,
                    metric_type=headline[0],
                    metric_value=float(headline[1]),
                )
            )
    return results


def license_link(record: PruningRecord, license_files: list[str] | None) -> str | None:
    """The base's ``license_link`` as it resolves from this repo: a file name stays when the file is
    copied here; otherwise it points into the base repo, or is dropped when there is none to point at."""
    link = record.license_link
    if not link or "://" in link or link in (license_files or []):
        return link
    hub_id, revision = record.hub_base()
    if hub_id:
        return f"https://huggingface.co/{hub_id}/blob/{revision or 'main'}/{link}"
    return None


def card_data(record: PruningRecord, model_name: str, license_files: list[str] | None = None) -> ModelCardData:
    """Only keys the Hub understands; no base_model_relation (the Hub has no value for pruning)."""
    # The Hub reads `datasets` as the data the weights were fitted on: here, the calibration corpus, when it is
    # a Hub dataset (evaluation corpora are in the model-index; a local path must never be published).
    calibration = (record.calibration or {}).get("corpus")
    dataset = corpus_dataset(str(calibration))[0] if calibration else None
    datasets = [dataset] if dataset in {hub_id for hub_id, _ in HUB_DATASETS.values()} else []
    arch = record.model_type or record.architecture.removesuffix("ForCausalLM").lower()  # records before model_type
    return ModelCardData(
        base_model=record.hub_base()[0],
        library_name="transformers",
        pipeline_tag="text-generation",
        license=record.license,
        license_name=record.license_name,
        license_link=license_link(record, license_files),
        tags=[
            "pruned",
            "layer-pruning" if record.sparsity_unit == "blocks" else "width-pruning",
            "evop",
            f"evop-{record.method}",
            arch,
        ],
        datasets=datasets or None,
        model_name=model_name,
        eval_results=eval_results(record) or None,
    )


# Where readers find how each method compares on held-out text; a card describes its own model only.
RESULTS_URL = f"{PROJECT_URL}/blob/main/tests/benchmarks/RESULTS.md"


def _search_lines(record: PruningRecord) -> list[str]:
    """From ``SearchResult.summary()``: settings, work done and time."""
    search = record.search or {}
    config, stats = search.get("config") or {}, search.get("stats") or {}
    lines = []
    if search.get("method"):
        settings = ", ".join(
            f"{k} {config[k]}"
            for k in ("fitness", "stages", "population", "generations", "seed")
            if config.get(k) not in (None, "")
        )
        lines.append(f"Search: `{search['method']}`" + (f" ({settings})" if settings else ""))
    if search.get("steps") is not None:
        resumed = " (resumed)" if search.get("resumed") else ""
        lines.append(f"Search steps (rows of its trace): {search['steps']}{resumed}")
    if stats.get("evaluations") is not None:
        lines.append(f"Candidate masks evaluated: {stats['evaluations']:,}")
    if search.get("seconds") is not None:
        lines.append(f"Search time: {search['seconds']:.1f} s")
    if record.sparsity is not None:
        lines.append(f"Sparsity: {_cell(record.sparsity)} ({record.sparsity_unit})")
    if search.get("method"):
        lines.append(f"How the block methods compare on held-out text: [evop-hub's benchmarks]({RESULTS_URL})")
    return lines


def _calibration_lines(calibration: dict[str, Any] | None) -> list[str]:
    """From ``CalibrationSet.summary()``: where the calibration text came from and how it was drawn."""
    if not calibration:
        return []
    keys = ("corpus", "split", "form", "sampler", "embedder", "k", "n", "seq_len", "chunks", "seed")
    lines = [f"{key}: `{calibration[key]}`" for key in keys if calibration.get(key) is not None]
    nmi = calibration.get("nmi")
    if isinstance(nmi, dict) and "clusters" in nmi:
        lines.append(
            f"clusters against known topics: NMI {nmi['clusters']} (random clusters of the same sizes: {nmi.get('random_same_sizes')})"
        )
    return lines


def _clusters_table(calibration: dict[str, Any] | None) -> str:
    """Per cluster: size, top terms and the snippet nearest its centroid (what the data looks like)."""
    clusters = (calibration or {}).get("clusters") or []
    rows = []
    for i, cluster in enumerate(clusters):
        snippet = (cluster.get("snippets") or [""])[0]
        snippet = snippet if len(snippet) <= 160 else snippet[:157] + "..."
        rows.append([i, cluster.get("size"), ", ".join(cluster.get("top_terms") or []), snippet])
    return table(["cluster", "size", "top terms", "representative snippet"], rows) if rows else ""


def _compensation_lines(record: PruningRecord) -> list[str]:
    """From ``record.compensation`` (``--compensate linear``): which projections took a map, fitted on what, to what effect."""
    comp = record.compensation
    if not comp:
        return []
    data = ", ".join(f"{k} `{v}`" for k, v in (comp.get("calibration") or {}).items()) or "the calibration set"
    lines = [
        f"Method: `{comp['method']}` ({comp.get('reference', '')}), {comp.get('objective', '')}, ridge {comp.get('ridge')}",
        f"Fitted on {comp.get('samples')} samples, {comp.get('tokens')} tokens: {data}",
    ]
    for run in comp.get("runs", []):
        mse = run.get("hidden_mse") or {}
        lines.append(
            f"Blocks {', '.join(map(str, run['removed_blocks']))} replaced by a map folded into `{run['folded_into']}` "
            f"(original block {run['folded_into_block']}); hidden-state MSE {mse.get('uncompensated', 0):.4g} -> "
            f"{mse.get('compensated', 0):.4g}"
        )
    nll, kl = comp.get("calibration_nll") or {}, comp.get("calibration_kl") or {}
    if nll:
        lines.append(
            f"Calibration NLL: pruned {nll['pruned']:.4f} -> compensated {nll['compensated']:.4f} "
            f"(all blocks: {nll['dense']:.4f})"
            + (f"; KL(dense || model): {kl['pruned']:.4f} -> {kl['compensated']:.4f}" if kl else "")
            + "; measured on the text it was fitted on, not held out"
        )
    return lines


def _calibration_loss(record: PruningRecord) -> str:
    """From ``scores["calibration_loss"]`` (dense/pruned, as `prune` stores it), else the search summary."""
    loss, search = (record.scores or {}).get("calibration_loss"), record.search or {}
    pruned, dense = (
        (loss.get("pruned"), loss.get("dense"))
        if isinstance(loss, dict)
        else (search.get("loss"), search.get("dense_loss"))
    )
    if pruned is None:
        return ""
    of_dense = f" (all blocks: {dense:.4f})" if dense is not None else ""
    fitness = (search.get("config") or {}).get("fitness", "nll")
    what = "mean KL(dense || pruned) of the next-token distributions" if fitness == "kl" else "mean next-token NLL"
    return f"Calibration loss ({what} on the calibration set): {pruned:.4f}{of_dense}."


def _tasks_table(tasks: dict[str, Any]) -> str:
    text = TasksResult.from_dict(tasks).table()
    if tasks.get("limit") is not None:
        text += f"\n\nOnly {tasks['limit']} examples per task (--limit): a quick look, not comparable with published numbers."
    return text


def _speed_table(speed: dict[str, Any]) -> str:
    return SpeedResult.from_dict(speed).table()


def _parameters(record: PruningRecord) -> str:
    before, after = record.parameters_before, record.parameters_after
    if before is None or after is None:
        return "not recorded"
    return f"{after:,} (from {before:,}; {record.parameter_reduction:.1%} fewer)"


def _source_note(record: PruningRecord) -> str:
    origin = record.chain()[-1]  # GGUF dequantization carries through every later pruning
    fmt = origin.get("source_format") or "transformers"
    if fmt.startswith("gguf"):
        quant = fmt.partition(":")[2] or "quantized"
        return (
            f"> **Note**: the weights were dequantized from a {quant} GGUF file of "
            f"`{origin.get('source_hub_id') or origin['source_model']}`, not taken from the "
            "original full-precision checkpoint; they carry that quantization error."
        )
    return ""


def _lineage_note(record: PruningRecord) -> str:
    """Block numbers count from the source; when the source was itself pruned, say what it was."""
    steps = []
    for link in record.chain()[1:]:
        name = link.get("source_hub_id") or link["source_model"]
        if link.get("sparsity_unit", "blocks") == "blocks":
            steps.append(
                f"`{name}` with blocks {link['dropped_blocks']} of its {link['num_blocks']} removed ({link['method']})"
            )
        else:
            share = (
                f"{link['sparsity']:.0%} of its {link['sparsity_unit']}"
                if link.get("sparsity") is not None
                else link["sparsity_unit"]
            )
            steps.append(f"`{name}` with {share} pruned ({link['method']})")
    if not steps:
        return ""
    return (
        f" Its source `{record.source_model}` was itself made by evop-hub: "
        + ", made from ".join(steps)
        + f"; block numbers below count the blocks of `{record.source_model}`."
    )


def _license_note(record: PruningRecord, copied: list[str] | None) -> str:
    hub_id = record.hub_base()[0]
    base = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else "the base model"
    terms = f"{record.license} ({record.license_name})" if record.license_name else record.license
    lead = f"`{terms}`, inherited from {base}." if record.license else f"Same terms as {base}."
    link = license_link(record, copied)
    if link and "://" in link:
        lead += f" [The license]({link})."
    if copied:
        return lead + " Its files are copied here: " + ", ".join(f"[{name}]({name})" for name in copied) + "."
    if copied is None:
        return (
            lead
            + " The base repository's license files could not be fetched when this card was written (offline, or no Hub repository known); read them on the base model's page."
        )
    return lead + " The base repository has no separate license file."


def render(
    record: PruningRecord,
    repo_id: str | None = None,
    license_files: list[str] | None = None,
    revision: str | None = None,
) -> ModelCard:
    """The card for a record. ``repo_id`` (and a ``revision`` other than main: the branch pushed to) go in the
    loading snippet; ``license_files`` None means unknown."""
    name = repo_id.split("/")[-1] if repo_id else default_repo_name(record)
    format_note = _format_note(record)
    return ModelCard.from_template(
        card_data(record, name, license_files),
        template_str=TEMPLATE,
        title=name,
        summary=_summary(record),
        format_note=format_note,
        source_note=_source_note(record),
        **_loading(repo_id, revision, format_note),
        **_what_was_pruned(record),
        **_results(record),
        **_how_it_was_found(record),
        license_note=_license_note(record, license_files),
    )


def _summary(record: PruningRecord) -> str:
    """The opening paragraph: what was removed from which model, the source's own lineage, and the decode
    speedup when it was measured."""
    base = record.source_hub_id or record.source_model
    if record.sparsity_unit != "blocks":  # a width baseline (wanda, slicegpt): no block was removed
        search = record.search or {}
        summary = f"`{base}` pruned by evop-hub's `{record.method}` baseline: {search.get('summary', record.method)}."
    else:
        summary = (
            f"`{base}` with {len(record.dropped_blocks)} of its {record.num_blocks} transformer blocks removed "
            f"by evop-hub ({record.method}; EvoP, Wu et al. 2025): "
            f"{len(record.kept_blocks)} blocks remain"
            + (
                f", with {record.parameter_reduction:.1%} fewer parameters."
                if record.parameter_reduction is not None
                else "."
            )
        )
    summary += _lineage_note(record)
    speed = (record.scores or {}).get("speed")
    if speed and speed.get("speedup", {}).get("decode"):
        summary += f" It decodes {speed['speedup']['decode']:.2f}× as fast as the source ({speed.get('hardware', speed.get('device'))})."
    return summary


def _format_note(record: PruningRecord) -> str:
    """How the checkpoint loads: a width baseline says it itself (SliceGPT's needs its own modeling code)."""
    if record.sparsity_unit != "blocks":
        return (record.search or {}).get("format", "")
    return f"It is a standard `{record.architecture}` checkpoint: no custom code, no evop-hub needed to use it."


def _loading(repo_id: str | None, revision: str | None, format_note: str) -> dict[str, Any]:
    """The loading snippet's arguments: the repo (or a placeholder directory), its branch, remote code."""
    branch = f", revision={revision!r}" if revision and revision != "main" else ""
    return {
        "load_id": repo_id or "path/to/this/directory",
        "load_kwargs": branch + (", trust_remote_code=True" if "trust_remote_code" in format_note else ""),
        "tokenizer_kwargs": branch,
    }


def _what_was_pruned(record: PruningRecord) -> dict[str, Any]:
    """The "What was pruned" section of a width baseline, or the "What was removed" one of a block method."""
    return {
        "width": record.sparsity_unit != "blocks",
        "width_summary": (record.search or {}).get("summary", ""),
        "sparsity": f"{record.sparsity:.1%} of {record.sparsity_unit}" if record.sparsity is not None else "n/a",
        "dropped": ", ".join(map(str, record.dropped_blocks)) or "none",
        "kept_count": len(record.kept_blocks),
        "num_blocks": record.num_blocks,
        "parameters": _parameters(record),
        "pattern_table": pattern_table(record.num_blocks, record.dropped_blocks),
        "mapping_table": mapping_table(record.kept_blocks),
        "compensation_lines": _compensation_lines(record),
    }


def _results(record: PruningRecord) -> dict[str, Any]:
    """The "Results" section: each part is empty when the record has no such numbers."""
    scores = record.scores or {}
    rows = perplexity_rows(scores)
    return {
        "calibration_loss": _calibration_loss(record),
        "scores_table": table(["corpus", "text form", "window", "dense ppl", "pruned ppl", "change"], rows)
        if rows
        else "",
        "tasks_table": _tasks_table(scores["tasks"]) if scores.get("tasks") else "",
        "speed_table": _speed_table(scores["speed"]) if scores.get("speed") else "",
    }


def _how_it_was_found(record: PruningRecord) -> dict[str, Any]:
    """The "How it was found" and "Reproduce" sections: search, calibration data, command and software."""
    return {
        "method": record.method,
        "search_lines": _search_lines(record),
        "calibration_lines": _calibration_lines(record.calibration),
        "clusters_table": _clusters_table(record.calibration),
        "command": record.command or "(not recorded)",
        "versions": ", ".join(f"{k} {v}" for k, v in (record.versions or {}).items()),
        "created": record.created,
    }
