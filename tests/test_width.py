"""Elastic embedding width (whole attention heads): subnet forward = extracted = reloaded SamModel, exact importance
reordering of channels and heads that helps narrow widths, costs of width subnets, strict subnet JSON, hidden-state
shapes and device-independent sampling."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import SamModel, pipeline

from helpers import CUSTOM_MAPPING, prompt_inputs, tiny_processor, tiny_sam, tiny_supernet
from supersam_hf import SearchSpace, SubnetConfig, SuperSamConfig, SuperSamModel, build_sam_config
from supersam_hf.data import make_synthetic_shapes
from supersam_hf.prioritization import prioritize, reorder_embedding

S = 64
TOL = 1e-5


def max_diff(a, b) -> float:
    return max((a.pred_masks - b.pred_masks).abs().max().item(), (a.iou_scores - b.iou_scores).abs().max().item())


def supernet(attn: str = "sdpa", seed: int = 0, **search_space) -> SuperSamModel:
    """tiny_supernet (hidden 32, 4 heads of 8, 6 layers, global at 2 and 5) with a chosen attention implementation."""
    sam = tiny_sam(seed=seed)
    config = SuperSamConfig.from_sam_config(sam.config, **search_space)
    config._attn_implementation = attn
    model = SuperSamModel(config)
    model.load_state_dict(sam.state_dict())
    return model.eval()


NARROW = [
    SubnetConfig((0, 1, 2, 3, 4, 5), (128,) * 6, hidden_size=16),
    SubnetConfig((0, 2, 3, 5), (64, 32, 128, 96), hidden_size=24),
    SubnetConfig((0, 1, 2), (32, 32, 32), hidden_size=16),
]


# -- search space -------------------------------------------------------------------------------------------------
def test_config_defaults_to_a_quarter_half_three_quarters_and_all_heads():
    model = tiny_supernet()
    assert model.config.hidden_size_choices == [8, 16, 24, 32]  # 1, 2, 3, 4 heads of 8
    space = model.search_space
    assert space.hidden_size_choices == (8, 16, 24, 32) and space.head_dim == 8
    assert space.largest().hidden_size is None  # the full width is written as None
    assert space.smallest().hidden_size == 8
    vit_b = SuperSamConfig.from_sam_config(build_sam_config(hidden_size=768, num_attention_heads=12))
    assert vit_b.hidden_size_choices == [192, 384, 576, 768]
    assert vit_b.mlp_dim_choices[0] == [384, 768, 1536, 2304, 3072]  # MLP width down to 12.5 %
    odd = SuperSamConfig.from_sam_config(build_sam_config(hidden_size=40, num_attention_heads=5))
    assert odd.hidden_size_choices == [8, 16, 32, 40]  # round(1.25) = 1, round(2.5) = 2, round(3.75) = 4 heads of 8


@pytest.mark.parametrize(
    "choices, message",
    [([12, 32], "multiple of the head size 8"), ([16, 24], "must include the full width 32"),
     ([16, 16, 32], "duplicates"), ([0, 32], "multiple of the head size"), ([16, 40], "multiple of the head size")],
)
def test_bad_width_choices_are_rejected(choices, message):
    with pytest.raises(ValueError, match=message):
        SuperSamConfig.from_sam_config(tiny_sam().config, hidden_size_choices=choices)


def test_old_configs_and_subnet_json_still_load(tmp_path):
    model = tiny_supernet()
    model.config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    del data["hidden_size_choices"]  # a supernet saved before the width dimension existed
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert SuperSamConfig.from_pretrained(tmp_path).hidden_size_choices == [8, 16, 24, 32]

    old = SubnetConfig.from_json('{"kept_layers": [0, 1, 3], "mlp_dims": [64, 32, 128]}')
    assert old == SubnetConfig((0, 1, 3), (64, 32, 128)) and old.hidden_size is None
    assert old.to_dict() == {"kept_layers": [0, 1, 3], "mlp_dims": [64, 32, 128]}  # written exactly as before
    narrow = SubnetConfig((0, 1, 3), (64, 32, 128), hidden_size=16)
    assert narrow.name == "H16-L3-w64-w32-w128" and old.name == "L3-w64-w32-w128"
    assert SubnetConfig.from_json(narrow.to_json()) == narrow
    # Records (search results, subnet.json) carry other fields next to the subnet's, and a name that must match.
    record = {"name": narrow.name, **narrow.to_dict(), "miou": 0.5, "params": 10}
    assert SubnetConfig.from_dict(record) == narrow
    with pytest.raises(ValueError, match="disagree"):
        SubnetConfig.from_dict({**record, "hidden_size": 24})
    space = model.search_space
    assert SearchSpace.from_json(space.to_json()) == space
    legacy = {k: v for k, v in space.to_dict().items() if k not in ("hidden_size", "num_attention_heads", "hidden_size_choices")}
    assert SearchSpace.from_dict(legacy).largest() == space.largest()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"kept_layers": [0, 1.7, 2, 3], "mlp_dims": [64] * 4}, "kept_layers must hold integers, got 1.7"),
        ({"kept_layers": [0, 1, 2.0], "mlp_dims": [64] * 3}, "kept_layers must hold integers, got 2.0"),
        ({"kept_layers": [0, True], "mlp_dims": [64] * 2}, "kept_layers must hold integers, got True"),
        ({"kept_layers": None, "mlp_dims": [64]}, "kept_layers must be a list of integers, got None"),
        ({"kept_layers": ["a"], "mlp_dims": [64]}, "kept_layers must hold integers, got 'a'"),
        ({"kept_layers": "012", "mlp_dims": [64] * 3}, "kept_layers must be a list of integers"),
        ({"kept_layers": [0, 1], "mlp_dims": [64, None]}, "mlp_dims must hold integers, got None"),
        ({"kept_layers": [0, 1], "mlp_dims": [64, "64"]}, "mlp_dims must hold integers"),
        ({"kept_layers": [0, 1], "mlp_dims": [64, 64], "hidden_size": 16.0}, "hidden_size must hold integers"),
        ({"kept_layers": [0, 1], "mlp_dims": [64, 64], "hidden_size": "16"}, "hidden_size must hold integers"),
        ({"kept_layers": [0, 1], "mlp_dims": [64, 64], "hidden": 16}, r"unknown key\(s\) \['hidden'\]"),
        ({"kept_layers": [0, 1]}, "missing"),
    ],
)
def test_subnet_json_is_strictly_typed(data, message):
    with pytest.raises(ValueError, match=message):
        SubnetConfig.from_dict(data)


def test_validate_names_the_width_problem():
    space = tiny_supernet().search_space
    with pytest.raises(ValueError, match=r"hidden_size=20 is not among the embedding widths \[8, 16, 24, 32\]"):
        space.validate(SubnetConfig(tuple(range(6)), (128,) * 6, hidden_size=20))
    assert space.canonical(SubnetConfig(tuple(range(6)), (128,) * 6, hidden_size=32)) == space.largest()
    no_width = SearchSpace(6, 128, [1, 2], [0.2, 0.2], [[64, 128]] * 6, 4)
    with pytest.raises(ValueError, match="no embedding-width dimension"):
        no_width.validate(SubnetConfig(tuple(range(6)), (128,) * 6, hidden_size=16))


def test_sampling_covers_widths_and_runs_on_the_generators_device():
    space = tiny_supernet().search_space
    draws = [space.sample(torch.Generator().manual_seed(k)) for k in range(60)]
    assert {c.hidden_size for c in draws} == {8, 16, 24, None}
    assert draws[:10] == [space.sample(torch.Generator().manual_seed(k)) for k in range(10)]
    with torch.device("meta"):  # a default device the generator is not on
        assert [space.sample(torch.Generator().manual_seed(k)) for k in range(10)] == draws[:10]
        assert space.sample() is not None


# -- forward, extraction, gradients -------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_narrow_subnets_equal_extracted_and_reloaded(attn, tmp_path, caplog):
    model = supernet(attn)
    inputs = [prompt_inputs("points", seed=1), prompt_inputs("boxes", seed=2)]
    for n, cfg in enumerate(NARROW):
        extracted = model.extract_subnet(cfg).eval()
        vision = extracted.config.vision_config
        assert type(extracted) is SamModel
        assert (vision.hidden_size, vision.num_attention_heads) == (cfg.hidden_size, cfg.hidden_size // 8)
        assert extracted.vision_encoder.layers[0].attn.rel_pos_h.shape[-1] == 8  # head size unchanged
        folder = tmp_path / f"subnet{n}"
        extracted.save_pretrained(folder)
        with caplog.at_level(logging.WARNING):
            reloaded, info = SamModel.from_pretrained(folder, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
        reloaded.eval()
        for batch in inputs:
            with torch.no_grad():
                with model.subnet(cfg):
                    active = model(**batch)
                assert max_diff(active, extracted(**batch)) <= TOL, cfg
                assert max_diff(active, reloaded(**batch)) <= TOL, cfg
    with torch.no_grad():
        full = model(**inputs[0])
        with model.subnet(NARROW[0]):
            narrow = model(**inputs[0])
    assert max_diff(full, narrow) > 1e-3  # the width switch really changes the function


def test_mask_generation_pipeline_loads_a_narrow_export(tmp_path):
    model = tiny_supernet()
    model.extract_subnet(NARROW[1]).save_pretrained(tmp_path)
    tiny_processor(S).save_pretrained(tmp_path)
    generator = pipeline("mask-generation", model=str(tmp_path), device="cpu")
    assert generator.model.config.vision_config.hidden_size == 24
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    outputs = generator(image, points_per_batch=8, points_per_crop=4, crops_n_layers=0,
                        pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert len(outputs["masks"]) >= 1


def test_gradients_reach_only_the_kept_channels_and_heads():
    model = tiny_supernet().train()
    cfg = SubnetConfig((0, 1, 3, 4), (64, 32, 128, 96), hidden_size=16)
    h, d = 16, 32
    with model.subnet(cfg):
        model(**prompt_inputs("points")).pred_masks.square().mean().backward()
    enc = model.vision_encoder
    unused = [enc.patch_embed.projection.weight.grad[h:], enc.patch_embed.projection.bias.grad[h:],
              enc.pos_embed.grad[..., h:], enc.neck.conv1.weight.grad[:, h:]]
    used = [enc.patch_embed.projection.weight.grad[:h], enc.pos_embed.grad[..., :h], enc.neck.conv1.weight.grad[:, :h]]
    for i in cfg.kept_layers:
        layer = enc.layers[i]
        qkv, proj = layer.attn.qkv, layer.attn.proj
        blocks, bias_blocks = qkv.weight.grad.view(3, d, d), qkv.bias.grad.view(3, d)
        unused += [blocks[:, h:], blocks[:, :, h:], bias_blocks[:, h:], proj.weight.grad[h:], proj.weight.grad[:, h:],
                   proj.bias.grad[h:], layer.layer_norm1.weight.grad[h:], layer.layer_norm2.bias.grad[h:],
                   layer.mlp.lin1.weight.grad[:, h:], layer.mlp.lin2.weight.grad[h:], layer.mlp.lin2.bias.grad[h:]]
        used += [blocks[:, :h, :h], proj.weight.grad[:h, :h], layer.layer_norm1.weight.grad[:h],
                 layer.mlp.lin1.weight.grad[:, :h], layer.attn.rel_pos_h.grad]
    assert all(torch.all(g == 0) for g in unused)
    assert all(g.abs().sum() > 0 for g in used)
    assert all(p.grad is None for p in enc.layers[2].parameters())


def test_narrow_forward_uses_views_of_the_shared_weights():
    model = tiny_supernet()
    attn = model.vision_encoder.layers[0].attn
    seen = []
    linear = torch.nn.functional.linear

    def spy(x, weight, bias=None):
        seen.append(weight.untyped_storage().data_ptr())
        return linear(x, weight, bias)

    torch.nn.functional.linear = spy
    try:
        with model.subnet(NARROW[0]), torch.no_grad():
            attn(torch.randn(1, 4, 4, 16))
    finally:
        torch.nn.functional.linear = linear
    qkv, proj = attn.qkv.weight.untyped_storage().data_ptr(), attn.proj.weight.untyped_storage().data_ptr()
    assert seen == [qkv, qkv, qkv, proj]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_hidden_states_and_attentions_list_the_layers_that_ran(attn):
    model = supernet(attn)
    cfg = SubnetConfig((0, 2, 3, 5), (64, 32, 128, 96), hidden_size=24)
    extracted = model.extract_subnet(cfg).eval()
    inputs = prompt_inputs("points")
    with torch.no_grad(), model.subnet(cfg):
        active = model(**inputs, output_hidden_states=True, output_attentions=True)
        exported = extracted(**inputs, output_hidden_states=True, output_attentions=True)
    hidden, expected = active.vision_hidden_states, exported.vision_hidden_states
    assert len(hidden) == len(expected) == len(cfg.kept_layers) + 1
    for got, want in zip(hidden, expected):
        assert got.shape == want.shape == (2, 4, 4, 24)
        assert (got - want).abs().max() <= TOL
    assert len(active.vision_attentions) == len(exported.vision_attentions)
    if attn == "eager":
        assert len(active.vision_attentions) == len(cfg.kept_layers)
        assert [a.shape for a in active.vision_attentions] == [a.shape for a in exported.vision_attentions]
    # Selected by index (negative ones count from the last layer that ran), as the extracted model selects them.
    with torch.no_grad(), model.subnet(cfg):
        picked = model(**inputs, output_hidden_states=[-1, 1]).vision_hidden_states
        exported = extracted(**inputs, output_hidden_states=[-1, 1]).vision_hidden_states
    assert [t is None for t in picked] == [t is None for t in exported] == [True, False, True, True, False]
    assert (picked[-1] - exported[-1]).abs().max() <= TOL
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True)
    assert len(full.vision_hidden_states) == 7 and full.vision_hidden_states[0].shape[-1] == 32


# -- costs --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", NARROW)
def test_costs_of_width_subnets_match_meta_and_flop_counts(cfg):
    model = supernet("eager")
    exported = model.export_config(cfg)
    with torch.device("meta"):
        skeleton = SamModel(exported)
    assert model.count_parameters(cfg) == sum(p.numel() for p in skeleton.parameters())
    extracted = model.extract_subnet(cfg).eval().requires_grad_(False)
    assert model.count_parameters(cfg) == sum(p.numel() for p in extracted.parameters())
    inputs = prompt_inputs("points", batch=1, prompts=1)
    inputs["input_points"], inputs["input_labels"] = inputs["input_points"][:, :, :1], inputs["input_labels"][:, :, :1]
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CUSTOM_MAPPING) as counter:
        extracted(**inputs)
    assert model.count_macs(cfg) == counter.get_total_flops() // 2
    assert model.count_macs(cfg) < model.count_macs(SubnetConfig(cfg.kept_layers, cfg.mlp_dims))


# -- importance reordering of channels and heads --------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibration():
    processor = tiny_processor(S)
    images = list(make_synthetic_shapes(8, image_size=S, seed=0)["image"])
    return [processor(images=images[i : i + 4], return_tensors="pt")["pixel_values"] for i in (0, 4)]


def test_reordering_is_exact_at_full_width(calibration):
    model = tiny_supernet(num_layers=4, image_size=S).double()
    inputs = {k: (v.double() if v.is_floating_point() else v) for k, v in prompt_inputs("points", image_size=S).items()}
    before_qkv = model.vision_encoder.layers[1].attn.qkv.weight.clone()
    with torch.no_grad():
        before = model(**inputs, output_hidden_states=True)
    order = reorder_embedding(model, [p.double() for p in calibration])
    with torch.no_grad():
        after = model(**inputs, output_hidden_states=True)
    assert order.channel_order != list(range(32)) and sorted(order.channel_order) == list(range(32))
    assert any(o != list(range(4)) for o in order.head_orders)
    assert not torch.equal(before_qkv, model.vision_encoder.layers[1].attn.qkv.weight)
    assert max_diff(before, after) <= TOL
    # Hidden states are the same channels, permuted.
    perm = torch.tensor(order.channel_order)
    assert (before.vision_hidden_states[-1][..., perm] - after.vision_hidden_states[-1]).abs().max() <= TOL
    again = reorder_embedding(model, [p.double() for p in calibration])  # already ordered: a fixed point
    assert again.channel_order == list(range(32)) and all(o == list(range(4)) for o in again.head_orders)


def heterogeneous_channels(seed: int, sigma: float = 1.0) -> SuperSamModel:
    """A tiny supernet whose residual channels and heads differ in importance, in random order (as trained ViTs
    have outlier channels): each channel's LayerNorm weight/bias gets its own log-normal factor (the same in every
    layer), and each head's value rows a log-normal factor."""
    model = tiny_supernet(num_layers=4, image_size=S, seed=seed)
    g = torch.Generator().manual_seed(2000 + seed)
    channel_scale = torch.exp(sigma * torch.randn(32, generator=g))
    with torch.no_grad():
        for layer in model.vision_encoder.layers:
            for norm in (layer.layer_norm1, layer.layer_norm2):
                norm.weight.mul_(channel_scale)
                norm.bias.mul_(channel_scale)
            head_scale = torch.exp(sigma * torch.randn(4, generator=g)).repeat_interleave(8)
            layer.attn.qkv.weight[64:].mul_(head_scale[:, None])
            layer.attn.qkv.bias[64:].mul_(head_scale)
    return model


def embedding_error(model, pixel_values, hidden_size: int) -> float:
    with torch.no_grad():
        full = model.get_image_embeddings(pixel_values)
        with model.subnet(SubnetConfig(tuple(range(4)), (128,) * 4, hidden_size=hidden_size)):
            narrow = model.get_image_embeddings(pixel_values)
    return ((narrow - full).norm() / full.norm()).item()


def test_reordered_slicing_is_closer_to_the_full_model(calibration):
    processor = tiny_processor(S)
    held_out = processor(images=list(make_synthetic_shapes(8, image_size=S, seed=1)["image"]), return_tensors="pt")["pixel_values"]
    before, after = [], []
    for seed in range(3):
        model = heterogeneous_channels(seed)
        before.append(embedding_error(model, held_out, 16))
        reorder_embedding(model, calibration)
        after.append(embedding_error(model, held_out, 16))
    assert all(a < b for a, b in zip(after, before)), (before, after)
    assert sum(after) < 0.8 * sum(before), (before, after)


def test_prioritize_reorders_channels_and_heads_and_reports_them():
    model = tiny_supernet(num_layers=4, image_size=S)
    inputs = prompt_inputs("boxes", image_size=S)
    with torch.no_grad():
        before = model(**inputs)
    report = prioritize(model, make_synthetic_shapes(8, image_size=S, seed=0), tiny_processor(S), num_images=8,
                        measure_layers=False, show_progress=False)
    with torch.no_grad():
        after = model(**inputs)
    order = report.embedding_order
    assert sorted(order.channel_order) == list(range(32)) and len(order.head_orders) == 4
    assert "embedding_order" not in report.to_dict()
    assert max_diff(before, after) <= 1e-4  # float32, permuted summation order
    # Not applied when reorder=False: weights unchanged, orders still measured.
    weights = model.vision_encoder.patch_embed.projection.weight.clone()
    report = prioritize(model, make_synthetic_shapes(4, image_size=S, seed=3), tiny_processor(S), num_images=4,
                        reorder=False, measure_layers=False, show_progress=False)
    assert torch.equal(weights, model.vision_encoder.patch_embed.projection.weight)
    assert report.embedding_order is not None


def test_adapter_wrapped_attention_keeps_its_adapter_at_narrow_width():
    """A PEFT LoRA layer around qkv/proj is not an nn.Linear: a narrow subnet runs it whole on zero-padded input,
    so the adapter takes part and the unmerged model equals the merged one."""
    from peft import LoraConfig, get_peft_model

    model = tiny_supernet()
    wrapped = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=r"vision_encoder\.layers\.\d+\.attn\.(?:qkv|proj)"))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)  # PEFT starts B at zero: make the adapter matter
    inputs = prompt_inputs("points")
    base = wrapped.get_base_model()
    with torch.no_grad(), base.subnet(NARROW[1]):
        unmerged = wrapped(**inputs)
    merged = wrapped.merge_and_unload()
    with torch.no_grad(), merged.subnet(NARROW[1]):
        expected = merged(**inputs)
    assert max_diff(unmerged, expected) <= TOL
    with torch.no_grad(), merged.subnet(NARROW[1]):
        assert max_diff(merged(**inputs), tiny_supernet().extract_subnet(NARROW[1])(**inputs)) > 1e-3  # adapter mattered
