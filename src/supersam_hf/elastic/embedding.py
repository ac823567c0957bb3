"""Elastic embedding width: the whole encoder on its leading `hidden_size` channels and, in every attention, its
leading `hidden_size / head_dim` heads (the head size stays; `SubnetPlan.hidden_size` / `num_heads`).

Forward view: only the patch embedding is told the width (`active_hidden_size`); every module after it reads the
width from its input's channels (the last dimension), so a narrow subnet's tensors flow through the same code as the
full model's. Export: every encoder tensor cut to the kept channels and heads. Prioritization: one channel
permutation through the encoder and one head permutation per attention (`permute_embedding_channels`,
`permute_attention_heads`). Cost: patch embedding, `pos_embed`, LayerNorms, attention and the neck at that width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam.modeling_sam import (
    SamPatchEmbeddings,
    SamVisionAttention,
    SamVisionNeck,
    SamVisionSdpaAttention,
)

from ..costs import attention_macs, neck_macs, patch_embed_macs
from ..fast_rel_pos import decomposed_rel_pos
from .base import ENCODER, ElasticRule, StateDict, split_layer_key

# -- forward view ------------------------------------------------------------------------------------------------


def linear_blocks(module: nn.Module, hidden_states: torch.Tensor, starts: tuple[int, ...], size: int) -> list[torch.Tensor]:
    """Outputs `[start : start + size]` (for each start) of a linear layer whose input holds only its first
    `hidden_states.shape[-1]` features (the others read as zero).

    A plain `nn.Linear` computes them from views of its weight: no copies, and gradients reach only the slices. A
    wrapped layer (e.g. a PEFT LoRA layer, whose adapter must take part) runs whole on the zero-padded input,
    which gives the same numbers.
    """
    h = hidden_states.shape[-1]
    if isinstance(module, nn.Linear):
        bias = module.bias
        return [
            F.linear(hidden_states, module.weight[s : s + size, :h], None if bias is None else bias[s : s + size])
            for s in starts
        ]
    output = module(F.pad(hidden_states, (0, module.in_features - h)))
    return [output[..., s : s + size] for s in starts]


class ElasticSamPatchEmbeddings(SamPatchEmbeddings):
    """SAM's patch embedding that can write only the first `active_hidden_size` channels (None = all) and accepts
    images of `active_image_size` pixels (the resolution rule's; None = the configured size)."""

    def __init__(self, config):
        super().__init__(config)
        self.active_hidden_size: int | None = None
        self.active_image_size: int | None = None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.active_hidden_size
        conv = self.projection
        if (h is None or h == conv.out_channels) and self.active_image_size is None:
            return super().forward(pixel_values)
        size = tuple(self.image_size) if self.active_image_size is None else (self.active_image_size,) * 2
        if pixel_values.shape[1] != self.num_channels or tuple(pixel_values.shape[2:]) != size:
            return super().forward(pixel_values)  # the parent raises its own clear error
        bias = conv.bias[:h] if conv.bias is not None else None  # [:None]: every channel
        embeddings = F.conv2d(pixel_values, conv.weight[:h], bias, stride=conv.stride, padding=conv.padding)
        return embeddings.permute(0, 2, 3, 1)


class ElasticLayerNorm(nn.LayerNorm):
    """A LayerNorm over the leading channels its input has: weight/bias views [:h], statistics over those h
    channels only (AutoFormer's choice for elastic embedding widths)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = hidden_states.shape[-1]
        if h == self.normalized_shape[-1]:
            return super().forward(hidden_states)
        weight = self.weight[:h] if self.weight is not None else None
        bias = self.bias[:h] if self.bias is not None else None
        return F.layer_norm(hidden_states, (h,), weight, bias, self.eps)


class _ElasticAttentionMixin:
    """Runs SAM's vision attention on the leading `h / head_dim` heads when its input has only `h` channels.

    `qkv.weight` is laid out q | k | v, each block `hidden_size` rows of `num_attention_heads` head blocks; a narrow
    subnet uses, in each of the three blocks, the first `heads * head_dim` rows and the first `h` columns (three
    views, three products), and `proj.weight[:h, :heads * head_dim]`. The relative-position tables are indexed by
    head size, so they are used whole.
    """

    # SAM's bias in one pass (the same numbers as transformers' `get_decomposed_rel_pos`, without its two copies)
    get_decomposed_rel_pos = decomposed_rel_pos

    def forward(self, hidden_states: torch.Tensor, output_attentions=None):
        full = self.qkv.in_features
        h = hidden_states.shape[-1]
        if h == full:
            return super().forward(hidden_states, output_attentions)
        batch_size, height, width, _ = hidden_states.shape
        head_dim = full // self.num_attention_heads
        heads, inner = h // head_dim, (h // head_dim) * head_dim
        query, key, value = (
            block.reshape(batch_size, height * width, heads, head_dim).transpose(1, 2)
            for block in linear_blocks(self.qkv, hidden_states, (0, full, 2 * full), inner)
        )  # each (batch, heads, tokens, head_dim)
        attn_bias = None
        if self.use_rel_pos:
            flat_query = query.reshape(batch_size * heads, height * width, head_dim)
            rel = self.get_decomposed_rel_pos(flat_query, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width))
            attn_bias = rel.reshape(batch_size, heads, height * width, height * width)
        if isinstance(self, SamVisionSdpaAttention):
            attn_output = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_bias)
            attn_weights = None
        else:
            attn_weights = (query * self.scale) @ key.transpose(-2, -1)
            if attn_bias is not None:
                attn_weights = attn_weights + attn_bias
            attn_weights = F.softmax(attn_weights, dtype=torch.float32, dim=-1).to(query.dtype)
            attn_probs = F.dropout(attn_weights, p=self.dropout, training=self.training)
            attn_output = attn_probs @ value
            # SAM's eager attention returns weights as (batch * heads, tokens, tokens).
            attn_weights = attn_weights.reshape(batch_size * heads, height * width, height * width)
        attn_output = attn_output.reshape(batch_size, heads, height, width, head_dim).permute(0, 2, 3, 1, 4)
        attn_output = attn_output.reshape(batch_size, height, width, inner)
        (attn_output,) = linear_blocks(self.proj, attn_output, (0,), h)
        return attn_output, attn_weights


class ElasticSamVisionAttention(_ElasticAttentionMixin, SamVisionAttention):
    """SAM's eager vision attention with elastic heads."""


class ElasticSamVisionSdpaAttention(_ElasticAttentionMixin, SamVisionSdpaAttention):
    """SAM's SDPA vision attention with elastic heads."""


ELASTIC_ATTENTION_CLASSES = {
    SamVisionAttention: ElasticSamVisionAttention,
    SamVisionSdpaAttention: ElasticSamVisionSdpaAttention,
}


class ElasticSamVisionNeck(SamVisionNeck):
    """SAM's neck reading only the channels its input has (`conv1.weight[:, :h]`)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = hidden_states.shape[-1]
        if h == self.conv1.in_channels:
            return super().forward(hidden_states)
        hidden_states = hidden_states.permute(0, 3, 1, 2)
        hidden_states = F.conv2d(hidden_states, self.conv1.weight[:, :h], self.conv1.bias)
        hidden_states = self.layer_norm1(hidden_states)
        hidden_states = self.conv2(hidden_states)
        return self.layer_norm2(hidden_states)


def pos_embed_view(pos_embed: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
    """The absolute position embedding's leading channels, as many as `hidden_states` has (a view)."""
    return pos_embed[..., : hidden_states.shape[-1]]


# -- prioritization's permutations ---------------------------------------------------------------------------------


@torch.no_grad()
def permute_embedding_channels(encoder, order: torch.Tensor) -> None:
    """Reorder the residual channels of a SAM image encoder in place: new channel k is old channel `order[k]`, in
    the patch embedding, `pos_embed`, every LayerNorm, every `qkv` (input columns), `proj` and MLP `lin2` (output
    rows), MLP `lin1` (input columns) and the neck's first conv (input channels). Exact: LayerNorm and every
    product are equivariant to a consistent permutation. Parameters keep their identity."""

    def take(param: torch.Tensor | None, dim: int) -> None:
        if param is not None:
            param.copy_(param.index_select(dim, order.to(param.device)))

    take(encoder.patch_embed.projection.weight, 0)
    take(encoder.patch_embed.projection.bias, 0)
    if encoder.pos_embed is not None:
        take(encoder.pos_embed, encoder.pos_embed.dim() - 1)
    for layer in encoder.layers:
        for norm in (layer.layer_norm1, layer.layer_norm2):
            take(norm.weight, 0)
            take(norm.bias, 0)
        take(layer.attn.qkv.weight, 1)
        take(layer.attn.proj.weight, 0)
        take(layer.attn.proj.bias, 0)
        take(layer.mlp.lin1.weight, 1)
        take(layer.mlp.lin2.weight, 0)
        take(layer.mlp.lin2.bias, 0)
    take(encoder.neck.conv1.weight, 1)


@torch.no_grad()
def permute_attention_heads(attn, order: torch.Tensor) -> None:
    """Reorder the heads of one SAM vision attention in place: new head k is old head `order[k]` (its rows in each
    of the q, k, v blocks of `qkv`, its input columns of `proj`). The relative-position tables are shared by all
    heads and stay as they are. Exact."""
    hidden = attn.proj.in_features
    head_dim = hidden // attn.num_attention_heads
    within = (order.cpu()[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)
    rows = torch.cat([within + block * hidden for block in range(3)]).to(attn.qkv.weight.device)
    attn.qkv.weight.copy_(attn.qkv.weight[rows])
    if attn.qkv.bias is not None:
        attn.qkv.bias.copy_(attn.qkv.bias[rows])
    attn.proj.weight.copy_(attn.proj.weight[:, within.to(attn.proj.weight.device)])


# -- export ----------------------------------------------------------------------------------------------------------


def _keep_qkv(tensor: torch.Tensor, inner: int | None) -> torch.Tensor:
    """The q, k and v blocks' first `inner` rows of a fused qkv weight (3 * hidden, ...) or bias (3 * hidden,)."""
    blocks = tensor.reshape(3, tensor.shape[0] // 3, *tensor.shape[1:])[:, :inner]
    return blocks.reshape(3 * blocks.shape[1], *tensor.shape[1:])


# Per tensor: how its kept-channel copy is cut from the supernet's (h = the kept width).
_LAYER_SLICES = {
    "layer_norm1.weight": lambda t, h: t[:h],
    "layer_norm1.bias": lambda t, h: t[:h],
    "layer_norm2.weight": lambda t, h: t[:h],
    "layer_norm2.bias": lambda t, h: t[:h],
    "attn.qkv.weight": lambda t, h: _keep_qkv(t[:, :h], h),
    "attn.qkv.bias": lambda t, h: _keep_qkv(t, h),
    "attn.proj.weight": lambda t, h: t[:h, :h],
    "attn.proj.bias": lambda t, h: t[:h],
    "mlp.lin1.weight": lambda t, h: t[:, :h],  # input channels; the MLP rule cuts the hidden units
    "mlp.lin2.weight": lambda t, h: t[:h],
    "mlp.lin2.bias": lambda t, h: t[:h],
}
_ENCODER_SLICES = {
    "patch_embed.projection.weight": lambda t, h: t[:h],
    "patch_embed.projection.bias": lambda t, h: t[:h],
    "pos_embed": lambda t, h: t[..., :h],
    "neck.conv1.weight": lambda t, h: t[:, :h],
}


class EmbeddingRule(ElasticRule):
    """Embedding width + heads (uniform across layers, so it exports exactly: fewer heads of the same size)."""

    name = "embedding"

    def activate(self, model, plan) -> None:
        model.vision_encoder.patch_embed.active_hidden_size = None if plan is None else plan.hidden_size

    def export_config(self, config, plan) -> dict:
        if plan.hidden_size is None:
            return {}
        return {"vision_config": {"hidden_size": plan.hidden_size, "num_attention_heads": plan.num_heads}}

    def export_state(self, state: StateDict, config, plan) -> StateDict:
        h = plan.hidden_size  # None: the full width ([:None] keeps everything)
        out = {}
        for key, tensor in state.items():
            layer = split_layer_key(key)
            if layer is not None:
                cut = _LAYER_SLICES.get(layer[1])
            else:
                cut = _ENCODER_SLICES.get(key[len(ENCODER) :]) if key.startswith(ENCODER) else None
            out[key] = tensor if cut is None else cut(tensor, h)
        return out

    # -- cost, in the exported checkpoint's config (`vision` = its vision_config) --------------------------------
    @staticmethod
    def stem_macs(vision) -> int:
        """Patch embedding and neck."""
        return patch_embed_macs(vision) + neck_macs(vision)

    @staticmethod
    def layer_macs(vision, global_attn: bool) -> int:
        """One layer's attention (qkv, products, relative positions, proj), windowed or global."""
        return attention_macs(vision, 0 if global_attn else vision.window_size)

    @staticmethod
    def stem_params(vision) -> int:
        """Patch embedding, `pos_embed` and the neck."""
        h, out = vision.hidden_size, vision.output_channels
        grid = vision.image_size // vision.patch_size
        patch = h * vision.num_channels * vision.patch_size**2 + h
        pos = grid * grid * h if vision.use_abs_pos else 0
        return patch + pos + out * h + 2 * out + 9 * out * out + 2 * out

    @staticmethod
    def layer_params(vision, global_attn: bool) -> int:
        """One layer's LayerNorms, qkv, proj and relative-position tables (global ones span the token grid)."""
        h = vision.hidden_size
        head_dim = h // vision.num_attention_heads
        qkv = 3 * h * h + (3 * h if vision.qkv_bias else 0)
        rel = 0
        if vision.use_rel_pos:
            size = vision.image_size // vision.patch_size if global_attn or vision.window_size == 0 else vision.window_size
            rel = 2 * (2 * size - 1) * head_dim
        return 4 * h + qkv + h * h + h + rel


EMBEDDING = EmbeddingRule()

__all__ = [
    "EMBEDDING",
    "ELASTIC_ATTENTION_CLASSES",
    "ElasticLayerNorm",
    "ElasticSamPatchEmbeddings",
    "ElasticSamVisionAttention",
    "ElasticSamVisionNeck",
    "ElasticSamVisionSdpaAttention",
    "EmbeddingRule",
    "linear_blocks",
    "permute_attention_heads",
    "permute_embedding_channels",
    "pos_embed_view",
]
