"""The offline default end to end up to the push: real SmolLM2-135M (Q4_1 GGUF) pruned,
saved by evop_hub.models.save, its card, and the dry-run listing against the loopback Hub."""

from __future__ import annotations

import huggingface_hub
import pytest
from huggingface_hub import ModelCard

import evop_hub
from evop_hub.models import prepare_output

from .conftest import USER
from .fake_hub import FakeHub
from .test_push import FAKE_TOKEN, listed, run_cli

pytestmark = pytest.mark.integration


def test_smollm2_card_and_dry_run(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = evop_hub.load("smollm2-135m")
    evop_hub.drop(loaded, [3, 4, 25])
    out = evop_hub.save(loaded, prepare_output(tmp_path / "smol"), command="evop-hub drop smollm2-135m --layers 3,4,25")

    card = ModelCard.load(str(out / "README.md"))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.license == "apache-2.0"
    assert "dequantized from a Q4_1 GGUF" in card.text
    assert "Blocks dropped (original numbering, 0-based): **3, 4, 25**" in card.text
    assert "could not be fetched" in card.text  # offline: no license files, and the card says so

    with FakeHub({FAKE_TOKEN: USER}) as hub:
        result = run_cli(["push", str(out), "--dry-run"], tmp_path, hub.url)
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[0].endswith(f"to the private model repo {USER}/SmolLM2-135M-Instruct-evop-manual-27L")
    model, _ = listed(result.stdout)
    assert {"model.safetensors", "config.json", "evop_pruning.json", "README.md"} <= set(model)
    size, unit = model["model.safetensors"].split()
    assert unit == "MB" and float(size) < 250  # bfloat16, 27 of 30 blocks: 247.8 MB (float32 was 495.6 MB)
    assert not any(".evop" in line for line in lines)
