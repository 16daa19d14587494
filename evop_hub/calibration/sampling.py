"""Draw a calibration set from a corpus: ``calibrate(corpus, tokenizer, CalibrationConfig(...))``.

Samplers live in a registry so that an ablation (CCDS against SLEB's random windows) is a
change of one name, and a new way of sampling is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Corpus, load_corpus
from ..errors import EvopError
from ..files import cache_dir
from ..models.loading import leading_bos
from ..registry import Registry
from .calibration_set import FORMAT, VERSION, CalibrationSet, tokenizer_fingerprint
from .ccds import DEFAULT_EMBEDDER, cluster, describe_clusters, embed_chunks, project_2d, split_chunks, topic_nmi

SEPARATOR = "\n\n"  # between chunks appended into one CCDS sample, as between the corpus's documents


@dataclass
class CalibrationConfig:
    """How to draw a calibration set: 40 clusters x 1 sample x 2048 tokens, eight times the paper's 5 samples
    (SLEB's amount of data; ``--preset paper`` draws those): more clusters cover more kinds of text, and staged
    selection keeps the larger set affordable (``evop_hub.search.StagedEvaluator``)."""

    sampler: str = "ccds"  # a name in SAMPLERS: "ccds" or "random"
    clusters: int = 40  # k
    samples_per_cluster: int = 1  # n; "random" draws k x n windows so both samplers give equal data
    seq_len: int = 2048
    seed: int = 0
    sentences_per_chunk: int = 4  # short enough to fit all-MiniLM-L6-v2's 256-token window
    embedder: str = DEFAULT_EMBEDDER  # a sentence-transformers id or local folder
    batch_size: int = 64  # chunks per embedding batch
    data_dir: str | None = None  # local copies of Hub corpora, see evop_hub.data.load_corpus
    cache_dir: str | None = None  # for embeddings; None: evop-hub's user cache
    # ccds only: draw all clusters x samples_per_cluster rows from this one cluster (EvoP's Fig. 1c), not one per cluster
    cluster: int | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise EvopError(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(sorted(SAMPLERS))}")
        for name in ("clusters", "samples_per_cluster", "seq_len", "sentences_per_chunk", "batch_size"):
            if getattr(self, name) < 1:
                raise EvopError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.seq_len < 2:  # a sample predicts its tokens after the first: one token scores nothing
            raise EvopError(f"--seq-len must be at least 2, not {self.seq_len}")
        if self.cluster is not None and (self.sampler != "ccds" or not 0 <= self.cluster < self.clusters):
            raise EvopError(f"cluster {self.cluster} needs the ccds sampler and a number from 0 to {self.clusters - 1}")

    @property
    def num_samples(self) -> int:
        return self.clusters * self.samples_per_cluster


@dataclass
class Drawn:
    """What a sampler returns; :func:`calibrate` adds the provenance every sampler shares."""

    input_ids: torch.Tensor  # [samples, seq_len]
    samples: list[dict[str, Any]]  # where each row came from
    details: dict[str, Any] = field(default_factory=dict)  # sampler-specific metadata
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)  # saved in the file beside the ids


Sampler = Callable[[Corpus, Any, CalibrationConfig], Drawn]  # (corpus, tokenizer, config)
SAMPLERS: Registry[Sampler] = Registry(
    "samplers", "--sampler", describe=lambda s: " ".join((s.__doc__ or "").split()).split(". ")[0]
)


def register_sampler(name: str) -> Callable[[Sampler], Sampler]:
    def wrap(sampler: Sampler) -> Sampler:
        return SAMPLERS.register(name, sampler)

    return wrap


def calibrate(corpus: Corpus | str, tokenizer: Any, config: CalibrationConfig | None = None) -> CalibrationSet:
    """Draw ``clusters x samples_per_cluster`` rows of exactly ``seq_len`` tokens of the target
    model's tokenizer from ``corpus`` (a :class:`evop_hub.data.Corpus` or a spec such as
    ``"wikitext2:train"``). The same corpus, tokenizer and config give identical ids."""
    config = config or CalibrationConfig()
    if isinstance(corpus, str):
        corpus = load_corpus(corpus, data_dir=config.data_dir)
    drawn = SAMPLERS[config.sampler](corpus, tokenizer, config)
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "corpus": corpus.name,
        "split": corpus.split,
        "form": corpus.form,
        "bos": leading_bos(tokenizer) is not None,  # every sample starts with BOS, as evaluation windows do
        "license": corpus.license,
        "source": corpus.source,
        "sampler": config.sampler,
        "seed": config.seed,
        "k": config.clusters,
        "n": config.samples_per_cluster,
        "seq_len": config.seq_len,
        "tokenizer": getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        **drawn.details,
        "samples": drawn.samples,
    }
    return CalibrationSet(drawn.input_ids, metadata, drawn.arrays)


def _require_tokens(available: int, corpus: Corpus, config: CalibrationConfig) -> None:
    needed = config.num_samples * config.seq_len
    if available < needed:
        raise EvopError(
            f"corpus {corpus.name}:{corpus.split} has {available:,} tokens, fewer than the "
            f"{config.clusters} clusters x {config.samples_per_cluster} samples x {config.seq_len} tokens = {needed:,} "
            f"a calibration set needs; use a larger corpus or lower --clusters, --samples-per-cluster or --seq-len"
        )


@register_sampler("random")
def random_windows(corpus: Corpus, tokenizer: Any, config: CalibrationConfig) -> Drawn:
    """SLEB's calibration data: windows of ``seq_len`` tokens at random offsets of the tokenized corpus."""
    ids = tokenizer(corpus.text, add_special_tokens=False, verbose=False)["input_ids"]
    _require_tokens(len(ids), corpus, config)
    lead = _lead(tokenizer)
    span = config.seq_len - len(lead)
    starts = np.random.default_rng(config.seed).integers(0, len(ids) - span + 1, size=config.num_samples)
    rows = torch.tensor([lead + ids[s : s + span] for s in starts], dtype=torch.int64)
    return Drawn(rows, [{"start": int(s)} for s in starts])


def _lead(tokenizer: Any) -> list[int]:
    """[BOS] when the tokenizer leads texts with it: samples then start as the evaluation's windows do."""
    bos = leading_bos(tokenizer)
    return [] if bos is None else [bos]


@register_sampler("ccds")
def ccds(corpus: Corpus, tokenizer: Any, config: CalibrationConfig) -> Drawn:
    """EvoP's Algorithm 4.1: cluster sentence chunks by meaning, then fill each sample with random
    chunks of one cluster. Chunks are drawn without replacement within a cluster, so no text repeats
    inside the calibration set (a repeat would let the model copy and flatter a pruning pattern)."""

    k = config.clusters
    chunks = split_chunks(corpus.documents, config.sentences_per_chunk)
    if k > len(chunks):
        raise EvopError(
            f"--clusters {k} is more than the {len(chunks)} chunks of {config.sentences_per_chunk} sentences in corpus "
            f"{corpus.name}:{corpus.split}; use fewer clusters, fewer --sentences-per-chunk or a larger corpus"
        )
    texts = [c.text for c in chunks]
    chunk_ids = tokenizer([t + SEPARATOR for t in texts], add_special_tokens=False, verbose=False)["input_ids"]
    _require_tokens(sum(map(len, chunk_ids)), corpus, config)

    embeddings = embed_chunks(
        texts,
        config.embedder,
        cache_root=Path(config.cache_dir) if config.cache_dir else cache_dir(),
        batch_size=config.batch_size,
    )
    labels, centroids = cluster(embeddings, k, config.seed)
    rows, samples = _fill_from_clusters(chunk_ids, labels, _lead(tokenizer), config)

    topics = [c.label for c in chunks]
    details: dict[str, Any] = {
        **({} if config.cluster is None else {"only_cluster": config.cluster}),
        "embedder": config.embedder,
        "sentences_per_chunk": config.sentences_per_chunk,
        "chunks": len(chunks),
        "projection": "PCA",
        "cluster_sizes": np.bincount(labels, minlength=k).tolist(),
        "clusters": describe_clusters(texts, embeddings, labels, centroids, topics=topics),
    }
    if any(t is not None for t in topics):
        details["nmi"] = topic_nmi(topics, labels, config.seed)
    arrays = {
        "chunk_cluster": torch.from_numpy(labels),
        "chunk_xy": torch.from_numpy(project_2d(embeddings, config.seed)),
    }
    return Drawn(torch.tensor(rows, dtype=torch.int64), samples, details, arrays)


def _fill_from_clusters(
    chunk_ids: list[list[int]], labels: np.ndarray, lead: list[int], config: CalibrationConfig
) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """(Rows of ``seq_len`` token ids, and the cluster and chunks of each): ``samples_per_cluster`` rows from
    every cluster, or (Fig. 1c, ``config.cluster``) all of them from that one. Each row is ``lead`` then whole
    chunks of its cluster in a seeded random order, none used twice, cut to ``seq_len``."""
    k, n, seq_len = config.clusters, config.samples_per_cluster, config.seq_len
    rng = np.random.default_rng(config.seed)
    rows, samples = [], []
    quotas = [(j, n) for j in range(k)] if config.cluster is None else [(config.cluster, k * n)]
    for j, quota in quotas:
        members = np.flatnonzero(labels == j)
        pool = iter(rng.permutation(members).tolist())
        for _ in range(quota):
            ids: list[int] = list(lead)
            held: list[int] = []
            while len(ids) < seq_len:
                index = next(pool, None)
                if index is None:
                    tokens = sum(len(chunk_ids[i]) for i in members)
                    raise EvopError(
                        f"cluster {j} has {tokens:,} tokens in {members.size} chunks, too few for {quota} samples of "
                        f"{seq_len} tokens; use fewer --clusters or --samples-per-cluster, a shorter --seq-len or a larger corpus"
                    )
                ids.extend(chunk_ids[index])
                held.append(index)
            rows.append(ids[:seq_len])
            samples.append({"cluster": j, "chunks": held})
    return rows, samples
