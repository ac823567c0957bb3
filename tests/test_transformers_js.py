"""An `export --onnx` folder runs in transformers.js (Node, local files only) and matches PyTorch for point prompts.

transformers.js comes from npm (`cd tests/js && npm install --ignore-scripts`, as `.ci/run` does): `tests/js`
pins the version. Without `node` the test is skipped; with `node` but without the package it fails, saying how to
install it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import JS_DIR, node_with_transformers_js, tiny_processor, tiny_supernet
from PIL import Image
from transformers import SamModel, SamProcessor

from supersam_hf import SubnetConfig
from supersam_hf.export import export_subnet
from supersam_hf.onnx_export import OnnxSamModel, quantize_int8

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = JS_DIR / "sam_points.mjs"
SUBNET = SubnetConfig(kept_layers=(0, 1, 3, 5), mlp_dims=(128, 64, 32, 96))
# 1 image (64 x 48: resized to 64 px, padded to 64 x 64), 3 prompts: one point, one point, a point and a
# background point.
POINTS = [[[[20.0, 30.0], [50.0, 40.0]], [[40.0, 10.0], [10.0, 40.0]], [[5.0, 44.0], [60.0, 2.0]]]]
LABELS = [[[1, 0], [1, 1], [1, 0]]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    export_subnet(tiny_supernet(num_layers=6, image_size=64), SUBNET, root / "tiny-sam", processor=tiny_processor(),
                  onnx=True)
    image = root / "image.png"
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(image)
    return root, image


def _run_js(node: str, root: Path, image: Path, dtype: str = "fp32") -> dict:
    result = subprocess.run([node, str(SCRIPT), str(root), "tiny-sam", str(image), json.dumps(POINTS),
                             json.dumps(LABELS), dtype], capture_output=True, text=True, timeout=120, cwd=JS_DIR)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return {key: torch.tensor(value["data"]).reshape(value["dims"]) if isinstance(value, dict) else value
            for key, value in out.items()}


def test_transformers_js_matches_pytorch_for_point_prompts(exported):
    node = node_with_transformers_js("the transformers.js check")
    root, image = exported
    js = _run_js(node, root, image)

    processor = SamProcessor.from_pretrained(root / "tiny-sam")
    inputs = processor(images=Image.open(image), input_points=POINTS, input_labels=LABELS, return_tensors="pt")
    torch.testing.assert_close(js["pixel_values"], inputs["pixel_values"], atol=1e-5, rtol=0)  # same preprocessing
    assert js["original_sizes"] == [[48, 64]] and js["reshaped_input_sizes"] == [[48, 64]]

    model = SamModel.from_pretrained(root / "tiny-sam").eval()
    with torch.no_grad():
        reference = model(**inputs, multimask_output=True)
    assert reference.pred_masks.std() > 0.01 and reference.iou_scores.std() > 1e-3  # outputs that vary
    torch.testing.assert_close(js["iou_scores"], reference.iou_scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(js["pred_masks"], reference.pred_masks, atol=1e-4 * reference.pred_masks.abs().max(),
                               rtol=0)
    masks = processor.post_process_masks(reference.pred_masks, inputs["original_sizes"],
                                         inputs["reshaped_input_sizes"])[0]
    assert js["masks"].shape == masks.shape == (3, 3, 48, 64)
    assert 0 < masks.float().mean() < 1  # masks with both values
    # bilinear upscaling in JS and in torch round differently only at a mask's boundary
    assert (js["masks"].bool() == masks).float().mean() > 0.99


def test_transformers_js_q8_loads_the_quantized_files(exported):
    """dtype "q8" (transformers.js's default in the browser) runs `*_quantized.onnx`: the same numbers as
    `OnnxSamModel(int8=True)` in Python."""
    node = node_with_transformers_js("the transformers.js check")
    root, image = exported
    quantize_int8(root / "tiny-sam")
    js = _run_js(node, root, image, dtype="q8")
    processor = SamProcessor.from_pretrained(root / "tiny-sam")
    inputs = processor(images=Image.open(image), input_points=POINTS, input_labels=LABELS, return_tensors="pt")
    expected = OnnxSamModel(root / "tiny-sam", int8=True)(pixel_values=inputs["pixel_values"],
                                                          input_points=inputs["input_points"],
                                                          input_labels=inputs["input_labels"])
    fp32 = OnnxSamModel(root / "tiny-sam")(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"],
                                           input_labels=inputs["input_labels"])
    assert (expected.pred_masks - fp32.pred_masks).abs().max() > 1e-4  # the quantized encoder is really used
    torch.testing.assert_close(js["iou_scores"], expected.iou_scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(js["pred_masks"], expected.pred_masks, atol=1e-4 * expected.pred_masks.abs().max(),
                               rtol=0)
