"""Hostile input, as a demanding new user gives it (issue 21): every refusal is exit code 2 and one `error:` line
with no traceback, and nothing is written or deleted that was not evop-hub's; `--overwrite` keeps what the user
owns; no code from a folder runs unasked; one run at a time writes an output.

The commands run as real processes on tiny random models (a few seconds each, offline).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import evop_hub
from evop_hub.errors import EvopError
from evop_hub.files import release_output
from evop_hub.models import prepare_output
from evop_hub.record import RECORD_NAME, STATE_DIR

from .tiny import tiny_llama, tiny_tokenizer

LAYERS = 4


def cli(*args, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120):
    """`evop-hub ARGS` in a fresh process, offline and on one thread."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "evop_hub.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a refused command (asserting there is exactly one, exit code 2, no traceback)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its content: what a refused command may not change."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny dense Llama directory, an evop-hub output pruned from it) to copy from."""
    root = tmp_path_factory.mktemp("models")
    dense = root / "dense"
    tiny_llama(LAYERS).save_pretrained(dense)
    tiny_tokenizer().save_pretrained(dense)
    loaded = evop_hub.load(str(dense))
    evop_hub.drop(loaded, [1])
    return dense, evop_hub.save(loaded, root / "pruned")


@dataclass
class Scene:
    """A case's folder: ``dense`` is a model, ``run`` an evop-hub output holding a resumable search's state."""

    tmp: Path
    dense: Path
    run: Path


@pytest.fixture
def scene(models, tmp_path) -> Scene:
    dense, pruned = models
    run = tmp_path / "run"
    shutil.copytree(pruned, run)
    (run / STATE_DIR / "search_state.json").write_text('{"generation": 7}\n')
    (run / STATE_DIR / "trace.jsonl").write_text("{}\n")
    return Scene(tmp_path, dense, run)


def _space_with_code(s: Scene) -> list:
    """A downloaded "SliceGPT output" whose modeling file writes a marker when imported."""
    record = json.loads((s.run / RECORD_NAME).read_text())
    (s.run / RECORD_NAME).write_text(json.dumps({**record, "method": "slicegpt"}))
    config = json.loads((s.run / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_slicegpt.SlicedForCausalLM"}
    (s.run / "config.json").write_text(json.dumps(config))
    (s.run / "modeling_slicegpt.py").write_text(f"open({str(s.tmp / 'marker')!r}, 'w').write('ran')\n")
    return ["space", s.run, "--no-base"]


def _read_only_parent(s: Scene) -> list:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories (the Python API case covers this for root)")
    s.tmp.chmod(0o555)
    return ["drop", s.dense, "--layers", "1", "--output", s.run, "--overwrite"]


def _calibration_file(s: Scene, ids: torch.Tensor, metadata: str | None = None) -> Path:
    """A calibration file for the tiny models, holding ``ids`` (and ``metadata`` instead of valid metadata)."""
    from safetensors.torch import save_file

    from evop_hub.calibration.calibration_set import FORMAT, METADATA_KEY, VERSION, tokenizer_fingerprint

    valid = {
        "format": FORMAT,
        "version": VERSION,
        "sampler": "random",
        "tokenizer": "tiny",
        "tokenizer_fingerprint": tokenizer_fingerprint(tiny_tokenizer()),
    }
    path = s.tmp / "calibration.safetensors"
    save_file(
        {"input_ids": ids}, str(path), metadata={METADATA_KEY: json.dumps(valid) if metadata is None else metadata}
    )
    return path


def _with_calibration(ids: torch.Tensor | None = None, metadata: str | None = None) -> Callable[[Scene], list]:
    """`prune --calibration FILE`, FILE holding ``ids`` (default: valid ones)."""
    ids = torch.randint(2, 20, (4, 16)) if ids is None else ids
    return lambda s: [
        "prune",
        s.dense,
        "--calibration",
        _calibration_file(s, ids, metadata),
        "--num-drop",
        "1",
        "--output",
        s.tmp / "o",
    ]


def _damaged_copy(s: Scene, name: str, damage: Callable[[Path], None]) -> list:
    """`info` on a copy of the dense model whose file ``name`` is damaged by ``damage``."""
    broken = s.tmp / "broken"
    shutil.copytree(s.dense, broken)
    damage(broken / name)
    return ["info", broken]


def _corpus(s: Scene, data: bytes) -> Path:
    path = s.tmp / "corpus.txt"
    path.write_bytes(data)
    return path


def _calibrate_into(s: Scene, folder: Path) -> list:
    return [
        "calibrate",
        s.dense,
        "-o",
        folder / "c.safetensors",
        "--corpus",
        _corpus(s, b"the cat sat on the mat " * 50),
        "--sampler",
        "random",
        "--seq-len",
        "8",
        "--clusters",
        "2",
    ]


def _file_as_folder(s: Scene) -> Path:
    (s.tmp / "afile").write_text("a file, not a folder")
    return s.tmp / "afile"


def _calibrate_read_only(s: Scene) -> list:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories (the `afile` cases cover this for root)")
    args = _calibrate_into(s, s.tmp)
    s.tmp.chmod(0o555)
    return args


def _resume_damaged(s: Scene) -> list:
    (s.run / STATE_DIR / "search_state.json").write_text('{"fingerprint": "abc", "memo": [[1, 2')
    return [*_with_calibration()(s)[:-2], "--output", s.run, "--resume", "--stages", ""]


# id -> (the command, given its scene; a phrase of the one error line)
REFUSED: dict[str, tuple[Callable[[Scene], list], str]] = {
    # issue 21.4: --overwrite deletes nothing before the checks that refuse the run
    "overwrite-the-source": (
        lambda s: ["drop", s.run, "--layers", "1", "--output", s.run, "--overwrite"],
        "is the source model's own directory",
    ),
    "overwrite-mistyped-model": (
        lambda s: ["drop", "no-such-user/no-such-model", "--layers", "1", "--output", s.run, "--overwrite"],
        "no-such-user/no-such-model",
    ),
    "prune-overwrite-mistyped-model": (
        lambda s: [
            "prune",
            s.tmp / "no-such-model",
            "--num-drop",
            "1",
            "--output",
            s.run,
            "--overwrite",
            "--preset",
            "quick",
        ],
        "no-such-model",
    ),
    "overwrite-read-only-parent": (_read_only_parent, "cannot write to"),
    # issue 21.12: nonsense is refused, not silently replaced or ignored
    "prune-seq-len-0": (
        lambda s: ["prune", s.dense, "--seq-len", "0", "--output", s.tmp / "o"],
        "--seq-len must be at least 1, not 0",
    ),
    "prune-seq-len-negative": (
        lambda s: ["prune", s.dense, "--seq-len", "-5", "--output", s.tmp / "o"],
        "--seq-len must be at least 1",
    ),
    "cache-gib-negative": (lambda s: ["prune", s.dense, "--cache-gib", "-1", "--output", s.tmp / "o"], "--cache-gib"),
    "cache-gib-nan": (lambda s: ["prune", s.dense, "--cache-gib", "nan", "--output", s.tmp / "o"], "not nan"),
    "cache-gib-inf": (lambda s: ["prune", s.dense, "--cache-gib", "inf", "--output", s.tmp / "o"], "not inf"),
    "sparsity-and-num-drop": (
        lambda s: ["prune", s.dense, "--sparsity", "1.5", "--num-drop", "1", "--output", s.tmp / "o"],
        "give one of them",
    ),
    # issue 21.8: damaged files and impossible values are one line, not a traceback
    "corrupt-config-json": (
        lambda s: _damaged_copy(s, "config.json", lambda p: p.write_text('{"model_type": ')),
        "config.json is not valid JSON",
    ),
    "truncated-safetensors": (
        lambda s: _damaged_copy(s, "model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:3000])),
        "are damaged",
    ),
    "corpus-not-utf8": (
        lambda s: [
            "calibrate",
            s.dense,
            "-o",
            s.tmp / "c.safetensors",
            "--corpus",
            _corpus(s, b"the cat \xff\xfe sat\n"),
            "--sampler",
            "random",
            "--seq-len",
            "8",
        ],
        "is not UTF-8 text",
    ),
    "resume-damaged-state": (_resume_damaged, "search_state.json is damaged"),
    "device-map-missing-device": (lambda s: ["info", s.dense, "--device-map", '{"": "cuda:99"}'], "cuda:99"),
    "layers-huge-range": (
        lambda s: ["drop", s.dense, "--layers", "0-99999999999", "--output", s.tmp / "o"],
        "no model has that many blocks",
    ),
    "calibration-bad-metadata": (_with_calibration(metadata="{not json"), "damaged calibration metadata"),
    "calibration-float-ids": (_with_calibration(torch.rand(4, 16) * 10), "not integers"),
    "calibration-negative-ids": (_with_calibration(torch.full((4, 16), -3)), "from -3 to -3; ids are 0 or more"),
    "calibration-out-of-range-ids": (_with_calibration(torch.full((4, 16), 1000)), "embeds only ids 0..31"),
    "calibration-1d-ids": (_with_calibration(torch.arange(2, 18)), "have shape [16]"),
    "calibration-empty-ids": (_with_calibration(torch.zeros((0, 16), dtype=torch.int64)), "have shape [0, 16]"),
    # issue 21.9: an output path that cannot be written is refused before the work, not after it
    "plot-into-a-file": (
        lambda s: [*_with_calibration()(s), "--method", "sleb", "--plot", _file_as_folder(s) / "p.png"],
        "afile is not a directory",
    ),
    "calibrate-into-a-file": (lambda s: _calibrate_into(s, _file_as_folder(s)), "afile is not a directory"),
    "calibrate-read-only-folder": (_calibrate_read_only, "cannot write to"),
    # issue 21.2: code in a folder runs only when the user says so
    "space-runs-folder-code": (_space_with_code, "pass --trust-remote-code"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_in_one_line_touching_nothing(case, scene):
    command, phrase = REFUSED[case]
    args = command(scene)
    before = tree(scene.tmp)
    try:
        result = cli(*args)
    finally:
        scene.tmp.chmod(0o755)
    assert phrase in error_line(result)
    assert tree(scene.tmp) == before  # the saved search state included: the run can still be resumed


def test_the_working_directory_is_replaced_in_place(models, tmp_path):
    """21.10: `--output . --overwrite` from inside the output: the shell's directory is still the output."""
    dense, pruned = models
    out = tmp_path / "out"
    shutil.copytree(pruned, out)
    (out / "mine.txt").write_text("mine")
    inode = out.stat().st_ino
    result = cli("drop", dense, "--layers", "2-3", "--output", ".", "--overwrite", cwd=out)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_ino == inode  # old code: renamed away, leaving the caller in a deleted directory
    assert json.loads((out / RECORD_NAME).read_text())["dropped_blocks"] == [2, 3]
    assert (out / "mine.txt").read_text() == "mine" and (out / STATE_DIR / "published.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary, old copy or lock left beside it


def test_overwriting_a_clone_keeps_the_users_files(models, tmp_path):
    """21.1: a git clone of a pushed model has no .evop (never published): --overwrite replaces the checkpoint's
    files only; .git, .gitattributes and the user's notes stay, and the repository still works."""
    dense, pruned = models
    out = tmp_path / "clone"
    shutil.copytree(pruned, out, ignore=shutil.ignore_patterns(STATE_DIR))
    (out / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (out / "NOTES.md").write_text("my notes\n")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"a shard of an earlier save")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(out)]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "pushed model"]):
        subprocess.run([*git, *step], check=True, capture_output=True)

    result = cli("drop", dense, "--layers", "1-2", "--output", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (out / "NOTES.md").read_text() == "my notes\n" and (out / ".gitattributes").is_file()
    log = subprocess.run([*git, "log", "--oneline"], capture_output=True, text=True)
    assert log.returncode == 0 and log.stdout.strip().endswith("pushed model")
    assert not (out / "model-00001-of-00002.safetensors").exists()  # an old checkpoint's file is evop-hub's
    assert json.loads((out / RECORD_NAME).read_text())["dropped_blocks"] == [1, 2]


def test_a_second_run_on_one_output_is_refused_naming_the_first(models, tmp_path):
    """21.3: while one process holds an output, another run on it stops at once and says which process; a lock
    left by a killed run (its file, no process) blocks nothing."""
    dense, _ = models
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from evop_hub.files import hold_output; "
            "hold_output(sys.argv[1]); print('held', flush=True); sys.stdin.read()",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        line = error_line(cli("drop", dense, "--layers", "1", "--output", out))
        assert f"process {holder.pid}" in line and "another evop-hub run" in line
        assert not out.exists()
    finally:
        holder.communicate("", timeout=60)
    (tmp_path / ".out.lock").write_text("999999\n")  # a killed run's: the kernel released its lock
    result = cli("drop", dense, "--layers", "1", "--output", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the lock file goes with the run


def test_a_trusted_folders_code_runs(scene, tmp_path_factory):
    """21.2: with --trust-remote-code the folder's code does run (the marker appears), and only then."""
    args = _space_with_code(scene)
    modules = {"HF_MODULES_CACHE": str(tmp_path_factory.mktemp("hf_modules"))}
    cli(*args, "--trust-remote-code", env=modules)  # then fails: the marker file defines no model
    assert (scene.tmp / "marker").read_text() == "ran"


def test_a_pushed_space_trusts_only_what_push_says(scene):
    """21.2 on the Hub: the pushed app no longer trusts the record it reads, so push tells it, for SliceGPT only."""
    from evop_hub.hub.space import CONFIG_NAME, space_files
    from evop_hub.record import PruningRecord

    def trusted() -> bool:
        files = space_files(scene.run, PruningRecord.load(scene.run), "user/model", private=False).files
        return json.loads(files[CONFIG_NAME])["trust_remote_code"]

    assert trusted() is False
    _space_with_code(scene)
    assert trusted() is True


def test_checks_come_before_the_old_state_goes(scene, monkeypatch):
    """21.4 through the Python API (a parent that cannot be written, as root sees it too): refused, state kept."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != scene.tmp and real(path, mode))
    before = tree(scene.tmp)
    with pytest.raises(EvopError, match="cannot write to"):
        prepare_output(scene.run, overwrite=True)
    assert tree(scene.tmp) == before
    monkeypatch.undo()
    loaded = evop_hub.load(str(scene.run))  # the output's own source: refused after loading, state still kept
    with pytest.raises(EvopError, match="source model's own directory"):
        evop_hub.save(loaded, prepare_output(scene.run, overwrite=True), overwrite=True)
    assert tree(scene.tmp) == before


def test_a_save_killed_between_its_renames_is_recovered_on_the_next_run(scene):
    """21.7: a kill between the two renames of an overwrite left the output only in a hidden `.run.old-PID` (so
    --resume found nothing), and one during the save a full-size `.run.tmp-*`: the next run for that output puts
    the old one back and removes the temporary, saying so."""
    hidden = scene.tmp / ".run.old-4242"
    scene.run.rename(hidden)
    (scene.tmp / ".run.tmp-x1y2z3").mkdir()
    (scene.tmp / ".run.tmp-x1y2z3" / "model.safetensors").write_bytes(b"half a checkpoint")
    output = prepare_output(scene.run, resume=True)  # old code: "holds no run to resume"
    release_output(output)
    assert (scene.run / STATE_DIR / "search_state.json").read_text() == '{"generation": 7}\n'
    assert sorted(p.name for p in scene.tmp.iterdir()) == ["run"]


def test_leftovers_beside_an_output_are_removed_and_logged(models, tmp_path):
    """21.7 through the CLI: leftovers of a killed save beside an output that is in place go, one line each."""
    dense, pruned = models
    out = tmp_path / "out"
    shutil.copytree(pruned, out)
    shutil.copytree(pruned, tmp_path / ".out.old-4242")  # killed after the new output took its place
    (tmp_path / ".out.tmp-abc123").mkdir()
    result = cli("drop", dense, "--layers", "2", "--output", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert "removed .out.old-4242" in result.stderr and "removed .out.tmp-abc123" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_ctrl_c_is_one_line_and_exit_130(models, tmp_path):
    """21.13: SIGINT during a run exits 130 with a line saying it was interrupted (old code: nothing at all)."""
    dense, _ = models
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "evop_hub.cli",
            "prune",
            dense,
            "--preset",
            "quick",
            "--num-drop",
            "1",
            "--output",
            tmp_path / "out",
            "--quiet",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    while not run.stderr.readline().startswith("dropping"):  # the model is loaded: the run's work has begun
        assert run.poll() is None
    run.send_signal(signal.SIGINT)
    stderr = run.stderr.read()
    assert run.wait(timeout=60) == 130
    assert stderr.splitlines()[-1].startswith("interrupted") and "Traceback" not in stderr, stderr


def test_ctrl_c_after_a_checkpoint_says_how_to_resume(models, tmp_path, monkeypatch, capsys):
    """21.13: interrupted once the run state holds something to resume, the line says to add --resume."""
    import importlib

    from evop_hub import cli as cli_module

    dense, _ = models
    out = tmp_path / "out"

    def interrupted(model, config):
        (out / STATE_DIR).mkdir(parents=True)
        (out / STATE_DIR / "search_state.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("evop_hub.prune"), "prune", interrupted)  # the module, not the function
    monkeypatch.setattr(sys, "argv", ["evop-hub", "prune", str(dense), "--output", str(out)])
    with pytest.raises(SystemExit) as exit_:
        cli_module.main()
    assert exit_.value.code == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("interrupted") and "--resume" in line and str(out) in line


def test_a_full_disk_is_one_line(scene, monkeypatch, capsys):
    """21.8: ENOSPC anywhere (a search checkpoint, a card) is one `error:` line and exit 2, not a traceback."""
    import errno

    import evop_hub.hub
    from evop_hub import cli as cli_module

    def full(directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "README.md"))

    monkeypatch.setattr(evop_hub.hub, "write_card", full)
    monkeypatch.setattr(sys, "argv", ["evop-hub", "card", str(scene.run)])
    with pytest.raises(SystemExit) as exit_:
        cli_module.main()
    assert exit_.value.code == 2
    assert (
        capsys.readouterr().err == f"error: no space left on the device holding {scene.run / 'README.md'}; "
        "free some space, then run again\n"
    )


def _as_mount_point(monkeypatch, output: Path) -> None:
    """Stand-in for a container volume (tests cannot mount): `ismount` says so, and renaming it fails as the
    kernel makes it fail (EBUSY)."""
    real_ismount, real_replace = os.path.ismount, os.replace
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p).resolve() == output.resolve() or real_ismount(p))

    def replace(src, dst, *args, **kwargs):
        if output.resolve() in (Path(src).resolve(), Path(dst).resolve()):
            raise OSError(errno.EBUSY, "Device or resource busy", str(src))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_an_output_that_is_a_mount_point_is_written_in_place(scene, monkeypatch):
    """21.6: a mount point cannot be renamed: the save happens inside it, entry by entry, each by one rename,
    with its lock and temporary copies inside too (the volume's parent may not be writable); nothing beside it."""
    _as_mount_point(monkeypatch, scene.run)
    (scene.run / "mine.txt").write_text("mine")
    inode = scene.run.stat().st_ino
    loaded = evop_hub.load(str(scene.dense))
    evop_hub.drop(loaded, [0, 2])
    evop_hub.save(loaded, prepare_output(scene.run, overwrite=True), overwrite=True)
    assert scene.run.stat().st_ino == inode
    assert json.loads((scene.run / RECORD_NAME).read_text())["dropped_blocks"] == [0, 2]
    assert (scene.run / "mine.txt").read_text() == "mine"
    assert not [p.name for p in scene.run.iterdir() if p.name.startswith(".run.")]  # no lock, temporary, old copy
    assert sorted(p.name for p in scene.tmp.iterdir()) == ["run"]
    assert evop_hub.load(str(scene.run)).model.config.num_hidden_layers == LAYERS - 2  # it reloads


@pytest.mark.parametrize("finished", [False, True])
def test_an_in_place_save_killed_half_way_is_undone_or_finished_on_the_next_run(scene, monkeypatch, finished):
    """21.7 for an in-place save (a mount point): killed while moving the new entries in, the next run puts the
    previous save back whole (no mix of two checkpoints); killed after, it keeps the new one."""
    _as_mount_point(monkeypatch, scene.run)
    previous = {p.name: p.read_bytes() for p in scene.run.iterdir() if p.is_file()}
    old, new = scene.run / ".run.old-abc", scene.run / ".run.tmp-def"
    old.mkdir(), new.mkdir()
    incoming = ["config.json", "model.safetensors", "extra.json"]
    (old / "config.json").write_bytes(previous["config.json"])
    (old / "model.safetensors").write_bytes(previous["model.safetensors"])
    (scene.run / "config.json").write_text('{"new": true}')  # moved in before the kill
    if finished:
        (scene.run / "model.safetensors").write_bytes(b"new weights")
        (scene.run / "extra.json").write_text("{}")
    else:
        (scene.run / "model.safetensors").unlink()
        (new / "model.safetensors").write_bytes(b"new weights")
        (new / "extra.json").write_text("{}")
    (scene.run / ".run.old-abc.json").write_text(json.dumps({"new": new.name, "incoming": incoming}))
    release_output(prepare_output(scene.run, resume=True))
    assert not [p.name for p in scene.run.iterdir() if p.name.startswith(".run.")]
    if finished:
        assert (scene.run / "model.safetensors").read_bytes() == b"new weights" and (scene.run / "extra.json").exists()
    else:
        assert {name: (scene.run / name).read_bytes() for name in previous} == previous
        assert not (scene.run / "extra.json").exists()
    assert (scene.run / STATE_DIR / "search_state.json").read_text() == '{"generation": 7}\n'
