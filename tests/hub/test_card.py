"""The model card: Hub metadata parsed back with huggingface_hub, body tables checked
against the record. Unverified here: how the Hub renders it (no Hub reachable)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard, SpaceCard

from evop_hub.card.card import mapping_table, pattern_table, render
from evop_hub.record import PruningRecord

from .conftest import PERPLEXITY, SEARCH, TASKS


def parse_table(markdown: str, first_header: str) -> list[list[str]]:
    """Rows of the Markdown table whose header starts with ``first_header``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_card_metadata_round_trips(make_output):
    out = make_output(hub_base="meta-org/tiny-base", source_format="gguf:Q4_1")
    card = ModelCard.load(str(out / "README.md"))  # written by evop_hub.models.save
    data = card.data.to_dict()
    assert data["base_model"] == "meta-org/tiny-base"
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert {"pruned", "layer-pruning", "evop", "llama"} <= set(data["tags"])  # the config's model_type
    assert data["license"] == "llama2"
    assert "base_model_relation" not in data
    assert data["datasets"] == ["Salesforce/wikitext"]  # the calibration corpus; evaluation corpora are in model-index
    results = {(r.dataset_name, r.metric_type): r for r in card.data.eval_results}
    for corpus, entry in PERPLEXITY.items():
        result = results[(corpus, "perplexity")]
        assert result.metric_value == entry["pruned"]
        assert result.dataset_args == {"seq_len": entry["seq_len"], "form": entry["form"]}
    # Harness tasks: acc_norm where the task has it, else acc.
    assert results[("arc_easy", "acc_norm")].metric_value == TASKS["scores"]["arc_easy"]["acc_norm"]
    assert results[("winogrande", "acc")].metric_value == TASKS["scores"]["winogrande"]["acc"]
    assert len(results) == len(PERPLEXITY) + len(TASKS["scores"])
    assert "dequantized from a Q4_1 GGUF" in card.text
    assert "evop-hub prune meta-org/tiny-base --output out" in card.text
    assert "could not be fetched" in card.text  # written offline: the card says so
    # Speed measured on the tiny models (evop_hub.evaluate.speed), calibration and search.
    record = PruningRecord.load(out)
    decode = record.scores["speed"]["speedup"]["decode"]
    assert f"decodes {decode:.2f}× as fast" in card.text and "| decode tokens/s |" in card.text
    clusters = parse_table(card.text, "cluster")
    assert [(int(r[0]), int(r[1]), r[2]) for r in clusters] == [(0, 7, "cat, mat"), (1, 3, "rug, big")]
    assert clusters[1][3] == "who ran under the big rug"
    assert f"Candidate masks evaluated: {SEARCH['stats']['evaluations']}" in card.text
    assert f"{SEARCH['loss']:.4f} (all blocks: {SEARCH['dense_loss']:.4f})" in card.text


def test_card_body_tables_match_the_record():
    record = PruningRecord(
        source_model="org/big",
        architecture="LlamaForCausalLM",
        num_blocks=20,
        dropped_blocks=[3, 4, 17],
        parameters_before=1000,
        parameters_after=850,
        scores={"perplexity": PERPLEXITY},
    )
    text = render(record).text
    # The 0/1 pattern, 16 blocks per row, read back cell by cell.
    cells = [c for row in parse_table(text, "blocks") for c in row[1:] if c]
    assert cells == ["0" if i in (3, 4, 17) else "1" for i in range(20)]
    # Mapping: new index -> original index.
    mapped = [int(c) for row in parse_table(text, "") for c in row[1:] if c]
    assert mapped == [i for i in range(20) if i not in (3, 4, 17)]
    rows = {row[0]: row for row in parse_table(text, "corpus")}
    assert float(rows["wikitext2:test"][4]) == PERPLEXITY["wikitext2:test"]["pruned"]
    assert rows["wikitext2:test"][5] == f"{25.25 / 21.5 - 1:+.1%}"
    assert "15.0% fewer parameters" in text
    assert "GGUF" not in text  # a transformers source has no dequantization note


def test_pattern_and_mapping_tables_shape():
    assert pattern_table(3, [1]).splitlines()[2] == "| 0–2 | 1 | 0 | 1 |"
    assert mapping_table([0, 2]).splitlines()[2] == "| new 0–1 | 0 | 2 |"


def test_card_without_optional_parts(make_output):
    out = make_output(extras=False, license=None)
    text = ModelCard.load(str(out / "README.md")).text
    assert "## Results" not in text and "### Calibration data" not in text
    assert "Blocks dropped (original numbering, 0-based): **1**" in text


def test_card_command_copies_license_files_from_local_base(make_output, tmp_path):
    out = make_output()
    (tmp_path / "base" / "LICENSE").write_text("license text\n")
    (tmp_path / "base" / "USE_POLICY.md").write_text("policy\n")
    record = json.loads((out / "evop_pruning.json").read_text())
    record["scores"]["perplexity"]["wikitext2:test"]["pruned"] = 99.5  # a new evaluation landed
    (out / "evop_pruning.json").write_text(json.dumps(record))
    result = subprocess.run(
        [sys.executable, "-m", "evop_hub.cli", "card", str(out)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert (out / "LICENSE").read_text() == "license text\n"
    assert (out / "USE_POLICY.md").read_text() == "policy\n"
    card = ModelCard.load(str(out / "README.md"))
    assert "[LICENSE](LICENSE)" in card.text and "[USE_POLICY.md](USE_POLICY.md)" in card.text
    values = [r.metric_value for r in card.data.eval_results if r.dataset_name == "wikitext2:test"]
    assert values == [99.5]


def test_a_relative_local_base_is_found_from_another_directory(tmp_path, monkeypatch):
    """`evop-hub drop base ...` typed in one directory, `card` and `space` run from another: the record
    keeps the path as typed (no absolute paths are published) and the base's place beside the output."""
    import evop_hub
    from evop_hub.hub.space import local_base
    from evop_hub.models.card_files import write_card

    from .conftest import tiny_llama, tiny_tokenizer

    base = tmp_path / "work" / "base"
    tiny_llama().save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    (base / "LICENSE").write_text("terms\n")
    monkeypatch.chdir(base.parent)
    loaded = evop_hub.load("base")
    evop_hub.drop(loaded, [1])
    out = evop_hub.save(loaded, "out")
    monkeypatch.chdir(tmp_path)
    record = PruningRecord.load(out)
    assert (record.source_model, record.source_relative) == ("base", "../base")
    (out / "LICENSE").unlink()
    write_card(out)
    assert (out / "LICENSE").read_text() == "terms\n"
    assert local_base(record, out) == str(out / "../base")


def test_card_command_on_a_non_output_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "evop_hub.cli", "card", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert re.fullmatch(r"error: .*is not an evop-hub output.*\n", result.stderr)
    assert not (tmp_path / "README.md").exists()


def test_tasks_from_a_limited_run_stay_out_of_model_index():
    limited = dict(TASKS, limit=20)
    record = PruningRecord(
        source_model="org/big",
        architecture="LlamaForCausalLM",
        num_blocks=4,
        dropped_blocks=[1],
        scores={"tasks": limited},
    )
    card = render(record)
    assert not card.data.eval_results
    assert "Only 20 examples per task" in card.text and "arc_easy" in card.text


@pytest.mark.parametrize(
    "method, unit, fmt",
    [
        (
            "wanda",
            "weights (2:4)",
            "standard checkpoint with zeroed weights: same shapes and size on disk as the source",
        ),
        (
            "slicegpt",
            "hidden channels (residual stream)",
            "load with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)",
        ),
    ],
)
def test_width_baseline_cards_do_not_claim_removed_blocks(method, unit, fmt):
    record = PruningRecord(
        source_model="m",
        architecture="LlamaForCausalLM",
        num_blocks=30,
        dropped_blocks=[],
        method=method,
        sparsity=0.5,
        sparsity_unit=unit,
        search={"method": method, "summary": f"{method}: what was done", "format": fmt},
    )
    text = str(render(record, "user/m-pruned"))
    assert "blocks removed" not in text and "Block pattern" not in text
    assert f"{method}: what was done" in text and fmt in text
    assert ("trust_remote_code=True)" in text) == (method == "slicegpt")


def test_default_repo_names_differ_by_method():
    from evop_hub.card.card import default_repo_name
    from evop_hub.record import PruningRecord

    def name(method, unit="blocks", sparsity=None, dropped=(1, 2)):
        return default_repo_name(
            PruningRecord(
                source_model="org/Base-1B",
                source_hub_id="org/Base-1B",
                architecture="A",
                num_blocks=8,
                dropped_blocks=list(dropped),
                method=method,
                sparsity_unit=unit,
                sparsity=sparsity,
            )
        )

    assert name("evop") == "Base-1B-evop-6L"
    assert name("sleb") == "Base-1B-evop-sleb-6L"
    assert name("wanda", "weights", 0.5, ()) == "Base-1B-evop-wanda-50pct"
    assert name("slicegpt", "hidden channels", 0.25, ()) == "Base-1B-evop-slicegpt-25pct"


def test_the_card_links_the_project_results_and_describes_only_its_own_model(make_output):
    """Other models' benchmark numbers stay in the project's results page; the card links it."""
    from evop_hub.card import RESULTS_URL, render
    from evop_hub.record import PruningRecord

    text = str(render(PruningRecord.load(make_output())))
    assert f"]({RESULTS_URL})" in text
    assert "SmolLM2" not in text and "Gemma 3" not in text and "bench_robust" not in text


def test_hub_split_names_and_width_pruning_tags():
    from evop_hub.card.card import card_data, corpus_dataset
    from evop_hub.record import PruningRecord

    assert corpus_dataset("wikitext2:valid") == ("Salesforce/wikitext", "wikitext-2-raw-v1", "validation")
    assert corpus_dataset("pydoc:valid") == ("pydoc", None, "valid")  # not a Hub dataset: its own name
    wanda = PruningRecord(
        source_model="m",
        architecture="LlamaForCausalLM",
        num_blocks=4,
        dropped_blocks=[],
        method="wanda",
        sparsity=0.5,
        sparsity_unit="weights",
        calibration={"corpus": "/home/me/private.txt"},
    )
    data = card_data(wanda, "m-evop-wanda-50pct").to_dict()
    assert "width-pruning" in data["tags"] and "layer-pruning" not in data["tags"]
    assert "datasets" not in data  # a local calibration file is never published as a dataset


def test_architecture_tag_is_the_model_type():
    from evop_hub.card.card import card_data
    from evop_hub.models import LoadedModel, SourceInfo

    from ..models.conftest import build

    record = LoadedModel(build("gpt_neox"), None, SourceInfo("m", "m")).record
    assert record.model_type == "gpt_neox" and "gpt_neox" in card_data(record, "m").tags
    old = PruningRecord(source_model="m", architecture="GPT2LMHeadModel", num_blocks=4, dropped_blocks=[1])
    assert "gpt2lmheadmodel" in card_data(old, "m").tags  # a record written before model_type: the class


@pytest.mark.parametrize("method, unit", [("wanda", "weights"), ("slicegpt", "hidden channels (residual stream)")])
def test_space_readme_says_what_a_width_baseline_removed(make_output, method, unit):
    from evop_hub.hub.space import space_files

    out = make_output()
    record = PruningRecord.load(out)
    record.dropped_blocks, record.method, record.sparsity, record.sparsity_unit = [], method, 0.25, unit
    readme = SpaceCard(space_files(out, record, "user/m", private=False).files["README.md"].decode())
    assert readme.data.short_description == f"{method} pruned model"  # the local base is not on the Hub: no "vs."
    text = " ".join(readme.text.split())  # the sentence is wrapped in the Markdown source
    assert f"pruning 25% of the {unit} ({method}, every block kept) of its base model" in text
    assert "removing 0 of" not in text and "pruned vs. base" not in text


def test_space_app_puts_the_models_on_its_accelerator(make_output, monkeypatch):
    """No GPU here: the `meta` device stands in for the CUDA device of a Space on GPU hardware."""
    from evop_hub.hub.space import _load_app

    app = _load_app()
    assert app.device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(app, "device", lambda: "meta")
    model, _ = app.load(str(make_output()))
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_space_shows_numbers_formatted():
    from evop_hub.hub.space import _load_app

    text = _load_app().scores_markdown(
        {
            "scores": {
                "calibration_loss": {"dense": 3.0012345, "pruned": 3.2101234},
                "perplexity": {"c4:valid": {"dense": 30.0, "pruned": 36.51234}},
            }
        }
    )
    assert "Calibration loss: 3.2101 (base: 3.0012)" in text and "| c4:valid | 30.00 | 36.51 |" in text


def test_pruning_an_output_again_keeps_its_lineage(make_output, tmp_path):
    """An output of a GGUF-derived Hub model, pruned again: block numbers count from that output, and the new
    record and card still name the Hub base (base_model), the GGUF quantization and the earlier pruning."""
    import evop_hub

    first = make_output(hub_base="meta-org/tiny-base", source_format="gguf:Q4_1", dropped=(1,))
    loaded = evop_hub.load(str(first))
    assert loaded.record.num_blocks == 3 and loaded.record.source_hub_id is None  # the output is its own source
    evop_hub.drop(loaded, [0])
    second = evop_hub.save(loaded, tmp_path / "second")
    record = PruningRecord.load(second)
    assert record.derived_from["source_hub_id"] == "meta-org/tiny-base" and record.derived_from["dropped_blocks"] == [1]
    assert record.hub_base() == ("meta-org/tiny-base", None)
    card = ModelCard.load(second / "README.md")
    assert card.data.base_model == "meta-org/tiny-base"
    assert "dequantized from a Q4_1 GGUF file of `meta-org/tiny-base`" in card.text
    assert (
        f"Its source `{first}` was itself made by evop-hub: `meta-org/tiny-base` with blocks [1] of its 4 "
        f"removed (evop); block numbers below count the blocks of `{first}`."
    ) in card.text
    third = evop_hub.load(str(second))  # two steps back
    assert [link["source_model"] for link in third.record.chain()] == [str(second), str(first), "meta-org/tiny-base"]
    assert third.record.hub_base() == ("meta-org/tiny-base", None)
