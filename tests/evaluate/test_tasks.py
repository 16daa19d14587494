"""`tasks` through the real lm-evaluation-harness path, checked against a plain log-likelihood scorer."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("lm_eval")

from evop_hub.cli import app  # noqa: E402
from evop_hub.errors import EvopError  # noqa: E402
from evop_hub.evaluate.tasks import TasksConfig, TasksResult, check_task_names, tasks  # noqa: E402
from evop_hub.record import PruningRecord, record_results  # noqa: E402

from ..tiny import WORDS, tiny_llama, tiny_tokenizer  # noqa: E402

TASK = "evop_tiny_mc"


def write_task(folder, n_docs: int = 64) -> list[dict]:
    """A 4-way multiple-choice task with local jsonl data, as a user would pass with --include-path."""
    rng = random.Random(1)
    docs = []
    for _ in range(n_docs):
        question = " ".join(rng.choices(WORDS, k=rng.randint(3, 7))) + " answer"
        choices = [" ".join(rng.choices(WORDS, k=rng.randint(1, 3))) for _ in range(4)]
        docs.append({"question": question, "choices": choices, "gold": rng.randrange(4)})
    data = folder / "test.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        "doc_to_target: gold\n"
        'doc_to_choice: "{{choices}}"\n'
        "metric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n"
    )
    return docs


@torch.no_grad()
def reference_scores(model, tokenizer, docs) -> tuple[list[int], list[int]]:
    """Plain per-choice scoring: sum of log p(continuation | context), argmax == gold.

    acc_norm divides by the choice's character length, as the harness defines it.
    """
    correct, correct_norm = [], []
    for doc in docs:
        context = tokenizer(doc["question"]).input_ids
        lls = []
        for choice in doc["choices"]:
            full = tokenizer(doc["question"] + " " + choice).input_ids
            logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), dim=-1)
            lls.append(sum(logprobs[pos - 1, full[pos]].item() for pos in range(len(context), len(full))))
        norm = [ll / len(c) for ll, c in zip(lls, doc["choices"])]
        correct.append(int(max(range(4), key=lls.__getitem__) == doc["gold"]))
        correct_norm.append(int(max(range(4), key=norm.__getitem__) == doc["gold"]))
    return correct, correct_norm


def test_accuracy_matches_plain_loglikelihood(tmp_path):
    docs = write_task(tmp_path)
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    result = tasks(model, tokenizer, TasksConfig(tasks=[TASK], batch_size=4, include_path=str(tmp_path)))

    correct, correct_norm = reference_scores(model, tokenizer, docs)
    row = result.scores[TASK]
    assert result.samples[TASK] == len(docs)
    assert row["acc"] == pytest.approx(sum(correct) / len(docs))
    assert row["acc_norm"] == pytest.approx(sum(correct_norm) / len(docs))
    assert row["acc_stderr"] == pytest.approx(statistics.stdev(correct) / math.sqrt(len(docs)))
    assert result.mean["acc"] == row["acc"] and result.num_fewshot == 0
    assert "0-shot" in result.table()


def test_cli_records_into_output_dir_and_limit_applies(tmp_path):
    from evop_hub.models import LoadedModel, SourceInfo, save

    task_dir = tmp_path / "task"
    task_dir.mkdir()
    write_task(task_dir)
    loaded = LoadedModel(tiny_llama(), tiny_tokenizer(), SourceInfo(name="tiny", path="tiny"))
    save(loaded, tmp_path / "out")

    args = ["tasks", str(tmp_path / "out"), "--tasks", TASK, "--limit", "5", "--include-path", str(task_dir), "--json"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    printed = json.loads(out.stdout)
    assert printed["samples"] == {TASK: 5} and printed["num_fewshot"] == 0
    assert PruningRecord.load(tmp_path / "out").scores["tasks"] == printed
    assert TasksResult.from_dict(printed).to_dict() == printed  # what the model card renders from

    record_results(loaded.record, tasks(loaded, None, TasksConfig(tasks=[TASK], limit=3, include_path=str(task_dir))))
    assert loaded.record.scores["tasks"]["samples"] == {TASK: 3}


def test_unknown_task_lists_close_matches():
    with pytest.raises(EvopError, match="arc_easy"):
        check_task_names(["arc_esay"], ["arc_easy", "arc_challenge", "piqa"])
    check_task_names(["piqa"], ["arc_easy", "piqa"])  # known names pass


def test_unknown_task_fails_before_loading_model(tmp_path):
    out = CliRunner().invoke(app, ["tasks", str(tmp_path / "never-loaded"), "--tasks", "arc_easy,helaswag"])
    assert isinstance(out.exception, EvopError)
    assert "'helaswag' (close: hellaswag" in str(out.exception)


def test_missing_include_path_is_reported(tmp_path):
    with pytest.raises(EvopError, match="include-path"):
        tasks(tiny_llama(), tiny_tokenizer(), TasksConfig(tasks=[TASK], include_path=str(tmp_path / "nope")))


def test_unreachable_hub_data_says_so(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as with no network, without waiting on timeouts
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "hub_task.yaml").write_text(
        "task: evop_hub_task\ndataset_path: evop-test/never-cached\ntest_split: test\n"
        'output_type: multiple_choice\ndoc_to_text: "{{q}}"\ndoc_to_target: 0\ndoc_to_choice: "{{c}}"\n'
    )
    with pytest.raises(EvopError, match="cannot fetch task data.*--include-path"):
        tasks(tiny_llama(), tiny_tokenizer(), TasksConfig(tasks=["evop_hub_task"], include_path=str(tmp_path)))


@pytest.mark.integration
def test_smollm2_accuracy_matches_plain_loglikelihood(tmp_path):
    """The real BPE tokenizer, where the context/continuation split and any BOS handling matter."""
    from evop_hub.models import load

    docs = write_task(tmp_path, n_docs=12)
    loaded = load("smollm2-135m")
    result = tasks(loaded, None, TasksConfig(tasks=[TASK], batch_size=8, include_path=str(tmp_path)))
    correct, correct_norm = reference_scores(loaded.model, loaded.tokenizer, docs)
    assert result.scores[TASK]["acc"] == pytest.approx(sum(correct) / len(docs))
    assert result.scores[TASK]["acc_norm"] == pytest.approx(sum(correct_norm) / len(docs))


def test_a_metric_is_averaged_only_over_tasks_that_all_report_it():
    from evop_hub.evaluate.tasks import TasksConfig, _summarise

    raw = {"results": {"arc_easy": {"acc,none": 0.6, "acc_norm,none": 0.55}, "winogrande": {"acc,none": 0.5}}}
    mean = _summarise(raw, TasksConfig(tasks=["arc_easy", "winogrande"]), "0.4").mean
    assert mean["acc"] == pytest.approx(0.55) and "acc_norm" not in mean
