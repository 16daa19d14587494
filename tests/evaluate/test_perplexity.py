"""Perplexity against a plain Hugging Face loop, window/BOS bookkeeping, device maps, the CLI, bad input."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from evop_hub.cli import app
from evop_hub.data import Corpus, Document, load_corpus
from evop_hub.errors import EvopError
from evop_hub.evaluate import PerplexityConfig, perplexity
from evop_hub.evaluate.heldout import HeldOut
from evop_hub.evaluate.perplexity import make_windows
from evop_hub.models import drop

from ..models.conftest import build
from ..tiny import WORDS, tiny_llama

SEQ = 32


def word_tokenizer(bos: bool):
    """Word-level tokenizer over WORDS; with ``bos`` it prepends <s> to what it encodes, as Llama's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>")


def words_corpus(n: int, seed: int = 0) -> Corpus:
    rng = random.Random(seed)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(50)) for _ in range(n // 50)]
    return Corpus("words", "test", "plain", "none", "generated", [Document(p) for p in paragraphs])


def reference_nll(model, windows: torch.Tensor, batch_size: int) -> float:
    """The plain loop: HF forward, float32 cross-entropy over all shifted positions, summed."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in windows.split(batch_size):
            logits = model(batch).logits.float()
            total += F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
            count += batch[:, 1:].numel()
    return total / count


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_equals_plain_reference_loop_exactly(arch, batch_size):
    model, tokenizer, corpus = build(arch, layers=3), word_tokenizer(bos=False), words_corpus(600)
    result = perplexity(model, tokenizer, corpus, PerplexityConfig(seq_len=SEQ, batch_size=batch_size))

    ids = tokenizer(corpus.text)["input_ids"]
    windows = torch.tensor(ids[: len(ids) // SEQ * SEQ]).view(-1, SEQ)  # non-overlapping, tail dropped
    assert (result.seq_len, result.windows, result.tokens) == (SEQ, len(ids) // SEQ, len(windows) * (SEQ - 1))
    assert result.nll == reference_nll(model, windows, batch_size)
    assert result.ppl == math.exp(result.nll)
    assert (result.corpus, result.split, result.form) == ("words", "test", "plain")


def test_bos_tokenizer_starts_every_window_with_bos():
    model, tokenizer, corpus = tiny_llama(), word_tokenizer(bos=True), words_corpus(600)
    result = perplexity(model, tokenizer, corpus, PerplexityConfig(seq_len=SEQ, batch_size=2))

    text_ids = tokenizer(corpus.text, add_special_tokens=False)["input_ids"]
    count = len(text_ids) // (SEQ - 1)
    body = torch.tensor(text_ids[: count * (SEQ - 1)]).view(count, SEQ - 1)
    windows = torch.cat([torch.ones(count, 1, dtype=torch.long), body], dim=1)  # <s> is id 1
    assert (result.windows, result.tokens) == (count, count * (SEQ - 1))
    assert result.nll == reference_nll(model, windows, 2)


def test_max_windows_scores_the_first_windows_only():
    model, tokenizer, corpus = tiny_llama(), word_tokenizer(bos=False), words_corpus(600)
    result = perplexity(model, tokenizer, corpus, PerplexityConfig(seq_len=SEQ, max_windows=2))
    ids = tokenizer(corpus.text)["input_ids"]
    assert (result.windows, result.tokens) == (2, 2 * (SEQ - 1))
    assert result.nll == reference_nll(model, torch.tensor(ids[: 2 * SEQ]).view(2, SEQ), 1)


def test_window_length_is_capped_at_the_context():
    model, tokenizer, corpus = tiny_llama(), word_tokenizer(bos=False), words_corpus(600)
    context = model.config.max_position_embeddings
    assert perplexity(model, tokenizer, corpus, PerplexityConfig(seq_len="max")).seq_len == context
    assert perplexity(model, tokenizer, corpus, PerplexityConfig(seq_len=10 * context)).seq_len == context


def test_bad_input():
    model, tokenizer = tiny_llama(), word_tokenizer(bos=False)
    with pytest.raises(EvopError, match="words:test has only 50 tokens, fewer than one window of 64"):
        perplexity(model, tokenizer, words_corpus(50), PerplexityConfig(seq_len=64))
    with pytest.raises(EvopError, match="seq_len must be"):
        perplexity(model, tokenizer, words_corpus(600), PerplexityConfig(seq_len=1))
    with pytest.raises(EvopError, match="batch_size and max_windows must be at least 1, not 0 and None"):
        perplexity(model, tokenizer, words_corpus(600), PerplexityConfig(batch_size=0))
    with pytest.raises(EvopError, match="must be at least 1, not 1 and 0"):
        perplexity(model, tokenizer, words_corpus(600), PerplexityConfig(max_windows=0))


@pytest.fixture
def model_dir(tmp_path):
    """A tiny Llama with its tokenizer, saved as a local model directory."""
    path = tmp_path / "tiny"
    tiny_llama(layers=4).save_pretrained(path)
    word_tokenizer(bos=False).save_pretrained(path)
    return path


def test_device_mapped_model_gives_the_same_numbers(model_dir, tmp_path):
    from evop_hub.models import LoadConfig, load

    corpus = words_corpus(600)
    config = PerplexityConfig(seq_len=SEQ, batch_size=2)
    plain = load(str(model_dir))
    device_map = {
        "model.embed_tokens": "disk",  # offloaded: its weights sit on "meta" and its hook runs it on the CPU
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "cpu",
        "model.layers.3": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    mapped = load(
        str(model_dir), LoadConfig(device_map=json.dumps(device_map), offload_folder=str(tmp_path / "offload"))
    )
    assert set(mapped.model.hf_device_map.values()) == {"cpu", "disk"}
    assert mapped.model.get_input_embeddings().weight.device.type == "meta"
    assert perplexity(mapped.model, mapped.tokenizer, corpus, config) == perplexity(
        plain.model, plain.tokenizer, corpus, config
    )
    # Held-out scoring skips blocks instead of copying the model: the same number as the pruned model's perplexity.
    windows = {"words": make_windows(plain.tokenizer, corpus, SEQ)}
    held = HeldOut(mapped.model, windows).score([1, 2])["words"]
    assert held == pytest.approx(HeldOut(plain.model, windows).score([1, 2])["words"], abs=1e-6)
    drop(plain, [1, 2])
    assert held == pytest.approx(math.log(perplexity(plain.model, plain.tokenizer, corpus, config).ppl), abs=1e-5)


def test_cli_prints_a_table_and_json(model_dir, tmp_path):
    from evop_hub.models import load

    (tmp_path / "a.txt").write_text(words_corpus(600, seed=1).text, encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        "".join(json.dumps({"text": d.text}) + "\n" for d in words_corpus(400, seed=2).documents)
    )
    specs = f"{tmp_path / 'a.txt'},{tmp_path / 'b.jsonl'}"
    args = ["ppl", str(model_dir), "--corpus", specs, "--seq-len", str(SEQ), "--batch-size", "2"]

    out = CliRunner().invoke(app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)["results"]
    loaded = load(str(model_dir))
    config = PerplexityConfig(seq_len=SEQ, batch_size=2)
    assert got == [
        perplexity(loaded.model, loaded.tokenizer, load_corpus(s), config).to_dict() for s in specs.split(",")
    ]

    table = CliRunner().invoke(app, args).stdout.splitlines()
    assert table[0].split() == ["corpus", "split", "form", "seq_len", "windows", "tokens", "dtype", "nll", "ppl"]
    assert [line.split()[3] for line in table[1:]] == [str(SEQ), str(SEQ)]
    assert [line.split()[-1] for line in table[1:]] == [f"{r['ppl']:.3f}" for r in got]


def test_cli_records_results_in_an_output_directory(model_dir, tmp_path):
    import evop_hub
    from evop_hub.models import prepare_output
    from evop_hub.record import PruningRecord

    loaded = evop_hub.load(str(model_dir))
    evop_hub.drop(loaded, [1])
    out = evop_hub.save(loaded, prepare_output(tmp_path / "pruned"), command="evop-hub drop")
    corpus_file = tmp_path / "a.txt"
    corpus_file.write_text(words_corpus(600).text, encoding="utf-8")
    key = f"{corpus_file}:all"
    record = PruningRecord.load(out)
    record.scores["perplexity"] = {key: {"dense": 40.0, "seq_len": SEQ, "form": "plain"}, "other:test": {"dense": 9.0}}
    record.save(out)

    for seq_len, dense in ((SEQ, 40.0), (SEQ // 2, None)):  # a dense figure at another window length is dropped
        result = CliRunner().invoke(app, ["ppl", str(out), "--corpus", str(corpus_file), "--seq-len", str(seq_len)])
        assert result.exit_code == 0, result.output
        scores = PruningRecord.load(out).scores["perplexity"]
        assert scores["other:test"] == {"dense": 9.0}
        assert scores[key].get("dense") == dense
        assert scores[key]["seq_len"] == seq_len
        assert f"{scores[key]['pruned']:.3f}" == result.stdout.splitlines()[1].split()[-1]
    quick = CliRunner().invoke(
        app, ["ppl", str(out), "--corpus", str(corpus_file), "--seq-len", str(SEQ // 2), "--max-windows", "1"]
    )
    assert quick.exit_code == 0 and "not recorded" in quick.output
    assert PruningRecord.load(out).scores["perplexity"] == scores  # a quick look never replaces the full number


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--corpus", "wikitext103"], "unknown corpus 'wikitext103'; known corpora: "),
        (["--corpus", "missing/file.txt"], "corpus file or directory not found: missing/file.txt"),
        (["--seq-len", "long"], "--seq-len must be a number of tokens or 'max', not 'long'"),
    ],
)
def test_cli_rejects_bad_input_before_loading_the_model(option, message):
    out = CliRunner().invoke(app, ["ppl", "no/such/model", *option])
    assert isinstance(out.exception, EvopError)
    assert str(out.exception).startswith(message)


@pytest.mark.integration
def test_smollm2_wikitext_matches_the_plain_loop(wikitext_dir):
    """The real model and vocabulary (49,152 tokens): a 1,536-token window is scored in two cross-entropy chunks."""
    from evop_hub.models import load

    loaded = load("smollm2-135m")
    corpus = load_corpus("wikitext2:test", data_dir=wikitext_dir)
    result = perplexity(loaded.model, loaded.tokenizer, corpus, PerplexityConfig(seq_len=1536, max_windows=1))
    ids = loaded.tokenizer(corpus.text)["input_ids"]
    assert (result.seq_len, result.windows, result.tokens) == (1536, 1, 1535)
    # Chunk sums are added in float64 rather than in one float32 sum: equal to float32 rounding.
    assert result.nll == pytest.approx(reference_nll(loaded.model, torch.tensor(ids[:1536])[None], 1), rel=1e-6)
    assert 5 < result.ppl < 60


def drop_one_and_score_dense(loaded, tmp_path):
    """Block 1 dropped and saved, then `ppl OUT --dense` on a words corpus: (output, corpus file, recorded entry)."""
    import evop_hub
    from evop_hub.record import PruningRecord

    evop_hub.drop(loaded, [1])
    out = evop_hub.save(loaded, tmp_path / "pruned", command="evop-hub drop")
    corpus_file = tmp_path / "a.txt"
    corpus_file.write_text(words_corpus(600).text, encoding="utf-8")
    result = CliRunner().invoke(app, ["ppl", str(out), "--corpus", str(corpus_file), "--seq-len", str(SEQ), "--dense"])
    assert result.exit_code == 0, result.output
    return out, corpus_file, PruningRecord.load(out).scores["perplexity"][f"{corpus_file}:all"]


def test_cli_dense_scores_the_source_on_the_same_windows(model_dir, tmp_path):
    import evop_hub
    from evop_hub.card.card import render
    from evop_hub.models import load
    from evop_hub.record import PruningRecord

    out, corpus_file, entry = drop_one_and_score_dense(evop_hub.load(str(model_dir)), tmp_path)
    source = load(str(model_dir))
    expected = perplexity(source.model, source.tokenizer, load_corpus(str(corpus_file)), PerplexityConfig(seq_len=SEQ))
    assert entry["dense"] == expected.ppl and entry["pruned"] != entry["dense"]
    assert f"{entry['pruned'] / entry['dense'] - 1:+.1%}" in str(render(PruningRecord.load(out)))
    refused = CliRunner().invoke(app, ["ppl", str(model_dir), "--corpus", str(corpus_file), "--dense"])
    assert isinstance(refused.exception, EvopError) and "--dense" in str(refused.exception)


def test_cli_dense_finds_the_recorded_source_not_a_namesake_in_the_working_directory(tmp_path, monkeypatch):
    """Pruned from `tiny` typed in one folder, scored from another folder that has its own `tiny` (12 blocks):
    the source is the one recorded beside the output; a model that is not the source is refused."""
    import evop_hub
    from evop_hub.models import load
    from evop_hub.record import PruningRecord

    first, second = tmp_path / "first", tmp_path / "second"
    for folder, layers in ((first, 4), (second, 12)):
        tiny_llama(layers=layers).save_pretrained(folder / "tiny")
        word_tokenizer(bos=False).save_pretrained(folder / "tiny")
    monkeypatch.chdir(first)
    loaded = evop_hub.load("tiny")
    evop_hub.drop(loaded, [1])
    out = evop_hub.save(loaded, tmp_path / "pruned")
    corpus_file = tmp_path / "a.txt"
    corpus_file.write_text(words_corpus(600).text, encoding="utf-8")
    monkeypatch.chdir(second)
    args = ["ppl", str(out), "--corpus", str(corpus_file), "--seq-len", str(SEQ), "--dense"]
    assert CliRunner().invoke(app, args).exit_code == 0
    source = load(str(first / "tiny"))
    expected = perplexity(source.model, source.tokenizer, load_corpus(str(corpus_file)), PerplexityConfig(seq_len=SEQ))
    assert PruningRecord.load(out).scores["perplexity"][f"{corpus_file}:all"]["dense"] == expected.ppl
    record = PruningRecord.load(out)
    record.source_relative = None  # as if the source had been moved: the name as typed finds the namesake
    record.save(out)
    refused = CliRunner().invoke(app, args)
    assert isinstance(refused.exception, EvopError) and "is not the model this output was pruned from" in str(
        refused.exception
    )


def test_cli_dense_scores_the_source_at_the_pruned_models_dtype(tmp_path):
    """A bfloat16 source pruned and saved in float32: with --dtype auto each would load in its own dtype, and
    the card's change would mix pruning with precision. The source is scored in float32 too, and both say so."""
    import evop_hub
    from evop_hub.models import LoadConfig, load

    source = tmp_path / "bf16"
    tiny_llama(layers=4).to(torch.bfloat16).save_pretrained(source)
    word_tokenizer(bos=False).save_pretrained(source)
    out, corpus_file, entry = drop_one_and_score_dense(
        evop_hub.load(str(source), LoadConfig(dtype="float32")), tmp_path
    )
    as_float32 = load(str(source), LoadConfig(dtype="float32"))
    expected = perplexity(
        as_float32.model, as_float32.tokenizer, load_corpus(str(corpus_file)), PerplexityConfig(seq_len=SEQ)
    )
    as_saved = load(str(source))
    assert as_saved.model.dtype == torch.bfloat16  # what "auto" gives the source on its own
    assert entry["dense"] == expected.ppl and entry["dtype"] == "float32"
