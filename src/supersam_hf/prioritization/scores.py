"""Scores from the recorded statistics, and the orders and depth settings decided from them.

The permutations themselves are the elastic rules' (`elastic.mlp.permute_mlp_neurons`,
`elastic.embedding.permute_attention_heads` / `permute_embedding_channels`); this module only decides the orders.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from ..elastic.embedding import permute_attention_heads, permute_embedding_channels
from ..elastic.mlp import permute_mlp_neurons
from ..errors import SupersamError
from ..search_space import check_search_space
from .recorders import EmbeddingRecorder, MlpNormRecorder
from .report import EmbeddingOrder

_TINY = torch.finfo(torch.float64).tiny


# -- MLP neurons (elastic width) -------------------------------------------------------------------------------------
def neuron_scores(mlp, input_norm: torch.Tensor, hidden_norm: torch.Tensor, input_weight: float = 0.5) -> torch.Tensor:
    """Importance of each hidden neuron j of an encoder MLP (float64, sums to 1 over the layer).

    `score_in[j]  = sum_i |W1[j, i]| * ||X_i||`  (Wanda on `lin1`: how strongly the data drive neuron j),
    `score_out[j] = sum_o |W2[o, j]| * ||H_j||`  (Wanda on `lin2`: how much neuron j writes into the residual),
    `score[j] = (score_in[j] / sum(score_in) + score_out[j] / sum(score_out)) / 2`  (sums over the layer's neurons).

    Each side is divided by its own sum before averaging because the two live on unrelated scales (input features
    after LayerNorm vs. GELU activations, summed over `hidden_size` vs. `hidden_size` outputs with different weight
    norms); raw sums would let whichever side is larger decide alone. Sum normalisation is scale-free and keeps
    each side's ratios between neurons, so the result is an equal-weight mixture of two importance distributions.
    `input_weight` (default 0.5, the equal mixture) exists for ablations: 0 = output side only, 1 = input side only.
    """
    w1 = mlp.lin1.weight.detach().float()
    w2 = mlp.lin2.weight.detach().float()
    score_in = (w1.abs() @ input_norm.to(w1.device).float()).double()
    score_out = (w2.abs().sum(dim=0) * hidden_norm.to(w2.device).float()).double()
    score_in, score_out = score_in / score_in.sum().clamp_min(_TINY), score_out / score_out.sum().clamp_min(_TINY)
    return input_weight * score_in + (1.0 - input_weight) * score_out


def _score_summary(scores: torch.Tensor, order: torch.Tensor) -> dict[str, float]:
    ranked = scores[order]
    top = ranked[: math.ceil(len(ranked) / 2)].sum()
    return {
        "min": float(scores.min()),
        "median": float(scores.median()),
        "max": float(scores.max()),
        "top_half_fraction": float(top / ranked.sum().clamp_min(_TINY)),
        "moved_fraction": float((order != torch.arange(len(order))).double().mean()),
    }


def _descending(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, descending=True, stable=True).indices


def order_mlp_neurons(layers: list, recorder: MlpNormRecorder, reorder: bool) -> tuple[list[dict[str, float]], list[list[int]]]:
    """Score every encoder MLP's hidden neurons from the recorded norms (`neuron_scores`), order them most
    important first and, if `reorder`, permute them in place. Returns per layer the score summary and the order."""
    summaries, permutations = [], []
    for i, layer in enumerate(layers):
        input_norm, hidden_norm = recorder.norms(i)
        scores = neuron_scores(layer.mlp, input_norm, hidden_norm).cpu()
        order = _descending(scores)
        if reorder:
            permute_mlp_neurons(layer.mlp, order)
        summaries.append(_score_summary(scores, order))
        permutations.append(order.tolist())
    return summaries, permutations


# -- embedding channels and attention heads (elastic embedding width) ------------------------------------------------
def embedding_channel_scores(norm_abs_sums: list[torch.Tensor]) -> torch.Tensor:
    """Importance of each residual channel (float64, sums to 1): every LayerNorm's per-channel |output| sums are
    divided by their own total (so no layer dominates by scale alone), then averaged over the LayerNorms."""
    stacked = torch.stack([s.double().cpu() for s in norm_abs_sums])
    return (stacked / stacked.sum(dim=1, keepdim=True).clamp_min(_TINY)).mean(dim=0)


def attention_head_scores(attn_output_sq: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Importance of each head of one layer: the L2 norm of its output (its `head_dim` channels of the proj input)."""
    return attn_output_sq.double().cpu().reshape(num_heads, -1).sum(dim=1).sqrt()


def reorder_embedding(model, pixel_batches: Iterable[torch.Tensor], apply: bool = True) -> EmbeddingOrder:
    """Measure embedding-channel and head importance of `model`'s full encoder on `pixel_batches` (preprocessed
    `pixel_values`, on the model's device and dtype) and, if `apply`, permute both most important first, so that
    a narrower embedding width keeps the most important channels and heads. Exact at full width.

    Runs the full model under `torch.no_grad`; the caller sets eval mode and the full subnet (as `prioritize` does,
    which records the same statistics during its own calibration pass and calls `embedding_order_from`).
    """
    recorder = EmbeddingRecorder(model.vision_encoder.layers)
    with torch.no_grad(), recorder.recording():
        for pixel_values in pixel_batches:
            model.get_image_embeddings(pixel_values)
    return embedding_order_from(model, recorder, apply=apply)


def embedding_order_from(model, recorder: EmbeddingRecorder, apply: bool = True) -> EmbeddingOrder:
    """The channel and head orders from a filled `EmbeddingRecorder`, applied to `model` if `apply`."""
    encoder = model.vision_encoder
    layers = list(encoder.layers)
    if not recorder.attn_sq:
        raise SupersamError("reorder_embedding got no calibration batch; pass at least one batch of pixel_values.")
    channel_scores = embedding_channel_scores([recorder.norm_abs[key] for key in sorted(recorder.norm_abs)])
    channel_order = _descending(channel_scores)
    head_scores = [attention_head_scores(recorder.attn_sq[i], layer.attn.num_attention_heads) for i, layer in enumerate(layers)]
    head_orders = [_descending(scores) for scores in head_scores]
    if apply:
        # Heads first: their indices are output rows of qkv / input columns of proj, which the channel order
        # (qkv input columns, proj output rows) does not touch, so the two permutations commute.
        for layer, order in zip(layers, head_orders):
            permute_attention_heads(layer.attn, order)
        permute_embedding_channels(encoder, channel_order)
    return EmbeddingOrder(
        channel_order=channel_order.tolist(),
        head_orders=[order.tolist() for order in head_orders],
        channel_scores=channel_scores.tolist(),
        head_scores=[scores.tolist() for scores in head_scores],
    )


# -- encoder layers (elastic depth) ----------------------------------------------------------------------------------
def drop_probabilities(importance: list[float], elastic_layers: list[int], max_drop_prob: float) -> list[float]:
    """Drop probability of each elastic layer from measured layer importance.

    `p_i = max_drop_prob * (I_max - I_i) / (I_max - I_min)`, with min and max over *all* encoder layers: the
    importance is min-max normalised, so the cheapest layer to remove gets `max_drop_prob`, a layer as costly as
    the most important one would get 0, and the layers in between get probabilities proportional to where their
    cost sits in the measured range (magnitudes count, not just ranks). The result is monotone non-increasing in
    importance and lies in [0, max_drop_prob] (< 1). Unlike `max_drop_prob * (1 - I_i / I_max)` it cannot collapse
    to near-zero probabilities when all layers cost about the same, which would leave elastic depth almost never
    sampled. If every layer costs the same, every elastic layer gets `max_drop_prob`.
    """
    if not elastic_layers:
        return []
    low, high = min(importance), max(importance)
    probs = []
    for i in elastic_layers:
        p = max_drop_prob if high <= low else max_drop_prob * (high - importance[i]) / (high - low)
        probs.append(float(min(max_drop_prob, max(0.0, p))))
    return probs


def set_elastic_depth(config, importance: list[float], candidates: list[int], num_elastic_layers: int,
                      max_drop_prob: float) -> list[float]:
    """Write the depth search space into `config`: the `num_elastic_layers` least important candidates become
    elastic (ties: lower index first) with `drop_probabilities`, `min_layers` = the rest (at least 1), checked
    first. Returns `importance` (per layer, mean removal cost)."""
    num_layers = len(importance)
    by_importance = sorted(candidates, key=lambda i: (importance[i], i))
    elastic = sorted(by_importance[:num_elastic_layers])
    probs = drop_probabilities(importance, elastic, max_drop_prob)
    min_layers = max(1, num_layers - num_elastic_layers)
    check_search_space(num_layers, config.vision_config.mlp_dim, elastic, probs, config.mlp_dim_choices, min_layers)
    config.elastic_layers, config.layer_drop_probs, config.min_layers = elastic, probs, min_layers
    return importance
