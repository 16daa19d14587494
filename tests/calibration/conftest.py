"""An offline corpus with planted topics and a word-level tokenizer built from it.

Each topic has its own small vocabulary, so a working embedder + KMeans must recover the
topics, and every chunk's tokens can be counted by hand (one token per word or period).
"""

from __future__ import annotations

import random

import pytest

from evop_hub.calibration import CalibrationConfig, calibrate
from evop_hub.data import Corpus, Document

TOPICS = {
    "astronomy": "star planet galaxy telescope orbit comet nebula moon asteroid astronomer".split(),
    "cooking": "recipe flour oven butter sauce garlic chef bread onion soup".split(),
    "football": "goal striker referee stadium penalty midfielder league coach match defender".split(),
}
SENTENCES_PER_DOC = 4
TOKENS_PER_SENTENCE = 10  # "The a and the b were near the c ." with a word-level tokenizer


def topical_corpus(docs_per_topic: int = 12, seed: int = 0) -> Corpus:
    rng = random.Random(seed)
    documents = []
    for i in range(docs_per_topic):
        for topic, words in TOPICS.items():
            sentences = []
            for _ in range(SENTENCES_PER_DOC):
                a, b, c = rng.sample(words, 3)
                sentences.append(f"The {a} and the {b} were near the {c}.")
            documents.append(Document(" ".join(sentences), topic, f"{topic}-{i}"))
    return Corpus("topical", "all", "plain", "CC0-1.0", "tests/calibration", documents)


def word_tokenizer(texts: list[str], extra: str = ""):
    """Word-level tokenizer over the words of ``texts`` (``extra`` words change its vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace().pre_tokenize_str
    words = sorted({word for text in texts for word, _ in split(text)} | set(extra.split()))
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return topical_corpus()


@pytest.fixture(scope="session")
def tokenizer(corpus):
    return word_tokenizer([d.text for d in corpus.documents])


@pytest.fixture(scope="session")
def embed_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("embed-cache")


@pytest.fixture(scope="session")
def config(embed_cache) -> CalibrationConfig:
    """3 clusters x 2 samples x 100 tokens: each sample needs 3 chunks of 40 tokens, cut to 100."""
    return CalibrationConfig(clusters=3, samples_per_cluster=2, seq_len=100, seed=0, cache_dir=str(embed_cache))


@pytest.fixture(scope="session")
def drawn(corpus, tokenizer, config):
    return calibrate(corpus, tokenizer, config)
