"""Results of evaluations as the record stores them: plain dataclasses that go to and from JSON and render
themselves as Markdown, so the card and the reports can show them without running anything."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .markdown import markdown_table

# The five zero-shot tasks of the EvoP paper's tables.
PAPER_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande")
TABLE_METRICS = ("acc", "acc_norm")


@dataclass
class TasksResult:
    """Per-task harness metrics and their unweighted mean over tasks.

    A group name (``mmlu``) runs as its subtasks, each a row here; the mean is over rows,
    not the harness's size-weighted group score.
    """

    scores: dict[str, dict[str, float | None]]  # task -> {"acc": .., "acc_stderr": .., "acc_norm": .., ...}
    samples: dict[str, int]  # task -> examples evaluated
    mean: dict[str, float | None]
    num_fewshot: int
    limit: int | None
    lm_eval_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TasksResult:
        """Back from ``scores["tasks"]`` of a record, e.g. to render ``table()`` in the model card."""
        return cls(**data)

    def table(self) -> str:
        """Markdown table: one row per task, then the mean (stderr of a mean assumes independent tasks)."""
        head = ["task", "n", *[c for m in TABLE_METRICS for c in (m, "±")]]
        rows = []
        for name, metrics in [*self.scores.items(), ("mean", self.mean)]:
            n = str(self.samples[name]) if name in self.samples else ""
            cells = [_fmt(metrics.get(c if c != "±" else f"{m}_stderr")) for m in TABLE_METRICS for c in (m, "±")]
            rows.append([name, n, *cells])
        lines = markdown_table(head, rows, spaced_rule=True)
        return "\n".join([*lines, "", f"{self.num_fewshot}-shot, lm-eval {self.lm_eval_version}"])


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


@dataclass
class PerplexityResult:
    corpus: str
    split: str
    form: str
    seq_len: int
    windows: int
    tokens: int  # predicted (scored) tokens
    nll: float  # mean NLL per scored token, in nats
    ppl: float
    dtype: str | None = None  # the model's weights (records before it was recorded lack it)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PerplexityResults:
    """One model's perplexity on several corpora and, with ``dense``, its source's on the very same windows
    at the same dtype (so the change the card shows is the pruning's alone)."""

    results: list[PerplexityResult]
    dense: list[PerplexityResult] | None = None  # the source's, in the order of ``results``
    dense_model: str | None = None  # the source as its record names it
    partial: bool = False  # windows capped by max_windows: a quick look, never recorded as the model's number


@dataclass
class SpeedConfig:
    """Workload of the comparison; both models get exactly the same one."""

    batch_size: int = 1
    prompt_len: int = 512
    new_tokens: int = 128
    warmup: int = 2
    repeats: int = 5
    seed: int = 0
    device: str | None = None  # where to load models given as paths; in-memory models stay where they are
    dtype: str = "auto"  # dtype for models given as paths ("auto": the pruned model's, for both)
    trust_remote_code: bool = False  # models given as paths whose code lives in their repo (SliceGPT outputs)


@dataclass
class ModelSpeed:
    """Medians over the repeats for one model, and the raw timings they come from."""

    parameters: int
    blocks: int
    prefill_s: float
    decode_s: float
    latency_s: float  # prompt in, new_tokens out
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    peak_memory_bytes: int | None  # weights + the largest growth during one repeat
    runs: list[dict[str, float]] = field(default_factory=list)


@dataclass
class SpeedResult:
    """Dense against pruned under one ``SpeedConfig``; speedups are dense time / pruned time."""

    config: SpeedConfig
    device: str
    hardware: str
    timer: str
    memory_method: str
    dense: ModelSpeed
    pruned: ModelSpeed
    speedup: dict[str, float]
    parameters_removed: float
    dtype: str | None = None  # both models' (records before it was recorded lack it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeedResult:
        """Back from ``scores["speed"]`` of a record, e.g. to render ``table()`` in the model card."""
        nested = {
            "config": SpeedConfig(**data["config"]),
            "dense": ModelSpeed(**data["dense"]),
            "pruned": ModelSpeed(**data["pruned"]),
        }
        return cls(**{**data, **nested})

    def table(self) -> str:
        d, p = self.dense, self.pruned
        mib = lambda b: "n/a" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
        rows = [
            ("parameters", f"{d.parameters:,}", f"{p.parameters:,}", f"-{self.parameters_removed:.1%}"),
            ("blocks", str(d.blocks), str(p.blocks), ""),
            (
                "prefill tokens/s",
                f"{d.prefill_tokens_per_s:.1f}",
                f"{p.prefill_tokens_per_s:.1f}",
                f"{self.speedup['prefill']:.3f}x",
            ),
            (
                "decode tokens/s",
                f"{d.decode_tokens_per_s:.1f}",
                f"{p.decode_tokens_per_s:.1f}",
                f"{self.speedup['decode']:.3f}x",
            ),
            ("latency s", f"{d.latency_s:.3f}", f"{p.latency_s:.3f}", f"{self.speedup['latency']:.3f}x"),
            ("peak memory MiB", mib(d.peak_memory_bytes), mib(p.peak_memory_bytes), ""),
        ]
        c = self.config
        lines = markdown_table(["", "dense", "pruned", "pruned vs dense"], rows, spaced_rule=True)
        lines += [
            "",
            f"batch {c.batch_size}, prompt {c.prompt_len}, new tokens {c.new_tokens}"
            f"{f', {self.dtype}' if self.dtype else ''}; "
            f"median of {c.repeats} after {c.warmup} warm-up; {self.device} ({self.hardware})",
            f"timer: {self.timer}; memory: {self.memory_method}",
        ]
        return "\n".join(lines)
