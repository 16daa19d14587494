"""Loading through evop_hub, saving the published directory, and device-mapped models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch

import evop_hub
from evop_hub.errors import EvopError
from evop_hub.models import LoadConfig, find_blocks, prepare_output
from evop_hub.models.gguf import gguf_tokenizer_problem
from evop_hub.record import RECORD_NAME, STATE_DIR, PruningRecord
from evop_hub.scoring import BlockRunner

from .conftest import build
from .test_surgery import bypassed_logits, ids_for

DROP = [1, 4]


@pytest.fixture
def llama_dir(tmp_path):
    """A tiny Llama saved as a local model directory, with a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = build("llama")
    path = tmp_path / "dense"
    model.save_pretrained(path)
    vocab = {f"w{i}": i for i in range(model.config.vocab_size)}
    vocab["[UNK]"] = len(vocab) - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path


def test_save_writes_standard_checkpoint_and_record(llama_dir, tmp_path):
    loaded = evop_hub.load(str(llama_dir))
    ids = ids_for(loaded.model)
    expected = bypassed_logits(loaded.model, DROP, ids)
    evop_hub.drop(loaded, DROP)
    umask = os.umask(0o022)
    try:
        out = evop_hub.save(loaded, prepare_output(tmp_path / "pruned"), command="evop-hub drop x --layers 1,4")
    finally:
        os.umask(umask)

    record = json.loads((out / RECORD_NAME).read_text())
    assert record["dropped_blocks"] == DROP
    assert record["kept_blocks"] == [0, 2, 3, 5]
    assert record["block_mapping"] == {"0": 0, "1": 2, "2": 3, "3": 5}
    assert record["parameters_after"] < record["parameters_before"]
    assert record["command"] == "evop-hub drop x --layers 1,4"
    assert not list(tmp_path.glob(".pruned.tmp-*")), "temporary directory left behind"
    assert out.stat().st_mode & 0o777 == 0o755  # as mkdir makes it under umask 022, not a temporary directory's 0700

    # A fresh interpreter with plain transformers, no evop_hub import, loads it and generates.
    script = (
        "import sys, torch; from transformers import AutoModelForCausalLM as M;"
        f"m = M.from_pretrained({str(out)!r}).eval(); ids = torch.tensor({ids.tolist()});"
        "print(repr(m(ids).logits.flatten()[:8].tolist())); m.generate(ids[:1, :4], max_new_tokens=5, pad_token_id=0);"
        "assert 'evop_hub' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = torch.tensor(eval(result.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, expected.flatten()[:8], rtol=1e-5, atol=1e-5)


def test_chained_drops_use_original_numbering(llama_dir):
    loaded = evop_hub.load(str(llama_dir))
    ids = ids_for(loaded.model)
    expected = bypassed_logits(loaded.model, DROP, ids)
    evop_hub.drop(loaded, [1])
    evop_hub.drop(loaded, [4])  # original index 4 is current index 3
    assert loaded.record.dropped_blocks == DROP
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(EvopError, match="already removed"):
        evop_hub.drop(loaded, [1])


def test_output_directory_is_protected(llama_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    for flags in ({}, {"overwrite": True}):  # not an evop-hub output: even --overwrite may not touch it
        with pytest.raises(EvopError, match="holds files evop-hub did not write"):
            prepare_output(out, **flags)
    with pytest.raises(EvopError, match="holds no run to resume"):  # a typo in --output must not wipe a folder
        prepare_output(out, resume=True)
    with pytest.raises(EvopError, match="holds no run to resume"):  # nor start hours of work from scratch
        prepare_output(tmp_path / "typo", resume=True)
    assert prepare_output(tmp_path / "fresh", resume=True, overwrite=True) == tmp_path / "fresh"  # or start over
    loaded = evop_hub.load(str(llama_dir))
    with pytest.raises(EvopError, match="did not write"):  # the Python API guards it too
        evop_hub.save(loaded, out)
    assert (out / "mine.txt").read_text() == "user data"
    (out / STATE_DIR).mkdir()
    (out / STATE_DIR / "state.json").write_text("{}")
    assert prepare_output(out, resume=True) == out
    evop_hub.save(loaded, prepare_output(out, overwrite=True), overwrite=True)
    assert (out / "mine.txt").read_text() == "user data" and (out / "config.json").is_file()  # the user's file stays


def test_replacing_an_output_keeps_the_users_files_and_drops_the_old_checkpoints(llama_dir, tmp_path):
    loaded = evop_hub.load(str(llama_dir))
    out = evop_hub.save(loaded, tmp_path / "out")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"a shard of an earlier, bigger save")
    manifest = json.loads((out / STATE_DIR / "published.json").read_text())
    (out / STATE_DIR / "published.json").write_text(json.dumps([*manifest, "model-00001-of-00002.safetensors"]))
    (out / "notes.md").write_text("mine")
    with pytest.raises(EvopError, match="already exists; pass --overwrite to replace it$"):  # no run: no --resume hint
        prepare_output(out)
    evop_hub.drop(loaded, [1])
    evop_hub.save(loaded, prepare_output(out, overwrite=True), overwrite=True)
    assert (out / "notes.md").read_text() == "mine"
    assert not (out / "model-00001-of-00002.safetensors").exists()
    assert PruningRecord.load(out).dropped_blocks == [1]
    with pytest.raises(EvopError, match="source model's own directory"):
        evop_hub.save(evop_hub.load(str(out)), out, overwrite=True)


def test_run_state_survives_the_final_save(llama_dir, tmp_path):
    out = prepare_output(tmp_path / "out")
    (out / STATE_DIR).mkdir(parents=True)
    (out / STATE_DIR / "trace.jsonl").write_text("{}\n")
    evop_hub.save(evop_hub.load(str(llama_dir)), out, overwrite=True)
    assert (out / STATE_DIR / "trace.jsonl").read_text() == "{}\n"


def test_a_failed_final_save_puts_the_previous_output_back(llama_dir, tmp_path, monkeypatch):
    out = prepare_output(tmp_path / "out")
    (out / STATE_DIR).mkdir(parents=True)
    (out / STATE_DIR / "state.json").write_text("{}")
    (out / "config.json").write_text("previous")
    real = os.replace

    def full_disk(src, dst):
        if Path(src).name.startswith(".out.tmp-"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(EvopError, match="No space left on device"):
        evop_hub.save(evop_hub.load(str(llama_dir)), out, overwrite=True)
    assert (out / STATE_DIR / "state.json").read_text() == "{}" and (out / "config.json").read_text() == "previous"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside it


def test_saving_into_the_working_directory(llama_dir, tmp_path, monkeypatch):
    out = prepare_output(tmp_path / "out")
    (out / STATE_DIR).mkdir(parents=True)
    monkeypatch.chdir(out)
    assert evop_hub.save(evop_hub.load(str(llama_dir)), ".", overwrite=True) == out
    assert (out / "config.json").is_file() and (out / STATE_DIR).is_dir()


def test_device_mapped_model_with_disk_offload_is_pruned_and_saved(llama_dir, tmp_path):
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map |= {f"model.layers.{i}": ("disk" if i % 2 else "cpu") for i in range(6)}
    dense = evop_hub.load(str(llama_dir))
    ids = ids_for(dense.model)
    expected = bypassed_logits(dense.model, DROP, ids)

    loaded = evop_hub.load(str(llama_dir), LoadConfig(device_map=device_map, offload_folder=str(tmp_path / "off")))
    assert any(p.device.type == "meta" for p in loaded.model.parameters()), "nothing was offloaded"
    runner = BlockRunner(loaded.model)
    with torch.no_grad():
        torch.testing.assert_close(
            runner.logits(runner.run(runner.prepare(ids), [0, 2, 3, 5])), expected, rtol=1e-5, atol=1e-5
        )
    evop_hub.drop(loaded, DROP)
    assert sorted(k for k in loaded.model.hf_device_map if k.startswith("model.layers")) == [
        f"model.layers.{i}" for i in range(4)
    ]
    assert loaded.model.hf_device_map["model.layers.3"] == "disk"  # old block 5
    out = evop_hub.save(loaded, prepare_output(tmp_path / "pruned"))
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert len(find_blocks(reloaded)) == 4
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name, message",
    [
        ("/nonexistent/model", "neither a model directory"),
        ("missing.gguf", "does not exist"),
    ],
)
def test_bad_sources_give_one_line(name, message):
    with pytest.raises(EvopError, match=message):
        evop_hub.load(name)


def test_corrupt_gguf_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOP_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(EvopError, match="cannot read GGUF"):
        evop_hub.load(str(bad))


def sentencepiece_tokenizer(scores: dict[str, float], bos: bool):
    """A Unigram tokenizer over a few SentencePiece pieces; with ``bos`` it starts text with <bos> (id 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.Unigram([("<unk>", 0.0), ("<bos>", 0.0), *scores.items()], unk_id=0))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    if bos:
        core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<bos>")


def test_a_wrongly_read_gguf_tokenizer_is_caught():
    # Stand-ins for what transformers' GGUF reader built: from Gemma 3's file, with 5.17, pieces scored so that
    # " the" splits although "\u2581the" is in the vocabulary, and with 5.18-5.22 no BOS, which the file asks for;
    # from SmolLM2's, with 5.5, a BOS the file does not ask for.
    pieces = {"\u2581the": -12.0, "\u2581t": -1.0, "he": -1.0, "\u2581of": -2.0, "\u2581and": -2.0}
    assert "it splits 'the'" in gguf_tokenizer_problem(sentencepiece_tokenizer(pieces, bos=True), True, 1)
    pieces["\u2581the"] = -0.5
    assert gguf_tokenizer_problem(sentencepiece_tokenizer(pieces, bos=True), True, 1) is None
    no_bos = sentencepiece_tokenizer(pieces, bos=False)
    assert "BOS token (id 1)" in gguf_tokenizer_problem(no_bos, True, 1)
    assert gguf_tokenizer_problem(no_bos, False, 1) is None  # a file that asks for no BOS, as SmolLM2's
    assert "starts text with the BOS token" in gguf_tokenizer_problem(
        sentencepiece_tokenizer(pieces, bos=True), False, 1
    )


def test_unknown_hub_id_offline_is_reported(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EvopError, match="(Hub|not found)"):
        evop_hub.load("someone/definitely-not-a-model-xyz")


def test_record_round_trip(tmp_path):
    record = PruningRecord(source_model="m", architecture="LlamaForCausalLM", num_blocks=4, dropped_blocks=[2])
    record.save(tmp_path)
    again = PruningRecord.load(tmp_path)
    assert again.kept_blocks == [0, 1, 3] and again.versions == record.versions
    with pytest.raises(EvopError, match="not an evop-hub output"):
        PruningRecord.load(tmp_path / "nothing")
    for broken in (
        b"[]",
        b"\xff\xfe",
        b'{"source_model": "m", "architecture": "A", "num_blocks": "30", "dropped_blocks": []}',
    ):
        (tmp_path / RECORD_NAME).write_bytes(broken)
        with pytest.raises(EvopError, match="not a valid evop-hub record"):
            PruningRecord.load(tmp_path)


def test_a_reloaded_output_keeps_the_source_license(llama_dir, tmp_path):
    # A local base states its terms in its README.md's metadata, as Hub repos do (a license of type
    # `other` needs its name and link; the link is a file beside the card).
    (llama_dir / "README.md").write_text(
        "---\nlicense: other\nlicense_name: tiny-license\nlicense_link: LICENSE\n---\n"
    )
    (llama_dir / "LICENSE").write_text("tiny license\n")
    loaded = evop_hub.load(str(llama_dir))
    terms = (loaded.record.license, loaded.record.license_name, loaded.record.license_link)
    assert terms == ("other", "tiny-license", "LICENSE")
    evop_hub.drop(loaded, DROP)
    out = evop_hub.save(loaded, tmp_path / "pruned")
    card = huggingface_hub.ModelCard.load(out / "README.md").data
    assert (card.license, card.license_name, card.license_link) == terms and (out / "LICENSE").is_file()
    again = evop_hub.load(str(out))  # a card made from it again must carry the original terms, not its own card's
    assert (again.record.license, again.record.license_name, again.record.license_link) == terms
    assert again.record.num_blocks == 4 and not again.record.dropped_blocks  # numbered from the directory itself


def test_token_id_lists_are_not_cut_as_per_layer_fields():
    from evop_hub.models.surgery import drop_blocks

    model = build("llama", layers=3)
    model.config.eos_token_id = [1, 2, 3]  # as long as the layer list, and not per layer
    model.config.layer_types = ["full_attention"] * 3
    drop_blocks(model, [1])
    assert model.config.eos_token_id == [1, 2, 3] and model.config.layer_types == ["full_attention"] * 2


def test_info_counts_every_block_of_a_mixed_moe_model():
    # Qwen3-MoE with decoder_sparse_step=2: dense and expert blocks differ in size, so block 0 is no sample of all.
    from evop_hub.models import LoadedModel, SourceInfo, describe

    model = build("qwen3_moe", layers=4)
    sizes = [sum(p.numel() for p in block.parameters()) for block in find_blocks(model)]
    assert len(set(sizes)) > 1
    facts = describe(LoadedModel(model, None, SourceInfo(name="tiny", path="tiny")))
    assert facts["parameters_per_block"] == sum(sizes) // 4
    assert facts["blocks_share_of_parameters"] == round(sum(sizes) // 4 * 4 / facts["parameters"], 4)


@pytest.mark.parametrize(
    "device_map, accelerator, wanted",
    [
        (None, True, "auto"),  # a GPU machine loads onto its GPUs without being told
        (None, False, None),  # a CPU machine loads as from_pretrained does by default
        ("cpu", True, "cpu"),  # --device-map cpu keeps the model on the CPU on a GPU machine
        ("balanced", False, "balanced"),
    ],
)
def test_the_default_device_map_follows_the_machine(device_map, accelerator, wanted):
    from evop_hub.models.loading import _pretrained_kwargs

    kwargs = _pretrained_kwargs(LoadConfig(device_map=device_map), accelerator=accelerator)
    assert kwargs.get("device_map") == wanted


def test_loading_says_where_the_model_went(llama_dir, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="evop_hub"):
        loaded = evop_hub.load(str(llama_dir), LoadConfig(dtype="float32"))
    size = sum(p.numel() * 4 for p in loaded.model.parameters()) / (1 << 30)
    assert f"loaded on cpu (float32, {size:.2f} GiB of weights)" in caplog.text


def _saved_dtypes(out: Path) -> set[str]:
    """The dtypes of the tensors in an output's safetensors files."""
    from safetensors import safe_open

    dtypes = set()
    for path in out.glob("*.safetensors"):
        with safe_open(path, "pt") as file:
            dtypes |= {str(file.get_slice(name).get_dtype()) for name in file.keys()}
    return dtypes


def test_the_output_keeps_the_source_dtype_unless_dtype_overrides_it(tmp_path):
    from tests.tiny import tiny_tokenizer

    source = tmp_path / "bf16"
    build("llama").to(torch.bfloat16).save_pretrained(source)
    tiny_tokenizer().save_pretrained(source)
    assert json.loads((source / "config.json").read_text())["dtype"] == "bfloat16"
    for option, wanted, safetensors_name in (("auto", "bfloat16", "BF16"), ("float32", "float32", "F32")):
        out = evop_hub.save(evop_hub.load(str(source), LoadConfig(dtype=option)), tmp_path / option)
        assert _saved_dtypes(out) == {safetensors_name}
        assert json.loads((out / "config.json").read_text())["dtype"] == wanted


def test_a_cast_output_reloads_as_the_model_cast_to_its_dtype(tmp_path):
    """As from an offline GGUF: float32 in memory (searched so), saved in the base's bfloat16, ties kept."""
    import copy

    from transformers import AutoModelForCausalLM

    from evop_hub.models import LoadedModel, SourceInfo
    from tests.tiny import tiny_llama, tiny_tokenizer

    model = tiny_llama(layers=3, tie_word_embeddings=True)
    model.config._model_name_or_path = "Tiny 3L Internal Gguf Name"  # what transformers' GGUF reader sets
    loaded = LoadedModel(model, tiny_tokenizer(), SourceInfo("tiny", "tiny", format="gguf"), dtype="bfloat16")
    ids = ids_for(model)
    cast = copy.deepcopy(model)
    for parameter in cast.parameters():  # the weights; buffers such as RoPE's frequencies stay float32, as on load
        parameter.data = parameter.data.to(torch.bfloat16)
    with torch.no_grad():
        wanted = cast(ids).logits
    out = evop_hub.save(loaded, tmp_path / "out")

    assert next(model.parameters()).dtype == torch.float32  # only the saved copy is cast
    assert _saved_dtypes(out) == {"BF16"}
    config = (out / "config.json").read_text()
    assert json.loads(config)["dtype"] == "bfloat16" and "_model_name_or_path" not in config
    assert "Internal Gguf" not in config
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.dtype == torch.bfloat16 and reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, wanted, rtol=0, atol=0)


@pytest.mark.skipif(
    "dtype" not in {f.name for f in __import__("dataclasses").fields(PruningRecord)},
    reason="PruningRecord has no dtype field yet (evop_hub/record is being restructured)",
)
def test_the_record_says_the_saved_dtype(llama_dir, tmp_path):
    loaded = evop_hub.load(str(llama_dir))
    loaded.dtype = "bfloat16"
    out = evop_hub.save(loaded, tmp_path / "out")
    assert json.loads((out / RECORD_NAME).read_text())["dtype"] == "bfloat16"
    assert PruningRecord.load(out).dtype == "bfloat16"


def test_every_output_file_gets_one_mode(llama_dir, tmp_path):
    (llama_dir / "LICENSE").write_text("tiny license\n")  # copied beside the card: a third kind of writer
    umask = os.umask(0o027)
    try:
        out = evop_hub.save(evop_hub.load(str(llama_dir)), tmp_path / "out")
    finally:
        os.umask(umask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir() if p.is_file()}
    assert {"model.safetensors", "config.json", "README.md", "LICENSE", RECORD_NAME} <= set(modes)
    assert set(modes.values()) == {"0o640"}, modes
