"""One rule per elastic kind: how a `SubnetPlan` maps onto the weights of a SAM image encoder.

`depth` (the kept layer list), `mlp` (per-layer MLP width), `embedding` (channels + heads) and `resolution`
(input size, position tables) each own, for a subnet: the forward view (`activate`), the edits to the exported `SamConfig` (`export_config`), the plain-SAM
tensors export writes (`export_state`), the permutation prioritization applies, and their share of the parameter
and MAC cost (summed by `costs.subnet_params` / `costs.subnet_macs`). `modeling_supersam`, `prioritization` and
`costs` call these; nothing else slices weights for a subnet. A new elastic dimension is one new rule here plus
its field in `SubnetConfig` / `SearchSpace`.
"""

from __future__ import annotations

from transformers import SamConfig

from .base import ElasticRule, StateDict
from .depth import DEPTH, DepthRule
from .embedding import EMBEDDING, EmbeddingRule
from .mlp import MLP, MlpRule
from .resolution import RESOLUTION, ResolutionRule

# Export order matters: depth renumbers the layers, so it runs after the rules that index them as the supernet does.
RULES: tuple[ElasticRule, ...] = (EMBEDDING, MLP, RESOLUTION, DEPTH)


def activate(model, plan) -> None:
    """Set every rule's forward view of `plan` on the supernet `model` (None: the full model)."""
    for rule in RULES:
        rule.activate(model, plan)


def export_sam_config(config, plan) -> SamConfig:
    """The `SamConfig` of a subnet's exported checkpoint: kept layers (attention kinds kept, `global_attn_indexes`
    remapped), `mlp_dim` = the widest kept MLP width (narrower layers are zero-padded), `hidden_size` = the kept
    embedding width and `num_attention_heads` = the kept heads (head size unchanged), `image_size` (encoder and
    prompt encoder) = the subnet's input resolution."""
    overrides: dict[str, dict] = {}
    for rule in RULES:
        for section, values in rule.export_config(config, plan).items():
            overrides.setdefault(section, {}).update(values)
    sam_config = config.to_sam_config(overrides.get("prompt_encoder_config"), **overrides.get("vision_config", {}))
    sam_config._attn_implementation = config._attn_implementation
    return sam_config


def export_state(state: StateDict, config, plan) -> StateDict:
    """The supernet's state dict `state` cut to the subnet `plan`, with the exported checkpoint's keys."""
    for rule in RULES:
        state = rule.export_state(state, config, plan)
    return state


__all__ = [
    "DEPTH",
    "EMBEDDING",
    "MLP",
    "RESOLUTION",
    "RULES",
    "DepthRule",
    "ElasticRule",
    "EmbeddingRule",
    "MlpRule",
    "ResolutionRule",
    "activate",
    "export_sam_config",
    "export_state",
]
