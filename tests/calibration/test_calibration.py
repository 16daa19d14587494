"""CCDS and random calibration sets: shapes, provenance, determinism, caching, files, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from evop_hub.calibration import CalibrationConfig, CalibrationSet, calibrate, split_chunks
from evop_hub.calibration import ccds as ccds_module
from evop_hub.calibration.sampling import SEPARATOR
from evop_hub.data import Corpus, Document
from evop_hub.errors import EvopError

from .conftest import SENTENCES_PER_DOC, TOKENS_PER_SENTENCE, TOPICS, word_tokenizer


def no_embedding(*args, **kwargs):
    raise AssertionError("the embedder was loaded although it should not have been")


# ---------------------------------------------------------------- chunking
def test_chunks_hold_equal_sentences_across_documents_with_majority_label():
    docs = [
        Document("Alpha one. Alpha two. Alpha three.", "a"),
        Document("   ", "blank"),
        Document("Beta one. Beta two.", "b"),
        Document("Gamma one. Gamma two. Gamma three. Gamma four. Gamma five.", "c"),
    ]
    chunks = split_chunks(docs, 4)
    assert [c.text for c in chunks] == [
        "Alpha one. Alpha two. Alpha three.\nBeta one.",
        "Beta two.\nGamma one. Gamma two. Gamma three.",
        "Gamma four. Gamma five.",  # only the last chunk may be shorter
    ]
    assert [c.label for c in chunks] == ["a", "c", "c"]
    tie = split_chunks([Document("Ax one. Ax two.", "a"), Document("By one. By two.", "b")], 4)
    assert [(c.text, c.label) for c in tie] == [
        ("Ax one. Ax two.\nBy one. By two.", "a")
    ]  # a tie: the first document wins
    with pytest.raises(EvopError, match="at least 1"):
        split_chunks(docs, 0)


# ---------------------------------------------------------------- CCDS
def test_every_ccds_sample_is_seq_len_tokens_of_chunks_from_one_cluster(drawn, corpus, tokenizer, config):
    ids, meta = drawn.input_ids, drawn.metadata
    assert ids.dtype == torch.int64 and tuple(ids.shape) == (config.num_samples, config.seq_len)
    chunks = split_chunks(corpus.documents, config.sentences_per_chunk)
    assignment = drawn.arrays["chunk_cluster"].numpy()
    assert meta["chunks"] == len(chunks) == assignment.size
    used = []
    for row, sample in zip(ids.tolist(), meta["samples"]):
        held = sample["chunks"]
        assert {int(assignment[i]) for i in held} == {sample["cluster"]}
        pieces = [tokenizer(chunks[i].text + SEPARATOR, add_special_tokens=False)["input_ids"] for i in held]
        joined = [t for piece in pieces for t in piece]
        assert row == joined[: config.seq_len]
        assert len(joined) - len(pieces[-1]) < config.seq_len  # stopped as soon as seq_len was reached
        used += held
    assert len(used) == len(set(used))  # no chunk twice: samples never repeat text
    assert [s["cluster"] for s in meta["samples"]] == [
        j for j in range(config.clusters) for _ in range(config.samples_per_cluster)
    ]


def test_clusters_recover_planted_topics_and_summary_describes_them(drawn, corpus):
    meta, summary = drawn.metadata, drawn.summary()
    chunks = split_chunks(corpus.documents, SENTENCES_PER_DOC)
    truth = [c.label for c in chunks]
    assignment = drawn.arrays["chunk_cluster"].numpy()
    assert meta["nmi"]["clusters"] == pytest.approx(normalized_mutual_info_score(truth, assignment), abs=1e-4)
    assert meta["nmi"]["clusters"] > 0.9 and meta["nmi"]["random_same_sizes"] < 0.2
    assert summary["cluster_sizes"] == np.bincount(assignment).tolist() and sum(summary["cluster_sizes"]) == len(chunks)
    for j, cluster in enumerate(summary["clusters"]):
        topic = next(iter(cluster["topics"]))  # the cluster's majority topic
        assert cluster["top_terms"][0] in TOPICS[topic]
        assert len(cluster["snippets"]) == 3 and summary["snippets"][j] == cluster["snippets"][0]
        members = [" ".join(chunks[i].text.split()) for i in np.flatnonzero(assignment == j)]
        assert all(any(m.startswith(s.removesuffix("...")) for m in members) for s in cluster["snippets"])
    for key in ("corpus", "split", "form", "sampler", "embedder", "k", "n", "seq_len", "seed", "tokenizer"):
        assert key in summary  # what the model card shows
    assert "samples" not in summary and "tokenizer_fingerprint" not in summary


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(drawn, corpus, tokenizer, config, tmp_path):
    monkeypatched = pytest.MonkeyPatch()
    monkeypatched.setattr(ccds_module, "load_embedder", no_embedding)  # the cache serves both runs
    try:
        again = calibrate(corpus, tokenizer, config)
        other = calibrate(corpus, tokenizer, dataclasses.replace(config, seed=1))
    finally:
        monkeypatched.undo()
    a, b, c = (
        drawn.save(tmp_path / "a.safetensors"),
        again.save(tmp_path / "b.safetensors"),
        other.save(tmp_path / "c.safetensors"),
    )
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes() and other.metadata["samples"] != drawn.metadata["samples"]


def test_embeddings_are_cached_by_content_so_a_second_run_does_not_embed(corpus, tokenizer, tmp_path, monkeypatch):
    small = Corpus("topical", "all", "plain", "CC0-1.0", "tests", corpus.documents[:9])
    config = CalibrationConfig(clusters=3, samples_per_cluster=1, seq_len=40, cache_dir=str(tmp_path))
    loads = []
    real = ccds_module.load_embedder
    monkeypatch.setattr(ccds_module, "load_embedder", lambda spec: loads.append(spec) or real(spec))
    first = calibrate(small, tokenizer, config)
    assert loads == ["all-MiniLM-L6-v2"] and len(list((tmp_path / "embeddings").glob("*.npy"))) == 1
    second = calibrate(small, tokenizer, config)
    assert loads == ["all-MiniLM-L6-v2"]  # not loaded again
    assert torch.equal(first.input_ids, second.input_ids) and first.metadata == second.metadata
    changed = Corpus("topical", "all", "plain", "CC0-1.0", "tests", corpus.documents[1:10])
    calibrate(changed, tokenizer, config)
    assert len(loads) == 2  # other text, other cache entry


# ---------------------------------------------------------------- random windows (SLEB)
def test_random_sampler_takes_windows_of_the_tokenized_corpus_without_embedding(corpus, tokenizer, monkeypatch):
    monkeypatch.setattr(ccds_module, "load_embedder", no_embedding)
    config = CalibrationConfig(sampler="random", clusters=2, samples_per_cluster=3, seq_len=50, seed=7)
    drawn = calibrate(corpus, tokenizer, config)
    tokens = tokenizer(corpus.text, add_special_tokens=False)["input_ids"]
    assert tuple(drawn.input_ids.shape) == (6, 50)
    for row, sample in zip(drawn.input_ids.tolist(), drawn.metadata["samples"]):
        assert 0 <= sample["start"] <= len(tokens) - 50 and row == tokens[sample["start"] : sample["start"] + 50]
    assert torch.equal(calibrate(corpus, tokenizer, config).input_ids, drawn.input_ids)
    assert drawn.arrays == {} and "clusters" not in drawn.metadata


# ---------------------------------------------------------------- file
def test_file_round_trip_and_refusals(drawn, corpus, tokenizer, tmp_path):
    path = drawn.save(tmp_path / "cal.safetensors")
    loaded = CalibrationSet.load(path, tokenizer)
    assert torch.equal(loaded.input_ids, drawn.input_ids) and loaded.metadata == drawn.metadata
    assert loaded.arrays.keys() == drawn.arrays.keys() and all(
        torch.equal(loaded.arrays[k], drawn.arrays[k]) for k in drawn.arrays
    )
    assert json.loads(json.dumps(loaded.summary())) == loaded.summary()  # fits in evop_pruning.json

    other = word_tokenizer([d.text for d in corpus.documents], extra="zebra")
    with pytest.raises(EvopError, match="was made with tokenizer .* not with this model's"):
        CalibrationSet.load(path, other)
    with pytest.raises(EvopError, match="already exists; pass --overwrite"):
        drawn.save(path)
    umask = os.umask(0o022)
    try:
        assert drawn.save(path, overwrite=True).stat().st_mode & 0o777 == 0o644  # a normal file, not a private temp
    finally:
        os.umask(umask)
    with pytest.raises(EvopError, match="not found"):
        CalibrationSet.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"input_ids": torch.zeros(1, 2, dtype=torch.int64)}, tmp_path / "plain.safetensors")
    with pytest.raises(EvopError, match="not an evop-hub calibration file"):
        CalibrationSet.load(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_text("not a safetensors file")
    with pytest.raises(EvopError, match="not a readable safetensors file"):
        CalibrationSet.load(tmp_path / "junk.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cal.safetensors",
        "junk.safetensors",
        "plain.safetensors",
    ]  # no temp files left


def test_plot_draws_the_clusters_from_the_file_alone(drawn, corpus, tokenizer, tmp_path):
    loaded = CalibrationSet.load(drawn.save(tmp_path / "cal.safetensors"))
    png = loaded.plot(tmp_path / "clusters.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(EvopError, match="already exists"):
        loaded.plot(png)
    random_set = calibrate(corpus, tokenizer, CalibrationConfig(sampler="random", clusters=1, seq_len=20))
    with pytest.raises(EvopError, match="sampler 'random' has no clusters to plot"):
        random_set.plot(tmp_path / "none.png")


# ---------------------------------------------------------------- bad input
def test_corpus_too_small_says_the_numbers(corpus, tokenizer, monkeypatch):
    monkeypatch.setattr(ccds_module, "load_embedder", no_embedding)  # refused before the slow part
    total = len(corpus.documents) * SENTENCES_PER_DOC * TOKENS_PER_SENTENCE
    message = f"corpus topical:all has {total:,} tokens, fewer than the 3 clusters x 2 samples x 1000 tokens = 6,000"
    for sampler in ("ccds", "random"):
        with pytest.raises(EvopError, match=message):
            calibrate(
                corpus, tokenizer, CalibrationConfig(sampler=sampler, clusters=3, samples_per_cluster=2, seq_len=1000)
            )


def test_a_cluster_too_small_for_its_samples_is_named(corpus, tokenizer, config):
    # 24 astronomy/cooking documents and 1 football one: 3 clusters, the football one holds 40 tokens
    lopsided = Corpus(
        "lopsided",
        "all",
        "plain",
        "CC0-1.0",
        "tests",
        [d for d in corpus.documents if d.label != "football"] + corpus.documents[2:3],
    )
    with pytest.raises(EvopError, match=r"cluster \d has 40 tokens in 1 chunks, too few for 1 samples of 100 tokens"):
        calibrate(lopsided, tokenizer, dataclasses.replace(config, samples_per_cluster=1))


def test_more_clusters_than_chunks(corpus, tokenizer, monkeypatch):
    monkeypatch.setattr(ccds_module, "load_embedder", no_embedding)
    with pytest.raises(
        EvopError, match="--clusters 50 is more than the 36 chunks of 4 sentences in corpus topical:all"
    ):
        calibrate(corpus, tokenizer, CalibrationConfig(clusters=50, seq_len=2))


def test_bad_config_values():
    with pytest.raises(EvopError, match="unknown sampler 'kmeans'; choose one of: ccds, random"):
        CalibrationConfig(sampler="kmeans")
    with pytest.raises(EvopError, match="--samples-per-cluster must be at least 1"):
        CalibrationConfig(samples_per_cluster=0)
    with pytest.raises(EvopError, match="--seq-len must be at least 2, not 1"):  # one token predicts nothing
        CalibrationConfig(seq_len=1)


def test_unloadable_embedder_says_which_and_how_to_give_a_local_path(corpus, tokenizer, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as on a machine without network, without retries
    for spec in ("no-such-org/no-such-embedder", str(tmp_path)):
        config = CalibrationConfig(clusters=2, seq_len=10, embedder=spec, cache_dir=str(tmp_path / "cache"))
        with pytest.raises(
            EvopError, match=f"cannot load sentence embedder '{re.escape(spec)}' .*pass --embedder with a local"
        ):
            calibrate(corpus, tokenizer, config)


@pytest.mark.parametrize("sampler", ["random", "ccds"])
def test_samples_start_with_bos_where_the_tokenizer_leads_with_it(sampler, corpus):
    # As the evaluation windows do (evaluate.perplexity.make_windows): Llama- and Gemma-style tokenizers.
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    plain = word_tokenizer([d.text for d in corpus.documents], extra="<s>")
    core = plain.backend_tokenizer
    bos = core.token_to_id("<s>")
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    led = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>")
    assert led("a")["input_ids"][0] == bos
    config = CalibrationConfig(sampler=sampler, clusters=2, samples_per_cluster=2, seq_len=40, seed=3)
    rows = calibrate(corpus, led, config).input_ids
    plain_rows = calibrate(corpus, plain, config).input_ids
    assert tuple(rows.shape) == (4, 40) and (rows[:, 0] == bos).all() and not (plain_rows == bos).any()
    assert (rows[:, 1:] != bos).all()
    assert calibrate(corpus, led, config).metadata["bos"] is True
