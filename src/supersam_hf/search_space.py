"""Subnet descriptions and the space they are drawn from.

A `SubnetConfig` names which encoder layers are kept and how wide each kept layer's MLP is. A `SearchSpace` knows
which layers may be dropped, with what probability, and which widths each layer allows. `SearchSpace.layer_plan`
is the one place that maps a subnet onto the encoder's layers; forward, parameter counting and export all use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch


@dataclass(frozen=True)
class SubnetConfig:
    """One subnetwork: the kept encoder layers (sorted indices) and the MLP width of each, aligned with them."""

    kept_layers: tuple[int, ...]
    mlp_dims: tuple[int, ...]

    def __post_init__(self):
        # Accept lists (e.g. from JSON) but store tuples so the config stays hashable.
        object.__setattr__(self, "kept_layers", tuple(int(i) for i in self.kept_layers))
        object.__setattr__(self, "mlp_dims", tuple(int(d) for d in self.mlp_dims))

    @property
    def name(self) -> str:
        """Short readable name, e.g. `L10-w1536x4-w3072x6`: layer count then run-length encoded widths."""
        runs: list[list[int]] = []
        for d in self.mlp_dims:
            if runs and runs[-1][0] == d:
                runs[-1][1] += 1
            else:
                runs.append([d, 1])
        widths = "-".join(f"w{d}x{n}" if n > 1 else f"w{d}" for d, n in runs)
        return f"L{len(self.kept_layers)}-{widths}" if widths else f"L{len(self.kept_layers)}"

    def to_dict(self) -> dict:
        return {"kept_layers": list(self.kept_layers), "mlp_dims": list(self.mlp_dims)}

    @classmethod
    def from_dict(cls, data: dict) -> "SubnetConfig":
        missing = {"kept_layers", "mlp_dims"} - set(data)
        if missing:
            raise ValueError(f"Subnet JSON is missing {sorted(missing)}; expected keys 'kept_layers' and 'mlp_dims'.")
        return cls(kept_layers=data["kept_layers"], mlp_dims=data["mlp_dims"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "SubnetConfig":
        return cls.from_dict(json.loads(text))


class SearchSpace:
    """Elastic depth and width of a SAM image encoder.

    Args:
        num_layers: encoder layers of the full model.
        mlp_dim: full MLP hidden width.
        elastic_layers: layer indices that may be dropped.
        layer_drop_probs: drop probability of each elastic layer (aligned with `elastic_layers`), in [0, 1).
        mlp_dim_choices: allowed widths, one list per encoder layer.
        min_layers: no subnet keeps fewer layers than this.
    """

    def __init__(
        self,
        num_layers: int,
        mlp_dim: int,
        elastic_layers: Sequence[int],
        layer_drop_probs: Sequence[float],
        mlp_dim_choices: Sequence[Sequence[int]],
        min_layers: int,
    ):
        self.num_layers = int(num_layers)
        self.mlp_dim = int(mlp_dim)
        self.elastic_layers = tuple(int(i) for i in elastic_layers)
        self.layer_drop_probs = tuple(float(p) for p in layer_drop_probs)
        self.mlp_dim_choices = tuple(tuple(sorted(int(d) for d in c)) for c in mlp_dim_choices)
        self.min_layers = int(min_layers)
        check_search_space(
            self.num_layers, self.mlp_dim, self.elastic_layers, self.layer_drop_probs, self.mlp_dim_choices, self.min_layers
        )

    @classmethod
    def from_config(cls, config) -> "SearchSpace":
        """Build from a `SuperSamConfig`."""
        return cls(
            num_layers=config.vision_config.num_hidden_layers,
            mlp_dim=config.vision_config.mlp_dim,
            elastic_layers=config.elastic_layers,
            layer_drop_probs=config.layer_drop_probs,
            mlp_dim_choices=config.mlp_dim_choices,
            min_layers=config.min_layers,
        )

    # -- canonical subnets -------------------------------------------------------------------------------------
    def largest(self) -> SubnetConfig:
        kept = tuple(range(self.num_layers))
        return SubnetConfig(kept, tuple(self.mlp_dim_choices[i][-1] for i in kept))

    def smallest(self) -> SubnetConfig:
        """Fewest layers (the most droppable go first) at the narrowest width of each."""
        droppable = self.num_layers - self.min_layers
        by_drop_prob = sorted(zip(self.layer_drop_probs, self.elastic_layers), key=lambda pi: (-pi[0], pi[1]))
        dropped = {i for _, i in by_drop_prob[: max(0, droppable)]}
        kept = tuple(i for i in range(self.num_layers) if i not in dropped)
        return SubnetConfig(kept, tuple(self.mlp_dim_choices[i][0] for i in kept))

    def sample(self, generator: torch.Generator | None = None) -> SubnetConfig:
        """Drop each elastic layer with its probability, then draw each kept layer's width uniformly.

        If the draw leaves fewer than `min_layers`, dropped layers are restored (in random order) until it does not.
        """
        draws = torch.rand(len(self.elastic_layers), generator=generator).tolist()
        dropped = [i for i, p, u in zip(self.elastic_layers, self.layer_drop_probs, draws) if u < p]
        shortfall = self.min_layers - (self.num_layers - len(dropped))
        if shortfall > 0:
            order = torch.randperm(len(dropped), generator=generator).tolist()
            restored = {dropped[j] for j in order[:shortfall]}
            dropped = [i for i in dropped if i not in restored]
        kept = tuple(i for i in range(self.num_layers) if i not in set(dropped))
        dims = []
        for i in kept:
            choices = self.mlp_dim_choices[i]
            dims.append(choices[int(torch.randint(len(choices), (1,), generator=generator))])
        return SubnetConfig(kept, tuple(dims))

    def uniform(self, width_fraction: float, kept_layers: Iterable[int] | None = None) -> SubnetConfig:
        """All kept layers at the allowed width closest to `width_fraction` of `mlp_dim` (a handy hand-made subnet)."""
        kept = tuple(range(self.num_layers)) if kept_layers is None else tuple(kept_layers)
        target = width_fraction * self.mlp_dim
        dims = tuple(min(self.mlp_dim_choices[i], key=lambda d: (abs(d - target), -d)) for i in kept)
        cfg = SubnetConfig(kept, dims)
        self.validate(cfg)
        return cfg

    # -- checks ------------------------------------------------------------------------------------------------
    def validate(self, cfg: SubnetConfig) -> None:
        """Raise `ValueError` naming the offending field if `cfg` is not a member of this space."""
        kept = cfg.kept_layers
        for i in kept:
            if not 0 <= i < self.num_layers:
                raise ValueError(f"kept_layers: layer index {i} is out of range; the encoder has layers 0..{self.num_layers - 1}.")
        if list(kept) != sorted(set(kept)):
            raise ValueError(f"kept_layers must be sorted and without duplicates, got {list(kept)}.")
        fixed_dropped = [i for i in range(self.num_layers) if i not in kept and i not in self.elastic_layers]
        if fixed_dropped:
            raise ValueError(
                f"kept_layers drops layer(s) {fixed_dropped}, which are not elastic; droppable layers are {list(self.elastic_layers)}."
            )
        if len(kept) < self.min_layers:
            raise ValueError(f"kept_layers keeps {len(kept)} layer(s); this search space needs at least min_layers={self.min_layers}.")
        if len(cfg.mlp_dims) != len(kept):
            raise ValueError(
                f"mlp_dims has {len(cfg.mlp_dims)} entries but kept_layers has {len(kept)}; give one width per kept layer."
            )
        for i, d in zip(kept, cfg.mlp_dims):
            if d <= 0 or d > self.mlp_dim:
                raise ValueError(f"mlp_dims: width {d} for layer {i} must be in 1..{self.mlp_dim} (the full mlp_dim).")
            if d not in self.mlp_dim_choices[i]:
                raise ValueError(f"mlp_dims: width {d} for layer {i} is not among its choices {list(self.mlp_dim_choices[i])}.")

    def layer_plan(self, cfg: SubnetConfig) -> list[int | None]:
        """Per encoder layer: its MLP width if kept, None if dropped. The single subnet → weights mapping."""
        self.validate(cfg)
        widths: list[int | None] = [None] * self.num_layers
        for i, d in zip(cfg.kept_layers, cfg.mlp_dims):
            widths[i] = d
        return widths

    def to_dict(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "mlp_dim": self.mlp_dim,
            "elastic_layers": list(self.elastic_layers),
            "layer_drop_probs": list(self.layer_drop_probs),
            "mlp_dim_choices": [list(c) for c in self.mlp_dim_choices],
            "min_layers": self.min_layers,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SearchSpace":
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "SearchSpace":
        return cls.from_dict(json.loads(text))

    def __eq__(self, other) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SearchSpace({self.to_dict()})"


def check_search_space(num_layers, mlp_dim, elastic_layers, layer_drop_probs, mlp_dim_choices, min_layers) -> None:
    """Validate a search-space description; shared by `SearchSpace` and `SuperSamConfig`."""
    for i in elastic_layers:
        if not 0 <= i < num_layers:
            raise ValueError(f"elastic_layers: layer index {i} is out of range; the encoder has layers 0..{num_layers - 1}.")
    if len(set(elastic_layers)) != len(elastic_layers):
        raise ValueError(f"elastic_layers has duplicates: {list(elastic_layers)}.")
    if len(layer_drop_probs) != len(elastic_layers):
        raise ValueError(
            f"layer_drop_probs has {len(layer_drop_probs)} entries but there are {len(elastic_layers)} elastic layers; "
            "give one probability per elastic layer."
        )
    for i, p in zip(elastic_layers, layer_drop_probs):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"layer_drop_probs: probability {p} for layer {i} is outside [0, 1).")
    if len(mlp_dim_choices) != num_layers:
        raise ValueError(f"mlp_dim_choices has {len(mlp_dim_choices)} entries; give one list of widths per encoder layer ({num_layers}).")
    for i, choices in enumerate(mlp_dim_choices):
        if not choices:
            raise ValueError(f"mlp_dim_choices: layer {i} has no allowed width.")
        for d in choices:
            if d <= 0 or d > mlp_dim:
                raise ValueError(f"mlp_dim_choices: width {d} for layer {i} must be in 1..{mlp_dim} (the full mlp_dim).")
    if not 1 <= min_layers <= num_layers:
        raise ValueError(f"min_layers={min_layers} must be between 1 and the number of layers ({num_layers}).")
