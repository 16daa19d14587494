"""`evop-hub` command line: a thin layer over the Python API.

Every command turns an ``EvopError`` into one line on stderr and exit code 2; ``--debug``
shows the traceback instead. Commands parse options, call the API, print results.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import EvopError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Prune LLMs by removing whole transformer blocks (EvoP) and publish them on the Hugging Face Hub.",
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("evop_hub")
    ours.addHandler(handler)
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
ModelArg = Annotated[str, typer.Argument(help="Hub id, local directory, .gguf file, or `smollm2-135m` (offline default).")]
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="Hub branch, tag or commit.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto|bfloat16|float16|float32")]
DeviceMapOpt = Annotated[
    Optional[str],
    typer.Option("--device-map", help="auto|balanced|balanced_low_0|sequential, a device (cpu, cuda:0) or a JSON map."),
]
MaxMemoryOpt = Annotated[
    Optional[str], typer.Option("--max-memory", help='Per-device caps, e.g. \'{"0": "20GiB", "cpu": "60GiB"}\' or "0=20GiB,cpu=60GiB".')
]
OffloadOpt = Annotated[Optional[Path], typer.Option("--offload-folder", help="Folder for weights offloaded to disk.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow code from the model repository to run.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")]


def _load(model, revision, dtype, device_map, max_memory, offload_folder, trust_remote_code):
    from .models import LoadConfig, load, parse_max_memory

    return load(
        model,
        LoadConfig(
            revision=revision,
            dtype=dtype,
            device_map=device_map,
            max_memory=parse_max_memory(max_memory),
            offload_folder=str(offload_folder) if offload_folder else None,
            trust_remote_code=trust_remote_code,
        ),
    )


# ---------------------------------------------------------------- commands
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
) -> None:
    """Remove known blocks and save a smaller, standard checkpoint."""
    from .models import drop as drop_blocks
    from .models import parse_layers, prepare_output, save

    target = prepare_output(output, overwrite=overwrite)
    loaded = _load(model, revision, dtype, device_map, max_memory, offload_folder, trust_remote_code)
    dropped = parse_layers(layers)
    drop_blocks(loaded, dropped)
    path = save(loaded, target, command=command_line())
    typer.echo(f"saved {loaded.record.num_blocks - len(dropped)}-block model to {path}")


# ---------------------------------------------------------------- evaluation (evop_hub.evaluate)
CorpusOpt = Annotated[
    str,
    typer.Option("--corpus", help="Comma-separated NAME[:SPLIT] (wikitext2, c4, wiki-leads, pydoc) or .txt/.jsonl paths."),
]
DataDirOpt = Annotated[
    Optional[Path], typer.Option("--data-dir", help="Folder with local copies of Hub corpora (else $EVOP_DATA_DIR, else the Hub).")
]


@app.command()
def ppl(
    model: ModelArg,
    corpus: CorpusOpt = "wikitext2:test",
    seq_len: Annotated[str, typer.Option("--seq-len", help="Tokens per window (capped at the model's context), or `max`.")] = "2048",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 1,
    max_windows: Annotated[Optional[int], typer.Option("--max-windows", help="Score only the first N windows (quick looks).")] = None,
    data_dir: DataDirOpt = None,
    revision: RevisionOpt = None,
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadOpt = None,
    trust_remote_code: TrustOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Perplexity on corpora: non-overlapping windows, token-weighted mean NLL (the pruning papers' protocol)."""
    from .data import load_corpus
    from .evaluate.perplexity import PerplexityConfig, parse_seq_len, perplexity

    config = PerplexityConfig(parse_seq_len(seq_len), batch_size, max_windows)
    corpora = [load_corpus(spec.strip(), data_dir) for spec in corpus.split(",") if spec.strip()]  # fail before loading
    if not corpora:
        raise EvopError("--corpus names no corpus; give e.g. --corpus wikitext2:test")
    loaded = _load(model, revision, dtype, device_map, max_memory, offload_folder, trust_remote_code)
    results = [perplexity(loaded.model, loaded.tokenizer, c, config).to_dict() for c in corpora]
    if as_json:
        typer.echo(json.dumps({"model": model, "results": results}, indent=2))
        return
    rows = [{**r, "nll": f"{r['nll']:.4f}", "ppl": f"{r['ppl']:.3f}"} for r in results]
    widths = {key: max(len(key), *(len(str(row[key])) for row in rows)) for key in rows[0]}
    typer.echo("  ".join(f"{key:<{w}}" for key, w in widths.items()).rstrip())
    for row in rows:
        typer.echo("  ".join(f"{row[key]!s:<{w}}" for key, w in widths.items()).rstrip())


# ---------------------------------------------------------------- publishing (evop_hub.hub)
OutputDirArg = Annotated[Path, typer.Argument(help="An output directory of `evop-hub prune` or `evop-hub drop`.")]
# Push options, shared by `push` and `prune --push`.
RepoIdOpt = Annotated[Optional[str], typer.Option("--repo-id", help="USER/NAME; default {user}/{model}-evop-{kept}L.")]
PrivateOpt = Annotated[bool, typer.Option("--private/--public", help="Visibility of new repos (private by default).")]
PushRevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="Branch of the model repo (created if missing).")]
CommitMessageOpt = Annotated[Optional[str], typer.Option("--commit-message", help="Commit message.")]
NoSpaceOpt = Annotated[bool, typer.Option("--no-space", help="Do not create the demo Space.")]
SpaceHardwareOpt = Annotated[
    Optional[str], typer.Option("--space-hardware", help="Space hardware, e.g. cpu-upgrade or a10g-small.")
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
    if result.dry_run:
        typer.echo(f"dry run: would upload to model repo {result.repo_id}:")
        typer.echo("\n".join(f"  {name}" for name in result.files))
        if result.space_repo_id:
            typer.echo(f"and to Space {result.space_repo_id}:")
            typer.echo("\n".join(f"  {name}" for name in result.space_files))
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
    base: Annotated[Optional[str], typer.Option("--base", help="Base model to compare with (default: the source).")] = None,
    no_base: Annotated[bool, typer.Option("--no-base", help="Serve the pruned model alone.")] = False,
) -> None:
    """Serve the demo Space app for DIR locally on 127.0.0.1 (nothing is uploaded)."""
    from .hub import serve

    serve(output_dir, port=port, base=base, with_base=not no_base)


def main() -> None:
    """Console entry point: user errors become one line and exit code 2."""
    try:
        app()
    except EvopError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
