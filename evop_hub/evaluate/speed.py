"""Measured inference speed of a pruned model against its dense source.

Removing blocks is the whole point of EvoP's speedup (the paper reports 1.10x at 10 % and
1.23x at 20 % of blocks removed on a 13B model), so it is measured, not estimated: both
models run the same greedy generation on the same random prompts, interleaved so drifting
machine load hits both alike, and the medians of several repeats are compared.

Each run is one greedy generation of ``new_tokens`` timed in two parts: prefill, the
prompt's forward pass that yields the first token, and decode, the ``new_tokens - 1``
single-token steps on the KV cache. GPU runs are timed with CUDA events (no host sync
inside the timed region), CPU runs with ``perf_counter``.
"""

from __future__ import annotations

import ctypes
import inspect
import re
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import EvopError
from ..models import LoadConfig, check_context, count_parameters, find_blocks
from ..models.devices import dtype_name
from ..models.loading import check_is_source
from ..progress import bar
from ..record import RECORD_NAME, PruningRecord
from ..record.provenance import cpu_name
from ..record.results import ModelSpeed, SpeedConfig, SpeedResult
from .tasks import open_model, out_of_memory

PROC_STATUS = Path("/proc/self/status")


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, torch threads: {torch.get_num_threads()}"


class _PeakMemory:
    """Growth of device memory during one timed repeat, above what was in use before it.

    CUDA: the caching allocator's own peak counter. CPU: the kernel's peak resident set
    (VmHWM), reset through /proc/self/clear_refs, so Linux only; glibc's freed memory is
    handed back first (malloc_trim) so one model's leftovers do not hide the next one's.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = device.type != "cuda" and PROC_STATUS.is_file()
        try:
            self.libc = ctypes.CDLL("libc.so.6") if self.cpu else None
        except OSError:
            self.libc = None
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated"
        elif self.cpu:
            self.method = "process peak RSS growth (Linux VmHWM) + weight bytes"
        else:
            self.method = "not measured (CPU peak memory needs Linux /proc)"

    def _rss(self, field_name: str) -> int:
        return int(re.search(rf"{field_name}:\s+(\d+) kB", PROC_STATUS.read_text()).group(1)) * 1024

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.cpu:
            if self.libc is not None:
                self.libc.malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = self._rss("VmRSS")

    def growth(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.base
        if self.cpu:
            return max(0, self._rss("VmHWM") - self.base)
        return None


class _Clock:
    """Timestamps: CUDA events on GPU, ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.name = "torch.cuda.Event" if self.cuda else "time.perf_counter"

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))  # the models' device, which need not be the current one
        return event

    def seconds(self, start: Any, end: Any) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1000


@torch.inference_mode()
def _generate(
    model: torch.nn.Module, ids: torch.Tensor, new_tokens: int, clock: _Clock
) -> tuple[float, float, torch.Tensor]:
    """Greedy generation with the KV cache, as ``generate`` does it: (prefill s, decode s, new tokens)."""
    # Like generate, compute the prompt's logits for its last position only.
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    start = clock.mark()
    out = model(input_ids=ids, use_cache=True, **keep)
    tokens = [out.logits[:, -1:].argmax(-1)]
    prefilled = clock.mark()
    for _ in range(new_tokens - 1):
        out = model(input_ids=tokens[-1], past_key_values=out.past_key_values, use_cache=True)
        tokens.append(out.logits[:, -1:].argmax(-1))
    end = clock.mark()
    return clock.seconds(start, prefilled), clock.seconds(prefilled, end), torch.cat(tokens, dim=1)


def _summary(model: torch.nn.Module, runs: list[dict[str, float]], peak: int | None, c: SpeedConfig) -> ModelSpeed:
    prefill = statistics.median(r["prefill_s"] for r in runs)
    decode = statistics.median(r["decode_s"] for r in runs)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return ModelSpeed(
        parameters=count_parameters(model),
        blocks=len(find_blocks(model)),
        prefill_s=prefill,
        decode_s=decode,
        latency_s=statistics.median(r["latency_s"] for r in runs),
        prefill_tokens_per_s=c.batch_size * c.prompt_len / prefill,
        decode_tokens_per_s=c.batch_size * (c.new_tokens - 1) / decode,
        peak_memory_bytes=None if peak is None else weights + peak,
        runs=runs,
    )


def _check_workload(config: SpeedConfig) -> None:
    if min(config.batch_size, config.prompt_len, config.repeats) < 1 or config.warmup < 0:
        raise EvopError("batch size, prompt length and repeats must be at least 1, warm-up at least 0")
    if config.new_tokens < 2:
        raise EvopError("--new-tokens must be at least 2: decode speed is measured over the tokens after the first")


def speed(dense: Any, pruned: Any, config: SpeedConfig | None = None) -> SpeedResult:
    """Compare generation speed of ``dense`` and ``pruned`` (LoadedModel, transformers model or path/Hub id).

    Writes nothing: ``evop_hub.record.record_results`` puts the result into the pruned model's record.
    When ``pruned`` is an evop-hub output directory, ``dense`` must be its source, so that the result
    can stand in that record as "the dense source against this model".
    """
    c = config or SpeedConfig()
    _check_workload(c)
    load_config = LoadConfig(dtype=c.dtype, device_map=c.device, trust_remote_code=c.trust_remote_code)
    pruned_model, _ = open_model(pruned, load_config=load_config)
    # One dtype for both: "auto" would give each its own checkpoint's, and bf16 against float32 is no speedup.
    dtype = dtype_name(pruned_model)
    dense_model, _ = open_model(dense, load_config=replace(load_config, dtype=dtype))
    if isinstance(pruned, (str, Path)) and (Path(pruned) / RECORD_NAME).is_file():
        check_is_source(PruningRecord.load(pruned), dense_model, str(dense))
    if dense_model.dtype != pruned_model.dtype:
        raise EvopError(
            f"the dense model is {dense_model.dtype}, the pruned one {pruned_model.dtype}; "
            "time them at one dtype (cast one, or pass both as paths with --dtype)"
        )
    models = {"dense": dense_model, "pruned": pruned_model}
    for model in models.values():
        check_context(
            model,
            c.prompt_len + c.new_tokens,
            f"prompt {c.prompt_len} + new tokens {c.new_tokens} exceeds the model's context of "
            "{context}; use a smaller --prompt-len or --new-tokens",
        )
    device = pruned_model.device
    if dense_model.device.type != device.type:
        raise EvopError(f"dense model is on {dense_model.device}, pruned on {device}; compare on one device")

    memory, clock = _PeakMemory(device), _Clock(device)
    runs, peaks = _time(models, c, memory, clock)
    d = _summary(dense_model, runs["dense"], peaks["dense"], c)
    p = _summary(pruned_model, runs["pruned"], peaks["pruned"], c)
    return SpeedResult(
        config=c,
        device=str(device),
        hardware=_hardware(device),
        timer=clock.name,
        memory_method=memory.method,
        dense=d,
        pruned=p,
        speedup={
            "prefill": d.prefill_s / p.prefill_s,
            "decode": d.decode_s / p.decode_s,
            "latency": d.latency_s / p.latency_s,
        },
        parameters_removed=1 - p.parameters / d.parameters,
        dtype=dtype,
    )


def _time(
    models: dict[str, torch.nn.Module], c: SpeedConfig, memory: _PeakMemory, clock: _Clock
) -> tuple[dict[str, list[dict[str, float]]], dict[str, int | None]]:
    """Timed runs and peak memory growth per model, on the same random prompts, the models interleaved."""
    device = memory.device
    vocab = models["pruned"].config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(c.seed)
    ids = torch.randint(0, vocab, (c.batch_size, c.prompt_len), generator=generator)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    peaks: dict[str, int | None] = {name: None for name in models}
    steps = [(i, name) for i in range(c.warmup + c.repeats) for name in models]  # interleaved
    try:
        for i, name in bar(steps, desc="speed", unit="run"):
            model = models[name]
            memory.start()
            prefill, decode, _ = _generate(model, ids.to(model.device), c.new_tokens, clock)
            growth = memory.growth()
            if i < c.warmup:
                continue
            runs[name].append({"prefill_s": prefill, "decode_s": decode, "latency_s": prefill + decode})
            if growth is not None:
                peaks[name] = max(peaks[name] or 0, growth)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not out_of_memory(exc):
            raise
        raise EvopError(
            f"batch {c.batch_size} x {c.prompt_len + c.new_tokens} tokens does not fit in memory on {device}; "
            "use a smaller --batch-size, --prompt-len or --new-tokens"
        ) from exc
    return runs, peaks
