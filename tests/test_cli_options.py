"""The CLI's flags come from its options groups: each group's flags reach every command that takes it, and
reach it as the built group."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evop_hub import cli
from evop_hub.cli import LoadOptions, app
from evop_hub.errors import EvopError

# Every command that loads a model to run it takes all of LoadOptions; `speed` (one --device for both models)
# and `calibrate` (a tokenizer only) take the part they can honour.
MODEL_LOADING = ("info", "drop", "ppl", "tasks", "prune")
LOAD_FLAGS = [
    "--revision",
    "r1",
    "--dtype",
    "float32",
    "--device-map",
    "cpu",
    "--max-memory",
    "0=1GiB,cpu=2GiB",
    "--offload-folder",
    "offload",
    "--trust-remote-code",
]
EXPECTED = LoadOptions(
    revision="r1",
    dtype="float32",
    device_map="cpu",
    max_memory="0=1GiB,cpu=2GiB",
    offload_folder=Path("offload"),
    trust_remote_code=True,
)


def flags(group: type) -> list[str]:
    return [f"--{f.name.replace('_', '-')}" for f in fields(group)]


def test_load_options_are_one_list():
    assert flags(LoadOptions) == [flag for flag in LOAD_FLAGS if flag.startswith("--")]


@pytest.mark.parametrize("command", MODEL_LOADING)
def test_every_model_loading_command_takes_every_load_option(command, monkeypatch, tmp_path):
    """Each flag is parsed and the command is handed the built group; loading stops there."""
    seen = []

    def config(self):
        seen.append(self)
        raise EvopError("stop before loading")

    monkeypatch.setattr(LoadOptions, "config", config)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("Some text to score.\n")
    extra = {
        "drop": ["--layers", "1", "--output", "out"],
        "ppl": ["--corpus", "text.txt"],
        "prune": ["--calibration", "cal.safetensors", "--output", "out"],
    }.get(command, [])
    result = CliRunner().invoke(app, [command, "some/model", *extra, *LOAD_FLAGS])
    assert isinstance(result.exception, EvopError), result.output
    assert str(result.exception) == "stop before loading"
    assert seen == [EXPECTED]


@pytest.mark.parametrize(
    ("command", "taken"), [("speed", {"dtype", "trust_remote_code"}), ("calibrate", {"revision", "trust_remote_code"})]
)
def test_a_part_of_the_load_options_is_that_part_only(command, taken):
    text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
    for field in fields(LoadOptions):
        assert (f"--{field.name.replace('_', '-')} " in text) == (field.name in taken), field.name


def test_prune_help_lists_every_field_of_its_options():
    text = CliRunner().invoke(app, ["prune", "--help"], env={"COLUMNS": "200"}).output
    groups = (
        cli.OutputOptions,
        cli.TargetOptions,
        cli.DrawOptions,
        cli.SearchOptions,
        cli.LoadOptions,
        cli.CompensateOptions,
        cli.PublishOptions,
    )
    missing = [flag for group in groups for flag in flags(group) if flag not in text]
    assert not missing
    assert cli.DRAW_OPTIONS == tuple(f.name for f in fields(cli.DrawOptions))[1:]


@dataclass(frozen=True)
class Clashing:
    dtype: str = cli.option("--other-dtype", help="clashes with LoadOptions.dtype by name", default="x")


def test_two_groups_may_not_declare_one_flag():
    def command(*, load: LoadOptions, other: Clashing) -> None: ...

    with pytest.raises(TypeError, match="share a name"):
        cli.options(command)
