"""`evop-hub` command line: a thin layer over the Python API.

Every command turns an ``EvopError`` into one line on stderr and exit code 2; ``--debug``
shows the traceback instead. Commands parse options, call the API, print results.
"""

from __future__ import annotations

import errno
import json
import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated

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


# ---------------------------------------------------------------- shared options
ModelArg = Annotated[
    str,
    typer.Argument(help="Hub id, local directory, .gguf file, or `smollm2-135m` (offline default) / `gemma3-270m`."),
]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto|bfloat16|float16|float32")]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option("--device-map", help="auto|balanced|balanced_low_0|sequential, a device (cpu, cuda:0) or a JSON map."),
]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory", help='Per-device caps, e.g. \'{"0": "20GiB", "cpu": "60GiB"}\' or "0=20GiB,cpu=60GiB".'
    ),
]
OffloadOpt = Annotated[Path | None, typer.Option("--offload-folder", help="Folder for weights offloaded to disk.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow code from the model repository to run.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")]
CompensateOpt = Annotated[
    str,
    typer.Option(
        "--compensate",
        help="none, or linear: fold a least-squares map per run of removed blocks into the MLP of the block before it (ReplaceMe), fitted on the calibration set.",
    ),
]
CompensateRidgeOpt = Annotated[
    float,
    typer.Option(
        "--compensate-ridge",
        help="--compensate linear: ridge toward the identity map, relative to the mean eigenvalue of the MLP outputs' Gram matrix (0: plain least squares).",
    ),
]


def _load_config(revision, dtype, device_map, max_memory, offload_folder, trust_remote_code):
    from .models import LoadConfig, parse_max_memory

    return LoadConfig(
        revision=revision,
        dtype=dtype,
        device_map=device_map,
        max_memory=parse_max_memory(max_memory),
        offload_folder=str(offload_folder) if offload_folder else None,
        trust_remote_code=trust_remote_code,
    )


def _load(model, *load_options):
    from .models import load

    return load(model, _load_config(*load_options))


# ---------------------------------------------------------------- commands
@app.command()
def corpora() -> None:
    """The corpora --corpus names: splits, license and what each is (a path to .txt/.jsonl files works too)."""
    from .data import CORPORA

    for name, spec in CORPORA.items():
        typer.echo(f"{name} ({', '.join(spec.splits)}): {spec.description}\n    license: {spec.license}")


@app.command()
def info(
    model: ModelArg,
    revision: RevisionOpt = None,
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadOpt = None,
    trust_remote_code: TrustOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Architecture, blocks, parameters and memory of a model."""
    from .models import describe

    loaded = _load(model, revision, dtype, device_map, max_memory, offload_folder, trust_remote_code)
    facts = describe(loaded)
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
    else:
        width = max(len(k) for k in facts)
        for key, value in facts.items():
            typer.echo(f"{key:<{width}}  {value}")


@app.command()
def drop(
    model: ModelArg,
    layers: Annotated[str, typer.Option("--layers", help="Blocks to remove, original numbering: 3,4,25 or 3-5,25.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the pruned checkpoint.")],
    revision: RevisionOpt = None,
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadOpt = None,
    trust_remote_code: TrustOpt = False,
    overwrite: OverwriteOpt = False,
    compensate: CompensateOpt = "none",
    compensate_ridge: CompensateRidgeOpt = 1e-2,
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
    if check_method(compensate) != "none" and calibration is None:
        raise EvopError(
            "--compensate linear fits its maps on calibration text: give --calibration FILE (from `evop-hub calibrate`)"
        )
    if compensate == "none" and calibration is not None:
        raise EvopError("--calibration is used only by --compensate linear; drop it or add --compensate linear")
    check_ridge(compensate_ridge)
    cal = CalibrationSet.load(calibration) if calibration is not None else None  # a bad file fails before loading
    target = prepare_output(output, overwrite=overwrite)
    loaded = _load(model, revision, dtype, device_map, max_memory, offload_folder, trust_remote_code)
    if cal is None:
        drop_blocks(loaded, dropped)
    else:
        cal.check_tokenizer(loaded.tokenizer, where=str(calibration))
        compensated_drop(loaded, dropped, cal.input_ids, ridge=compensate_ridge, calibration=calibration_info(cal))
    path = save(loaded, target, command=command_line(), overwrite=True)
    if loaded.record.compensation:
        nll, kl = loaded.record.compensation["calibration_nll"], loaded.record.compensation["calibration_kl"]
        typer.echo(
            f"compensated: calibration NLL {nll['pruned']:.4f} -> {nll['compensated']:.4f} (all blocks: {nll['dense']:.4f}), "
            f"KL to all blocks {kl['pruned']:.4f} -> {kl['compensated']:.4f}"
        )
    typer.echo(f"saved {loaded.record.num_blocks - len(dropped)}-block model to {path}")


# ---------------------------------------------------------------- evaluation (evop_hub.evaluate)
CorpusOpt = Annotated[
    str,
    typer.Option(
        "--corpus",
        help="Comma-separated NAME[:SPLIT] (wikitext2, c4, wiki-leads, pydoc, shakespeare) or .txt/.jsonl paths.",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder with local copies of Hub corpora (else $EVOP_DATA_DIR, else the Hub)."),
]


@app.command()
def ppl(
    model: ModelArg,
    corpus: CorpusOpt = "wikitext2:test",
    seq_len: Annotated[
        str, typer.Option("--seq-len", help="Tokens per window (capped at the model's context), or `max`.")
    ] = "2048",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 1,
    max_windows: Annotated[
        int | None, typer.Option("--max-windows", help="Score only the first N windows (quick looks).")
    ] = None,
    data_dir: DataDirOpt = None,
    revision: RevisionOpt = None,
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadOpt = None,
    trust_remote_code: TrustOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
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
    from .evaluate.perplexity import PerplexityConfig, parse_seq_len, perplexity, record_perplexity
    from .models.loading import check_is_source
    from .record import RECORD_NAME, PruningRecord

    config = PerplexityConfig(parse_seq_len(seq_len), batch_size, max_windows)
    corpora = [load_corpus(spec.strip(), data_dir) for spec in corpus.split(",") if spec.strip()]  # fail before loading
    if not corpora:
        raise EvopError("--corpus names no corpus; give e.g. --corpus wikitext2:test")
    recorded = (Path(model) / RECORD_NAME).is_file()
    if dense and not recorded:
        raise EvopError(f"--dense scores the source named in an evop-hub output's record; {model} has none")

    def score(name: str, revision: str | None, dtype: str, source_of: PruningRecord | None = None) -> list:
        loaded = _load(name, revision, dtype, device_map, max_memory, offload_folder, trust_remote_code)
        if source_of is not None:
            check_is_source(source_of, loaded.model, name)
        return [perplexity(loaded.model, loaded.tokenizer, c, config) for c in corpora]

    results = score(model, revision, dtype)
    source = PruningRecord.load(model) if dense else None
    # The source at the pruned model's dtype: with "auto" each would get its own checkpoint's, and the change
    # the card shows would mix pruning with precision.
    dense_results = (
        score(source.source_spec(model), source.source_revision, results[0].dtype, source) if source else None
    )
    if recorded and max_windows is None:  # a quick look on part of a corpus is never published as the model's number
        record_perplexity(model, results, dense_results)
    if as_json:
        payload = {"model": model, "results": [r.to_dict() for r in results]}
        if source:
            payload |= {"dense_model": source.source_model, "dense_results": [r.to_dict() for r in dense_results]}
        typer.echo(json.dumps(payload, indent=2))
    else:
        rows = [
            {
                **{k: v for k, v in r.to_dict().items() if k not in ("nll", "ppl")},
                "nll": f"{r.nll:.4f}",
                "ppl": f"{r.ppl:.3f}",
            }
            for r in results
        ]
        if dense_results:
            rows = [{**row, "dense_ppl": f"{d.ppl:.3f}"} for row, d in zip(rows, dense_results)]
        widths = {key: max(len(key), *(len(str(row[key])) for row in rows)) for key in rows[0]}
        typer.echo("  ".join(f"{key:<{w}}" for key, w in widths.items()).rstrip())
        for row in rows:
            typer.echo("  ".join(f"{row[key]!s:<{w}}" for key, w in widths.items()).rstrip())
    if max_windows is None:
        _recorded_note(model, "perplexity")
    elif recorded:
        typer.echo("not recorded: --max-windows scores part of each corpus", err=True)


def _recorded_note(directory: str, key: str) -> None:
    from .record import RECORD_NAME

    if (Path(directory) / RECORD_NAME).is_file():
        typer.echo(f"recorded under scores.{key} in {Path(directory) / RECORD_NAME}", err=True)


@app.command()
def tasks(
    model: ModelArg,
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
    revision: RevisionOpt = None,
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    trust_remote_code: TrustOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Downstream accuracy through lm-evaluation-harness (the `eval` extra); recorded in DIR's evop_pruning.json."""
    from .evaluate.tasks import PAPER_TASKS, TasksConfig
    from .evaluate.tasks import tasks as run_tasks
    from .models import LoadConfig

    names = [t.strip() for t in task_names.split(",") if t.strip()] if task_names else list(PAPER_TASKS)
    config = TasksConfig(
        tasks=names,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        limit=limit,
        include_path=str(include_path) if include_path else None,
        load=LoadConfig(revision=revision, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code),
    )
    result = run_tasks(model, None, config)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.table())
    _recorded_note(model, "tasks")


@app.command()
def speed(
    dense: Annotated[
        str, typer.Argument(help="The dense model: Hub id, local directory, .gguf file or `smollm2-135m`.")
    ],
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
    dtype: DtypeOpt = "auto",
    trust_remote_code: TrustOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
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
        dtype=dtype,
        trust_remote_code=trust_remote_code,
    )
    result = run_speed(dense, compare, config)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.table())
    _recorded_note(compare, "speed")


# ---------------------------------------------------------------- calibration data (evop_hub.calibration)
# Calibration options, shared by `calibrate` and `prune`.
CalibCorpusOpt = Annotated[
    str,
    typer.Option(
        "--corpus",
        help="NAME[:SPLIT] (wikitext2, c4, wiki-leads, pydoc, shakespeare) or a .txt/.jsonl path to draw from.",
    ),
]
SamplerOpt = Annotated[
    str, typer.Option("--sampler", help="ccds (EvoP's cluster-based sampling) or random (SLEB's windows).")
]
ClustersOpt = Annotated[int, typer.Option("--clusters", help="k: KMeans clusters of the corpus's sentence chunks.")]
SamplesPerClusterOpt = Annotated[int, typer.Option("--samples-per-cluster", help="n: samples drawn from each cluster.")]
CalibSeqLenOpt = Annotated[int, typer.Option("--seq-len", help="Tokens per calibration sample.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of clustering and sampling: one seed, one identical file.")]
SentencesPerChunkOpt = Annotated[int, typer.Option("--sentences-per-chunk", help="Sentences per embedded chunk.")]
EmbedderOpt = Annotated[
    str,
    typer.Option(
        "--embedder", help="sentence-transformers Hub id or local folder (default: bundled all-MiniLM-L6-v2)."
    ),
]


@app.command()
def calibrate(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibration file to write (.safetensors).")],
    corpus: CalibCorpusOpt = "wikitext2:train",
    sampler: SamplerOpt = "ccds",
    clusters: ClustersOpt = 5,
    samples_per_cluster: SamplesPerClusterOpt = 1,
    seq_len: CalibSeqLenOpt = 2048,
    seed: SeedOpt = 0,
    sentences_per_chunk: SentencesPerChunkOpt = 4,
    embedder: EmbedderOpt = "all-MiniLM-L6-v2",
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the chunk clusters in 2-D to this PNG.")
    ] = None,
    data_dir: DataDirOpt = None,
    revision: RevisionOpt = None,
    trust_remote_code: TrustOpt = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing --output and --plot files.")] = False,
) -> None:
    """Draw a calibration set with MODEL's tokenizer and save it for `evop-hub prune --calibration FILE`."""
    from .calibration import CalibrationConfig
    from .calibration import calibrate as draw
    from .calibration.calibration_set import refuse_existing
    from .models import LoadConfig, load_tokenizer

    config = CalibrationConfig(
        sampler,
        clusters,
        samples_per_cluster,
        seq_len,
        seed,
        sentences_per_chunk,
        embedder,
        data_dir=str(data_dir) if data_dir else None,
    )
    if plot is not None and sampler != "ccds":
        raise EvopError(f"--plot draws the CCDS clusters; --sampler {sampler} has none")
    for path in (output, plot):
        if path is not None:
            refuse_existing(path, overwrite)  # before the slow part, not after it
    tokenizer = load_tokenizer(model, LoadConfig(revision=revision, trust_remote_code=trust_remote_code))
    calibration = draw(corpus, tokenizer, config)
    path = calibration.save(output, overwrite=overwrite)
    meta = calibration.metadata
    rows, length = calibration.input_ids.shape
    typer.echo(f"wrote {path}: {rows} samples x {length} tokens, {sampler} from {meta['corpus']}:{meta['split']}")
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
# Push options, shared by `push` and `prune --push`.
RepoIdOpt = Annotated[str | None, typer.Option("--repo-id", help="USER/NAME; default {user}/{model}-evop-{kept}L.")]
PrivateOpt = Annotated[bool, typer.Option("--private/--public", help="Visibility of new repos (private by default).")]
PushRevisionOpt = Annotated[
    str | None, typer.Option("--revision", help="Branch of the model repo (created if missing).")
]
CommitMessageOpt = Annotated[str | None, typer.Option("--commit-message", help="Commit message.")]
NoSpaceOpt = Annotated[bool, typer.Option("--no-space", help="Do not create the demo Space.")]
SpaceHardwareOpt = Annotated[
    str | None, typer.Option("--space-hardware", help="Space hardware, e.g. cpu-upgrade or a10g-small.")
]


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
def push(
    output_dir: OutputDirArg,
    repo_id: RepoIdOpt = None,
    private: PrivateOpt = True,
    revision: PushRevisionOpt = None,
    commit_message: CommitMessageOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be uploaded; send nothing.")] = False,
    no_space: NoSpaceOpt = False,
    space_hardware: SpaceHardwareOpt = None,
) -> None:
    """Publish DIR on the Hugging Face Hub (model repo + card) and its demo Space."""
    from .hub import PushConfig
    from .hub import push as push_dir

    config = PushConfig(
        repo_id=repo_id,
        private=private,
        revision=revision,
        commit_message=commit_message,
        dry_run=dry_run,
        space=not no_space,
        space_hardware=space_hardware,
    )
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
# prune's options that shape a calibration draw: meaningless beside --calibration FILE.
DRAW_OPTIONS = ("corpus", "sampler", "clusters", "samples_per_cluster", "seq_len", "embedder", "data_dir", "calib_seed")


def _model_name(model: str) -> str:
    """The default output's name: a local path by its folder's own name (`.` included), a Hub id by its last part."""
    path = Path(model).expanduser()
    return (path.resolve().name if path.exists() else path.name).removesuffix(".gguf") or "model"


@app.command()
def prune(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Argument(help="Hub id, local directory, .gguf file, or `smollm2-135m`.")
    ] = "smollm2-135m",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Directory for the pruned model (default: named after the model)."),
    ] = None,
    sparsity: Annotated[
        float | None,
        typer.Option(
            "--sparsity",
            help="Fraction removed, in the method's unit: blocks, k = ceil(sparsity x blocks) (search methods, default 0.2); weights (wanda, default 0.5); hidden channels (slicegpt, default 0.25).",
        ),
    ] = None,
    num_drop: Annotated[
        int | None, typer.Option("--num-drop", help="Drop exactly K blocks (instead of --sparsity).")
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="evop | sleb | exhaustive | random | shortgpt | angular (blocks); wanda | slicegpt (width baselines)",
        ),
    ] = "evop",
    pattern: Annotated[
        str | None,
        typer.Option("--pattern", help="wanda: N:M sparsity, e.g. 2:4 (at most N nonzero weights in every M inputs)."),
    ] = None,
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            help="default (a mixture of text, KL to the dense model, staged selection), paper (EvoP as published: 5 x 2048 WikiText-2 tokens, NLL) or quick (minutes on a CPU).",
        ),
    ] = "default",
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="A file from `evop-hub calibrate` (else one is drawn).")
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            "--corpus",
            help="Calibration corpus, or a mixture A:SPLIT+B:SPLIT (default: the train splits of wikitext2, wiki-leads, pydoc and shakespeare that load here).",
        ),
    ] = None,
    sampler: SamplerOpt = "ccds",
    clusters: Annotated[
        int | None,
        typer.Option(
            "--clusters",
            help="k: KMeans clusters of the corpus's sentence chunks, one sample each (default 40; paper: 5).",
        ),
    ] = None,
    samples_per_cluster: SamplesPerClusterOpt = 1,
    seq_len: Annotated[
        int | None, typer.Option("--seq-len", help="Tokens per calibration sample (default 2048; quick: 128).")
    ] = None,
    embedder: EmbedderOpt = "all-MiniLM-L6-v2",
    data_dir: DataDirOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Sets both --calib-seed and --search-seed.")] = 0,
    calib_seed: Annotated[int | None, typer.Option("--calib-seed", help="Seed of the calibration draw.")] = None,
    search_seed: Annotated[int | None, typer.Option("--search-seed", help="Seed of the search.")] = None,
    population: Annotated[int | None, typer.Option("--population", help="evop: patterns per generation.")] = None,
    generations: Annotated[int | None, typer.Option("--generations", help="evop: most generations.")] = None,
    fitness: Annotated[
        str | None,
        typer.Option(
            "--fitness",
            help="kl: mean KL(dense || pruned) of the next-token distributions (default); nll: mean next-token NLL (paper).",
        ),
    ] = None,
    stages: Annotated[
        str | None,
        typer.Option(
            "--stages",
            help="Staged selection, KEEP@TOKENS,...: keep the best KEEP candidates on the first TOKENS tokens of every sample before scoring on everything (default 8@64,2@256; '' for none).",
        ),
    ] = None,
    exhaustive_limit: Annotated[
        int, typer.Option("--exhaustive-limit", help="exhaustive: most patterns to enumerate.")
    ] = 50_000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Calibration samples per forward.")] = 1,
    cache_gib: Annotated[float, typer.Option("--cache-gib", help="Memory for cached prefix hidden states.")] = 1.0,
    search_devices: Annotated[
        str | None,
        typer.Option(
            "--search-devices",
            help="Evaluate masks on these devices side by side, one copy of the model on each, e.g. cuda:0,cuda:1.",
        ),
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the convergence plot to this PNG.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the search saved in OUTPUT/.evop.")] = False,
    overwrite: OverwriteOpt = False,
    revision: RevisionOpt = None,
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadOpt = None,
    trust_remote_code: TrustOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    compensate: CompensateOpt = "none",
    compensate_ridge: CompensateRidgeOpt = 1e-2,
    push_to_hub: Annotated[
        bool, typer.Option("--push", help="Publish the result (and a demo Space) on the Hub.")
    ] = False,
    repo_id: RepoIdOpt = None,
    private: PrivateOpt = True,
    no_space: NoSpaceOpt = False,
    space_hardware: SpaceHardwareOpt = None,
) -> None:
    """Choose blocks by search on a calibration set (CCDS + EvoP by default), remove them, save the smaller model."""
    from dataclasses import replace

    from .baselines import BASELINES
    from .calibration import CalibrationConfig
    from .calibration.calibration_set import refuse_existing
    from .hub import PushConfig, check_push
    from .hub import push as push_dir
    from .progress import silence
    from .prune import PruneConfig, apply_preset
    from .prune import prune as run_prune
    from .report.plots import convergence_plot

    if plot and method in BASELINES:
        raise EvopError(f"--plot draws a block search's convergence; {method} searches nothing")
    draw = [
        f"--{name.replace('_', '-')}"
        for name in DRAW_OPTIONS
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    ]
    if calibration and draw:
        raise EvopError(
            f"--calibration {calibration} is a set already drawn; {', '.join(draw)} would change nothing: "
            "drop them, or drop --calibration to draw a new set"
        )
    if sparsity is not None and num_drop is not None:  # one would be ignored, yet recorded in the card's command
        raise EvopError(
            f"--sparsity {sparsity} and --num-drop {num_drop} both say how much to remove; give one of them"
        )
    if not 0 <= cache_gib < float("inf"):  # NaN fails this too
        raise EvopError(f"--cache-gib is the GiB of memory for cached hidden states: 0 or more, not {cache_gib}")
    if quiet:
        silence()
    if plot:
        refuse_existing(plot, overwrite)
    push_config = PushConfig(repo_id=repo_id, private=private, space=not no_space, space_hardware=space_hardware)
    if push_to_hub:
        check_push(push_config)  # a missing token or bad repo id fails now, not after the search
    config = apply_preset(PruneConfig(), preset)
    cal = config.calibration
    config = replace(
        config,
        sparsity=sparsity,
        pattern=pattern,
        num_drop=num_drop,
        compensate=compensate,
        compensate_ridge=compensate_ridge,
        search=replace(
            config.search,
            method=method,
            seed=seed if search_seed is None else search_seed,
            population=config.search.population if population is None else population,
            generations=config.search.generations if generations is None else generations,
            fitness=config.search.fitness if fitness is None else fitness,
            stages=config.search.stages if stages is None else stages,
            exhaustive_limit=exhaustive_limit,
        ),
        calibration=CalibrationConfig(
            sampler,
            cal.clusters if clusters is None else clusters,
            samples_per_cluster,
            cal.seq_len if seq_len is None else seq_len,
            seed if calib_seed is None else calib_seed,
            cal.sentences_per_chunk,
            embedder,
            data_dir=str(data_dir) if data_dir else None,
        ),
        corpus=corpus or config.corpus,
        calibration_file=str(calibration) if calibration else None,
        batch_size=batch_size,
        cache_gib=cache_gib,
        search_devices=_csv(search_devices),
        load=_load_config(revision, dtype, device_map, max_memory, offload_folder, trust_remote_code),
        output=str(output or Path("outputs") / f"{_model_name(model)}-{method}"),
        overwrite=overwrite,
        resume=resume,
        progress=not quiet,
        command=command_line(),
    )
    _state["output"] = config.output
    result = run_prune(model, config)
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
    if result.record.compensation:
        nll, kl = result.record.compensation["calibration_nll"], result.record.compensation["calibration_kl"]
        typer.echo(
            f"compensated: calibration NLL {nll['pruned']:.4f} -> {nll['compensated']:.4f} (all blocks: {nll['dense']:.4f}), "
            f"KL to all blocks {kl['pruned']:.4f} -> {kl['compensated']:.4f}"
        )
    typer.echo(f"saved {result.output}")
    if push_to_hub:
        print_push(push_dir(result.output, push_config))


# ---------------------------------------------------------------- experiments (evop_hub.report.compare)
def _csv(text: str | None, kind=str) -> list | None:
    if text is None:
        return None
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EvopError(f"{text!r} is not a comma-separated list of {kind.__name__} values") from None


@app.command()
def compare(
    model: Annotated[str | None, typer.Argument(help="Hub id, local directory, .gguf file, or `smollm2-135m`.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="REPORT_DIR: cells/, results.json, report.md, PNGs.")
    ] = None,
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
    sparsities: Annotated[
        str | None, typer.Option("--sparsities", help="Comma-separated, e.g. 0.1,0.2,0.3 (each method's own unit).")
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help="Comma-separated: evop, sleb, shortgpt, angular, random, exhaustive, wanda, slicegpt (dense is always the reference).",
        ),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma-separated calibration/search seeds, e.g. 0,1,2.")
    ] = None,
    corpus: Annotated[
        str | None, typer.Option("--corpus", help="Calibration corpus NAME[:SPLIT] or a local file.")
    ] = None,
    eval_corpora: Annotated[str | None, typer.Option("--eval", help="Comma-separated evaluation corpora.")] = None,
    samples: Annotated[int | None, typer.Option("--samples", help="Calibration samples (CCDS clusters x 1).")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Tokens per calibration sample.")] = None,
    eval_seq_len: Annotated[int | None, typer.Option("--eval-seq-len", help="Tokens per held-out window.")] = None,
    eval_windows: Annotated[
        int | None, typer.Option("--eval-windows", help="First N windows of each evaluation corpus (0: all).")
    ] = None,
    blocks: Annotated[
        int | None, typer.Option("--blocks", help="Keep only the first N blocks of the model (0: all).")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option("--tasks", help="Comma-separated lm-eval tasks; `none` for none.")
    ] = None,
    no_speed: Annotated[bool, typer.Option("--no-speed", help="Do not measure speed.")] = False,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ...")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="float32|bfloat16|float16|auto")] = None,
    data_dir: DataDirOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Reuse the finished cells in REPORT_DIR; compute the rest.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Delete what compare wrote in REPORT_DIR and start over (and let --write-config replace its file).",
        ),
    ] = False,
    report_only: Annotated[
        bool,
        typer.Option("--report-only", help="Rewrite report.md and the PNGs from REPORT_DIR/results.json; run nothing."),
    ] = False,
    write_config: Annotated[
        Path | None,
        typer.Option("--write-config", help="Write the resolved settings as TOML to this file and stop."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Reproduce the EvoP paper's tables and figures on MODEL: methods x sparsities x seeds, resumable."""
    from .report.compare import CompareConfig
    from .report.compare import compare as run_compare
    from .report.compare import preset as preset_config
    from .report.tables import regenerate

    if report_only:
        if output is None:
            raise EvopError("--report-only needs --output REPORT_DIR")
        typer.echo(f"wrote {regenerate(output)}")
        return
    config = preset_config(preset) if preset else CompareConfig()
    if config_file is not None:
        config = CompareConfig.load(config_file, config)
    flags = {
        "sparsities": _csv(sparsities, float),
        "methods": _csv(methods),
        "seeds": _csv(seeds, int),
        "calibration": corpus,
        "eval": _csv(eval_corpora),
        "samples": samples,
        "seq_len": seq_len,
        "eval_seq_len": eval_seq_len,
        "eval_windows": eval_windows,
        "blocks": blocks,
        "device": device,
        "dtype": dtype,
        "data_dir": str(data_dir) if data_dir else None,
        "tasks": None if tasks is None else ([] if tasks.strip().lower() == "none" else _csv(tasks)),
        "speed": False if no_speed else None,
    }
    config = CompareConfig.from_dict({k: v for k, v in flags.items() if v is not None}, config)
    for name in ("eval_windows", "blocks"):
        if getattr(config, name) == 0:
            config = CompareConfig.from_dict({name: None}, config)
    if write_config is not None:
        from .calibration.calibration_set import refuse_existing

        with atomic_path(refuse_existing(write_config, overwrite)) as tmp:
            tmp.write_text(config.to_toml())
        typer.echo(f"wrote {write_config}")
        return
    if model is None or output is None:
        raise EvopError("give MODEL and --output REPORT_DIR (or --report-only --output REPORT_DIR)")
    if quiet:
        from .progress import silence

        silence()
    results = run_compare(
        model, config, output, resume=resume, overwrite=overwrite, command=command_line(), progress=not quiet
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
