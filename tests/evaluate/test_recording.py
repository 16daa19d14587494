"""Evaluating writes nothing; `record_results` is the one writer, and it writes what the commands always wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from evop_hub.cli import app
from evop_hub.data import load_corpus
from evop_hub.errors import EvopError
from evop_hub.evaluate import PerplexityConfig, evaluate_perplexity, perplexity, speed, tasks
from evop_hub.evaluate.speed import SpeedConfig
from evop_hub.models import LoadConfig, LoadedModel, SourceInfo, drop, load, save
from evop_hub.record import RECORD_NAME, PruningRecord, record_results

from ..tiny import tiny_llama, tiny_tokenizer
from .test_perplexity import SEQ, word_tokenizer, words_corpus

SMALL = SpeedConfig(batch_size=1, prompt_len=8, new_tokens=3, warmup=0, repeats=1)


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file under ``folders``, by path, with its bytes."""
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_output(tmp_path: Path, dropped: list[int]) -> tuple[Path, Path]:
    """A saved 4-block tiny Llama (the source) and an evop-hub output pruned from it."""
    source = LoadedModel(tiny_llama(4), tiny_tokenizer(), SourceInfo(name="tiny", path="tiny"))
    save(source, tmp_path / "dense")
    save(
        drop(LoadedModel(tiny_llama(4), tiny_tokenizer(), SourceInfo(name="tiny", path="tiny")), dropped),
        tmp_path / "pruned",
    )
    return tmp_path / "dense", tmp_path / "pruned"


def words_output(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny Llama saved as a local model, block 1 dropped into an output, and a words corpus file."""
    source = tmp_path / "tiny"
    tiny_llama(layers=4).save_pretrained(source)
    word_tokenizer(bos=False).save_pretrained(source)
    loaded = load(str(source))
    drop(loaded, [1])
    out = save(loaded, tmp_path / "pruned", command="evop-hub drop")
    corpus_file = tmp_path / "a.txt"
    corpus_file.write_text(words_corpus(600).text, encoding="utf-8")
    return out, corpus_file


def test_tasks_writes_nothing(tmp_path):
    pytest.importorskip("lm_eval")
    from .test_tasks import TASK, write_task

    task_dir = tmp_path / "task"
    task_dir.mkdir()
    write_task(task_dir, n_docs=8)
    _, out = tiny_output(tmp_path, [1])
    before = snapshot(tmp_path)
    from evop_hub.evaluate.tasks import TasksConfig

    result = tasks(str(out), None, TasksConfig(tasks=[TASK], limit=3, include_path=str(task_dir)))
    assert result.samples == {TASK: 3}
    assert snapshot(tmp_path) == before


def test_speed_writes_nothing(tmp_path):
    dense, pruned = tiny_output(tmp_path, [1, 2])
    before = snapshot(tmp_path)
    result = speed(str(dense), str(pruned), SMALL)
    assert result.pruned.blocks == 2
    assert snapshot(tmp_path) == before


def test_evaluate_perplexity_writes_nothing(tmp_path):
    out, corpus_file = words_output(tmp_path)
    before = snapshot(tmp_path)
    run = evaluate_perplexity(str(out), [load_corpus(str(corpus_file))], PerplexityConfig(seq_len=SEQ), dense=True)
    assert run.dense and run.dense[0].ppl != run.results[0].ppl
    assert snapshot(tmp_path) == before


def test_record_results_writes_what_tasks_and_speed_always_wrote(tmp_path):
    """The commands wrote ``scores[key] = result.to_dict()`` into the loaded record and saved it, nothing else."""
    dense, pruned = tiny_output(tmp_path, [1, 2])
    before = json.loads((pruned / RECORD_NAME).read_text())
    result = speed(str(dense), str(pruned), SMALL)
    assert record_results(pruned, result) == pruned / RECORD_NAME
    after = json.loads((pruned / RECORD_NAME).read_text())
    assert after == {**before, "scores": {**before["scores"], "speed": result.to_dict()}}

    in_memory = PruningRecord.load(pruned)
    assert record_results(in_memory, result) is None  # a LoadedModel's record: a later save writes it
    assert in_memory.scores["speed"] == result.to_dict()
    with pytest.raises(TypeError, match="cannot record"):
        record_results(pruned, {"speed": 1.0})


def test_record_results_writes_what_the_tasks_command_writes(tmp_path):
    pytest.importorskip("lm_eval")
    from evop_hub.evaluate.tasks import TasksConfig

    from .test_tasks import TASK, write_task

    task_dir = tmp_path / "task"
    task_dir.mkdir()
    write_task(task_dir, n_docs=8)
    _, by_cli = tiny_output(tmp_path, [1])
    by_api = shutil.copytree(by_cli, tmp_path / "copy")
    args = ["tasks", str(by_cli), "--tasks", TASK, "--limit", "3", "--include-path", str(task_dir)]
    assert CliRunner().invoke(app, args).exit_code == 0
    record_results(by_api, tasks(str(by_api), None, TasksConfig(tasks=[TASK], limit=3, include_path=str(task_dir))))
    assert (by_api / RECORD_NAME).read_bytes() == (by_cli / RECORD_NAME).read_bytes()


def test_record_results_writes_what_the_ppl_command_writes(tmp_path):
    """`ppl --dense` and the API plus ``record_results`` leave byte-identical records; earlier figures of
    other corpora stay, and a quick look on part of a corpus is refused."""
    out, corpus_file = words_output(tmp_path)
    record = PruningRecord.load(out)
    record.scores["perplexity"] = {"other:test": {"dense": 9.0}}
    record.save(out)
    by_api = shutil.copytree(out, tmp_path / "copy")
    args = ["ppl", str(out), "--corpus", str(corpus_file), "--seq-len", str(SEQ), "--dense"]
    assert CliRunner().invoke(app, args).exit_code == 0
    corpora = [load_corpus(str(corpus_file))]
    # The copy's record names the same source by its path relative to the output, which the copy shares.
    run = evaluate_perplexity(str(by_api), corpora, PerplexityConfig(seq_len=SEQ), dense=True)
    record_results(by_api, run)
    assert (by_api / RECORD_NAME).read_bytes() == (out / RECORD_NAME).read_bytes()
    entry = PruningRecord.load(by_api).scores["perplexity"]
    assert entry["other:test"] == {"dense": 9.0}
    assert entry[f"{corpus_file}:all"] == {
        "dense": run.dense[0].ppl,
        "pruned": run.results[0].ppl,
        **run.results[0].to_dict(),
    }

    quick = evaluate_perplexity(str(by_api), corpora, PerplexityConfig(seq_len=SEQ, max_windows=1))
    assert quick.partial and quick.dense is None
    with pytest.raises(EvopError, match="never recorded"):
        record_results(by_api, quick)


def test_evaluate_perplexity_dense_scores_the_source_at_the_pruned_models_dtype(tmp_path):
    """The --dense policy through the API: the source found through the record, checked to be the source,
    loaded at the pruned model's dtype; a model without a record is refused before anything is loaded."""
    source = tmp_path / "bf16"
    tiny_llama(layers=4).to(torch.bfloat16).save_pretrained(source)
    word_tokenizer(bos=False).save_pretrained(source)
    loaded = load(str(source), LoadConfig(dtype="float32"))
    drop(loaded, [1])
    out = save(loaded, tmp_path / "pruned")
    corpus = words_corpus(600)
    config = PerplexityConfig(seq_len=SEQ)

    run = evaluate_perplexity(str(out), [corpus], config, dense=True)
    as_float32 = load(str(source), LoadConfig(dtype="float32"))
    assert run.dense == [perplexity(as_float32.model, as_float32.tokenizer, corpus, config)]
    assert run.dense[0].dtype == run.results[0].dtype == "float32"
    assert run.dense_model == str(source) and not run.partial
    assert evaluate_perplexity(str(out), [corpus], config).dense is None

    with pytest.raises(EvopError, match="--dense scores the source"):
        evaluate_perplexity(str(tmp_path / "never-loaded"), [corpus], config, dense=True)
    record = PruningRecord.load(out)
    record.source_relative, record.source_model = None, str(tmp_path / "other")
    record.save(out)
    tiny_llama(layers=6).save_pretrained(tmp_path / "other")
    word_tokenizer(bos=False).save_pretrained(tmp_path / "other")
    with pytest.raises(EvopError, match="is not the model this output was pruned from"):
        evaluate_perplexity(str(out), [corpus], config, dense=True)
