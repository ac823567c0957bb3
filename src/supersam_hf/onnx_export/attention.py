"""The image encoder's attention as it is exported (`export_attention`): the same maths as transformers' SAM with
less work in ONNX Runtime. Two rewrites, both for the export only:

1. SAM's decomposed relative-position bias folded into the query · key product, for the layers where that is
   faster (below); on the other layers added to the logits by broadcasting, without materialising it first as
   transformers does for SDPA's mask.
2. Windowed layers skip the padding: transformers pads the token grid to whole windows (64 → 70 tokens a side at
   1024 px, 48 → 56 at 768, 32 → 42 at 512) and runs `qkv` and `proj` on the padded tokens too. A padded token's
   q, k, v are just qkv's bias, so `_windowed_layer_forward` runs `qkv` on the real tokens, gives the padding the
   bias, and runs `proj` after the padding is cropped; the window partition and the split into heads are one
   transpose for each of q, k and v. The MAC count (`costs.py`) still counts the padded tokens, the work PyTorch does.

SAM's vision attention adds a bias to its logits: for query i and key j = (row a, column c) of the token grid,
``rel_h[i, a] + rel_w[i, c]``, where ``rel_h = q · R_h`` and ``rel_w = q · R_w`` (`SamVisionAttention.
get_decomposed_rel_pos`). Traced as written, ONNX Runtime materialises that bias over every (query, key) pair in one
broadcast Add and adds it to the logits in a second: two memory-bound passes over the attention matrix, work the
MAC count does not see, which grows with the token count and dominated subnets with many narrow heads
(benchmarks/results/floor.md). The same logits come from one product of widened operands::

    q' = [q · scale, rel_h, rel_w]        k' = [k, onehot(row of j), onehot(column of j)]
    q' · k'ᵀ = scale · q · kᵀ + rel_h[i, a] + rel_w[i, c]

so the bias costs (h + w) more multiply-adds per logit inside the matrix product instead of two passes over the
matrix. Whether that pays depends on h + w against the head dimension; `export_attention` applies it where it was
measured faster (`FOLD_MAX_EXTRA_DIMS`) and adds the bias to the logits on the others. The maths is the
same up to float rounding (the ONNX parity tests hold it to 1e-5); only the exported graph changes, never the
checkpoint or the PyTorch model (the patch lives for the export only).
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers import SamModel

# Fold the bias into the product where a layer's token grid (h + w extra dimensions per query) adds at most this
# many dimensions: SAM's windowed layers (14 + 14) and global layers up to 32 x 32 tokens (512 px input at patch 16).
# Global layers of 48 x 48 tokens (768 px) and 64 x 64 (1024 px) run faster with the bias added to the logits.
# Measured block by block in ONNX Runtime, 2 threads (benchmarks/attention_fold.py, results/attention_fold.md):
# folded ÷ added 1.03-1.13 at 48 x 48 and 1.14-1.27 at 64 x 64 in all seven runs, 0.55-1.01 at 32 x 32, 0.79-1.01
# for a windowed layer.
FOLD_MAX_EXTRA_DIMS = 64


def folds_bias(side: int, max_extra_dims: int = FOLD_MAX_EXTRA_DIMS) -> bool:
    """Whether the export folds the bias of an attention over a `side` x `side` token grid (a window, or a global
    layer's whole grid) into the query · key product: the rule of `export_attention`."""
    return 2 * side <= max_extra_dims


def _attend(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, height: int, width: int,
            fold: bool) -> torch.Tensor:
    """softmax(scale · q · kᵀ + relative-position bias) · v for (batch · heads, height · width, head_dim) operands on
    a height x width grid: the bias folded into the product (`fold`, see the module docstring) or added as transformers
    adds it. `get_decomposed_rel_pos`'s two einsums are broadcast matrix products (faster in ONNX Runtime)."""
    if not attn.use_rel_pos:
        return torch.softmax((query * attn.scale) @ key.transpose(-2, -1), dim=-1) @ value
    rows, tokens = query.shape[0], height * width
    grid_query = query.reshape(rows, height, width, -1)
    rel_h = grid_query @ attn.get_rel_pos(height, height, attn.rel_pos_h).transpose(1, 2)  # (rows, h, w, h)
    rel_w = (grid_query.transpose(1, 2) @ attn.get_rel_pos(width, width, attn.rel_pos_w).transpose(1, 2))
    rel_w = rel_w.transpose(1, 2)  # (rows, h, w, w)
    if fold:
        index = torch.arange(tokens, device=query.device)
        one_hot = torch.cat([(index[:, None] // width == torch.arange(height, device=query.device)[None]),
                             (index[:, None] % width == torch.arange(width, device=query.device)[None])], dim=1)
        query = torch.cat([query * attn.scale, rel_h.reshape(rows, tokens, height),
                           rel_w.reshape(rows, tokens, width)], dim=-1)
        key = torch.cat([key, one_hot.to(key.dtype).expand(rows, -1, -1)], dim=-1)
        logits = query @ key.transpose(-2, -1)
    else:
        logits = ((query * attn.scale) @ key.transpose(-2, -1)).reshape(rows, height, width, height, width)
        logits = (logits + rel_h[..., None] + rel_w[:, :, :, None, :]).reshape(rows, tokens, tokens)
    return torch.softmax(logits, dim=-1) @ value


def _global_attention_forward(self, hidden_states: torch.Tensor, output_attentions: bool = False, fold: bool = True,
                              **kwargs):
    """SamVisionAttention's forward through `_attend`: the relative-position bias folded into the query · key product
    (`fold`) or added to the logits by broadcasting, without the (heads, tokens, tokens) bias tensor transformers
    materialises as SDPA's mask; returns (output, None) like the SDPA attention."""
    batch_size, height, width, _ = hidden_states.shape
    heads = self.num_attention_heads
    qkv = self.qkv(hidden_states).reshape(batch_size, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.reshape(3, batch_size * heads, height * width, -1).unbind(0)
    output = _attend(self, query, key, value, height, width, fold=fold)
    output = output.reshape(batch_size, heads, height, width, -1).permute(0, 2, 3, 1, 4)
    return self.proj(output.reshape(batch_size, height, width, -1)), None


def _windowed_layer_forward(self, hidden_states: torch.Tensor, fold: bool = True) -> torch.Tensor:
    """SamVisionLayer's forward for a windowed layer, the same maths with less work: transformers pads the token grid
    to whole windows and runs `qkv` and `proj` on the padding too (a padded token's q, k, v are qkv's bias); here
    `qkv` runs on the real tokens, the padding gets the bias, and `proj` runs after the padding is cropped. At
    768 / 512 px (48 / 32 tokens padded to 56 / 42) that is 36 % / 72 % fewer tokens through those two products.
    q, k and v are a product each (no split copy); window partition and the split into heads are one transpose for
    each, and so are their inverses for the output."""
    attn, size = self.attn, self.window_size
    residual = hidden_states
    hidden_states = self.layer_norm1(hidden_states)
    batch_size, height, width, channels = hidden_states.shape
    heads = attn.num_attention_heads
    pad_h, pad_w = (size - height % size) % size, (size - width % size) % size
    rows, cols = (height + pad_h) // size, (width + pad_w) // size
    biases = attn.qkv.bias.chunk(3) if attn.qkv.bias is not None else (None,) * 3
    operands = []
    for weight, bias in zip(attn.qkv.weight.chunk(3), biases):  # q, k, v: one product each (no split copy)
        part = F.pad(F.linear(hidden_states, weight), (0, 0, 0, pad_w, 0, pad_h))
        part = part + bias if bias is not None else part
        # (batch, rows, size, cols, size, heads, head_dim) → (batch, rows, cols, heads, size, size, head_dim)
        part = part.reshape(batch_size, rows, size, cols, size, heads, -1).permute(0, 1, 3, 5, 2, 4, 6)
        operands.append(part.reshape(batch_size * rows * cols * heads, size * size, -1))
    query, key, value = operands
    output = _attend(attn, query, key, value, size, size, fold)
    output = output.reshape(batch_size, rows, cols, heads, size, size, -1).permute(0, 1, 4, 2, 5, 3, 6)
    output = output.reshape(batch_size, rows * size, cols * size, channels)[:, :height, :width]
    hidden_states = residual + attn.proj(output)
    return hidden_states + self.mlp(self.layer_norm2(hidden_states))


@contextlib.contextmanager
def export_attention(model: SamModel, max_extra_dims: int = FOLD_MAX_EXTRA_DIMS) -> Iterator[list[int]]:
    """While open, the image encoder runs the attention written for export: every windowed layer runs
    `_windowed_layer_forward` (no work on the padding), every global layer `_global_attention_forward`, and the
    layers whose grid adds at most `max_extra_dims` (h + w: the window, or the whole grid for a global layer) fold
    the relative-position bias into the product, the others add it to the logits; yields the indices of the folded
    layers. The layers' own forwards are restored on exit, also after an error."""
    config = model.config.vision_config
    grid = config.image_size // config.patch_size
    folded, patched = [], []
    for index, layer in enumerate(model.vision_encoder.layers):
        fold = bool(config.use_rel_pos) and folds_bias(layer.window_size or grid, max_extra_dims)
        if layer.window_size > 0:
            layer.forward = types.MethodType(functools.partial(_windowed_layer_forward, fold=fold), layer)
            patched.append(layer)
        else:
            layer.attn.forward = types.MethodType(functools.partial(_global_attention_forward, fold=fold), layer.attn)
            patched.append(layer.attn)
        folded += [index] if fold else []
    try:
        yield folded
    finally:
        for module in patched:
            del module.forward
