"""The image encoder's attention as it is exported: SAM's decomposed relative-position bias folded into the
query · key product, for the layers where that is faster in ONNX Runtime.

SAM's vision attention adds a bias to its logits: for query i and key j = (row a, column c) of the token grid,
``rel_h[i, a] + rel_w[i, c]``, where ``rel_h = q · R_h`` and ``rel_w = q · R_w`` (`SamVisionAttention.
get_decomposed_rel_pos`). Traced as written, ONNX Runtime materialises that bias over every (query, key) pair in one
broadcast Add and adds it to the logits in a second: two memory-bound passes over the attention matrix, work the
MAC count does not see, which grows with the token count and dominated subnets with many narrow heads
(benchmarks/results/floor.md). The same logits come from one product of widened operands::

    q' = [q · scale, rel_h, rel_w]        k' = [k, onehot(row of j), onehot(column of j)]
    q' · k'ᵀ = scale · q · kᵀ + rel_h[i, a] + rel_w[i, c]

so the bias costs (h + w) more multiply-adds per logit inside the matrix product instead of two passes over the
matrix. Whether that pays depends on h + w against the head dimension; `fold_rel_pos` applies it where it was
measured faster (`FOLD_MAX_EXTRA_DIMS`) and leaves the other layers as transformers writes them. The maths is the
same up to float rounding (the ONNX parity tests hold it to 1e-5); only the exported graph changes, never the
checkpoint or the PyTorch model (the patch lives for the export only).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from transformers import SamModel

# Fold the bias into the product where a layer's token grid (h + w extra dimensions per query) adds at most this
# many dimensions: SAM's windowed layers (14 + 14) and global layers up to 48 x 48 tokens (768 px input at patch
# 16) were faster folded; the full-resolution global layers (64 + 64) were not (benchmarks/results/floor.md).
FOLD_MAX_EXTRA_DIMS = 96


def _folded_forward(self, hidden_states: torch.Tensor, output_attentions: bool = False, **kwargs):
    """SamVisionAttention's forward with the relative-position bias inside the query · key product (see the module
    docstring); returns (output, None) like the SDPA attention."""
    batch_size, height, width, _ = hidden_states.shape
    heads = self.num_attention_heads
    qkv = self.qkv(hidden_states).reshape(batch_size, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.reshape(3, batch_size * heads, height * width, -1).unbind(0)
    grid_query = query.reshape(batch_size * heads, height, width, -1)
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid_query, self.get_rel_pos(height, height, self.rel_pos_h))
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid_query, self.get_rel_pos(width, width, self.rel_pos_w))
    tokens = torch.arange(height * width, device=hidden_states.device)
    one_hot = torch.cat([(tokens[:, None] // width == torch.arange(height, device=tokens.device)[None]),
                         (tokens[:, None] % width == torch.arange(width, device=tokens.device)[None])], dim=1)
    query = torch.cat([query * self.scale, rel_h.reshape(batch_size * heads, height * width, height),
                       rel_w.reshape(batch_size * heads, height * width, width)], dim=-1)
    key = torch.cat([key, one_hot.to(key.dtype).expand(batch_size * heads, -1, -1)], dim=-1)
    probs = torch.softmax(query @ key.transpose(-2, -1), dim=-1)
    output = (probs @ value).reshape(batch_size, heads, height, width, -1).permute(0, 2, 3, 1, 4)
    return self.proj(output.reshape(batch_size, height, width, -1)), None


@contextlib.contextmanager
def fold_rel_pos(model: SamModel, max_extra_dims: int = FOLD_MAX_EXTRA_DIMS) -> Iterator[list[int]]:
    """While open, the encoder layers of `model` whose grid adds at most `max_extra_dims` (h + w) run the folded
    attention; yields their indices. The layers' own forwards are restored on exit, also after an error."""
    config = model.config.vision_config
    folded = []
    if config.use_rel_pos:
        grid = config.image_size // config.patch_size
        for index, layer in enumerate(model.vision_encoder.layers):
            if 2 * (layer.window_size or grid) <= max_extra_dims:  # the layer's window, or the whole grid (global)
                layer.attn.forward = types.MethodType(_folded_forward, layer.attn)
                folded.append(index)
    try:
        yield folded
    finally:
        for index in folded:
            del model.vision_encoder.layers[index].attn.forward
