"""The analytic MAC count (`supersam_hf.costs`) against `torch.utils.flop_counter.FlopCounterMode` on real forwards."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import SamConfig, SamModel, SamVisionConfig
from transformers.models.sam.modeling_sam import SamVisionEncoder

from helpers import CUSTOM_MAPPING
from supersam_hf.configuration_supersam import build_sam_config
from supersam_hf.costs import (
    count_sam_macs,
    encoder_layer_macs,
    encoder_macs,
    neck_macs,
    patch_embed_macs,
)

REL_TOL = 0.01  # the model matches FlopCounterMode exactly today; 1 % leaves room for harmless upstream drift




def _make_model(config: SamConfig, attn_implementation: str = "eager") -> SamModel:
    config._attn_implementation = attn_implementation
    torch.manual_seed(0)
    # requires_grad off: FlopCounterMode's module tracker fails on SamModel under no_grad otherwise (the prompt
    # encoder returns an expanded view of a parameter, which has requires_grad but no grad_fn).
    return SamModel(config).eval().requires_grad_(False)


def _measure(module, **inputs) -> dict[str, int]:
    """MACs per top-level submodule and in total, as FlopCounterMode counts them (FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CUSTOM_MAPPING) as counter:
        module(**inputs)
    counts = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    counts["total"] = counter.get_total_flops() // 2
    return counts


def _inputs(config: SamConfig, num_prompts: int, points_per_prompt: int, use_boxes: bool, multimask: bool):
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    inputs = {"pixel_values": torch.randn(1, 3, size, size, generator=generator), "multimask_output": multimask}
    if points_per_prompt:
        inputs["input_points"] = torch.rand(1, num_prompts, points_per_prompt, 2, generator=generator) * size
    if use_boxes:
        corner = torch.rand(1, num_prompts, 2, generator=generator) * size / 2
        inputs["input_boxes"] = torch.cat([corner, corner + size / 4], dim=-1)
    return inputs


def _close(analytic: int, measured: int, tol: float = REL_TOL) -> bool:
    return abs(analytic - measured) <= tol * measured


# (config kwargs, attention implementation, num_prompts, points_per_prompt, use_boxes, multimask_output)
SIX_LAYERS = dict(image_size=64, num_hidden_layers=6, global_attn_indexes=(1, 3, 5), mlp_ratio=2.0)  # 4x4 grid
THREE_LAYERS = dict(image_size=96, num_hidden_layers=3, window_size=5, global_attn_indexes=(0,), mlp_ratio=3.0)
CASES = [
    (dict(), "eager", 1, 1, False, True),
    (dict(), "sdpa", 1, 1, False, True),
    (dict(window_size=3), "eager", 3, 2, False, False),  # 8x8 grid padded to 9x9
    (dict(image_size=96, window_size=4, num_hidden_layers=2), "sdpa", 1, 0, True, True),  # 6x6 grid padded, box
    (SIX_LAYERS, "eager", 3, 1, True, False),  # points and boxes
    (THREE_LAYERS, "sdpa", 3, 1, False, True),  # 6x6 grid padded to 10x10
]


@pytest.mark.parametrize("kwargs, impl, num_prompts, points, use_boxes, multimask", CASES)
def test_matches_flop_counter(kwargs, impl, num_prompts, points, use_boxes, multimask):
    config = build_sam_config(**kwargs)
    model = _make_model(config, impl)
    measured = _measure(model, **_inputs(config, num_prompts, points, use_boxes, multimask))
    analytic = count_sam_macs(
        config, num_prompts=num_prompts, points_per_prompt=points, use_boxes=use_boxes,
        multimask_output=multimask, per_part=True,
    )
    prompt_measured = measured.get("SamModel.prompt_encoder", 0) + measured["SamModel.shared_image_embedding"]
    assert _close(analytic["total"], measured["total"]), (analytic, measured)
    assert _close(analytic["image_encoder"], measured["SamModel.vision_encoder"]), (analytic, measured)
    assert _close(analytic["mask_decoder"], measured["SamModel.mask_decoder"]), (analytic, measured)
    assert _close(analytic["prompt_encoder"], prompt_measured), (analytic, measured)
    assert analytic["total"] == sum(analytic[k] for k in ("image_encoder", "prompt_encoder", "mask_decoder"))
    assert count_sam_macs(config, num_prompts, points, use_boxes, multimask) == analytic["total"]


def test_sdpa_and_eager_count_the_same():
    config = build_sam_config(window_size=3)
    inputs = _inputs(config, 1, 1, False, True)
    eager = _measure(_make_model(config, "eager"), **inputs)["total"]
    sdpa = _measure(_make_model(build_sam_config(window_size=3), "sdpa"), **inputs)["total"]
    assert eager == sdpa == count_sam_macs(config)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(image_size=128, window_size=5, num_hidden_layers=5, global_attn_indexes=(2, 4)),  # 8x8 padded to 10x10
        dict(image_size=64, window_size=2, num_hidden_layers=2, global_attn_indexes=(), mlp_ratio=1.5),
    ],
)
def test_encoder_alone(kwargs):
    vision = build_sam_config(**kwargs).vision_config
    vision._attn_implementation = "eager"
    torch.manual_seed(0)
    encoder = SamVisionEncoder(vision).eval().requires_grad_(False)
    pixels = torch.randn(1, 3, vision.image_size, vision.image_size)
    measured = _measure(encoder, pixel_values=pixels)["total"]
    analytic = encoder_macs(vision, [vision.mlp_dim] * vision.num_hidden_layers)
    assert _close(analytic, measured, 0.01), (analytic, measured)
    per_layer = sum(encoder_layer_macs(vision, i, vision.mlp_dim) for i in range(vision.num_hidden_layers))
    assert analytic == patch_embed_macs(vision) + per_layer + neck_macs(vision)


def test_subnet_sum_matches_smaller_encoder():
    """Dropping layers (keeping each one's attention kind) and narrowing MLPs equals a vanilla smaller encoder."""
    vision = build_sam_config(num_hidden_layers=6, global_attn_indexes=(2, 5), window_size=3).vision_config
    widths = [256, None, 128, 128, None, 128]  # kept: 0 (window), 2 (global), 3 (window), 5 (global)
    subnet = encoder_macs(vision, widths)
    # A uniform-width subnet is exactly a vanilla 4-layer encoder with globals remapped to positions 1 and 3.
    small = build_sam_config(num_hidden_layers=4, global_attn_indexes=(1, 3), window_size=3, mlp_ratio=2.0)
    small_vision = small.vision_config
    small_vision._attn_implementation = "eager"
    torch.manual_seed(0)
    encoder = SamVisionEncoder(small_vision).eval().requires_grad_(False)
    measured = _measure(encoder, pixel_values=torch.randn(1, 3, 128, 128))["total"]
    uniform = encoder_macs(vision, [128, None, 128, 128, None, 128])
    assert _close(uniform, measured), (uniform, measured)
    # global_flags (indexed like layer_widths) overrides the config's kinds.
    flags = [False, False, True, False, False, True]
    assert encoder_macs(vision, widths, global_flags=flags) == subnet
    assert encoder_macs(vision, widths, global_flags=[False] * 6) < subnet
    # Layer 0's wider MLP costs exactly its extra lin1 + lin2 products.
    grid = (vision.image_size // vision.patch_size) ** 2
    assert subnet - uniform == 2 * grid * vision.hidden_size * (256 - 128)
    with pytest.raises(ValueError):
        encoder_macs(vision, widths, global_flags=flags[:-1])


def test_monotone_in_layers_and_width():
    config = build_sam_config(num_hidden_layers=6, global_attn_indexes=(2, 5))
    vision = config.vision_config
    full = [vision.mlp_dim] * 6
    base = encoder_macs(vision, full)
    for i in range(6):
        dropped = list(full)
        dropped[i] = None
        assert encoder_macs(vision, dropped) < base
        narrower = list(full)
        narrower[i] = vision.mlp_dim // 2
        assert encoder_macs(vision, dropped) < encoder_macs(vision, narrower) < base
    # Global layers cost more than windowed ones at equal width (on this grid: 8x8 tokens, 4x4 windows).
    assert encoder_layer_macs(vision, 2, 64) > encoder_layer_macs(vision, 1, 64)
    assert encoder_layer_macs(vision, 1, 64, global_attn=True) == encoder_layer_macs(vision, 2, 64)
    # Through the full count too: fewer layers / smaller mlp_dim -> fewer MACs.
    fewer = count_sam_macs(build_sam_config(num_hidden_layers=4, global_attn_indexes=(2,)))
    thinner = count_sam_macs(build_sam_config(num_hidden_layers=6, global_attn_indexes=(2, 5), mlp_ratio=2.0))
    assert fewer < count_sam_macs(config) and thinner < count_sam_macs(config)
    # More prompts cost more in the decoder only.
    one, three = count_sam_macs(config, per_part=True), count_sam_macs(config, num_prompts=3, per_part=True)
    assert one["image_encoder"] == three["image_encoder"] and one["mask_decoder"] < three["mask_decoder"]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_sam_vit_b(impl):
    """SAM ViT-B at 1024 px. Published: ~487 GMACs for the encoder.

    Checked against FlopCounterMode on a forward with meta tensors (shapes only, no arithmetic, well under a
    second); on meta, SDPA lowers to its math path (bmm), so no custom mapping is involved.
    """
    config = SamConfig(
        vision_config=dict(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11],
            mlp_dim=3072, image_size=1024, patch_size=16, window_size=14,
        )
    )
    parts = count_sam_macs(config, per_part=True)
    assert 370e9 <= parts["image_encoder"] <= 490e9, parts
    assert 1e9 < parts["mask_decoder"] < 3e9, parts  # a few GMACs at 256 channels, 64x64 grid, one prompt
    assert parts["prompt_encoder"] < 1e7, parts

    config._attn_implementation = impl
    with torch.device("meta"):
        model = SamModel(config).eval().requires_grad_(False)
        inputs = {"pixel_values": torch.empty(1, 3, 1024, 1024), "input_points": torch.empty(1, 1, 1, 2)}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    measured = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    assert _close(parts["total"], counter.get_total_flops() // 2), (parts, measured)
    assert _close(parts["image_encoder"], measured["SamModel.vision_encoder"]), (parts, measured)
    assert _close(parts["mask_decoder"], measured["SamModel.mask_decoder"]), (parts, measured)


def test_encoder_macs_at_a_narrower_width_equal_a_narrower_encoder():
    vision = build_sam_config(num_hidden_layers=4, hidden_size=64, window_size=3, global_attn_indexes=(1, 3)).vision_config
    widths = [128, None, 128, 128]  # layer 1 (global) dropped; layer 3 (global) becomes layer 2
    small = SamVisionConfig(**{**vision.to_dict(), "hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 3,
                               "global_attn_indexes": [2], "mlp_dim": 128})
    small._attn_implementation = "eager"
    encoder = SamVisionEncoder(small).eval().requires_grad_(False)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(pixel_values=torch.randn(1, 3, 128, 128))
    assert encoder_macs(vision, widths, hidden_size=32) == counter.get_total_flops() // 2
    assert encoder_macs(vision, widths, hidden_size=32) < encoder_macs(vision, widths)
    assert encoder_macs(vision, widths, hidden_size=64) == encoder_macs(vision, widths)
