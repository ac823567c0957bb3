"""Elastic depth: the kept encoder layers (`SubnetPlan.kept_layers`); a dropped layer is not run at all.

Forward view: `ElasticSamVisionLayer.active` (the encoder skips inactive layers). Export: the kept layers'
tensors, renumbered 0..n-1, with each layer's attention kind kept (`global_attn_indexes` remapped).
Prioritization measures layer importance into drop probabilities (a search-space setting); no weight moves, so
this kind has no permutation. Cost: the sum of the kept layers' costs, each at its own attention kind.
"""

from __future__ import annotations

import torch
from transformers.models.sam.modeling_sam import SamVisionLayer

from .base import ElasticRule, StateDict, layer_key, split_layer_key
from .embedding import ELASTIC_ATTENTION_CLASSES, ElasticLayerNorm
from .mlp import ElasticSamMLPBlock


class ElasticSamVisionLayer(SamVisionLayer):
    """SAM's encoder layer with elastic MLP width and embedding width; `active` False marks a dropped layer
    (the encoder skips it; called directly it passes its input through)."""

    def __init__(self, config, window_size):
        super().__init__(config, window_size)
        self.layer_norm1 = ElasticLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = ELASTIC_ATTENTION_CLASSES[type(self.attn)](config, window_size)
        self.layer_norm2 = ElasticLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ElasticSamMLPBlock(config)
        self.active = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return hidden_states
        return super().forward(hidden_states)


class DepthRule(ElasticRule):
    """Which encoder layers run (and are exported)."""

    name = "depth"

    def activate(self, model, plan) -> None:
        for i, layer in enumerate(model.vision_encoder.layers):
            layer.active = plan is None or plan[i] is not None

    def export_config(self, config, plan) -> dict:
        global_layers = set(config.vision_config.global_attn_indexes)
        kept = plan.kept_layers
        return {
            "vision_config": {
                "num_hidden_layers": len(kept),
                "global_attn_indexes": [j for j, i in enumerate(kept) if i in global_layers],
            }
        }

    def export_state(self, state: StateDict, config, plan) -> StateDict:
        """Drops the other layers' tensors and renumbers the kept ones (run last: the other rules index layers as
        the supernet does)."""
        new_index = {i: j for j, i in enumerate(plan.kept_layers)}
        out = {}
        for key, tensor in state.items():
            layer = split_layer_key(key)
            if layer is None:
                out[key] = tensor
            elif layer[0] in new_index:
                out[layer_key(new_index[layer[0]], layer[1])] = tensor
        return out

    @staticmethod
    def layers(vision) -> list[bool]:
        """Per layer of an exported checkpoint, whether its attention is global (the kept layers, in order)."""
        return [j in vision.global_attn_indexes for j in range(vision.num_hidden_layers)]


DEPTH = DepthRule()

__all__ = ["DEPTH", "DepthRule", "ElasticSamVisionLayer"]
