"""Run a model block by block, over any subset of its blocks, without copying weights.

The search evaluates thousands of masks; each is the same model with some blocks
skipped. Rather than re-implementing every architecture's forward, the runner lets the
model's own forward run once per batch with the blocks replaced by recorders: that yields
the embeddings and exactly the arguments each block receives (rotary tables, the mask of
its layer type, ALiBi, position ids), which do not depend on the hidden states. Blocks are
then called directly with those arguments, and the modules the decoder applies after its
last block (final norm, projections) are found by watching the same forward.
Accelerate's device-map hooks stay in place, so blocks run on whatever device holds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..models.adapters import block_path, text_config

# Logit transforms some heads apply after ``lm_head``: config field -> function(logits, value).
LOGIT_TRANSFORMS = {
    "final_logit_softcapping": lambda x, cap: torch.tanh(x / cap) * cap,  # Gemma 2/3
    "logit_scale": lambda x, scale: x * scale,  # Cohere
    "logits_scaling": lambda x, scale: x / scale,  # Granite
}


class _Stop(Exception):
    """Raised to end the recording forward before the LM head does any work."""


@dataclass
class BlockContext:
    """Inputs of one batch: the embeddings and the per-block call arguments."""

    hidden: torch.Tensor  # input of block 0
    args: list[tuple]  # positional arguments after the hidden state, per block
    kwargs: list[dict[str, Any]]  # keyword arguments, per block
    tuple_output: bool  # whether blocks return (hidden, ...) rather than a tensor


class BlockRunner:
    """Embeddings, any subset of blocks, final norm and head, for one transformers causal LM."""

    def __init__(self, model: torch.nn.Module, *, chunk_tokens: int | None = None):
        self.model = model
        self.blocks = model.get_submodule(block_path(model))
        self.decoder = model.get_submodule(block_path(model).rpartition(".")[0])
        self.head = model.get_output_embeddings()
        config = text_config(model)
        self.transforms = [
            (fn, getattr(config, name)) for name, fn in LOGIT_TRANSFORMS.items() if getattr(config, name, None)
        ]
        # Positions per cross-entropy chunk: float32 logits stay near 256 MiB, whatever the batch and vocabulary.
        self.chunk_tokens = chunk_tokens or max(1, (256 << 20) // (4 * config.vocab_size))
        self.tail: list[torch.nn.Module] = []

    def __len__(self) -> int:
        return len(self.blocks)

    @torch.no_grad()
    def prepare(self, input_ids: torch.Tensor) -> BlockContext:
        """Run the model's forward with recording blocks; returns block 0's input and every block's arguments."""
        n = len(self.blocks)
        args: list[tuple] = [()] * n
        kwargs: list[dict] = [{}] * n
        state: dict[str, Any] = {}
        order: list[torch.nn.Module] = []

        def recorder(index: int):
            def forward(hidden, *a, **kw):
                args[index], kwargs[index] = a, kw
                if index == 0:
                    state["hidden"] = hidden
                    out = original[0](hidden, *a, **kw)  # one real call tells the output structure
                    state["tuple"] = isinstance(out, tuple)
                    order.clear()  # decoder children seen from here on run after the blocks
                return (hidden,) if state["tuple"] else hidden

            return forward

        def seen(module, _inputs, _output):
            order.append(module)

        def stop(*_):
            raise _Stop

        original = [block.forward for block in self.blocks]
        saved = [block.__dict__.get("forward") for block in self.blocks]
        hooks = [child.register_forward_hook(seen) for child in self.decoder.children() if child is not self.blocks]
        hooks.append(self.head.register_forward_pre_hook(stop))
        try:
            for i, block in enumerate(self.blocks):
                block.forward = recorder(i)
            try:
                self.model(input_ids=input_ids, use_cache=False)
            except _Stop:
                pass
        finally:
            for block, forward in zip(self.blocks, saved):
                if forward is None:
                    del block.forward
                else:
                    block.forward = forward
            for hook in hooks:
                hook.remove()
        self.tail = list(order)
        return BlockContext(state["hidden"], args, kwargs, state["tuple"])

    def block(self, index: int, hidden: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        out = self.blocks[index](hidden, *ctx.args[index], **ctx.kwargs[index])
        return out[0] if ctx.tuple_output else out

    @torch.no_grad()
    def run(
        self, ctx: BlockContext, blocks: Sequence[int] | None = None, hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden state after the given blocks in order (all blocks by default), from ``hidden`` or the embeddings."""
        hidden = ctx.hidden if hidden is None else hidden
        for index in range(len(self.blocks)) if blocks is None else blocks:
            hidden = self.block(index, hidden, ctx)
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm (and whatever else the decoder applies after its blocks), head and logit transforms."""
        for module in self.tail:
            hidden = module(hidden)
        logits = self.head(hidden)
        for fn, value in self.transforms:
            logits = fn(logits, value)
        return logits

    def _head_chunks(self, hidden: torch.Tensor, input_ids: torch.Tensor):
        """(float32 logits, targets) over the predicted positions of every sequence, flattened in order
        and cut into ``chunk_tokens`` rows whatever the batch, so float32 logits stay near 256 MiB.
        A caller may stack many short sequences (the search: one per mask) so that the head's
        weights are read once per chunk rather than once per sequence: on a CPU that halves its cost."""
        states = hidden[:, :-1].reshape(1, -1, hidden.shape[-1])
        targets = input_ids[:, 1:].reshape(-1)
        for start in range(0, targets.numel(), self.chunk_tokens):
            logits = self.logits(states[:, start : start + self.chunk_tokens]).float()[0]
            yield logits, targets[start : start + self.chunk_tokens].to(logits.device)

    @torch.no_grad()
    def nll(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed next-token NLL over the batch (float64 accumulator), and the number of predicted tokens.

        One chunk sums exactly as a plain loop's ``cross_entropy(..., reduction="sum")`` does. The sum stays
        on the head's device until the end: a copy to the CPU per chunk would make a GPU wait for Python at
        every one of them (256 of 262k-vocabulary positions a chunk)."""
        sums = (
            torch.stack(
                [
                    F.cross_entropy(logits, targets, reduction="sum")
                    for logits, targets in self._head_chunks(hidden, input_ids)
                ]
            )
            .double()
            .cpu()
        )
        total = torch.zeros((), dtype=torch.float64)
        for value in sums:  # in chunk order, as the numbers were always summed
            total += value
        return total, input_ids.shape[0] * (input_ids.shape[1] - 1)

    @torch.no_grad()
    def nll_rows(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Summed next-token NLL of each sequence of the batch, float64 on the CPU (one copy, as in ``nll``)."""
        losses = [
            F.cross_entropy(logits, targets, reduction="none")
            for logits, targets in self._head_chunks(hidden, input_ids)
        ]
        return torch.cat(losses).double().cpu().view(input_ids.shape[0], -1).sum(1)

    def reference_chunks(self, dense: torch.Tensor) -> list[tuple[int, int]]:
        """Position ranges ``[start, end)`` over the predicted positions of ``dense`` ([batch, seq, hidden]) in
        which :meth:`kl_rows` takes its reference log-probabilities, ``chunk_tokens`` positions each."""
        positions = dense.shape[0] * (dense.shape[1] - 1)
        return [(start, min(start + self.chunk_tokens, positions)) for start in range(0, positions, self.chunk_tokens)]

    @torch.no_grad()
    def log_probs(self, dense: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """float32 next-token log-probabilities at predicted positions ``[start, end)`` of ``dense``'s batch."""
        states = dense[:, :-1].reshape(-1, dense.shape[-1])[start:end]
        return F.log_softmax(self.logits(states[None]).float()[0], dim=-1)

    @torch.no_grad()
    def kl_rows(self, hidden: torch.Tensor, dense: torch.Tensor, reference=None) -> torch.Tensor:
        """Summed KL(dense || pruned) of the next-token distributions, per sequence of ``hidden``.

        ``hidden`` stacks the final states of one or more masks over the same batch whose dense final states are
        ``dense``; row ``r`` of ``hidden`` is compared with row ``r % len(dense)``. The dense log-probabilities
        are taken chunk by chunk from ``reference(i)`` (a cache of :meth:`log_probs`) or computed here: they
        are the same for every mask, so a caller that keeps them pays for the dense head once per batch, and
        one that cannot afford the memory (Gemma 3's 262k vocabulary) recomputes them exactly. Each KL term
        is float32 like the loss; sums are float64 on the CPU, one copy per call."""
        rows, width = dense.shape[0], dense.shape[1] - 1
        copies = hidden.shape[0] // rows
        states = hidden[:, :-1].reshape(copies, rows * width, hidden.shape[-1])
        per_call = max(1, self.chunk_tokens // max(1, min(self.chunk_tokens, rows * width)))  # masks per head call
        sums = []
        for i, (start, end) in enumerate(self.reference_chunks(dense)):
            target = reference(i) if reference is not None else self.log_probs(dense, start, end)
            for first in range(0, copies, per_call):
                chunk = states[first : first + per_call, start:end]
                pruned = F.log_softmax(self.logits(chunk.reshape(1, -1, chunk.shape[-1])).float()[0], dim=-1)
                kl = F.kl_div(
                    pruned.view(len(chunk), end - start, -1),
                    target.to(pruned.device),
                    log_target=True,
                    reduction="none",
                ).sum(-1)
                sums.append((first, start, kl))
        total = torch.zeros(copies, rows * width, dtype=torch.float64, device=hidden.device)
        for first, start, kl in sums:
            total[first : first + kl.shape[0], start : start + kl.shape[1]] = kl.double().to(total.device)
        return total.cpu().view(copies, rows, width).sum(2).view(-1)
