"""SliceGPT (Ashkboos et al., ICLR 2024): delete rows and columns of every weight matrix by slicing
the residual stream to its top principal directions.

Steps, as the paper's ``rotate_and_slice_sequential``:

1. Fold every norm's scale (and LayerNorm's bias) into the linears that read it; for OPT first make
   every writer to the residual stream (embeddings, attention out_proj, fc2) mean-free, so its
   LayerNorms equal scale-free RMSNorms. Such norms commute with orthogonal rotations.
2. Block by block on the calibration set: PCA (eigenvectors of X^T X, uncentered) of the block's
   input, of the stream after attention and of the block's output; rotate the linears reading and
   writing each signal by its Q and keep the top ``width`` directions. The residual shortcuts then
   carry ``Q_in^T Q_out`` (sliced) matrices. Each block sees the already sliced model's activations.
3. Rotate the head by the last Q (untied from the embeddings, which use the first).

With every direction kept (``sparsity=0``) the model computes the same function as the dense one.

The PCA needs far more calibration text than block search: fitted on a few thousand tokens it
matches those tokens (their loss can even fall below the dense model's) while held-out
perplexity rises; SmolLM2-135M at 25 %, fitted on 8 x 256 WikiText-2 tokens: fitted-set NLL
3.351 -> 3.333, held-out 3.568 -> 4.327. The paper calibrated on 1024 x 2048 tokens.

The result is a ``modeling_slicegpt`` model: saved with that file, it loads with
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` (``--trust-remote-code`` for
evop-hub's ``ppl``, ``tasks`` and ``speed``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import EvopError
from ..models import LoadedModel, count_parameters, text_config
from ..progress import bar
from ..scoring import BlockRunner
from .modeling_slicegpt import SLICED_MODELS, Layout, set_weight


@dataclass
class SliceGPTConfig:
    sparsity: float = 0.25  # fraction of the residual stream's channels removed (the paper's tables: 0.2-0.3)
    round_to: int = 8  # kept width rounded down to a multiple of this, as SliceGPT does (tensor-core friendly)
    batch_size: int = 1  # calibration samples per forward
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise EvopError(
                f"slicegpt --sparsity is the fraction of hidden channels removed, in [0, 1); got {self.sparsity}"
            )


def settings(sparsity: float | None, pattern: str | None, batch_size: int, progress: bool) -> SliceGPTConfig:
    """What ``evop-hub prune --method slicegpt`` asks for, checked before any model loads."""
    if pattern:
        raise EvopError("--pattern is Wanda's N:M sparsity; slicegpt removes whole channels, drop --pattern")
    return SliceGPTConfig(
        SliceGPTConfig.sparsity if sparsity is None else sparsity, batch_size=batch_size, progress=progress
    )


def sliced_width(hidden_size: int, config: SliceGPTConfig) -> int:
    width = int((1 - config.sparsity) * hidden_size)
    width -= width % config.round_to
    if width < 1:
        raise EvopError(f"--sparsity {config.sparsity} leaves no channel of {hidden_size}; choose a smaller one")
    return width


def _check(model: nn.Module) -> type:
    config = text_config(model)
    if config.model_type not in SLICED_MODELS:
        raise EvopError(
            f"slicegpt supports {', '.join(SLICED_MODELS)} models, not {config.model_type!r}; "
            "use --method wanda or a block-search method for this model"
        )
    if config.model_type == "opt" and (
        not config.do_layer_norm_before or config.word_embed_proj_dim != config.hidden_size or not config.enable_bias
    ):
        raise EvopError("slicegpt supports pre-norm OPT models with biases and no embedding projection (not opt-350m)")
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1 or torch.device("meta") in devices:
        raise EvopError("slicegpt needs the whole model on one device; drop --device-map/--max-memory/--offload-folder")
    return SLICED_MODELS[config.model_type]


def _fold(norm: nn.Module, linears: list[nn.Linear]) -> None:
    """``linear(norm(x))`` with the norm's scale and shift moved into the linear."""
    scale = norm.weight.double() if getattr(norm, "weight", None) is not None else 1.0
    shift = getattr(norm, "bias", None)
    for linear in linears:
        weight = linear.weight.double()
        bias = linear.bias.double() if linear.bias is not None else None
        if shift is not None:
            bias = (0 if bias is None else bias) + weight @ shift.double()
        dtype = linear.weight.dtype
        set_weight(linear, (weight * scale).to(dtype), None if bias is None else bias.to(dtype))


def _center(module: nn.Module) -> None:
    """Make what ``module`` writes into the residual stream mean-free over channels (OPT's LayerNorm then equals RMSNorm)."""
    weight = module.weight.double()
    if isinstance(module, nn.Embedding):
        set_weight(module, (weight - weight.mean(1, keepdim=True)).to(module.weight.dtype))
        return
    bias = module.bias.double() - module.bias.double().mean() if module.bias is not None else None
    set_weight(
        module,
        (weight - weight.mean(0, keepdim=True)).to(module.weight.dtype),
        None if bias is None else bias.to(module.weight.dtype),
    )


def fuse(model: nn.Module) -> nn.Module:
    """The model as a full-width ``modeling_slicegpt`` model: norms folded, head untied. Same function as ``model``.

    Takes over ``model``'s tensors (no copy); ``model`` must not be used afterwards.
    """
    from accelerate import init_empty_weights

    cls = _check(model)
    layout: Layout = cls.layout
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach().clone())  # untie: embeddings and head get different rotations
    blocks = model.get_submodule(layout.blocks)
    if layout.head_bias:  # OPT
        for name in layout.embeddings:
            _center(model.get_submodule(name))
        for block in blocks:
            for name in (layout.attn_output, layout.mlp_output):
                _center(block.get_submodule(name))
    for block in blocks:
        _fold(block.get_submodule(layout.attn_norm), [block.get_submodule(n) for n in layout.attn_inputs])
        _fold(block.get_submodule(layout.mlp_norm), [block.get_submodule(n) for n in layout.mlp_inputs])
    _fold(model.get_submodule(layout.final_norm), [head])

    config = copy.deepcopy(model.config)
    config.sliced_hidden_size = config.hidden_size
    config.tie_word_embeddings = False
    config.architectures = [cls.__name__]
    with init_empty_weights(include_buffers=False):
        fused = cls(config)
    for block in fused.get_submodule(layout.blocks):
        block.attn_shortcut = nn.Identity()  # until the block is rotated
        block.mlp_shortcut = nn.Identity()
    norms = {f"{layout.blocks}.{i}.{n}" for i in range(len(blocks)) for n in (layout.attn_norm, layout.mlp_norm)}
    norms.add(layout.final_norm)
    state = {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] not in norms}
    result = fused.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"fusing went wrong: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    fused.generation_config = model.generation_config
    return fused.to(next(model.parameters()).device).eval()


def _principal_directions(signals: list[torch.Tensor]) -> torch.Tensor:
    """Eigenvectors of sum X^T X over all calibration tokens, by decreasing eigenvalue (float64)."""
    cov = None
    for x in signals:
        x = x.reshape(-1, x.shape[-1]).double()
        cov = x.T @ x if cov is None else cov + x.T @ x
    values, vectors = torch.linalg.eigh(cov)
    return vectors[:, values.argsort(descending=True)]


def _rotate_inputs(linear: nn.Module, q: torch.Tensor) -> None:
    """A module reading the stream (Linear: columns; Embedding: its output) now sees it in basis ``q``."""
    set_weight(linear, (linear.weight.double() @ q).to(linear.weight.dtype))


def _rotate_output(linear: nn.Linear, q: torch.Tensor) -> None:
    dtype = linear.weight.dtype
    bias = None if linear.bias is None else (linear.bias.double() @ q).to(dtype)
    set_weight(linear, (q.T @ linear.weight.double()).to(dtype), bias)


def _shortcut(q_in: torch.Tensor, q_out: torch.Tensor, dtype: torch.dtype) -> nn.Linear:
    """The residual path from basis ``q_in`` to ``q_out``: x -> x Q_in^T Q_out."""
    matrix = q_in.T @ q_out
    linear = nn.Linear(*matrix.shape, bias=False, device=matrix.device, dtype=dtype)
    linear.weight = nn.Parameter((matrix.T).to(dtype))
    return linear


def _in_basis(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return x.float() @ q.float()


@torch.no_grad()
def slicegpt(model: nn.Module, input_ids: torch.Tensor, config: SliceGPTConfig | None = None) -> nn.Module:
    """The sliced model (a new module built on ``model``'s tensors; ``model`` must not be used afterwards)."""
    config = config or SliceGPTConfig()
    width = sliced_width(text_config(model).hidden_size, config)
    sliced = fuse(model)
    layout: Layout = sliced.layout
    device, dtype = sliced.lm_head.weight.device, sliced.lm_head.weight.dtype
    runner = BlockRunner(sliced)
    contexts = [runner.prepare(batch.to(device)) for batch in input_ids.split(config.batch_size)]
    q_in = _principal_directions([ctx.hidden for ctx in contexts])[:, :width]
    for name in layout.embeddings:
        _rotate_inputs(sliced.get_submodule(name), q_in)
    hidden = [_in_basis(ctx.hidden, q_in).to(dtype) for ctx in contexts]
    for ctx in contexts:
        ctx.hidden = None  # only the sliced stream is needed from here on
    blocks = sliced.get_submodule(layout.blocks)
    for i, block in enumerate(bar(blocks, desc="slicegpt", unit="block", disable=not config.progress)):
        for name in layout.attn_inputs:
            _rotate_inputs(block.get_submodule(name), q_in)
        # The stream after attention, in the original basis: shortcut back out of q_in, attention not yet rotated.
        # Signals are kept in the model's dtype (as SliceGPT does) so that three of them fit next to a 7B model.
        mids = [
            (_in_basis(x, q_in.T) + block.attention(x, **ctx.kwargs[i]).float()).to(dtype)
            for x, ctx in zip(hidden, contexts)
        ]
        q_mid = _principal_directions(mids)[:, :width]
        _rotate_output(block.get_submodule(layout.attn_output), q_mid)
        block.attn_shortcut = _shortcut(q_in, q_mid, dtype)
        mids = [_in_basis(m, q_mid).to(dtype) for m in mids]
        for name in layout.mlp_inputs:
            _rotate_inputs(block.get_submodule(name), q_mid)
        outputs = [(_in_basis(m, q_mid.T) + block.feed_forward(m).float()).to(dtype) for m in mids]
        q_out = _principal_directions(outputs)[:, :width]
        _rotate_output(block.get_submodule(layout.mlp_output), q_out)
        block.mlp_shortcut = _shortcut(q_mid, q_out, dtype)
        hidden = [_in_basis(o, q_out).to(dtype) for o in outputs]
        q_in = q_out
    _rotate_inputs(sliced.lm_head, q_in)
    sliced.config.sliced_hidden_size = width
    return sliced


def run(loaded: LoadedModel, input_ids: torch.Tensor, config: SliceGPTConfig) -> dict[str, Any]:
    """``evop-hub prune --method slicegpt``: replace ``loaded``'s model by its sliced version; the record's details."""
    hidden = text_config(loaded.model).hidden_size
    loaded.model = slicegpt(loaded.model, input_ids, config)
    type(loaded.model).register_for_auto_class("AutoModelForCausalLM")  # save_pretrained copies modeling_slicegpt.py
    width = loaded.model.config.sliced_hidden_size
    record = loaded.record
    record.architecture = type(loaded.model).__name__
    record.sparsity = 1 - width / hidden
    record.sparsity_unit = "hidden channels (residual stream)"
    record.parameters_after = count_parameters(loaded.model)
    return {
        "hidden_size": hidden,
        "sliced_hidden_size": width,
        "format": (
            "custom transformers code (modeling_slicegpt.py, shipped in this directory): load with "
            "AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True), or pass --trust-remote-code to evop-hub"
        ),
        "summary": f"slicegpt: residual stream sliced from {hidden} to {width} channels "
        "(parameter count includes the shortcut matrices)",
    }
