"""SuperSamModel: conversion, exact subnet forward, exact extraction, gradients, save/load, cost model."""

import json
import logging

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel, SamModel, ViTConfig, ViTModel

from supersam_hf import SubnetConfig, SuperSamConfig, SuperSamModel
from helpers import CUSTOM_MAPPING, at_resolution, prompt_inputs, tiny_sam, tiny_supernet

TOL = 1e-5


def max_diff(a, b) -> float:
    return max((a.pred_masks - b.pred_masks).abs().max().item(), (a.iou_scores - b.iou_scores).abs().max().item())


@pytest.fixture(scope="module")
def saved_sam(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam")
    sam = tiny_sam()
    sam.save_pretrained(path)
    return sam, path


def test_conversion_loads_weights_unchanged_without_warnings(saved_sam, caplog):
    sam, path = saved_sam
    with caplog.at_level(logging.WARNING):
        model, info = SuperSamModel.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not [r for r in caplog.records if "key" in r.getMessage().lower()]
    assert isinstance(model.config, SuperSamConfig) and model.config.model_type == "supersam"
    reference = sam.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key


@pytest.mark.parametrize("kind", ["points", "boxes"])
def test_largest_subnet_equals_vanilla_sam(saved_sam, kind):
    sam, path = saved_sam
    model = SuperSamModel.from_pretrained(path).eval()
    inputs = prompt_inputs(kind)
    with torch.no_grad():
        expected = sam(**inputs)
        with model.subnet(model.search_space.largest()):
            got = model(**inputs)
        plain = model(**inputs)
    assert max_diff(expected, got) <= 1e-6
    assert max_diff(expected, plain) <= 1e-6


def test_random_subnets_equal_extracted_and_reloaded(tmp_path):
    model = tiny_supernet()
    space = model.search_space
    generator = torch.Generator().manual_seed(0)
    subnets = {space.smallest(), space.largest()}
    while len(subnets) < 22:
        subnets.add(space.sample(generator))
    points, boxes = prompt_inputs("points", seed=1), prompt_inputs("boxes", seed=2)
    for n, cfg in enumerate(sorted(subnets, key=lambda c: c.name)):
        extracted = model.extract_subnet(cfg).eval()
        assert type(extracted) is SamModel
        assert extracted.config.vision_config.num_hidden_layers == len(cfg.kept_layers)
        assert extracted.config.vision_config.mlp_dim == max(cfg.mlp_dims)
        assert model.count_parameters(cfg) == sum(p.numel() for p in extracted.parameters())
        folder = tmp_path / f"subnet{n}"
        extracted.save_pretrained(folder)
        reloaded = SamModel.from_pretrained(folder).eval()
        for inputs in (points, boxes):
            with torch.no_grad():
                with model.subnet(cfg):
                    active = model(**inputs)
                from_extracted = extracted(**at_resolution(inputs, cfg))
                from_disk = reloaded(**at_resolution(inputs, cfg))
            assert max_diff(active, from_extracted) <= TOL, cfg
            assert max_diff(active, from_disk) <= TOL, cfg
    # The context manager restores the full model.
    assert model.active_subnet is None and all(layer.active for layer in model.vision_encoder.layers)


def test_dropping_a_layer_changes_the_output():
    # Guards against a subnet switch that silently does nothing.
    model = tiny_supernet()
    inputs = prompt_inputs("points")
    cfg = SubnetConfig(kept_layers=(0, 1, 2, 3, 5), mlp_dims=(128,) * 5)
    with torch.no_grad():
        full = model(**inputs)
        with model.subnet(cfg):
            small = model(**inputs)
    assert max_diff(full, small) > 1e-3


def test_global_attention_kinds_are_remapped():
    model = tiny_supernet()  # 6 layers, global at 2 and 5
    cfg = SubnetConfig(kept_layers=(0, 2, 4, 5), mlp_dims=(128, 64, 96, 128))
    extracted = model.extract_subnet(cfg)
    assert list(extracted.config.vision_config.global_attn_indexes) == [1, 3]
    windows = [layer.window_size for layer in extracted.vision_encoder.layers]
    assert windows == [4, 0, 4, 0]


def test_extracted_model_owns_its_weights_and_keeps_dtype():
    model = tiny_supernet().to(torch.float64)
    cfg = SubnetConfig(kept_layers=(0, 1, 2, 3, 4, 5), mlp_dims=(128,) * 6)
    extracted = model.extract_subnet(cfg)
    assert next(extracted.parameters()).dtype == torch.float64
    supernet_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not supernet_ptrs & {p.data_ptr() for p in extracted.parameters()}


def test_gradients_reach_only_the_active_subnet():
    model = tiny_supernet().train()
    cfg = SubnetConfig(kept_layers=(0, 1, 3, 4), mlp_dims=(64, 32, 128, 96))
    with model.subnet(cfg):
        out = model(**prompt_inputs("points"))
        out.pred_masks.square().mean().backward()
    widths = dict(zip(cfg.kept_layers, cfg.mlp_dims))
    for i, layer in enumerate(model.vision_encoder.layers):
        if i not in widths:
            assert all(p.grad is None for p in layer.parameters()), f"dropped layer {i} got a gradient"
            continue
        d = widths[i]
        lin1, lin2 = layer.mlp.lin1, layer.mlp.lin2
        assert lin1.weight.grad[:d].abs().sum() > 0 and lin2.weight.grad[:, :d].abs().sum() > 0
        assert torch.all(lin1.weight.grad[d:] == 0) and torch.all(lin1.bias.grad[d:] == 0)
        assert torch.all(lin2.weight.grad[:, d:] == 0)


def test_subnet_forward_uses_views_not_copies():
    model = tiny_supernet()
    mlp = model.vision_encoder.layers[0].mlp
    seen = []
    handle = torch.nn.functional.linear
    try:
        def spy(x, weight, bias=None):
            seen.append(weight.untyped_storage().data_ptr())
            return handle(x, weight, bias)
        torch.nn.functional.linear = spy
        with model.subnet(model.search_space.uniform(0.5)), torch.no_grad():
            mlp(torch.randn(1, 4, 4, 32))
    finally:
        torch.nn.functional.linear = handle
    assert seen == [mlp.lin1.weight.untyped_storage().data_ptr(), mlp.lin2.weight.untyped_storage().data_ptr()]


def test_supernet_save_load_round_trip_and_auto_model(tmp_path):
    model = tiny_supernet(elastic_layers=[2, 3, 4], layer_drop_probs=[0.1, 0.4, 0.3], min_layers=4)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "supersam" and saved["layer_drop_probs"] == [0.1, 0.4, 0.3]
    for loader in (SuperSamModel.from_pretrained, AutoModel.from_pretrained):
        loaded = loader(tmp_path).eval()
        assert type(loaded) is SuperSamModel
        assert loaded.search_space == model.search_space
        cfg = SubnetConfig(kept_layers=(0, 1, 3, 5), mlp_dims=(32, 64, 96, 128))
        inputs = prompt_inputs("boxes")
        with torch.no_grad(), model.subnet(cfg), loaded.subnet(cfg):
            assert max_diff(model(**inputs), loaded(**inputs)) == 0.0


def test_from_pretrained_rejects_non_sam_checkpoint(tmp_path):
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type='vit'"):
        SuperSamModel.from_pretrained(tmp_path)


def test_count_parameters_shrinks_with_the_subnet():
    model = tiny_supernet()
    space = model.search_space
    full = model.count_parameters(space.largest())
    assert full == sum(p.numel() for p in model.parameters())
    assert model.count_parameters(space.smallest()) < model.count_parameters(space.uniform(0.5)) < full


@pytest.mark.parametrize("cfg", [None, SubnetConfig((0, 1, 2, 4, 5), (128, 128, 128, 64, 128)), SubnetConfig((0, 2, 3), (32, 32, 32))])
def test_count_macs_matches_flop_counter(cfg):
    model = tiny_supernet()
    inputs = prompt_inputs("points", batch=1, prompts=1)
    inputs["input_points"] = inputs["input_points"][:, :, :1]
    inputs["input_labels"] = inputs["input_labels"][:, :, :1]
    extracted = model.extract_subnet(cfg).eval().requires_grad_(False)  # see test_macs for why
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CUSTOM_MAPPING) as counter:
        extracted(**inputs)
    measured = counter.get_total_flops() / 2
    assert abs(model.count_macs(cfg) - measured) <= 0.05 * measured


def test_count_macs_is_smaller_for_smaller_subnets():
    model = tiny_supernet()
    space = model.search_space
    assert model.count_macs(space.smallest()) < model.count_macs(space.uniform(0.5)) < model.count_macs(space.largest())


def test_forward_keeps_sam_signature_and_attention_outputs():
    """SuperSamModel.forward takes SamModel's arguments (transformers' common tests read the typed kwargs to decide
    whether a model can return attentions), and `multimask_output` / `output_attentions` reach SAM."""
    import inspect

    sam_params = inspect.signature(SamModel.forward).parameters
    super_params = inspect.signature(SuperSamModel.forward).parameters
    assert [(n, p.default) for n, p in super_params.items()] == [(n, p.default) for n, p in sam_params.items()]
    assert super_params["kwargs"].annotation == sam_params["kwargs"].annotation
    sam = SamModel._from_config(tiny_sam(num_layers=2).config, attn_implementation="eager").eval()
    model = SuperSamModel.from_sam(sam).eval()
    inputs = {"pixel_values": torch.randn(1, 3, 64, 64), "input_points": torch.tensor([[[[10.0, 20.0]]]])}
    with torch.no_grad():
        out = model(**inputs, multimask_output=False, output_attentions=True)
        ref = sam(**inputs, multimask_output=False, output_attentions=True)
    assert out.pred_masks.shape[2] == 1
    assert len(out.vision_attentions) == len(ref.vision_attentions) == 2
    torch.testing.assert_close(out.vision_attentions[-1], ref.vision_attentions[-1], rtol=0, atol=0)
