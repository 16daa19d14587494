"""`evop-hub` command line: a thin layer over the Python API.

Every command turns an ``EvopError`` into one line on stderr and exit code 2; ``--debug``
shows the traceback instead. Commands parse options, call the API, print results.

Flags that travel together (how to load a model, how to draw a calibration set, how to search ...) are the
fields of one frozen dataclass, an options group: a command names the group as a parameter and ``@options``
turns its fields into flags and hands the command the built group, so each flag is declared once and every
command taking a group takes all of it.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import json
import logging
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, get_origin, get_type_hints

import typer

from .errors import EvopError
from .files import atomic_path

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Prune LLMs by removing whole transformer blocks (EvoP) and publish them on the Hugging Face Hub.",
)

_state = {"debug": False, "output": None}  # output: prune's, for the resume hint on Ctrl-C


class _EchoHandler(logging.Handler):
    """evop-hub's log lines go to whatever stderr is current (CliRunner swaps it in tests)."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(record.getMessage(), err=True)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug
    ours = logging.getLogger("evop_hub")
    if not any(isinstance(h, _EchoHandler) for h in ours.handlers):
        ours.addHandler(_EchoHandler())
    ours.setLevel(logging.DEBUG if debug else logging.INFO)
    ours.propagate = False
    if not debug:  # retries and load reports from the libraries only with --debug
        import huggingface_hub.utils.logging as hub_logging
        import transformers.utils.logging as tf_logging

        hub_logging.set_verbosity_error()
        tf_logging.set_verbosity_error()


def command_line() -> str:
    """The command as the user typed it, recorded in evop_pruning.json and the card."""
    return shlex.join(["evop-hub", *sys.argv[1:]])


# ---------------------------------------------------------------- options groups
def option(*decls: str, help: str, default: Any = None) -> Any:
    """A field of an options group that is also a flag: names, help and default in one place. A field may
    instead be typed with an ``Annotated[..., typer.Option(...)]`` alias, for a flag that two groups share."""
    return field(default=default, metadata={"option": typer.Option(*decls, help=help)})


class Only(frozenset):
    """``Annotated[Group, Only({...})]``: the command takes just these flags of the group; the other fields keep
    their defaults. For commands that cannot honour the rest (`speed` loads two models on one `--device`,
    `calibrate` only a tokenizer)."""


def options(command: Callable) -> Callable:
    """Replace each parameter of ``command`` typed with an options group by the group's flags, and call
    ``command`` with the group built from them (mergekit's ``add_merge_options``, for Typer: Typer reads the
    signature, so the flags come from the fields and are never repeated)."""
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[type, list[str]]] = {}
    for param in inspect.signature(command, eval_str=True).parameters.values():
        group, only = param.annotation, None
        if get_origin(group) is Annotated:
            group, only = group.__origin__, next((m for m in group.__metadata__ if isinstance(m, Only)), None)
        if not dataclasses.is_dataclass(group):
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
            continue
        if only is not None and not only <= {f.name for f in fields(group)}:
            raise TypeError(
                f"{command.__name__}: {group.__name__} has no {sorted(only - {f.name for f in fields(group)})}"
            )
        hints = get_type_hints(group, include_extras=True)
        chosen = [f for f in fields(group) if only is None or f.name in only]
        groups[param.name] = (group, [f.name for f in chosen])
        for f in chosen:
            hint = Annotated[hints[f.name], f.metadata["option"]] if "option" in f.metadata else hints[f.name]
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hint))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise TypeError(f"{command.__name__}: two options share a name in {names}")

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        for name, (group, group_fields) in groups.items():
            kwargs[name] = group(**{f: kwargs.pop(f) for f in group_fields})
        return command(**kwargs)

    run.__signature__ = inspect.Signature(params, return_annotation=None)
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


ModelArg = Annotated[
    str,
    typer.Argument(help="Hub id, local directory, .gguf file, or `smollm2-135m` (offline default) / `gemma3-270m`."),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder with local copies of Hub corpora (else $EVOP_DATA_DIR, else the Hub)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model: every command that loads one takes these."""

    revision: str | None = option("--revision", help="Hub branch, tag or commit.")
    dtype: str = option("--dtype", help="auto|bfloat16|float16|float32", default="auto")
    device_map: str | None = option(
        "--device-map", help="auto|balanced|balanced_low_0|sequential, a device (cpu, cuda:0) or a JSON map."
    )
    max_memory: str | None = option(
        "--max-memory", help='Per-device caps, e.g. \'{"0": "20GiB", "cpu": "60GiB"}\' or "0=20GiB,cpu=60GiB".'
    )
    offload_folder: Path | None = option("--offload-folder", help="Folder for weights offloaded to disk.")
    trust_remote_code: bool = option(
        "--trust-remote-code", help="Allow code from the model repository to run.", default=False
    )

    def config(self):
        from .models import LoadConfig, parse_max_memory

        return LoadConfig(
            revision=self.revision,
            dtype=self.dtype,
            device_map=self.device_map,
            max_memory=parse_max_memory(self.max_memory),
            offload_folder=str(self.offload_folder) if self.offload_folder else None,
            trust_remote_code=self.trust_remote_code,
        )

    def load(self, model: str):
        from .models import load

        return load(model, self.config())


@dataclass(frozen=True)
class CompensateOptions:
    """Whether and how `drop` and `prune` repair the model after removing blocks."""

    compensate: str = option(
        "--compensate",
        help="none, or linear: fold a least-squares map per run of removed blocks into the MLP of the block before it (ReplaceMe), fitted on the calibration set.",
        default="none",
    )
    compensate_ridge: float = option(
        "--compensate-ridge",
        help="--compensate linear: ridge toward the identity map, relative to the mean eigenvalue of the MLP outputs' Gram matrix (0: plain least squares).",
        default=1e-2,
    )


def _print_compensation(record) -> None:
    if record.compensation:
        nll, kl = record.compensation["calibration_nll"], record.compensation["calibration_kl"]
        typer.echo(
            f"compensated: calibration NLL {nll['pruned']:.4f} -> {nll['compensated']:.4f} (all blocks: {nll['dense']:.4f}), "
            f"KL to all blocks {kl['pruned']:.4f} -> {kl['compensated']:.4f}"
        )


# ---------------------------------------------------------------- commands
@app.command()
def corpora() -> None:
    """The corpora --corpus names: splits, license and what each is (a path to .txt/.jsonl files works too)."""
    from .data import CORPORA

    for name, spec in CORPORA.items():
        typer.echo(f"{name} ({', '.join(spec.splits)}): {spec.description}\n    license: {spec.license}")


@app.command("list")
def list_names(kind: Annotated[str | None, typer.Argument(help="one kind only, e.g. methods")] = None) -> None:
    """Everything picked by name (methods, corpora, samplers, presets, fitnesses, ...), one line each."""
    from .registry import REGISTRIES
    from .report import compare  # noqa: F401  (the top floor: every registry below it is filled)

    if kind is not None and kind not in REGISTRIES:
        raise EvopError(f"unknown kind {kind!r}; choose from {', '.join(REGISTRIES)}")
    for name, registry in REGISTRIES.items():
        if kind in (None, name):
            typer.echo(f"{name} ({registry.option}):")
            width = max(map(len, registry), default=0)
            for entry in registry:
                typer.echo(f"  {entry:<{width}}  {registry.describe(entry)}".rstrip())


@app.command()
@options
def info(model: ModelArg, *, load: LoadOptions, as_json: JsonOpt = False) -> None:
    """Architecture, blocks, parameters and memory of a model."""
    from .models import describe

    facts = describe(load.load(model))
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
    else:
        width = max(len(k) for k in facts)
        for key, value in facts.items():
            typer.echo(f"{key:<{width}}  {value}")


@app.command()
@options
def drop(
    model: ModelArg,
    *,
    layers: Annotated[str, typer.Option("--layers", help="Blocks to remove, original numbering: 3,4,25 or 3-5,25.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the pruned checkpoint.")],
    load: LoadOptions,
    overwrite: OverwriteOpt = False,
    compensation: CompensateOptions,
    calibration: Annotated[
        Path | None,
        typer.Option("--calibration", help="--compensate linear: a file from `evop-hub calibrate` to fit the maps on."),
    ] = None,
) -> None:
    """Remove known blocks and save a smaller, standard checkpoint."""
    from .calibration import CalibrationSet
    from .compensation import calibration_info, check_method, check_ridge, compensated_drop
    from .models import drop as drop_blocks
    from .models import parse_layers, prepare_output, save

    dropped = parse_layers(layers)  # a typo fails now, not after loading a big model
    if check_method(compensation.compensate) != "none" and calibration is None:
        raise EvopError(
            "--compensate linear fits its maps on calibration text: give --calibration FILE (from `evop-hub calibrate`)"
        )
    if compensation.compensate == "none" and calibration is not None:
        raise EvopError("--calibration is used only by --compensate linear; drop it or add --compensate linear")
    check_ridge(compensation.compensate_ridge)
    cal = CalibrationSet.load(calibration) if calibration is not None else None  # a bad file fails before loading
    target = prepare_output(output, overwrite=overwrite)
    loaded = load.load(model)
    if cal is None:
        drop_blocks(loaded, dropped)
    else:
        cal.check_tokenizer(loaded.tokenizer, where=str(calibration))
        ridge = compensation.compensate_ridge
        compensated_drop(loaded, dropped, cal.input_ids, ridge=ridge, calibration=calibration_info(cal))
    path = save(loaded, target, command=command_line(), overwrite=True)
    _print_compensation(loaded.record)
    typer.echo(f"saved {loaded.record.num_blocks - len(dropped)}-block model to {path}")


# ---------------------------------------------------------------- evaluation (evop_hub.evaluate)
CorpusOpt = Annotated[
    str,
    typer.Option(
        "--corpus",
        help="Comma-separated NAME[:SPLIT] (wikitext2, c4, wiki-leads, pydoc, shakespeare) or .txt/.jsonl paths.",
    ),
]


@app.command()
@options
def ppl(
    model: ModelArg,
    *,
    corpus: CorpusOpt = "wikitext2:test",
    seq_len: Annotated[
        str, typer.Option("--seq-len", help="Tokens per window (capped at the model's context), or `max`.")
    ] = "2048",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 1,
    max_windows: Annotated[
        int | None, typer.Option("--max-windows", help="Score only the first N windows (quick looks).")
    ] = None,
    data_dir: DataDirOpt = None,
    load: LoadOptions,
    as_json: JsonOpt = False,
    dense: Annotated[
        bool,
        typer.Option(
            "--dense",
            help="For an evop-hub output: score its source model too, so the card shows dense against pruned.",
        ),
    ] = False,
) -> None:
    """Perplexity on corpora: non-overlapping windows, token-weighted mean NLL; recorded in DIR's evop_pruning.json."""
    from .data import load_corpus
    from .evaluate.perplexity import PerplexityConfig, evaluate_perplexity, parse_seq_len
    from .record import RECORD_NAME

    config = PerplexityConfig(parse_seq_len(seq_len), batch_size, max_windows)
    corpora = [load_corpus(spec.strip(), data_dir) for spec in corpus.split(",") if spec.strip()]  # fail before loading
    if not corpora:
        raise EvopError("--corpus names no corpus; give e.g. --corpus wikitext2:test")
    run = evaluate_perplexity(model, corpora, config, load.config(), dense=dense)
    path = None if run.partial else _record(model, run)
    _print_perplexity(model, run, as_json)
    _recorded_note(path, "perplexity")
    if run.partial and (Path(model) / RECORD_NAME).is_file():
        typer.echo("not recorded: --max-windows scores part of each corpus", err=True)


def _print_perplexity(model: str, run, as_json: bool) -> None:
    """The results (and the source's, with --dense) as JSON or as a table."""
    if as_json:
        payload = {"model": model, "results": [r.to_dict() for r in run.results]}
        if run.dense:
            payload |= {"dense_model": run.dense_model, "dense_results": [r.to_dict() for r in run.dense]}
        typer.echo(json.dumps(payload, indent=2))
        return
    rows = [
        {
            **{k: v for k, v in r.to_dict().items() if k not in ("nll", "ppl")},
            "nll": f"{r.nll:.4f}",
            "ppl": f"{r.ppl:.3f}",
        }
        for r in run.results
    ]
    if run.dense:
        rows = [{**row, "dense_ppl": f"{d.ppl:.3f}"} for row, d in zip(rows, run.dense)]
    widths = {key: max(len(key), *(len(str(row[key])) for row in rows)) for key in rows[0]}
    typer.echo("  ".join(f"{key:<{w}}" for key, w in widths.items()).rstrip())
    for row in rows:
        typer.echo("  ".join(f"{row[key]!s:<{w}}" for key, w in widths.items()).rstrip())


def _record(directory: str, result) -> Path | None:
    """Record ``result`` when ``directory`` is an evop-hub output: the record's path, else None."""
    from .record import RECORD_NAME, record_results

    return record_results(directory, result) if (Path(directory) / RECORD_NAME).is_file() else None


def _recorded_note(path: Path | None, key: str) -> None:
    if path is not None:
        typer.echo(f"recorded under scores.{key} in {path}", err=True)


@app.command()
@options
def tasks(
    model: ModelArg,
    *,
    task_names: Annotated[
        str | None,
        typer.Option(
            "--tasks",
            help="Comma-separated lm-eval task names (default: the paper's arc_easy, arc_challenge, hellaswag, piqa, winogrande).",
        ),
    ] = None,
    num_fewshot: Annotated[
        int,
        typer.Option(
            "--num-fewshot", help="Examples in each prompt (the paper's tables are 0-shot; EvoP's code used 3)."
        ),
    ] = 0,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Only the first N examples per task (quick looks).")
    ] = None,
    include_path: Annotated[
        Path | None, typer.Option("--include-path", help="Folder of extra task YAMLs, e.g. with local data files.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Requests per forward pass.")] = 8,
    load: LoadOptions,
    as_json: JsonOpt = False,
) -> None:
    """Downstream accuracy through lm-evaluation-harness (the `eval` extra); recorded in DIR's evop_pruning.json."""
    from .evaluate.tasks import PAPER_TASKS, TasksConfig
    from .evaluate.tasks import tasks as run_tasks

    names = [t.strip() for t in task_names.split(",") if t.strip()] if task_names else list(PAPER_TASKS)
    config = TasksConfig(
        tasks=names,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        limit=limit,
        include_path=str(include_path) if include_path else None,
        load=load.config(),
    )
    result = run_tasks(model, None, config)
    path = _record(model, result)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.table())
    _recorded_note(path, "tasks")


@app.command()
@options
def speed(
    dense: Annotated[
        str, typer.Argument(help="The dense model: Hub id, local directory, .gguf file or `smollm2-135m`.")
    ],
    *,
    compare: Annotated[str, typer.Option("--compare", help="The pruned model directory (its record gets the result).")],
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences generated at once.")] = 1,
    prompt_len: Annotated[int, typer.Option("--prompt-len", help="Prompt tokens (random ids).")] = 512,
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="Tokens generated with the KV cache.")] = 128,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs per model first.")] = 2,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per model; medians are reported.")] = 5,
    device: Annotated[
        str | None,
        typer.Option("--device", help="One device for both models: cpu, cuda, cuda:1 ... (default: cpu)."),
    ] = None,
    load: Annotated[LoadOptions, Only({"dtype", "trust_remote_code"})],
    as_json: JsonOpt = False,
) -> None:
    """Prefill and decode speed, latency and peak memory of a pruned model against its dense source, at one dtype
    (with `--dtype auto`, the pruned model's)."""
    from .evaluate.speed import SpeedConfig
    from .evaluate.speed import speed as run_speed

    config = SpeedConfig(
        batch_size,
        prompt_len,
        new_tokens,
        warmup,
        repeats,
        device=device,
        dtype=load.dtype,
        trust_remote_code=load.trust_remote_code,
    )
    result = run_speed(dense, compare, config)
    path = _record(compare, result)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.table())
    _recorded_note(path, "speed")


# ---------------------------------------------------------------- calibration data (evop_hub.calibration)
# Flags that `calibrate` and `prune` share; each command's group has its own --corpus, --clusters, --seq-len.
SamplerOpt = Annotated[
    str, typer.Option("--sampler", help="ccds (EvoP's cluster-based sampling) or random (SLEB's windows).")
]
SamplesPerClusterOpt = Annotated[int, typer.Option("--samples-per-cluster", help="n: samples drawn from each cluster.")]
EmbedderOpt = Annotated[
    str,
    typer.Option(
        "--embedder", help="sentence-transformers Hub id or local folder (default: bundled all-MiniLM-L6-v2)."
    ),
]


@dataclass(frozen=True)
class CalibrateOptions:
    """How `calibrate` draws a calibration set: CalibrationConfig's fields, as flags."""

    corpus: str = option(
        "--corpus",
        help="NAME[:SPLIT] (wikitext2, c4, wiki-leads, pydoc, shakespeare) or a .txt/.jsonl path to draw from.",
        default="wikitext2:train",
    )
    sampler: SamplerOpt = "ccds"
    clusters: int = option("--clusters", help="k: KMeans clusters of the corpus's sentence chunks.", default=5)
    samples_per_cluster: SamplesPerClusterOpt = 1
    seq_len: int = option("--seq-len", help="Tokens per calibration sample.", default=2048)
    seed: int = option("--seed", help="Seed of clustering and sampling: one seed, one identical file.", default=0)
    sentences_per_chunk: int = option("--sentences-per-chunk", help="Sentences per embedded chunk.", default=4)
    embedder: EmbedderOpt = "all-MiniLM-L6-v2"
    data_dir: DataDirOpt = None

    def config(self):
        from .calibration import CalibrationConfig

        return CalibrationConfig(
            self.sampler,
            self.clusters,
            self.samples_per_cluster,
            self.seq_len,
            self.seed,
            self.sentences_per_chunk,
            self.embedder,
            data_dir=str(self.data_dir) if self.data_dir else None,
        )


@app.command()
@options
def calibrate(
    model: ModelArg,
    *,
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibration file to write (.safetensors).")],
    draw: CalibrateOptions,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the chunk clusters in 2-D to this PNG.")
    ] = None,
    load: Annotated[LoadOptions, Only({"revision", "trust_remote_code"})],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing --output and --plot files.")] = False,
) -> None:
    """Draw a calibration set with MODEL's tokenizer and save it for `evop-hub prune --calibration FILE`."""
    from .calibration import calibrate as draw_set
    from .files import refuse_existing
    from .models import load_tokenizer

    config = draw.config()
    if plot is not None and draw.sampler != "ccds":
        raise EvopError(f"--plot draws the CCDS clusters; --sampler {draw.sampler} has none")
    for path in (output, plot):
        if path is not None:
            refuse_existing(path, overwrite)  # before the slow part, not after it
    calibration = draw_set(draw.corpus, load_tokenizer(model, load.config()), config)
    path = calibration.save(output, overwrite=overwrite)
    meta = calibration.metadata
    rows, length = calibration.input_ids.shape
    typer.echo(f"wrote {path}: {rows} samples x {length} tokens, {draw.sampler} from {meta['corpus']}:{meta['split']}")
    for j, info in enumerate(meta.get("clusters", [])):
        typer.echo(f"  cluster {j}: {info['size']} chunks; {', '.join(info['top_terms'][:6])}")
    if "nmi" in meta:
        typer.echo(
            f"  NMI vs topic labels: {meta['nmi']['clusters']:.3f} (random, same sizes: {meta['nmi']['random_same_sizes']:.3f})"
        )
    if plot is not None:
        typer.echo(f"wrote {calibration.plot(plot, overwrite=overwrite)}")


# ---------------------------------------------------------------- publishing (evop_hub.hub)
OutputDirArg = Annotated[Path, typer.Argument(help="An output directory of `evop-hub prune` or `evop-hub drop`.")]


@dataclass(frozen=True)
class PushOptions:
    """Where and how to publish: `push` and `prune --push` take these."""

    repo_id: str | None = option("--repo-id", help="USER/NAME; default {user}/{model}-evop-{kept}L.")
    private: bool = option("--private/--public", help="Visibility of new repos (private by default).", default=True)
    no_space: bool = option("--no-space", help="Do not create the demo Space.", default=False)
    space_hardware: str | None = option("--space-hardware", help="Space hardware, e.g. cpu-upgrade or a10g-small.")

    def config(self, **more: Any):
        from .hub import PushConfig

        return PushConfig(
            repo_id=self.repo_id,
            private=self.private,
            space=not self.no_space,
            space_hardware=self.space_hardware,
            **more,
        )


@app.command()
def card(output_dir: OutputDirArg) -> None:
    """(Re)write DIR/README.md, the model card, from DIR/evop_pruning.json."""
    from .hub import write_card

    typer.echo(f"wrote {write_card(output_dir)}")


def print_push(result) -> None:
    """What a push did (or, with --dry-run, exactly which files it would send)."""
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if result.left_out:
        typer.echo(f"not uploaded (evop-hub did not write them): {', '.join(result.left_out)}", err=True)
    if result.dry_run:
        typer.echo(result.listing())
        return
    typer.echo(f"pushed {len(result.files)} files to {result.url} (commit {result.commit})")
    if result.space_url:
        typer.echo(f"Space: {result.space_url}")


@app.command()
@options
def push(
    output_dir: OutputDirArg,
    *,
    where: PushOptions,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch of the model repo (created if missing).")
    ] = None,
    commit_message: Annotated[str | None, typer.Option("--commit-message", help="Commit message.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be uploaded; send nothing.")] = False,
) -> None:
    """Publish DIR on the Hugging Face Hub (model repo + card) and its demo Space."""
    from .hub import push as push_dir

    config = where.config(revision=revision, commit_message=commit_message, dry_run=dry_run)
    print_push(push_dir(output_dir, config))


@app.command()
def space(
    output_dir: OutputDirArg,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 7860,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model to compare with (default: the source).")
    ] = None,
    no_base: Annotated[bool, typer.Option("--no-base", help="Serve the pruned model alone.")] = False,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code", help="Allow code shipped in DIR (a SliceGPT model's modeling file) to run."
        ),
    ] = False,
) -> None:
    """Serve the demo Space app for DIR locally on 127.0.0.1 (nothing is uploaded)."""
    from .hub import serve

    serve(output_dir, port=port, base=base, with_base=not no_base, trust_remote_code=trust_remote_code)


# ---------------------------------------------------------------- pruning (evop_hub.prune)
@dataclass(frozen=True)
class OutputOptions:
    """Where `prune` writes, and what it shows on the way."""

    output: Path | None = option(
        "--output", "-o", help="Directory for the pruned model (default: named after the model)."
    )
    plot: Path | None = option("--plot", help="Write the convergence plot to this PNG.")
    resume: bool = option("--resume", help="Continue the search saved in OUTPUT/.evop.", default=False)
    overwrite: OverwriteOpt = False
    quiet: bool = option("--quiet", help="No progress bars.", default=False)


@dataclass(frozen=True)
class TargetOptions:
    """What `prune` removes, and by which method; the preset is the starting point the other flags change."""

    sparsity: float | None = option(
        "--sparsity",
        help="Fraction removed, in the method's unit: blocks, k = ceil(sparsity x blocks) (search methods, default 0.2); weights (wanda, default 0.5); hidden channels (slicegpt, default 0.25).",
    )
    num_drop: int | None = option("--num-drop", help="Drop exactly K blocks (instead of --sparsity).")
    method: str = option(
        "--method",
        help="evop | sleb | exhaustive | random | shortgpt | angular (blocks); wanda | slicegpt (width baselines); "
        "`evop-hub list` describes each",
        default="evop",
    )
    pattern: str | None = option(
        "--pattern", help="wanda: N:M sparsity, e.g. 2:4 (at most N nonzero weights in every M inputs)."
    )
    preset: str = option(
        "--preset",
        help="default (a mixture of text, KL to the dense model, staged selection), paper (EvoP as published: 5 x 2048 WikiText-2 tokens, NLL) or quick (minutes on a CPU).",
        default="default",
    )


@dataclass(frozen=True)
class DrawOptions:
    """`prune`'s calibration set: a file from `calibrate`, or how to draw one (None: the preset's value)."""

    calibration: Path | None = option("--calibration", help="A file from `evop-hub calibrate` (else one is drawn).")
    corpus: str | None = option(
        "--corpus",
        help="Calibration corpus, or a mixture A:SPLIT+B:SPLIT (default: the train splits of wikitext2, wiki-leads, pydoc and shakespeare that load here).",
    )
    sampler: SamplerOpt = "ccds"
    clusters: int | None = option(
        "--clusters",
        help="k: KMeans clusters of the corpus's sentence chunks, one sample each (default 40; paper: 5).",
    )
    samples_per_cluster: SamplesPerClusterOpt = 1
    seq_len: int | None = option("--seq-len", help="Tokens per calibration sample (default 2048; quick: 128).")
    embedder: EmbedderOpt = "all-MiniLM-L6-v2"
    data_dir: DataDirOpt = None
    calib_seed: int | None = option("--calib-seed", help="Seed of the calibration draw.")

    def config(self, preset, seed: int):
        """The CalibrationConfig to draw with: ``preset``'s, changed by the flags given; ``seed`` is --seed."""
        from .calibration import CalibrationConfig

        return CalibrationConfig(
            self.sampler,
            preset.clusters if self.clusters is None else self.clusters,
            self.samples_per_cluster,
            preset.seq_len if self.seq_len is None else self.seq_len,
            seed if self.calib_seed is None else self.calib_seed,
            preset.sentences_per_chunk,
            self.embedder,
            data_dir=str(self.data_dir) if self.data_dir else None,
        )


# The flags that shape a calibration draw: meaningless beside --calibration FILE.
DRAW_OPTIONS = tuple(f.name for f in fields(DrawOptions) if f.name != "calibration")


@dataclass(frozen=True)
class SearchOptions:
    """How `prune` searches, and on what hardware (None: the preset's value)."""

    seed: int = option("--seed", help="Sets both --calib-seed and --search-seed.", default=0)
    search_seed: int | None = option("--search-seed", help="Seed of the search.")
    population: int | None = option("--population", help="evop: patterns per generation.")
    generations: int | None = option("--generations", help="evop: most generations.")
    fitness: str | None = option(
        "--fitness",
        help="kl: mean KL(dense || pruned) of the next-token distributions (default); nll: mean next-token NLL (paper).",
    )
    stages: str | None = option(
        "--stages",
        help="Staged selection, KEEP@TOKENS,...: keep the best KEEP candidates on the first TOKENS tokens of every sample before scoring on everything (default 8@64,2@256; '' for none).",
    )
    exhaustive_limit: int = option("--exhaustive-limit", help="exhaustive: most patterns to enumerate.", default=50_000)
    batch_size: int = option("--batch-size", help="Calibration samples per forward.", default=1)
    cache_gib: float = option("--cache-gib", help="Memory for cached prefix hidden states.", default=1.0)
    search_devices: str | None = option(
        "--search-devices",
        help="Evaluate masks on these devices side by side: one Ray actor per device, each with a copy of the model, e.g. cuda:0,cuda:1 (needs evop-hub[ray]; without --ray-address, on a Ray instance started on this machine).",
    )
    ray_address: str | None = option(
        "--ray-address",
        help="Where the --search-devices actors run: local (start Ray on this machine, the default), auto (join the running cluster) or HOST:PORT.",
    )

    def config(self, preset, method: str):
        """The SearchConfig to run: ``preset``'s, changed by the flags given."""
        from dataclasses import replace

        given = ("population", "generations", "fitness", "stages")
        return replace(
            preset,
            method=method,
            seed=self.seed if self.search_seed is None else self.search_seed,
            exhaustive_limit=self.exhaustive_limit,
            **{name: getattr(self, name) for name in given if getattr(self, name) is not None},
        )


@dataclass(frozen=True)
class PublishOptions(PushOptions):
    """`prune --push`: publish the result as `push` would."""

    push: bool = option("--push", help="Publish the result (and a demo Space) on the Hub.", default=False)


def _model_name(model: str) -> str:
    """The default output's name: a local path by its folder's own name (`.` included), a Hub id by its last part."""
    path = Path(model).expanduser()
    return (path.resolve().name if path.exists() else path.name).removesuffix(".gguf") or "model"


@app.command()
@options
def prune(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Argument(help="Hub id, local directory, .gguf file, or `smollm2-135m`.")
    ] = "smollm2-135m",
    *,
    out: OutputOptions,
    target: TargetOptions,
    draw: DrawOptions,
    search: SearchOptions,
    load: LoadOptions,
    compensation: CompensateOptions,
    publish: PublishOptions,
) -> None:
    """Choose blocks by search on a calibration set (CCDS + EvoP by default), remove them, save the smaller model."""
    from .files import refuse_existing
    from .hub import check_push
    from .hub import push as push_dir
    from .progress import silence
    from .prune import prune as run_prune

    _check_prune(ctx, out, target, draw, search)
    if out.quiet:
        silence()
    if out.plot:
        refuse_existing(out.plot, out.overwrite)
    if publish.push:
        check_push(publish.config())  # a missing token or bad repo id fails now, not after the search
    config = _prune_config(model, out, target, draw, search, load, compensation)
    _state["output"] = config.output
    result = run_prune(model, config)
    _print_pruned(result, out.plot)
    if publish.push:
        print_push(push_dir(result.output, publish.config()))


def _check_prune(ctx: typer.Context, out: OutputOptions, target: TargetOptions, draw: DrawOptions, search) -> None:
    """Refuse flags that contradict each other, before anything loads."""
    from .methods import METHODS

    if out.plot and target.method in METHODS and not METHODS[target.method].removes_blocks:
        raise EvopError(f"--plot draws a block search's convergence; {target.method} searches nothing")
    given = [
        f"--{name.replace('_', '-')}"
        for name in DRAW_OPTIONS
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    ]
    if draw.calibration and given:
        raise EvopError(
            f"--calibration {draw.calibration} is a set already drawn; {', '.join(given)} would change nothing: "
            "drop them, or drop --calibration to draw a new set"
        )
    if target.sparsity is not None and target.num_drop is not None:  # one would be ignored, yet in the card's command
        raise EvopError(
            f"--sparsity {target.sparsity} and --num-drop {target.num_drop} both say how much to remove; give one of them"
        )
    if not 0 <= search.cache_gib < float("inf"):  # NaN fails this too
        raise EvopError(f"--cache-gib is the GiB of memory for cached hidden states: 0 or more, not {search.cache_gib}")


def _prune_config(model: str, out, target, draw, search, load, compensation):
    """The PruneConfig that the flags describe: the preset's, changed by every flag given."""
    from dataclasses import replace

    from .prune import PruneConfig, apply_preset

    config = apply_preset(PruneConfig(), target.preset)
    return replace(
        config,
        sparsity=target.sparsity,
        pattern=target.pattern,
        num_drop=target.num_drop,
        compensate=compensation.compensate,
        compensate_ridge=compensation.compensate_ridge,
        search=search.config(config.search, target.method),
        calibration=draw.config(config.calibration, search.seed),
        corpus=draw.corpus or config.corpus,
        calibration_file=str(draw.calibration) if draw.calibration else None,
        batch_size=search.batch_size,
        cache_gib=search.cache_gib,
        search_devices=_csv(search.search_devices),
        ray_address=search.ray_address,
        load=load.config(),
        output=str(out.output or Path("outputs") / f"{_model_name(model)}-{target.method}"),
        overwrite=out.overwrite,
        resume=out.resume,
        progress=not out.quiet,
        command=command_line(),
    )


def _print_pruned(result, plot: Path | None) -> None:
    """What was removed and what it cost, then where it went."""
    from .report.plots import convergence_plot

    losses = result.record.scores["calibration_loss"]
    if result.search is None:  # a width baseline: nothing was searched
        typer.echo(
            f"{result.record.search['summary']}; calibration loss {losses['dense']:.4f} -> {losses['pruned']:.4f}"
        )
    else:
        typer.echo(
            f"dropped blocks {result.mask} ({len(result.mask)} of {result.record.num_blocks}, "
            f"{100 * (result.record.parameter_reduction or 0):.1f}% of parameters); calibration {result.search.config['fitness']} "
            f"{losses['dense']:.4f} -> {losses['pruned']:.4f}; {result.search.stats['evaluations']} evaluations "
            f"in {result.search.seconds:.0f}s"
        )
        if plot:
            typer.echo(f"wrote {convergence_plot(result.search.trace, plot)}")
    _print_compensation(result.record)
    typer.echo(f"saved {result.output}")


# ---------------------------------------------------------------- experiments (evop_hub.report.compare)
def _csv(text: str | None, kind=str) -> list | None:
    if text is None:
        return None
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EvopError(f"{text!r} is not a comma-separated list of {kind.__name__} values") from None


@dataclass(frozen=True)
class CompareOptions:
    """`compare`'s flags: each overrides one CompareConfig setting of the preset and the config file."""

    sparsities: str | None = option("--sparsities", help="Comma-separated, e.g. 0.1,0.2,0.3 (each method's own unit).")
    methods: str | None = option(
        "--methods",
        help="Comma-separated: evop, sleb, shortgpt, angular, random, exhaustive, wanda, slicegpt (dense is always the reference).",
    )
    seeds: str | None = option("--seeds", help="Comma-separated calibration/search seeds, e.g. 0,1,2.")
    corpus: str | None = option("--corpus", help="Calibration corpus NAME[:SPLIT] or a local file.")
    eval_corpora: str | None = option("--eval", help="Comma-separated evaluation corpora.")
    samples: int | None = option("--samples", help="Calibration samples (CCDS clusters x 1).")
    seq_len: int | None = option("--seq-len", help="Tokens per calibration sample.")
    eval_seq_len: int | None = option("--eval-seq-len", help="Tokens per held-out window.")
    eval_windows: int | None = option("--eval-windows", help="First N windows of each evaluation corpus (0: all).")
    blocks: int | None = option("--blocks", help="Keep only the first N blocks of the model (0: all).")
    tasks: str | None = option("--tasks", help="Comma-separated lm-eval tasks; `none` for none.")
    no_speed: bool = option("--no-speed", help="Do not measure speed.", default=False)
    device: str | None = option("--device", help="cpu, cuda, cuda:1 ...")
    dtype: str | None = option("--dtype", help="float32|bfloat16|float16|auto")
    data_dir: DataDirOpt = None

    def overrides(self) -> dict[str, Any]:
        """The CompareConfig settings the flags give, by the config's names (flags not given are left out)."""
        tasks = self.tasks
        flags = {
            "sparsities": _csv(self.sparsities, float),
            "methods": _csv(self.methods),
            "seeds": _csv(self.seeds, int),
            "calibration": self.corpus,
            "eval": _csv(self.eval_corpora),
            "samples": self.samples,
            "seq_len": self.seq_len,
            "eval_seq_len": self.eval_seq_len,
            "eval_windows": self.eval_windows,
            "blocks": self.blocks,
            "device": self.device,
            "dtype": self.dtype,
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "tasks": None if tasks is None else ([] if tasks.strip().lower() == "none" else _csv(tasks)),
            "speed": False if self.no_speed else None,
        }
        return {k: v for k, v in flags.items() if v is not None}


def _compare_config(preset: str | None, config_file: Path | None, flags: CompareOptions):
    """One settings file, read one way: the preset, then the TOML file, then the flags, each overriding the last
    (0 for --eval-windows and --blocks means all)."""
    from .report.compare import CompareConfig
    from .report.compare import preset as preset_config

    config = preset_config(preset) if preset else CompareConfig()
    if config_file is not None:
        config = CompareConfig.load(config_file, config)
    config = CompareConfig.from_dict(flags.overrides(), config)
    for name in ("eval_windows", "blocks"):
        if getattr(config, name) == 0:
            config = CompareConfig.from_dict({name: None}, config)
    return config


@dataclass(frozen=True)
class ReportDirOptions:
    """Where `compare` works and what it does there."""

    output: Path | None = option("--output", "-o", help="REPORT_DIR: cells/, results.json, report.md, PNGs.")
    resume: bool = option("--resume", help="Reuse the finished cells in REPORT_DIR; compute the rest.", default=False)
    overwrite: bool = option(
        "--overwrite",
        help="Delete what compare wrote in REPORT_DIR and start over (and let --write-config replace its file).",
        default=False,
    )
    report_only: bool = option(
        "--report-only", help="Rewrite report.md and the PNGs from REPORT_DIR/results.json; run nothing.", default=False
    )
    write_config: Path | None = option(
        "--write-config", help="Write the resolved settings as TOML to this file and stop."
    )
    quiet: bool = option("--quiet", help="No progress bars.", default=False)


@app.command()
@options
def compare(
    model: Annotated[str | None, typer.Argument(help="Hub id, local directory, .gguf file, or `smollm2-135m`.")] = None,
    *,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="TOML file of CompareConfig fields (flags override it).")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="gpu (the paper-like protocol) or cpu (small, minutes on 2 cores); the config file and flags override it.",
        ),
    ] = None,
    flags: CompareOptions,
    run: ReportDirOptions,
) -> None:
    """Reproduce the EvoP paper's tables and figures on MODEL: methods x sparsities x seeds, resumable."""
    from .files import refuse_existing
    from .progress import silence
    from .report.compare import compare as run_compare
    from .report.tables import regenerate

    output = run.output
    if run.report_only:
        if output is None:
            raise EvopError("--report-only needs --output REPORT_DIR")
        typer.echo(f"wrote {regenerate(output)}")
        return
    config = _compare_config(preset, config_file, flags)
    if run.write_config is not None:
        with atomic_path(refuse_existing(run.write_config, run.overwrite)) as tmp:
            tmp.write_text(config.to_toml())
        typer.echo(f"wrote {run.write_config}")
        return
    if model is None or output is None:
        raise EvopError("give MODEL and --output REPORT_DIR (or --report-only --output REPORT_DIR)")
    if run.quiet:
        silence()
    progress = not run.quiet
    results = run_compare(
        model, config, output, resume=run.resume, overwrite=run.overwrite, command=command_line(), progress=progress
    )
    typer.echo(f"{len(results['cells'])} cells ({results['cells_reused']} reused); wrote {Path(output) / 'report.md'}")


def main() -> None:
    """Console entry point: user errors become one line and exit code 2."""
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _stop)
    try:
        app()
    except EvopError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        if exc.errno != errno.ENOSPC or _state["debug"]:
            raise
        typer.echo(
            f"error: no space left on the device holding {exc.filename or 'the output'}; free some space, "
            "then run again",
            err=True,
        )
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit) as exc:
        if isinstance(exc, SystemExit) and exc.code != 130:  # typer ends a command's Ctrl-C as a silent exit 130
            raise
        stopped_by = _state.get("signal", signal.SIGINT)
        typer.echo(_interrupted(stopped_by), err=True)
        sys.exit(128 + stopped_by)


def _stop(signum: int, frame) -> None:
    """SIGTERM (kill, `timeout`, `docker stop`, a batch scheduler) and SIGHUP (a closed terminal) end a run
    as Ctrl-C does, through KeyboardInterrupt: its lock file and empty run state go and it says so. Python's
    default dies on the spot, leaving both, and the same command then refuses the half-made output."""
    _state["signal"] = signum
    raise KeyboardInterrupt


def _interrupted(signum: int = signal.SIGINT) -> str:
    """The line for Ctrl-C (or a signal to stop): a prune whose output holds its run state can go on from
    where it stopped."""
    from .models.saving import has_run

    word = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    output = _state.get("output")
    if output is not None and has_run(Path(output)):
        return f"{word}; the run so far is saved in {output}: repeat the command with --resume to continue it"
    return word


if __name__ == "__main__":
    main()
