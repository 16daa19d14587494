"""SliceGPT models (Ashkboos et al., ICLR 2024): Llama-family and OPT decoders whose residual stream
has been rotated by PCA and sliced to ``config.sliced_hidden_size`` channels.

evop-hub copies this file next to the weights of a SliceGPT model, and transformers loads it with
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``; it needs only torch and
transformers. Why the stock classes cannot load such a model:

- every block changes the basis of the residual stream (one PCA rotation per signal, as SliceGPT
  does), so both residual additions multiply the shortcut by a small matrix
  (``attn_shortcut``, ``mlp_shortcut``: Q_in^T Q_out restricted to the kept channels);
- norms are scale-free RMSNorms whose mean runs over the *original* width (their scales were
  folded into the next linears; OPT's LayerNorm became an RMSNorm once every writer to the
  residual stream was made mean-free), so they commute with the rotations;
- the LM head is untied from the embeddings (each is rotated by a different Q).

Attention and MLP internals keep their widths (``config.hidden_size`` is the original width).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaForCausalLM, OPTForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.opt.modeling_opt import OPTDecoderLayer


@dataclass(frozen=True)
class Layout:
    """Where the residual stream is read and written, by module name (blocks' names are relative to a block)."""

    blocks: str
    embeddings: tuple[str, ...]
    final_norm: str
    attn_norm: str
    mlp_norm: str
    attn_inputs: tuple[str, ...]
    attn_output: str
    mlp_inputs: tuple[str, ...]
    mlp_output: str
    head_bias: bool  # the final norm had a bias (LayerNorm), now folded into the head


LLAMA = Layout(
    blocks="model.layers",
    embeddings=("model.embed_tokens",),
    final_norm="model.norm",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    attn_inputs=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn_output="self_attn.o_proj",
    mlp_inputs=("mlp.gate_proj", "mlp.up_proj"),
    mlp_output="mlp.down_proj",
    head_bias=False,
)
OPT = Layout(
    blocks="model.decoder.layers",
    embeddings=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
    final_norm="model.decoder.final_layer_norm",
    attn_norm="self_attn_layer_norm",
    mlp_norm="final_layer_norm",
    attn_inputs=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn_output="self_attn.out_proj",
    mlp_inputs=("fc1",),
    mlp_output="fc2",
    head_bias=True,
)


class RMSN(nn.Module):
    """RMSNorm without scale, averaging over the original width ``width`` even once sliced (as SliceGPT's RMSN)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.width, self.eps = width, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        return (x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / self.width + self.eps)).to(dtype)


def norm_eps(config) -> float:
    """Llama's RMSNorm epsilon; OPT's LayerNorms use torch's default."""
    return getattr(config, "rms_norm_eps", 1e-5)


def set_weight(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Give a Linear or an Embedding parameters of another shape, keeping its size attributes true."""
    module.weight = nn.Parameter(weight)
    if isinstance(module, nn.Embedding):
        module.embedding_dim = weight.shape[1]
    else:
        module.out_features, module.in_features = weight.shape
    if bias is not None:
        module.bias = nn.Parameter(bias)


def replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _slice_block(block: nn.Module, layout: Layout, config) -> None:
    """Shapes of a sliced block; the weights come from the checkpoint."""
    width = config.sliced_hidden_size
    for name in (layout.attn_norm, layout.mlp_norm):
        replace(block, name, RMSN(config.hidden_size, norm_eps(config)))
    for name in layout.attn_inputs + layout.mlp_inputs:
        linear = block.get_submodule(name)
        set_weight(linear, linear.weight.new_empty(linear.out_features, width))
    for name in (layout.attn_output, layout.mlp_output):
        linear = block.get_submodule(name)
        bias = linear.bias.new_empty(width) if linear.bias is not None else None
        set_weight(linear, linear.weight.new_empty(width, linear.in_features), bias)
    block.attn_shortcut = nn.Linear(width, width, bias=False)
    block.mlp_shortcut = nn.Linear(width, width, bias=False)


class ShortcutBlock:
    """A pre-norm block whose residual additions change basis: x -> x S_attn + attn(x) -> y S_mlp + mlp(y)."""

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        mid = self.attn_shortcut(hidden_states) + self.attention(hidden_states, **kwargs)
        return self.mlp_shortcut(mid) + self.feed_forward(mid)


class SlicedLlamaDecoderLayer(ShortcutBlock, LlamaDecoderLayer):
    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        _slice_block(self, LLAMA, config)

    def attention(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)[0]

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.post_attention_layernorm(hidden_states))


class SlicedOPTDecoderLayer(ShortcutBlock, OPTDecoderLayer):
    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        _slice_block(self, OPT, config)

    def attention(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.self_attn(hidden_states=self.self_attn_layer_norm(hidden_states), **kwargs)[0]

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(hidden_states))))


class SlicedCausalLM:
    """The stock causal LM with sliced blocks, embeddings, head and a scale-free final norm."""

    layout: Layout
    block_class: type

    def __init__(self, config):
        super().__init__(config)
        width = config.sliced_hidden_size
        blocks = nn.ModuleList(self.block_class(config, i) for i in range(config.num_hidden_layers))
        replace(self, self.layout.blocks, blocks)
        for name in self.layout.embeddings:
            embedding = self.get_submodule(name)
            set_weight(embedding, embedding.weight.new_empty(embedding.num_embeddings, width))
        head = self.lm_head
        bias = head.weight.new_empty(head.out_features) if self.layout.head_bias else None
        set_weight(head, head.weight.new_empty(head.out_features, width), bias)
        replace(self, self.layout.final_norm, RMSN(config.hidden_size, norm_eps(config)))
        self.post_init()


class SlicedLlamaForCausalLM(SlicedCausalLM, LlamaForCausalLM):
    layout = LLAMA
    block_class = SlicedLlamaDecoderLayer
    _no_split_modules = ["SlicedLlamaDecoderLayer"]


class SlicedOPTForCausalLM(SlicedCausalLM, OPTForCausalLM):
    layout = OPT
    block_class = SlicedOPTDecoderLayer
    _no_split_modules = ["SlicedOPTDecoderLayer"]


# model_type -> SliceGPT class
SLICED_MODELS = {"llama": SlicedLlamaForCausalLM, "opt": SlicedOPTForCausalLM}
