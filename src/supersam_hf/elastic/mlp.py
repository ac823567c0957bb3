"""Elastic MLP width: each kept encoder layer's MLP runs on a prefix of its (importance-ordered) hidden neurons
(`SubnetPlan[i]`, the layer's width).

Forward view: `ElasticSamMLPBlock.active_dim` (views `lin1.weight[:d]`, `lin1.bias[:d]`, `lin2.weight[:, :d]`).
Export: those slices, zero-padded to the widest kept layer (a `SamConfig` has one `mlp_dim`; zero neurons add
nothing). Prioritization: `permute_mlp_neurons`. Cost: `lin1` + `lin2` at the exported (padded) width.
"""

from __future__ import annotations

import torch
from transformers.models.sam.modeling_sam import SamMLPBlock

from ..costs import mlp_macs
from .base import ElasticRule, StateDict, split_layer_key
from .embedding import linear_blocks


class ElasticSamMLPBlock(SamMLPBlock):
    """SAM's encoder MLP on the first `active_dim` hidden neurons (None = all) and on its input's channels."""

    def __init__(self, config):
        super().__init__(config)
        self.active_dim: int | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        d = self.active_dim if self.active_dim is not None else self.lin1.out_features
        h = hidden_states.shape[-1]
        if d == self.lin1.out_features and h == self.lin1.in_features:
            return super().forward(hidden_states)
        # Prefix slices are views: the subnet shares (and trains) exactly these rows/columns.
        (hidden_states,) = linear_blocks(self.lin1, hidden_states, (0,), d)
        hidden_states = self.act(hidden_states)
        (hidden_states,) = linear_blocks(self.lin2, hidden_states, (0,), h)
        return hidden_states


@torch.no_grad()
def permute_mlp_neurons(mlp, order: torch.Tensor) -> None:
    """Reorder an MLP's hidden neurons in place: new neuron k is old neuron `order[k]` (rows and bias of `lin1`,
    columns of `lin2`). Exact: the MLP computes the same function. Parameters keep their identity (optimisers and
    tied references stay valid)."""
    order = order.to(mlp.lin1.weight.device)
    mlp.lin1.weight.copy_(mlp.lin1.weight[order])
    if mlp.lin1.bias is not None:
        mlp.lin1.bias.copy_(mlp.lin1.bias[order])
    mlp.lin2.weight.copy_(mlp.lin2.weight[:, order])


def _padded(tensor: torch.Tensor, keep: int, width: int, dim: int) -> torch.Tensor:
    """`tensor`'s first `keep` entries along `dim`, zero-padded to `width` there."""
    shape = list(tensor.shape)
    shape[dim] = width
    out = tensor.new_zeros(shape)
    out.narrow(dim, 0, keep).copy_(tensor.narrow(dim, 0, keep))
    return out


_HIDDEN_DIM = {"mlp.lin1.weight": 0, "mlp.lin1.bias": 0, "mlp.lin2.weight": 1}  # where the hidden units lie


class MlpRule(ElasticRule):
    """Per-layer MLP width (a prefix of the neurons)."""

    name = "mlp"

    def activate(self, model, plan) -> None:
        for i, layer in enumerate(model.vision_encoder.layers):
            layer.mlp.active_dim = None if plan is None else plan[i]

    @staticmethod
    def export_width(plan) -> int:
        """The exported `mlp_dim`: the widest kept layer's width."""
        return max(w for w in plan if w is not None)

    def export_config(self, config, plan) -> dict:
        return {"vision_config": {"mlp_dim": self.export_width(plan)}}

    def export_state(self, state: StateDict, config, plan) -> StateDict:
        width = self.export_width(plan)
        out = {}
        for key, tensor in state.items():
            layer = split_layer_key(key)
            if layer is not None and layer[1] in _HIDDEN_DIM and plan[layer[0]] is not None:
                tensor = _padded(tensor, plan[layer[0]], width, _HIDDEN_DIM[layer[1]])
            out[key] = tensor
        return out

    # -- cost, in the exported checkpoint's config ---------------------------------------------------------------
    @staticmethod
    def layer_macs(vision) -> int:
        """`lin1` + `lin2` over the (unpadded) token grid at the exported width."""
        return mlp_macs(vision)

    @staticmethod
    def layer_params(vision) -> int:
        h, d = vision.hidden_size, vision.mlp_dim
        return h * d + d + d * h + h


MLP = MlpRule()

__all__ = ["MLP", "ElasticSamMLPBlock", "MlpRule", "permute_mlp_neurons"]
