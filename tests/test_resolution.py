"""Elastic input resolution (`SubnetConfig.image_size`): the subnet's forward equals its exported standard SAM at that
size (in memory, reloaded with its processor, through ONNX Runtime), the exported processor's sizes match, masks
come back at the original image size, costs follow the token grid, and old JSON keeps loading."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import SamModel, SamProcessor, pipeline

from helpers import CUSTOM_MAPPING, at_resolution, prompt_inputs, tiny_processor, tiny_supernet
from supersam_hf import SearchSpace, SubnetConfig, SuperSamConfig
from supersam_hf.elastic import RESOLUTION
from supersam_hf.elastic.resolution import resample_rel_pos
from supersam_hf.export import export_subnet
from supersam_hf.training.sandwich import sandwich_subnets

S = 64  # the supernet's input size (4 x 4 tokens of 16 px)
TOL = 1e-5
SUBNETS = [
    SubnetConfig(tuple(range(6)), (128,) * 6, image_size=32),  # every layer and width, half the resolution
    SubnetConfig((0, 2, 3, 5), (64, 16, 128, 32), hidden_size=16, image_size=48),  # all four dimensions
]


def max_diff(a, b) -> float:
    return max((a.pred_masks - b.pred_masks).abs().max().item(), (a.iou_scores - b.iou_scores).abs().max().item())


@pytest.fixture(scope="module")
def supernet():
    return tiny_supernet()


# -- search space and JSON ------------------------------------------------------------------------------------------
def test_default_resolutions_smallest_and_sampling(supernet):
    assert supernet.config.image_size_choices == [32, 48, 64]  # 50 / 75 / 100 %, whole 16 px patches
    space = supernet.search_space
    assert space.image_size_choices == (32, 48, 64) and space.largest().image_size is None
    assert space.smallest().image_size == 32  # the sandwich's smallest subnet takes the smallest resolution
    assert dict(sandwich_subnets(space, seed=0, step=0, num_random=1))["smallest"].image_size == 32
    draws = {space.sample(torch.Generator().manual_seed(k)).image_size for k in range(40)}
    assert draws == {32, 48, None}
    assert space.canonical(SubnetConfig(tuple(range(6)), (128,) * 6, image_size=64)) == space.largest()
    with pytest.raises(ValueError, match=r"image_size=40 is not among the input resolutions \[32, 48, 64\]"):
        space.validate(SubnetConfig(tuple(range(6)), (128,) * 6, image_size=40))


@pytest.mark.parametrize("choices, message", [([24, 64], "multiple of the patch size 16"),
                                              ([32, 48], "must include the full resolution 64"),
                                              ([32, 32, 64], "duplicates"), ([64, 80], "in 1..64")])
def test_bad_resolution_choices_are_rejected(choices, message):
    with pytest.raises(ValueError, match=message):
        SuperSamConfig.from_sam_config(tiny_supernet().config.to_sam_config(), image_size_choices=choices)


def test_old_json_round_trips(supernet, tmp_path):
    old_space = {"num_layers": 6, "mlp_dim": 128, "elastic_layers": [1, 2], "layer_drop_probs": [0.2, 0.3],
                 "mlp_dim_choices": [[64, 128]] * 6, "min_layers": 4, "hidden_size": 32, "num_attention_heads": 4,
                 "hidden_size_choices": [16, 32]}
    space = SearchSpace.from_json(json.dumps(old_space))
    assert space.to_dict() == old_space and space.image_size_choices == ()  # no resolution dimension, as before
    assert space.smallest().image_size is None and space.layer_plan(space.smallest()).resized is False
    with pytest.raises(ValueError, match="no input-resolution dimension"):
        space.validate(SubnetConfig(tuple(range(6)), (128,) * 6, image_size=32))
    new = supernet.search_space
    assert SearchSpace.from_json(new.to_json()) == new and "image_size_choices" in new.to_dict()

    old = SubnetConfig.from_json('{"kept_layers": [0, 1, 3], "mlp_dims": [64, 32, 128], "hidden_size": 16}')
    assert old.image_size is None and "image_size" not in old.to_dict()
    cfg = SUBNETS[1]
    assert SubnetConfig.from_json(cfg.to_json()) == cfg and cfg.name.startswith("R48-H16-")
    assert SubnetConfig.from_dict({**cfg.to_dict(), "name": cfg.name}) == cfg
    with pytest.raises(ValueError, match="image_size must hold integers"):
        SubnetConfig.from_dict({"kept_layers": [0], "mlp_dims": [64], "image_size": 32.0})

    supernet.config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    del data["image_size_choices"]  # a supernet saved before the resolution dimension existed
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert SuperSamConfig.from_pretrained(tmp_path).image_size_choices == [32, 48, 64]


# -- forward = export ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", SUBNETS, ids=lambda c: c.name)
def test_subnet_equals_extracted_and_rescales_prompts(supernet, cfg):
    extracted = supernet.extract_subnet(cfg).eval()
    size, grid = cfg.image_size, cfg.image_size // 16
    assert type(extracted) is SamModel
    assert extracted.config.vision_config.image_size == size and extracted.config.prompt_encoder_config.image_size == size
    assert extracted.config.prompt_encoder_config.image_embedding_size == grid
    assert extracted.vision_encoder.pos_embed.shape == (1, grid, grid, cfg.hidden_size or 32)
    # Global layers' tables are resampled as SAM's get_rel_pos does; windowed layers' tables stay.
    glob = extracted.config.vision_config.global_attn_indexes[0]
    assert extracted.vision_encoder.layers[glob].attn.rel_pos_h.shape[0] == 2 * grid - 1
    source = supernet.vision_encoder.layers[cfg.kept_layers[glob]].attn.rel_pos_h.detach()
    assert torch.equal(extracted.vision_encoder.layers[glob].attn.rel_pos_h, resample_rel_pos(source, 2 * grid - 1))
    for kind, seed in (("points", 1), ("boxes", 2)):
        inputs = prompt_inputs(kind, seed=seed)
        with torch.no_grad(), supernet.subnet(cfg):
            full_size = supernet(**inputs)  # pixel_values at 64 px, resized inside, prompts rescaled with them
            at_size = supernet(**at_resolution(inputs, cfg))  # pixel_values already at the subnet's size
        with torch.no_grad():
            reference = extracted(**at_resolution(inputs, cfg))
        assert full_size.pred_masks.shape[-1] == 4 * grid  # the subnet's own low resolution
        assert max_diff(full_size, reference) <= TOL and max_diff(at_size, reference) <= TOL
    with torch.no_grad():
        full = supernet(**prompt_inputs("points", seed=1))
        with supernet.subnet(cfg):
            small = supernet(**prompt_inputs("points", seed=1))
    assert full.pred_masks.shape[-1] == 16 and small.pred_masks.shape[-1] == 4 * grid  # the switch really happened
    with supernet.subnet(cfg), pytest.raises(ValueError, match="doesn't match model"):  # neither full nor subnet size
        supernet(**prompt_inputs("points", image_size=40))
    assert supernet.prompt_encoder.input_image_size == S  # the context manager restored the full model


def test_resampled_pos_embed_follows_weight_updates(supernet):
    """Outside autograd the supernet keeps the resampled `pos_embed` between forwards; an in-place update of the
    parameter (an optimiser step, a permutation) is seen at once."""
    cfg, param = SUBNETS[1], supernet.vision_encoder.pos_embed
    inputs = at_resolution(prompt_inputs("points", seed=3), cfg)
    saved = param.detach().clone()
    try:
        with torch.no_grad(), supernet.subnet(cfg):
            before = supernet(**inputs)
            param.add_(0.5)
            after = supernet(**inputs)
        with torch.no_grad():
            reference = supernet.extract_subnet(cfg).eval()(**inputs)
        assert max_diff(after, reference) <= TOL and max_diff(before, after) > 1e-3
    finally:
        with torch.no_grad():
            param.copy_(saved)


def test_bfloat16_subnet_at_a_smaller_resolution_runs_on_cpu(supernet):
    """The antialiased resizes (pixels, `pos_embed`) run in float32, where torch has no bfloat16 CPU kernel; the
    bfloat16 subnet then equals its bfloat16 export."""
    cfg, half = SUBNETS[1], tiny_supernet().to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in prompt_inputs("points", seed=4).items()}
    with torch.no_grad(), half.subnet(cfg):
        out = half(**inputs)
    with torch.no_grad():
        reference = half.extract_subnet(cfg).eval()(**at_resolution(inputs, cfg))
    assert out.pred_masks.dtype == torch.bfloat16 and max_diff(out, reference) == 0


def test_export_with_processor_reloads_and_matches(supernet, tmp_path):
    cfg = SUBNETS[1]
    out = export_subnet(supernet, cfg, tmp_path / "export", processor=tiny_processor(S))
    processor = SamProcessor.from_pretrained(out)
    ip = processor.image_processor
    assert ip.size["longest_edge"] == 48 and (ip.pad_size["height"], ip.pad_size["width"]) == (48, 48)
    assert (ip.mask_pad_size["height"], ip.mask_size["longest_edge"]) == (12, 12)  # 4 x the 3 x 3 token grid
    assert tiny_processor(S).image_processor.size["longest_edge"] == S  # the given processor is not changed
    in_memory = RESOLUTION.export_processor(tiny_processor(S), supernet.search_space.layer_plan(cfg))
    assert in_memory.target_size == processor.target_size == 48  # prompts are scaled to 48 px, in memory and reloaded
    model = SamModel.from_pretrained(out).eval()
    record = json.loads((out / "subnet.json").read_text())
    assert SubnetConfig.from_dict(record) == cfg and "48 px" in record["macs_per"]
    assert record["params"] == sum(p.numel() for p in model.parameters())

    # An image at the subnet's size: its processor only normalises it, so both see the same pixels.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    inputs = processor(image, input_points=[[[[10.0, 20.0]], [[30.0, 5.0]]]], return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (48, 48)
    feed = {k: inputs[k] for k in ("pixel_values", "input_points")}
    with torch.no_grad(), supernet.subnet(cfg):
        expected = supernet(**feed)
    with torch.no_grad():
        got = model(**feed)
    assert max_diff(expected, got) <= TOL

    # Masks come back at the original image size, from the export's processor and from the supernet's alike.
    original = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 30, 3), dtype=np.uint8))
    for proc, run in ((processor, model), (tiny_processor(S), supernet)):
        batch = proc(original, input_boxes=[[[2.0, 3.0, 20.0, 40.0]]], return_tensors="pt")
        with torch.no_grad(), supernet.subnet(cfg):
            low = run(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"]).pred_masks
        masks = proc.post_process_masks(low, batch["original_sizes"], batch["reshaped_input_sizes"])
        assert masks[0].shape[-2:] == (50, 30)


def test_evaluating_an_export_with_another_processors_size_is_one_clear_error(supernet, tmp_path):
    from supersam_hf.data import make_synthetic_shapes
    from supersam_hf.errors import SupersamError
    from supersam_hf.evaluation import evaluate_model

    out = export_subnet(supernet, SUBNETS[0], tmp_path / "export", processor=tiny_processor(S))
    data = make_synthetic_shapes(num_images=2, image_size=S, seed=0)
    with pytest.raises(SupersamError, match="takes 32 px images but the processor pads to 64 px"):
        evaluate_model(SamModel.from_pretrained(out), data, tiny_processor(S), prompt="box", show_progress=False)
    result = evaluate_model(SamModel.from_pretrained(out), data, SamProcessor.from_pretrained(out), prompt="box",
                            show_progress=False)
    assert 0.0 <= result["miou"] <= 1.0 and result["num_images"] == 2


def test_mask_generation_pipeline_loads_a_resolution_export(supernet, tmp_path):
    out = export_subnet(supernet, SUBNETS[0], tmp_path / "export", processor=tiny_processor(S))
    generator = pipeline("mask-generation", model=str(out), device="cpu")
    assert generator.model.config.vision_config.image_size == 32
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    outputs = generator(image, points_per_batch=8, points_per_crop=4, crops_n_layers=0,
                        pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert len(outputs["masks"]) >= 1 and outputs["masks"][0].shape == (48, 40)  # at the original size


def test_onnx_parity_at_the_smaller_resolution(supernet, tmp_path):
    pytest.importorskip("onnxruntime")
    from supersam_hf.onnx_export import check_parity, export_onnx

    cfg = SUBNETS[1]
    sam = supernet.extract_subnet(cfg).eval()
    export_onnx(sam, tmp_path, boxes=False)
    inputs = at_resolution(prompt_inputs("points", batch=2, prompts=3, seed=4), cfg)
    parity = check_parity(sam, tmp_path, inputs)
    assert parity["embeddings_max_rel"] <= 1e-4 and parity["pred_masks_max_rel"] <= 1e-4, parity
    assert parity["masks_identical"], parity


# -- costs and training ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", SUBNETS, ids=lambda c: c.name)
def test_costs_follow_the_token_grid(supernet, cfg):
    extracted = supernet.extract_subnet(cfg).eval().requires_grad_(False)
    assert supernet.count_parameters(cfg) == sum(p.numel() for p in extracted.parameters())
    inputs = {k: v[:1, :1] if k != "pixel_values" else v[:1] for k, v in prompt_inputs("points").items()}
    inputs = at_resolution({**inputs, "input_points": inputs["input_points"][:, :, :1],
                            "input_labels": inputs["input_labels"][:, :, :1]}, cfg)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CUSTOM_MAPPING) as counter:
        extracted(**inputs)
    assert supernet.count_macs(cfg) == counter.get_total_flops() // 2
    full = SubnetConfig(cfg.kept_layers, cfg.mlp_dims, cfg.hidden_size)
    assert supernet.count_macs(cfg) < supernet.count_macs(full)
    assert supernet.count_parameters(cfg) < supernet.count_parameters(full)  # smaller pos_embed and global tables


def test_losses_see_every_resolution_at_the_targets_size(supernet):
    labels = torch.zeros(2, 3, 16, 16)
    low = torch.randn(2, 3, 3, 8, 8, requires_grad=True)
    up = RESOLUTION.masks_like(low, labels)
    assert up.shape == (2, 3, 3, 16, 16)
    up.sum().backward()
    assert low.grad is not None and RESOLUTION.masks_like(up, labels) is up
    # The supernet's pos_embed is interpolated inside the forward: a smaller-resolution subnet trains it.
    supernet.zero_grad()
    with supernet.subnet(SUBNETS[0]):
        supernet(**prompt_inputs("points", seed=3)).pred_masks.sum().backward()
    assert supernet.vision_encoder.pos_embed.grad.abs().sum() > 0
    supernet.zero_grad()


def test_floor_benchmark_smoke():
    """benchmarks/floor.py --smoke runs (its imports and the analytic floor of a tiny space)."""
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    done = subprocess.run([sys.executable, "floor.py", "--smoke"], cwd=bench, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "narrow + resolution" in done.stdout and "R64-H16-L2-w32x2" in done.stdout
