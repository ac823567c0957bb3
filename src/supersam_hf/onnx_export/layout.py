"""The files of an ONNX export: their names (optimum's split, transformers.js's dtype suffixes), the SamConfig each
stores in its metadata, where they are found, and the model card's snippets that run them (ONNX Runtime in Python,
transformers.js in the browser or Node)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers import SamConfig

from ..errors import ModelFileError

ONNX_SUBFOLDER = "onnx"
ENCODER_FILE = "vision_encoder.onnx"
# transformers.js names a file by its dtype: "" fp32, "_quantized" q8 (dynamic INT8), "_fp16", "_int8", ...
ENCODER_INT8_FILE = "vision_encoder_quantized.onnx"
DECODER_FILE = "prompt_encoder_mask_decoder.onnx"
DECODER_INT8_FILE = "prompt_encoder_mask_decoder_quantized.onnx"
BOX_DECODER_FILE = "prompt_encoder_mask_decoder_boxes.onnx"
CONFIG_METADATA_KEY = "sam_config"
MISSING_EXTRA_MESSAGE = "ONNX support needs extra packages: pip install supersam_hf[onnx]"
_PROTOBUF_LIMIT = 2_000_000_000  # bytes; larger models keep their weights in an external data file


class MissingOnnxExtraError(ImportError, ValueError):
    """The `[onnx]` extra is not installed. Also a ValueError, so command lines answer it in one line."""


def require_onnx() -> tuple[Any, Any]:
    """`(onnx, onnxruntime)`, or a `MissingOnnxExtraError` (an ImportError) naming the extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise MissingOnnxExtraError(f"{MISSING_EXTRA_MESSAGE} ({error}).") from error
    return onnx, onnxruntime


def _save_with_metadata(path: Path, config: SamConfig) -> None:
    """Store the SamConfig in the file's metadata (re-saving with external data for models over 2 GB)."""
    onnx, _ = require_onnx()
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {CONFIG_METADATA_KEY: config.to_json_string(use_diff=False),
                                        "producer": "supersam_hf"})
    weights = sum(len(init.raw_data) for init in proto.graph.initializer)
    if weights > _PROTOBUF_LIMIT:
        onnx.save(proto, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(proto, str(path))


def _config_from_file(path: Path) -> SamConfig:
    onnx, _ = require_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    props = {prop.key: prop.value for prop in proto.metadata_props}
    if CONFIG_METADATA_KEY not in props:
        raise ModelFileError(f"{path} has no '{CONFIG_METADATA_KEY}' metadata; re-export it with supersam_hf.export_onnx.")
    return SamConfig(**json.loads(props[CONFIG_METADATA_KEY]))


def _onnx_folder(path: str | os.PathLike) -> Path:
    """An export folder or its `onnx/` subfolder → the folder holding the ONNX files."""
    path = Path(path)
    if (path / ENCODER_FILE).is_file():
        return path
    if (path / ONNX_SUBFOLDER / ENCODER_FILE).is_file():
        return path / ONNX_SUBFOLDER
    raise FileNotFoundError(
        f"No {ENCODER_FILE} in {str(path)!r} or its {ONNX_SUBFOLDER}/ subfolder; export with export_onnx(...) "
        "(or `supersam export --onnx`) first."
    )


def onnx_usage_snippet(repo_or_folder: str = "./my-export", int8: bool = False) -> str:
    """Markdown for a model card: run the exported files with ONNX Runtime (a point prompt on an image the snippet
    draws itself, so it runs as written). A Hub id is downloaded with `snapshot_download`; a folder is used as is."""
    encoder = f"onnx/{ENCODER_INT8_FILE if int8 else ENCODER_FILE}"
    decoder = f"onnx/{DECODER_INT8_FILE if int8 else DECODER_FILE}"
    local = repo_or_folder.startswith((".", "/"))
    folder = (f'folder = "{repo_or_folder}"' if local else
              f'folder = snapshot_download("{repo_or_folder}")  # the model\'s files, onnx/ included')
    hub_import = "" if local else "from huggingface_hub import snapshot_download\n"
    return f"""```python
import numpy as np
import onnxruntime as ort
import torch
{hub_import}from PIL import Image, ImageDraw
from transformers import SamProcessor

image = Image.new("RGB", (640, 480), "white")  # your image: Image.open("photo.jpg").convert("RGB")
ImageDraw.Draw(image).ellipse((200, 150, 440, 330), fill="red")

{folder}
processor = SamProcessor.from_pretrained(folder)
encoder = ort.InferenceSession(f"{{folder}}/{encoder}")
decoder = ort.InferenceSession(f"{{folder}}/{decoder}")

inputs = processor(images=image, input_points=[[[320, 240]]], return_tensors="pt")
image_embeddings, image_positional_embeddings = encoder.run(  # once per image
    None, {{"pixel_values": inputs["pixel_values"].numpy()}})
points = inputs["input_points"].numpy().astype(np.float32)
iou_scores, pred_masks = decoder.run(None, {{  # per prompt set; boxes: onnx/{BOX_DECODER_FILE}, "input_boxes"
    "image_embeddings": image_embeddings,
    "image_positional_embeddings": image_positional_embeddings,
    "input_points": points,
    "input_labels": np.ones(points.shape[:-1], dtype=np.int64),
}})
masks = processor.post_process_masks(torch.from_numpy(pred_masks), inputs["original_sizes"],
                                     inputs["reshaped_input_sizes"])
print(masks[0].shape, iou_scores)
```"""


def transformers_js_snippet(repo_or_folder: str = "./my-export") -> str:
    """Markdown for a model card: the export in transformers.js (browser or Node). A local folder is read with
    remote models off; a Hub id is downloaded."""
    local = repo_or_folder.startswith((".", "/"))
    name = repo_or_folder.rstrip("/").rsplit("/", 1)[-1] if local else repo_or_folder
    parent = repo_or_folder.rstrip("/").rsplit("/", 1)[0] if local else ""
    setup = (f'env.allowRemoteModels = false;\nenv.localModelPath = "{parent or "."}";  // the folder holding {name}/\n'
             if local else "")
    return f"""```js
import {{ AutoProcessor, RawImage, SamModel, env }} from "@huggingface/transformers";

{setup}const model = await SamModel.from_pretrained("{name}");  // dtype: "q8" loads the *_quantized.onnx files
const processor = await AutoProcessor.from_pretrained("{name}");

// A white 640 x 480 image with a red ellipse; your image: await RawImage.read("photo.jpg")
const [width, height] = [640, 480];
const pixels = new Uint8ClampedArray(width * height * 3).fill(255);
for (let y = 0; y < height; y++) for (let x = 0; x < width; x++)
  if (((x - 320) / 120) ** 2 + ((y - 240) / 90) ** 2 <= 1) pixels.set([255, 0, 0], (y * width + x) * 3);
const image = new RawImage(pixels, width, height, 3);

const inputs = await processor(image, {{ input_points: [[[320, 240]]] }});
const outputs = await model(inputs);
const masks = await processor.post_process_masks(outputs.pred_masks, inputs.original_sizes, inputs.reshaped_input_sizes);
console.log(masks[0].dims, outputs.iou_scores.data);
```"""
