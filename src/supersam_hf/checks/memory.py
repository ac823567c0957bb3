"""Memory sizing: a SAM config's parameters, weight and activation bytes, estimated before any model is built, and
the refusal of a config that cannot fit this machine."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ModelFileError


# The sizes of SAM's parts that decide its memory, with transformers' defaults (SamVisionConfig, SamMaskDecoderConfig).
_VISION_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 1024,
                    "patch_size": 16, "output_channels": 256, "window_size": 14, "num_channels": 3}
_DECODER_DEFAULTS = {"hidden_size": 256, "num_hidden_layers": 2, "mlp_dim": 2048, "num_attention_heads": 8,
                     "iou_head_hidden_dim": 256}


def machine_memory_bytes() -> int | None:
    """This machine's memory for the process: physical memory, or a smaller cgroup limit (containers); None if unknown."""
    limits = []
    with contextlib.suppress(ValueError, OSError, AttributeError):
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            value = int(Path(cgroup).read_text().strip())
            if 0 < value < 1 << 60:
                limits.append(value)
    return min(limits) if limits else None


def _size_field(section: Mapping[str, Any], defaults: Mapping[str, int], key: str, where: str, source: str) -> int:
    value = section.get(key, defaults[key])
    if value is None:
        value = defaults[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "window_size" else 1):
        raise ModelFileError(f"{source}: {where}.{key} must be a positive integer, got {value!r}; fix the config.json "
                             "or re-download the model.")
    return value


def estimate_model_memory(config: Mapping[str, Any], source: str = "config.json") -> dict[str, int]:
    """From a SAM / SuperSAM `config.json` (a dict), before any model is built: its parameters and the bytes of its
    float32 weights and of the activations of one image's forward (the largest layer's MLP and attention maps).
    A size field that is not a positive integer is a ModelFileError naming it."""
    vision = config.get("vision_config") or {}
    decoder = config.get("mask_decoder_config") or {}
    if not isinstance(vision, Mapping) or not isinstance(decoder, Mapping):
        raise ModelFileError(f"{source}: vision_config and mask_decoder_config must be objects; fix the config.json.")
    v = {key: _size_field(vision, _VISION_DEFAULTS, key, "vision_config", source) for key in _VISION_DEFAULTS}
    d = {key: _size_field(decoder, _DECODER_DEFAULTS, key, "mask_decoder_config", source) for key in _DECODER_DEFAULTS}
    hidden, layers = v["hidden_size"], v["num_hidden_layers"]
    mlp_values = [vision.get("mlp_dim") or int(hidden * float(vision.get("mlp_ratio") or 4.0))]
    choices = config.get("mlp_dim_choices")  # a supernet's widths
    if isinstance(choices, list):
        mlp_values += [c for row in choices for c in (row if isinstance(row, list) else [row]) if isinstance(c, int)]
    mlp = max(int(m) for m in mlp_values if isinstance(m, (int, float)) and not isinstance(m, bool))
    side = max(v["image_size"] // v["patch_size"], 1)
    tokens = side * side
    head_dim = max(hidden // v["num_attention_heads"], 1)
    per_layer = 4 * hidden * hidden + 2 * hidden * mlp + 9 * hidden + mlp + 2 * (2 * side - 1) * head_dim
    vision_params = (layers * per_layer + v["num_channels"] * v["patch_size"] ** 2 * hidden + tokens * hidden
                     + hidden * v["output_channels"] + 9 * v["output_channels"] ** 2)
    dh = d["hidden_size"]
    decoder_params = d["num_hidden_layers"] * (8 * dh * dh + 2 * dh * d["mlp_dim"]) + 16 * dh * dh + 8 * dh * d[
        "iou_head_hidden_dim"]
    params = vision_params + decoder_params
    attention = v["num_attention_heads"] * tokens * tokens  # a global-attention layer's scores, one image
    activations = 4 * (tokens * (4 * hidden + mlp) + attention)
    return {"params": params, "weight_bytes": 4 * params, "activation_bytes": activations}


def check_model_size(config: Mapping[str, Any], source: str, memory_bytes: int | None = None) -> dict[str, int]:
    """Refuse, before allocating anything, a config whose float32 weights plus one image's activations exceed this
    machine's memory (`machine_memory_bytes`, or `memory_bytes`): one line with the estimate. Returns the estimate."""
    estimate = estimate_model_memory(config, source)
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    needed = estimate["weight_bytes"] + estimate["activation_bytes"]
    if memory is not None and needed > memory:
        gib = 1024**3
        raise ModelFileError(
            f"{source}: this config describes a model of about {estimate['params']:,} parameters "
            f"({estimate['weight_bytes'] / gib:,.1f} GiB of float32 weights) needing {estimate['activation_bytes'] / gib:,.1f} "
            f"GiB of activations for one image, more than this machine's {memory / gib:,.1f} GiB of memory; check its "
            "vision_config sizes (num_hidden_layers, hidden_size, mlp_dim, image_size / patch_size)."
        )
    return estimate

