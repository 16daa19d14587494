"""`speed` on tiny models: structure, arithmetic from the raw timings, records, and bad input."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from evop_hub.cli import app
from evop_hub.errors import EvopError
from evop_hub.evaluate.speed import SpeedConfig, SpeedResult, _Clock, _generate, _PeakMemory, speed
from evop_hub.models import LoadedModel, SourceInfo, drop, save
from evop_hub.record import PruningRecord, record_results

from ..tiny import tiny_llama, tiny_tokenizer

SMALL = SpeedConfig(batch_size=2, prompt_len=16, new_tokens=4, warmup=1, repeats=3)


def loaded(layers: int) -> LoadedModel:
    return LoadedModel(tiny_llama(layers), tiny_tokenizer(), SourceInfo(name="tiny", path="tiny"))


def test_speed_reports_medians_and_ratios():
    dense, pruned = tiny_llama(4), tiny_llama(2)
    result = speed(dense, pruned, SMALL)

    assert result.pruned.blocks == 2 and result.dense.blocks == 4
    assert result.dense.parameters == sum(p.numel() for p in dense.parameters())
    assert result.pruned.parameters == sum(p.numel() for p in pruned.parameters()) < result.dense.parameters
    assert result.parameters_removed == pytest.approx(1 - result.pruned.parameters / result.dense.parameters)
    for side in (result.dense, result.pruned):
        assert len(side.runs) == SMALL.repeats
        prefill = statistics.median(r["prefill_s"] for r in side.runs)
        decode = statistics.median(r["decode_s"] for r in side.runs)
        assert all(r["latency_s"] == r["prefill_s"] + r["decode_s"] for r in side.runs)
        assert side.prefill_s == pytest.approx(prefill)
        assert side.decode_s == pytest.approx(decode)
        assert side.latency_s == pytest.approx(statistics.median(r["latency_s"] for r in side.runs))
        assert side.prefill_tokens_per_s == pytest.approx(SMALL.batch_size * SMALL.prompt_len / prefill)
        assert side.decode_tokens_per_s == pytest.approx(SMALL.batch_size * (SMALL.new_tokens - 1) / decode)
    assert result.speedup["prefill"] == pytest.approx(result.dense.prefill_s / result.pruned.prefill_s)
    assert result.speedup["decode"] == pytest.approx(result.dense.decode_s / result.pruned.decode_s)
    assert result.speedup["latency"] == pytest.approx(result.dense.latency_s / result.pruned.latency_s)
    assert "pruned vs dense" in result.table()


def test_timed_loop_generates_what_generate_does():
    model = tiny_llama(2)
    ids = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(0))
    prefill, decode, tokens = _generate(model, ids, 6, _Clock(torch.device("cpu")))
    model.generation_config.eos_token_id = None  # else generate's min-length rule suppresses token 2, the loop does not
    expected = model.generate(ids, do_sample=False, max_new_tokens=6, pad_token_id=0)
    assert torch.equal(tokens, expected[:, ids.shape[1] :])
    assert prefill > 0 and decode > 0


def test_cli_records_into_pruned_directory(tmp_path):
    dense = loaded(4)
    save(dense, tmp_path / "dense")
    save(drop(loaded(4), [1, 2]), tmp_path / "pruned")

    args = [
        "speed",
        str(tmp_path / "dense"),
        "--compare",
        str(tmp_path / "pruned"),
        "--batch-size",
        "2",
        "--prompt-len",
        "16",
        "--new-tokens",
        "4",
        "--warmup",
        "1",
        "--repeats",
        "3",
        "--json",
    ]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    printed = json.loads(out.stdout)
    record = PruningRecord.load(tmp_path / "pruned")
    assert record.dropped_blocks == [1, 2]  # the rest of the record is kept
    assert record.scores["speed"] == printed
    assert SpeedResult.from_dict(printed).to_dict() == printed  # what the model card renders from
    assert printed["pruned"]["parameters"] == record.parameters_after
    assert printed["dense"]["parameters"] == record.parameters_before
    assert len(printed["pruned"]["runs"]) == 3

    in_memory = drop(loaded(4), [0])
    record_results(in_memory.record, speed(dense, in_memory, SMALL))
    assert in_memory.record.scores["speed"]["pruned"]["blocks"] == 3


def test_only_the_outputs_own_source_is_recorded_as_its_dense_model(tmp_path):
    save(loaded(6), tmp_path / "other")
    save(drop(loaded(4), [1]), tmp_path / "pruned")
    with pytest.raises(EvopError, match="is not the model this output was pruned from: tiny"):
        speed(str(tmp_path / "other"), str(tmp_path / "pruned"), SMALL)
    assert "speed" not in PruningRecord.load(tmp_path / "pruned").scores


def test_both_models_are_timed_at_one_dtype(tmp_path):
    """A bfloat16 source pruned and saved in float32: "auto" loads the source at the pruned model's dtype,
    and two in-memory models of different dtypes are refused rather than compared."""
    source = loaded(4)
    source.model.to(torch.bfloat16)
    save(source, tmp_path / "dense")
    pruned = drop(loaded(4), [1, 2])
    save(pruned, tmp_path / "pruned")
    result = speed(str(tmp_path / "dense"), str(tmp_path / "pruned"), SMALL)
    record_results(tmp_path / "pruned", result)
    assert result.dtype == "float32" and PruningRecord.load(tmp_path / "pruned").scores["speed"]["dtype"] == "float32"
    assert ", float32;" in result.table()
    with pytest.raises(EvopError, match="one dtype"):
        speed(tiny_llama(4).to(torch.bfloat16), tiny_llama(2), SMALL)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="CPU peak memory is measured on Linux only")
def test_cpu_peak_memory_sees_a_freed_allocation_and_resets():
    memory = _PeakMemory(torch.device("cpu"))
    memory.start()
    block = torch.ones(16 * 2**20)  # 64 MiB, touched, then freed before the reading
    del block
    assert memory.growth() >= 60 * 2**20
    memory.start()
    assert memory.growth() < 16 * 2**20


def test_context_too_long_is_refused():
    with pytest.raises(EvopError, match="context of 128"):
        speed(tiny_llama(2), tiny_llama(1), SpeedConfig(prompt_len=120, new_tokens=16))


def test_out_of_memory_suggests_smaller(monkeypatch):
    model = tiny_llama(2)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(model, "forward", oom)
    with pytest.raises(EvopError, match="smaller --batch-size"):
        speed(tiny_llama(2), model, SMALL)


def test_directory_that_is_not_a_causal_lm(tmp_path):
    from transformers import ViTConfig

    ViTConfig().save_pretrained(tmp_path / "vit")
    with pytest.raises(EvopError, match="vit"):
        speed(tiny_llama(2), str(tmp_path / "vit"), SMALL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvopError, match="no config.json"):
        speed(tiny_llama(2), str(tmp_path / "empty"), SMALL)


def test_bad_workload_fails_before_loading(tmp_path):
    with pytest.raises(EvopError, match="at least 2"):
        speed(str(tmp_path / "never-loaded"), str(tmp_path / "never-loaded"), SpeedConfig(new_tokens=1))
