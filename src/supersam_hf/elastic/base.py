"""What every elastic rule provides, and the state-dict names the rules share.

A rule maps one elastic kind of a `SubnetPlan` (see `search_space.SearchSpace.layer_plan`) onto the weights of a
SAM image encoder, in all four places that need it:

* `activate(model, plan)`: the forward view: set the attributes the elastic modules read (None = the full model);
* `export_config(config, plan)`: the edits it makes to the exported `SamConfig` (`{"vision_config": {...}}`);
* `export_state(state, config, plan)`: the plain-SAM tensors it writes (a state dict in, a state dict out);
* the permutation prioritization applies (a module-level function of the rule's module, where the kind has one);
* its share of the parameter and MAC cost of the exported checkpoint (see `costs.subnet_macs` / `subnet_params`).

Nothing outside `elastic/` slices weights for a subnet.
"""

from __future__ import annotations

from typing import Any

import torch

ENCODER = "vision_encoder."
LAYERS = "vision_encoder.layers."

StateDict = dict[str, torch.Tensor]


def layer_key(index: int, name: str) -> str:
    """State-dict key of tensor `name` (e.g. "mlp.lin1.weight") of encoder layer `index`."""
    return f"{LAYERS}{index}.{name}"


def split_layer_key(key: str) -> tuple[int, str] | None:
    """(layer index, name inside the layer) of an encoder-layer key, None for any other key."""
    if not key.startswith(LAYERS):
        return None
    index, rest = key[len(LAYERS) :].split(".", 1)
    return int(index), rest


class ElasticRule:
    """Base of the rules: every hook defaults to "this kind changes nothing"."""

    name = "rule"

    def activate(self, model, plan) -> None:
        """Make `model`'s forward run this kind of `plan` (None: the full model)."""

    def export_config(self, config, plan) -> dict[str, dict[str, Any]]:
        """Overrides of the exported `SamConfig`'s sub-configs, e.g. {"vision_config": {"mlp_dim": 768}}."""
        return {}

    def export_state(self, state: StateDict, config, plan) -> StateDict:
        """The state dict with this kind applied (tensors keep the supernet's layer indices until depth's rule)."""
        return state
