"""Tiny SAM models and inputs shared by the tests (hidden ≤ 64, ≤ 6 layers, ≤ 128 px)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import sdpa_flop_count
from transformers import SamModel, SamProcessor

from supersam_hf import SuperSamModel, build_sam_config
from supersam_hf.data import build_sam_processor
from supersam_hf.elastic.resolution import resize_pixels


def tiny_sam(num_layers: int = 6, image_size: int = 64, seed: int = 0, **config_kwargs) -> SamModel:
    """A random tiny SamModel with every weight at a useful scale.

    SAM's vision config initialises the encoder with std 1e-10 (real checkpoints overwrite it), which would make
    the encoder's output near-constant and every comparison vacuous; position tables are zero-initialised.
    """
    torch.manual_seed(seed)
    config = build_sam_config(image_size=image_size, num_hidden_layers=num_layers, hidden_size=32, output_channels=32, **config_kwargs)
    sam = SamModel(config).eval()
    with torch.no_grad():
        for name, param in sam.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(0.0, 0.5)
            elif param.dim() >= 2 and "positional_embedding" not in name:
                param.normal_(0.0, param[0].numel() ** -0.5)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.02)
    return sam


def tiny_supernet(num_layers: int = 6, image_size: int = 64, seed: int = 0, **search_space) -> SuperSamModel:
    return SuperSamModel.from_sam(tiny_sam(num_layers, image_size, seed), **search_space).eval()


def tiny_processor(image_size: int = 64) -> SamProcessor:
    return build_sam_processor(image_size)


def prompt_inputs(kind: str, batch: int = 2, prompts: int = 3, image_size: int = 64, seed: int = 0) -> dict:
    """pixel_values plus point or box prompts in model coordinates."""
    g = torch.Generator().manual_seed(seed)
    inputs = {"pixel_values": torch.randn(batch, 3, image_size, image_size, generator=g)}
    if kind == "points":
        inputs["input_points"] = torch.rand(batch, prompts, 2, 2, generator=g) * image_size
        inputs["input_labels"] = torch.randint(0, 2, (batch, prompts, 2), generator=g)
    else:
        corners = torch.rand(batch, prompts, 2, 2, generator=g) * image_size
        inputs["input_boxes"] = torch.cat([corners.min(dim=2).values, corners.max(dim=2).values], dim=-1)
    return inputs


def at_resolution(inputs: dict, cfg, image_size: int = 64) -> dict:
    """`inputs` (pixel_values + prompts at `image_size`) as the exported checkpoint of `cfg` takes them: resized to
    the subnet's input resolution (the supernet's own resize), prompts rescaled with the image."""
    size = getattr(cfg, "image_size", None)
    if size is None or size == image_size:
        return inputs
    out = dict(inputs, pixel_values=resize_pixels(inputs["pixel_values"], size))
    for key in ("input_points", "input_boxes"):
        if key in out:
            out[key] = out[key] * (size / image_size)
    return out


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode has no formula for the CPU flash-attention kernel SDPA dispatches to on CPU (it would count 0);
# give it the standard SDPA one (QK^T + AV) so SDPA and eager models can both be checked.
CUSTOM_MAPPING = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}


JS_DIR = Path(__file__).parent / "js"
JS_MODULES = JS_DIR / "node_modules"


def node_with_transformers_js(what: str) -> str:
    """The `node` executable, with transformers.js installed in tests/js (as .ci/run installs it). Without node the
    test is skipped (naming `what` it could not check); node without the package is a failure that says what to run."""
    node = shutil.which("node")
    if node is None:
        pytest.skip(f"node is not installed: {what} was not run")
    if not (JS_MODULES / "@huggingface" / "transformers" / "package.json").is_file():
        pytest.fail(f"transformers.js is not installed in {JS_DIR}: run `cd tests/js && npm install --ignore-scripts` "
                    "(as .ci/run does).", pytrace=False)
    return node
