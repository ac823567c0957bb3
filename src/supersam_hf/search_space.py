"""The space subnets are drawn from.

A `SearchSpace` knows which encoder layers may be dropped, with what probability, and which MLP widths, embedding
widths (whole attention heads, uniform across layers) and input resolutions are allowed. `SearchSpace.layer_plan`
validates a subnet (`SubnetConfig`, in `subnet.py`, importable from here) and resolves it into a `SubnetPlan`; the
rules in `elastic/` (one per elastic kind) map that plan onto the weights for forward, export, prioritization and
costs.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

import torch

from .errors import SupersamError
from .subnet import SubnetConfig, SubnetPlan


class SearchSpace:
    """Elastic depth, MLP width, embedding width and input resolution of a SAM image encoder.

    Args:
        num_layers: encoder layers of the full model.
        mlp_dim: full MLP hidden width.
        elastic_layers: layer indices that may be dropped.
        layer_drop_probs: drop probability of each elastic layer (aligned with `elastic_layers`), in [0, 1).
        mlp_dim_choices: allowed widths, one list per encoder layer.
        min_layers: no subnet keeps fewer layers than this.
        hidden_size: full embedding width of the encoder (None: the space has no width dimension).
        num_attention_heads: attention heads of the full encoder; the head size is `hidden_size / heads`.
        hidden_size_choices: allowed embedding widths, multiples of the head size, the full width among them
            (default: the full width only).
        image_size: full input resolution of the supernet (None: the space has no resolution dimension).
        image_size_choices: allowed input resolutions, the full one among them (default: the full one only).
    """

    def __init__(
        self,
        num_layers: int,
        mlp_dim: int,
        elastic_layers: Sequence[int],
        layer_drop_probs: Sequence[float],
        mlp_dim_choices: Sequence[Sequence[int]],
        min_layers: int,
        hidden_size: int | None = None,
        num_attention_heads: int | None = None,
        hidden_size_choices: Sequence[int] | None = None,
        image_size: int | None = None,
        image_size_choices: Sequence[int] | None = None,
    ):
        self.num_layers = int(num_layers)
        self.mlp_dim = int(mlp_dim)
        self.elastic_layers = tuple(int(i) for i in elastic_layers)
        self.layer_drop_probs = tuple(float(p) for p in layer_drop_probs)
        self.mlp_dim_choices = tuple(tuple(sorted(int(d) for d in c)) for c in mlp_dim_choices)
        self.min_layers = int(min_layers)
        self.hidden_size = None if hidden_size is None else int(hidden_size)
        self.num_attention_heads = None if num_attention_heads is None else int(num_attention_heads)
        if hidden_size_choices is None:
            hidden_size_choices = () if self.hidden_size is None else (self.hidden_size,)
        self.hidden_size_choices = tuple(sorted(int(h) for h in hidden_size_choices))
        self.image_size = None if image_size is None else int(image_size)
        if image_size_choices is None:
            image_size_choices = () if self.image_size is None else (self.image_size,)
        self.image_size_choices = tuple(sorted(int(s) for s in image_size_choices))
        check_search_space(
            self.num_layers, self.mlp_dim, self.elastic_layers, self.layer_drop_probs, self.mlp_dim_choices,
            self.min_layers, self.hidden_size, self.num_attention_heads, self.hidden_size_choices,
        )
        check_image_size_choices(self.image_size, self.image_size_choices)

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
            hidden_size=config.vision_config.hidden_size,
            num_attention_heads=config.vision_config.num_attention_heads,
            hidden_size_choices=config.hidden_size_choices,
            image_size=config.vision_config.image_size,
            image_size_choices=config.image_size_choices,
        )

    @property
    def head_dim(self) -> int | None:
        """Channels per attention head (the unit of the embedding width); None without a width dimension."""
        if self.hidden_size is None or not self.num_attention_heads:
            return None
        return self.hidden_size // self.num_attention_heads

    def canonical(self, cfg: SubnetConfig) -> SubnetConfig:
        """`cfg` with an explicit full embedding width or resolution written as None (the form `largest`/`sample`
        produce), so equal subnets compare and hash equal."""
        hidden = None if cfg.hidden_size is not None and cfg.hidden_size == self.hidden_size else cfg.hidden_size
        image = None if cfg.image_size is not None and cfg.image_size == self.image_size else cfg.image_size
        if (hidden, image) != (cfg.hidden_size, cfg.image_size):
            return SubnetConfig(cfg.kept_layers, cfg.mlp_dims, hidden, image)
        return cfg

    # -- canonical subnets -------------------------------------------------------------------------------------
    def largest(self) -> SubnetConfig:
        kept = tuple(range(self.num_layers))
        return self._with_width(kept, tuple(self.mlp_dim_choices[i][-1] for i in kept), self._widest())

    def smallest(self) -> SubnetConfig:
        """Fewest layers (the most droppable go first) at the narrowest MLP width of each, the narrowest
        embedding width and the smallest input resolution."""
        droppable = self.num_layers - self.min_layers
        by_drop_prob = sorted(zip(self.layer_drop_probs, self.elastic_layers), key=lambda pi: (-pi[0], pi[1]))
        dropped = {i for _, i in by_drop_prob[: max(0, droppable)]}
        return self.narrowest(tuple(i for i in range(self.num_layers) if i not in dropped))

    def narrowest(self, kept_layers: Iterable[int] | None = None) -> SubnetConfig:
        """`kept_layers` (default: all) each at its narrowest MLP width, at the narrowest embedding width and the
        smallest input resolution."""
        kept = tuple(range(self.num_layers)) if kept_layers is None else tuple(kept_layers)
        narrowest = self.hidden_size_choices[0] if self.hidden_size_choices else None
        smallest_image = self.image_size_choices[0] if self.image_size_choices else None
        return self._with_width(kept, tuple(self.mlp_dim_choices[i][0] for i in kept), narrowest, smallest_image)

    def sample(self, generator: torch.Generator | None = None) -> SubnetConfig:
        """Drop each elastic layer with its probability, draw each kept layer's MLP width uniformly, then the
        embedding width uniformly among `hidden_size_choices`, then the input resolution uniformly among
        `image_size_choices` (each only when it has more than one choice).

        If the draw leaves fewer than `min_layers`, dropped layers are restored (in random order) until it does not.
        Every draw happens on the generator's device (CPU without one), whatever the default device, so a seeded
        generator gives the same subnet everywhere (e.g. on every DDP rank).
        """
        device = generator.device if generator is not None else torch.device("cpu")
        draws = torch.rand(len(self.elastic_layers), generator=generator, device=device).tolist()
        dropped = [i for i, p, u in zip(self.elastic_layers, self.layer_drop_probs, draws) if u < p]
        shortfall = self.min_layers - (self.num_layers - len(dropped))
        if shortfall > 0:
            order = torch.randperm(len(dropped), generator=generator, device=device).tolist()
            restored = {dropped[j] for j in order[:shortfall]}
            dropped = [i for i in dropped if i not in restored]
        kept = tuple(i for i in range(self.num_layers) if i not in set(dropped))
        dims = tuple(self._draw(self.mlp_dim_choices[i], generator, device) for i in kept)
        hidden = self._draw(self.hidden_size_choices, generator, device) if len(self.hidden_size_choices) > 1 else None
        image = self._draw(self.image_size_choices, generator, device) if len(self.image_size_choices) > 1 else None
        return self._with_width(kept, dims, hidden, image)

    @staticmethod
    def _draw(choices: Sequence[int], generator: torch.Generator | None, device: torch.device) -> int:
        return choices[int(torch.randint(len(choices), (1,), generator=generator, device=device))]

    def uniform(
        self, width_fraction: float, kept_layers: Iterable[int] | None = None, hidden_size: int | None = None,
        image_size: int | None = None,
    ) -> SubnetConfig:
        """All kept layers at the allowed MLP width closest to `width_fraction` of `mlp_dim` (a handy hand-made
        subnet), at embedding width `hidden_size` and input resolution `image_size` (None = full)."""
        kept = tuple(range(self.num_layers)) if kept_layers is None else tuple(kept_layers)
        target = width_fraction * self.mlp_dim
        dims = tuple(min(self.mlp_dim_choices[i], key=lambda d: (abs(d - target), -d)) for i in kept)
        cfg = self._with_width(kept, dims, hidden_size, image_size)
        self.validate(cfg)
        return cfg

    def _widest(self) -> int | None:
        return self.hidden_size_choices[-1] if self.hidden_size_choices else None

    def _with_width(self, kept: tuple[int, ...], dims: tuple[int, ...], hidden_size: int | None,
                    image_size: int | None = None) -> SubnetConfig:
        return self.canonical(SubnetConfig(kept, dims, hidden_size, image_size))

    # -- checks ------------------------------------------------------------------------------------------------
    def validate(self, cfg: SubnetConfig) -> None:
        """Raise `ValueError` naming the offending field if `cfg` is not a member of this space."""
        if not isinstance(cfg, SubnetConfig):
            raise SupersamError(f"Expected a SubnetConfig, got {type(cfg).__name__}; use SubnetConfig.from_dict for JSON.")
        kept = cfg.kept_layers
        for i in kept:
            if not 0 <= i < self.num_layers:
                raise SupersamError(f"kept_layers: layer index {i} is out of range; the encoder has layers 0..{self.num_layers - 1}.")
        if list(kept) != sorted(set(kept)):
            raise SupersamError(f"kept_layers must be sorted and without duplicates, got {list(kept)}.")
        fixed_dropped = [i for i in range(self.num_layers) if i not in kept and i not in self.elastic_layers]
        if fixed_dropped:
            raise SupersamError(
                f"kept_layers drops layer(s) {fixed_dropped}, which are not elastic; droppable layers are {list(self.elastic_layers)}."
            )
        if len(kept) < self.min_layers:
            raise SupersamError(f"kept_layers keeps {len(kept)} layer(s); this search space needs at least min_layers={self.min_layers}.")
        if len(cfg.mlp_dims) != len(kept):
            raise SupersamError(
                f"mlp_dims has {len(cfg.mlp_dims)} entries but kept_layers has {len(kept)}; give one width per kept layer."
            )
        for i, d in zip(kept, cfg.mlp_dims):
            if d <= 0 or d > self.mlp_dim:
                raise SupersamError(f"mlp_dims: width {d} for layer {i} must be in 1..{self.mlp_dim} (the full mlp_dim).")
            if d not in self.mlp_dim_choices[i]:
                raise SupersamError(f"mlp_dims: width {d} for layer {i} is not among its choices {list(self.mlp_dim_choices[i])}.")
        for name, value, choices, dimension, what in (
            ("hidden_size", cfg.hidden_size, self.hidden_size_choices, "embedding-width",
             f"embedding widths {list(self.hidden_size_choices)} (multiples of the head size {self.head_dim}); None "
             "means the full width"),
            ("image_size", cfg.image_size, self.image_size_choices, "input-resolution",
             f"input resolutions {list(self.image_size_choices)}; None means the full resolution"),
        ):
            if value is not None and value not in choices:
                raise SupersamError(f"{name}={value}: this search space has no {dimension} dimension; leave it None."
                                    if not choices else f"{name}={value} is not among the {what}.")

    def layer_plan(self, cfg: SubnetConfig) -> SubnetPlan:
        """The subnet resolved for the rules in `elastic/`: per encoder layer its MLP width if kept (None if
        dropped), the kept embedding width and heads, and the input resolution. Validates `cfg` first."""
        self.validate(cfg)
        widths: list[int | None] = [None] * self.num_layers
        for i, d in zip(cfg.kept_layers, cfg.mlp_dims):
            widths[i] = d
        image = self.image_size if cfg.image_size is None else cfg.image_size
        if self.hidden_size is None:
            return SubnetPlan(tuple(widths), image_size=image, full_image_size=self.image_size)
        hidden = self.hidden_size if cfg.hidden_size is None else cfg.hidden_size
        head_dim = self.head_dim
        return SubnetPlan(tuple(widths), hidden, hidden // head_dim if head_dim else None, head_dim, image,
                          self.image_size)

    def to_dict(self) -> dict:
        data = {
            "num_layers": self.num_layers,
            "mlp_dim": self.mlp_dim,
            "elastic_layers": list(self.elastic_layers),
            "layer_drop_probs": list(self.layer_drop_probs),
            "mlp_dim_choices": [list(c) for c in self.mlp_dim_choices],
            "min_layers": self.min_layers,
        }
        if self.hidden_size is not None:
            data.update(
                hidden_size=self.hidden_size,
                num_attention_heads=self.num_attention_heads,
                hidden_size_choices=list(self.hidden_size_choices),
            )
        if self.image_size is not None:
            data.update(image_size=self.image_size, image_size_choices=list(self.image_size_choices))
        return data

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


def default_hidden_size_choices(hidden_size: int, num_attention_heads: int, ratios: Sequence[float]) -> list[int]:
    """Embedding widths at `ratios` of the heads, each rounded to whole heads (at least one), sorted, distinct."""
    head_dim = hidden_size // num_attention_heads
    return sorted({max(1, round(r * num_attention_heads)) * head_dim for r in ratios})


def default_image_size_choices(image_size: int, patch_size: int, ratios: Sequence[float]) -> list[int]:
    """Input resolutions at `ratios` of `image_size`, each rounded to whole patches (at least one), sorted, distinct."""
    return sorted({max(1, round(r * image_size / patch_size)) * patch_size for r in ratios})


def check_image_size_choices(image_size: int | None, choices: Sequence[int], patch_size: int | None = None) -> None:
    """Validate the input resolutions of a space: positive, at most the full one (which is among them), whole
    patches when `patch_size` is known."""
    if image_size is None:
        if choices:
            raise SupersamError(f"image_size_choices {list(choices)} need the full image_size of the supernet.")
        return
    choices = list(choices)
    if len(set(choices)) != len(choices):
        raise SupersamError(f"image_size_choices has duplicates: {choices}.")
    for s in choices:
        if s <= 0 or s > image_size or (patch_size and s % patch_size):
            unit = f"a multiple of the patch size {patch_size} " if patch_size else ""
            raise SupersamError(
                f"image_size_choices: resolution {s} must be {unit}in 1..{image_size} (the supernet's input size)."
            )
    if image_size not in choices:
        raise SupersamError(
            f"image_size_choices {choices} must include the full resolution {image_size} (the largest subnet is the "
            "whole supernet)."
        )


def check_search_space(
    num_layers,
    mlp_dim,
    elastic_layers,
    layer_drop_probs,
    mlp_dim_choices,
    min_layers,
    hidden_size=None,
    num_attention_heads=None,
    hidden_size_choices=None,
) -> None:
    """Validate a search-space description; shared by `SearchSpace` and `SuperSamConfig`."""
    for i in elastic_layers:
        if not 0 <= i < num_layers:
            raise SupersamError(f"elastic_layers: layer index {i} is out of range; the encoder has layers 0..{num_layers - 1}.")
    if len(set(elastic_layers)) != len(elastic_layers):
        raise SupersamError(f"elastic_layers has duplicates: {list(elastic_layers)}.")
    if len(layer_drop_probs) != len(elastic_layers):
        raise SupersamError(
            f"layer_drop_probs has {len(layer_drop_probs)} entries but there are {len(elastic_layers)} elastic layers; "
            "give one probability per elastic layer."
        )
    for i, p in zip(elastic_layers, layer_drop_probs):
        if not 0.0 <= p < 1.0:
            raise SupersamError(f"layer_drop_probs: probability {p} for layer {i} is outside [0, 1).")
    if len(mlp_dim_choices) != num_layers:
        raise SupersamError(f"mlp_dim_choices has {len(mlp_dim_choices)} entries; give one list of widths per encoder layer ({num_layers}).")
    for i, choices in enumerate(mlp_dim_choices):
        if not choices:
            raise SupersamError(f"mlp_dim_choices: layer {i} has no allowed width.")
        for d in choices:
            if d <= 0 or d > mlp_dim:
                raise SupersamError(f"mlp_dim_choices: width {d} for layer {i} must be in 1..{mlp_dim} (the full mlp_dim).")
    if not 1 <= min_layers <= num_layers:
        raise SupersamError(f"min_layers={min_layers} must be between 1 and the number of layers ({num_layers}).")
    if hidden_size is not None:
        _check_hidden_size_choices(hidden_size, num_attention_heads, hidden_size_choices)


def _check_hidden_size_choices(hidden_size: int, num_attention_heads: int | None, choices) -> None:
    if not num_attention_heads or hidden_size % num_attention_heads:
        raise SupersamError(
            f"hidden_size={hidden_size} must be a positive multiple of num_attention_heads={num_attention_heads}."
        )
    head_dim = hidden_size // num_attention_heads
    choices = list(choices or [])
    if len(set(choices)) != len(choices):
        raise SupersamError(f"hidden_size_choices has duplicates: {choices}.")
    for h in choices:
        if h <= 0 or h > hidden_size or h % head_dim:
            raise SupersamError(
                f"hidden_size_choices: width {h} must be a multiple of the head size {head_dim} in "
                f"{head_dim}..{hidden_size} (whole heads of the encoder)."
            )
    if hidden_size not in choices:
        raise SupersamError(
            f"hidden_size_choices {choices} must include the full width {hidden_size} (the largest subnet is the "
            "whole supernet)."
        )
