"""ONNX export and ONNX Runtime inference: parity with PyTorch, dynamic prompts, INT8, latency cache, errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import SamModel

from helpers import prompt_inputs, tiny_processor, tiny_sam, tiny_supernet
from supersam_hf import SubnetConfig, build_sam_config
from supersam_hf import onnx_export
from supersam_hf.onnx_export import (
    BOX_DECODER_FILE,
    DECODER_FILE,
    ENCODER_FILE,
    ENCODER_INT8_FILE,
    OnnxSamModel,
    OrtLatencyCache,
    check_parity,
    export_onnx,
    ort_latency_ms,
    quantize_int8,
)

pytest.importorskip("onnxruntime")  # installed with the [onnx] extra, which the test command installs

IMAGE = 64


def assert_parity(parity: dict) -> None:
    assert parity["embeddings_max_rel"] <= 1e-4, parity
    assert parity["iou_scores_max_abs"] <= 1e-4, parity
    assert parity["pred_masks_max_rel"] <= 1e-4, parity
    assert parity["masks_identical"], parity


@pytest.fixture(scope="module")
def sam() -> SamModel:
    return tiny_sam(num_layers=3, image_size=IMAGE)


@pytest.fixture(scope="module")
def exported(sam, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    paths = export_onnx(sam, folder)
    return folder, paths


def test_export_writes_optimum_split_with_dynamic_axes(exported):
    onnx = pytest.importorskip("onnx")
    folder, paths = exported
    assert {p.name for p in paths.values()} == {ENCODER_FILE, DECODER_FILE, BOX_DECODER_FILE}
    assert all(p.parent == folder / "onnx" for p in paths.values())
    io = {}
    for key, path in paths.items():
        graph = onnx.load(str(path)).graph
        io[key] = ([i.name for i in graph.input], [o.name for o in graph.output])
        dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
        assert all(isinstance(shape[0], str) for shape in dims.values()), dims  # dynamic batch everywhere
        if "input_points" in dims:
            assert all(isinstance(d, str) for d in dims["input_points"][:3]), dims  # batch, prompts, points
    # optimum's SAM names, what transformers.js's SamModel feeds and reads
    image = ["image_embeddings", "image_positional_embeddings"]
    assert io["vision_encoder"] == (["pixel_values"], image)
    assert io["prompt_encoder_mask_decoder"] == ([*image, "input_points", "input_labels"], ["iou_scores", "pred_masks"])
    assert io["prompt_encoder_mask_decoder_boxes"] == ([*image, "input_boxes"], ["iou_scores", "pred_masks"])


@pytest.mark.parametrize("kind", ["points", "boxes"])
def test_full_model_parity(sam, exported, kind):
    # Exported from one image with one prompt (one point); run on 2 images x 3 prompts (x 2 points).
    inputs = prompt_inputs(kind, batch=2, prompts=3, image_size=IMAGE, seed=1)
    assert_parity(check_parity(sam, exported[0], inputs))


def test_dynamic_prompts_and_points_per_prompt(sam, exported):
    model = OnnxSamModel(exported[0])
    assert model.config.vision_config.image_size == IMAGE
    generator = torch.Generator().manual_seed(2)
    pixels = torch.randn(1, 3, IMAGE, IMAGE, generator=generator)
    embeddings = model.get_image_embeddings(pixels)  # encode once, decode several prompt sets
    for prompts, points in ((1, 1), (3, 1), (2, 4)):
        input_points = torch.rand(1, prompts, points, 2, generator=generator) * IMAGE
        input_labels = torch.randint(0, 2, (1, prompts, points), generator=generator)
        out = model(image_embeddings=embeddings, input_points=input_points, input_labels=input_labels)
        with torch.no_grad():
            ref = sam(pixel_values=pixels, input_points=input_points, input_labels=input_labels)
        assert out.pred_masks.shape == ref.pred_masks.shape == (1, prompts, 3, IMAGE // 4, IMAGE // 4)
        assert torch.equal(out.pred_masks > 0, ref.pred_masks > 0)
        torch.testing.assert_close(out.iou_scores, ref.iou_scores, atol=1e-4, rtol=1e-4)


def test_post_processed_masks_match(sam, exported):
    """What evaluation scores: masks after SamProcessor.post_process_masks, from a full `pixel_values` call."""
    processor = tiny_processor(IMAGE)
    inputs = prompt_inputs("points", batch=2, prompts=2, image_size=IMAGE, seed=3)
    out = OnnxSamModel(exported[0])(**inputs, multimask_output=True)
    with torch.no_grad():
        ref = sam(**inputs, multimask_output=True)
    sizes = [[IMAGE + 16, IMAGE]] * 2
    reshaped = [[IMAGE, IMAGE]] * 2
    got = processor.post_process_masks(out.pred_masks, sizes, reshaped, mask_threshold=0.0, binarize=True)
    want = processor.post_process_masks(ref.pred_masks, sizes, reshaped, mask_threshold=0.0, binarize=True)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def _subnet_parity(model: SamModel, tmp_path) -> dict:
    export_onnx(model, tmp_path, boxes=False)
    return check_parity(model, tmp_path, prompt_inputs("points", batch=2, prompts=3, image_size=IMAGE, seed=4))


def test_depth_subnet_parity(tmp_path):
    supernet = tiny_supernet(num_layers=4, image_size=IMAGE)
    space = supernet.search_space
    largest = space.largest()
    dropped = space.elastic_layers[0]
    kept = [i for i in largest.kept_layers if i != dropped]
    cfg = SubnetConfig(kept, [largest.mlp_dims[largest.kept_layers.index(i)] for i in kept])
    space.validate(cfg)
    sam = supernet.extract_subnet(cfg).eval()
    assert sam.config.vision_config.num_hidden_layers == 3
    assert_parity(_subnet_parity(sam, tmp_path))


def test_mlp_width_subnet_parity(tmp_path):
    supernet = tiny_supernet(num_layers=3, image_size=IMAGE)
    space = supernet.search_space
    cfg = SubnetConfig(space.largest().kept_layers, [space.mlp_dim_choices[i][0] for i in space.largest().kept_layers])
    space.validate(cfg)
    sam = supernet.extract_subnet(cfg).eval()
    assert sam.config.vision_config.mlp_dim < supernet.config.vision_config.mlp_dim
    assert_parity(_subnet_parity(sam, tmp_path))


def test_embedding_width_model_parity(tmp_path):
    """A narrower encoder (fewer heads of the same size), as an embedding-width subnet exports."""
    config = build_sam_config(image_size=IMAGE, hidden_size=16, num_attention_heads=2, num_hidden_layers=2, output_channels=32)
    torch.manual_seed(5)
    sam = SamModel(config).eval()
    with torch.no_grad():
        for name, param in sam.vision_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(0.0, 0.5)
            elif param.dim() >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5)
    assert_parity(_subnet_parity(sam, tmp_path))


def test_int8_encoder(sam, exported):
    folder = exported[0]
    path = quantize_int8(folder)
    assert path == folder / "onnx" / "vision_encoder_quantized.onnx" == folder / "onnx" / ENCODER_INT8_FILE
    assert path.stat().st_size > 0
    # transformers.js's "q8" dtype asks for both files under "_quantized" names; the decoder is the fp32 one
    decoder = folder / "onnx" / "prompt_encoder_mask_decoder_quantized.onnx"
    assert decoder.read_bytes() == (folder / "onnx" / DECODER_FILE).read_bytes()
    model = OnnxSamModel(folder, int8=True)
    assert model.config.to_dict() == OnnxSamModel(folder).config.to_dict()
    parity = check_parity(sam, model, prompt_inputs("points", batch=2, prompts=3, image_size=IMAGE, seed=1))
    # Quantized, so not exact; on this tiny random model: ~3 % embedding error, ~99 % of mask pixels agree.
    assert 0 < parity["embeddings_max_rel"] < 0.15, parity
    assert parity["mask_agreement"] > 0.9, parity


def test_latency_and_cache(sam, exported, tmp_path, monkeypatch):
    assert ort_latency_ms(exported[0], threads=1, warmup=0, repeats=1) > 0
    calls = []

    def fake_latency(model, image_size=None, **kwargs):
        calls.append(model)
        return 12.5

    cache_file = tmp_path / "ort_latency.json"
    cache = OrtLatencyCache(cache_file, threads=1)
    monkeypatch.setattr(onnx_export.runtime, "ort_latency_ms", fake_latency)
    assert cache.measure("L3-w128x3", sam) == 12.5
    assert cache.measure("L3-w128x3", sam) == 12.5 and len(calls) == 1  # cached, not re-timed
    assert OrtLatencyCache(cache_file, threads=1).get("L3-w128x3") == 12.5  # persisted
    assert OrtLatencyCache(cache_file, threads=2).get("L3-w128x3") is None  # other runtime settings: not reused
    assert json.loads(cache_file.read_text())["latency_ms"] == {"L3-w128x3": 12.5}


def test_latency_of_in_memory_model_exports_its_encoder(sam):
    assert ort_latency_ms(sam, threads=1, warmup=0, repeats=1) > 0


def test_clear_errors(sam, exported, tmp_path):
    model = OnnxSamModel(exported[0])
    inputs = prompt_inputs("points", batch=1, prompts=1, image_size=IMAGE)
    with pytest.raises(ValueError, match="multimask_output=True"):
        model(**inputs, multimask_output=False)
    with pytest.raises(ValueError, match="one prompt kind"):
        model(**inputs, input_boxes=torch.tensor([[[0.0, 0.0, 8.0, 8.0]]]))
    with pytest.raises(ValueError, match=r"\(batch, 3, 64, 64\)"):
        model.get_image_embeddings(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="extract_subnet"):
        export_onnx(tiny_supernet(num_layers=3, image_size=IMAGE), tmp_path)
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        OnnxSamModel(tmp_path)
    export_onnx(sam, tmp_path / "fresh", boxes=False)
    with pytest.raises(FileNotFoundError, match="quantize_int8"):
        OnnxSamModel(tmp_path / "fresh", int8=True)
    with pytest.raises(ValueError, match="export with boxes=True"):
        OnnxSamModel(tmp_path / "fresh")(**prompt_inputs("boxes", batch=1, prompts=1, image_size=IMAGE))


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_missing_extra_names_the_install_command(sam, tmp_path, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install supersam_hf\[onnx\]"):
        export_onnx(sam, tmp_path)
    with pytest.raises(ImportError, match=r"pip install supersam_hf\[onnx\]"):
        ort_latency_ms(tmp_path / "vision_encoder.onnx")
    assert not (tmp_path / "onnx").exists()


def test_int8_drop_warning_threshold():
    assert onnx_export.int8_drop_warning(0.80, 0.795) is None  # within one mIoU point
    message = onnx_export.int8_drop_warning(0.80, 0.70)
    assert message.startswith("WARNING") and "0.1000" in message and ENCODER_FILE in message
    assert onnx_export.int8_drop_warning(0.80, 0.70, threshold=0.2) is None
