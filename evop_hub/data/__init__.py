"""Text corpora: named ones (WikiText-2, C4, Wikipedia leads, Python docs, Shakespeare) and local files."""

from .corpora import CORPORA, Corpus, CorpusSpec, Document, fixed_split, load_corpus, register

__all__ = ["CORPORA", "Corpus", "CorpusSpec", "Document", "fixed_split", "load_corpus", "register"]
