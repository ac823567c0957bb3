"""What one subnet is: `SubnetConfig` (which encoder layers are kept, each kept layer's MLP width, the embedding
width and the input resolution; hashable, JSON round trip) and `SubnetPlan` (a subnet resolved against its search
space, per encoder layer, as the rules in `elastic/` read it)."""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from .errors import SupersamError


SUBNET_FIELDS = ("kept_layers", "mlp_dims", "hidden_size", "image_size")


def _int_field(name: str, value: Any) -> int:
    """`value` as an int, or a `ValueError` naming the field: bools, floats (even 2.0), strings and None are refused."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise SupersamError(f"{name} must hold integers, got {value!r} ({type(value).__name__}); write whole numbers, e.g. 3.")


def _int_tuple(name: str, values: Any) -> tuple[int, ...]:
    if values is None or isinstance(values, (str, bytes, dict)) or not isinstance(values, Iterable):
        raise SupersamError(f"{name} must be a list of integers, got {values!r}.")
    return tuple(_int_field(name, v) for v in values)


@dataclass(frozen=True)
class SubnetConfig:
    """One subnetwork: the kept encoder layers (sorted indices), the MLP width of each (aligned with them), the
    encoder's embedding width `hidden_size` (a multiple of the head size; None = the full width) and the input
    resolution `image_size` (pixels of the square input, a multiple of the patch size; None = the full one)."""

    kept_layers: tuple[int, ...]
    mlp_dims: tuple[int, ...]
    hidden_size: int | None = None
    image_size: int | None = None

    def __post_init__(self):
        # Accept lists (e.g. from JSON) but store tuples so the config stays hashable; only integers are accepted.
        object.__setattr__(self, "kept_layers", _int_tuple("kept_layers", self.kept_layers))
        object.__setattr__(self, "mlp_dims", _int_tuple("mlp_dims", self.mlp_dims))
        if self.hidden_size is not None:
            object.__setattr__(self, "hidden_size", _int_field("hidden_size", self.hidden_size))
        if self.image_size is not None:
            object.__setattr__(self, "image_size", _int_field("image_size", self.image_size))

    @property
    def name(self) -> str:
        """Short readable name, e.g. `L10-w1536x4-w3072x6` (layer count, then run-length encoded MLP widths),
        prefixed with `H384-` when the embedding width is not the full one and `R512-` when the input resolution is
        not the full one."""
        runs: list[list[int]] = []
        for d in self.mlp_dims:
            if runs and runs[-1][0] == d:
                runs[-1][1] += 1
            else:
                runs.append([d, 1])
        widths = "-".join(f"w{d}x{n}" if n > 1 else f"w{d}" for d, n in runs)
        name = f"L{len(self.kept_layers)}-{widths}" if widths else f"L{len(self.kept_layers)}"
        name = name if self.hidden_size is None else f"H{self.hidden_size}-{name}"
        return name if self.image_size is None else f"R{self.image_size}-{name}"

    def to_dict(self) -> dict:
        """JSON-ready dict; `hidden_size` / `image_size` are written only when they are not the full ones (so older
        readers and files stay as they were)."""
        data = {"kept_layers": list(self.kept_layers), "mlp_dims": list(self.mlp_dims)}
        if self.hidden_size is not None:
            data["hidden_size"] = self.hidden_size
        if self.image_size is not None:
            data["image_size"] = self.image_size
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "SubnetConfig":
        """Read `to_dict`'s output. Unknown keys are refused, except in a *record* (a dict with a `name`, as search
        results and exported `subnet.json` files write): there they are the record's other fields, and the name
        must match the subnet the fields describe."""
        if not isinstance(data, dict):
            raise SupersamError(f"A subnet must be a JSON object with 'kept_layers' and 'mlp_dims', got {type(data).__name__}.")
        missing = {"kept_layers", "mlp_dims"} - set(data)
        if missing:
            raise SupersamError(f"Subnet JSON is missing {sorted(missing)}; expected keys 'kept_layers' and 'mlp_dims'.")
        unknown = sorted(set(data) - set(SUBNET_FIELDS))
        if unknown and "name" not in data:
            raise SupersamError(f"Subnet JSON has unknown key(s) {unknown}; the keys are {list(SUBNET_FIELDS)}.")
        cfg = cls(kept_layers=data["kept_layers"], mlp_dims=data["mlp_dims"], hidden_size=data.get("hidden_size"),
                  image_size=data.get("image_size"))
        if "name" in data and data["name"] != cfg.name:
            raise SupersamError(
                f"Subnet record named {data['name']!r} describes {cfg.name!r}; its fields and name disagree "
                "(edited by hand?). Fix one of them."
            )
        return cfg

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "SubnetConfig":
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class SubnetPlan:
    """How a subnet maps onto the supernet's weights: `SearchSpace.layer_plan`'s answer, read by forward, export
    and cost counting alike.

    Iterating (or indexing) a plan yields, per encoder layer, its MLP width if kept or None if dropped.
    `hidden_size` is the kept embedding width (the leading channels) and `num_heads` the kept attention heads (the
    leading heads), each of `head_dim` channels; None when the space does not know the encoder's width.
    `image_size` is the input resolution and `full_image_size` the supernet's (None when the space has no
    resolution dimension).
    """

    mlp_widths: tuple[int | None, ...]
    hidden_size: int | None = None
    num_heads: int | None = None
    head_dim: int | None = None
    image_size: int | None = None
    full_image_size: int | None = None

    @property
    def resized(self) -> bool:
        """Whether the subnet runs at a resolution other than the supernet's."""
        return self.image_size is not None and self.image_size != self.full_image_size

    @property
    def kept_layers(self) -> tuple[int, ...]:
        return tuple(i for i, w in enumerate(self.mlp_widths) if w is not None)

    def __iter__(self) -> Iterator[int | None]:
        return iter(self.mlp_widths)

    def __len__(self) -> int:
        return len(self.mlp_widths)

    def __getitem__(self, index):
        return self.mlp_widths[index]
