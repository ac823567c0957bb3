"""ONNX export of a `transformers.SamModel`, ONNX Runtime inference, INT8 quantization and ORT latency.

The split, file names and input/output names follow optimum's SAM export, the layout transformers.js's `SamModel`
loads (`onnx/<name>.onnx` for fp32, `onnx/<name>_quantized.onnx` for its "q8" dtype), so an image is encoded once
and the decoder runs per prompt set:

* ``onnx/vision_encoder.onnx``: ``pixel_values`` (batch, 3, H, W) → ``image_embeddings`` (batch, C, h, w),
  ``image_positional_embeddings`` (batch, C, h, w): the image-wide positional embedding, which depends on the
  weights only (the same for every image); optimum exports it from the encoder and transformers.js feeds it to the
  decoder, so it is provided the same way.
* ``onnx/prompt_encoder_mask_decoder.onnx``: ``image_embeddings``, ``image_positional_embeddings``,
  ``input_points`` (batch, prompts, points, 2), ``input_labels`` (batch, prompts, points) → ``iou_scores`` (batch,
  prompts, 3), ``pred_masks`` (batch, prompts, 3, 4h, 4w) — SAM's three multimask outputs, as optimum exports them.
* ``onnx/prompt_encoder_mask_decoder_boxes.onnx``: the same decoder for box prompts, ``image_embeddings``,
  ``image_positional_embeddings``, ``input_boxes`` (batch, prompts, 4) → ``iou_scores``, ``pred_masks``. SAM's
  prompt encoder appends a padding point only when no box is given, so one traced graph cannot serve both prompt
  kinds exactly; two small files can (transformers.js's `SamModel` runs the point decoder).
* with INT8 quantization (`quantize_int8`): ``onnx/vision_encoder_quantized.onnx`` (dynamic INT8 weights) and
  ``onnx/prompt_encoder_mask_decoder_quantized.onnx``, the fp32 decoder under the name transformers.js's "q8"
  dtype (its default in the browser) asks for: the decoder is small and stays exact, so the measured INT8 accuracy
  is that of the quantized encoder alone.

Batch, number of prompts and points per prompt are dynamic axes.
Each file stores the model's `SamConfig` as JSON in its metadata (key ``sam_config``), so the folder is
self-describing.

Exporter: the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`; deprecated since torch 2.9, still
shipped in 2.14). It traces a tiny SAM in about a second (a ViT-B at 1024 px: one forward plus serialisation),
honours dynamic axes from size-1 example inputs, and matches PyTorch to float rounding. The dynamo exporter
(`torch.export`) specialises size-1 example dimensions (a dynamic batch exported from one image fails with
"Invalid ranges [2:1]") and took ~40 s for the tiny test decoder on this machine, which matters when the search
exports every subnet it times.

`onnx` and `onnxruntime` are optional (extra ``[onnx]``); they are imported inside the functions.

Modules: `layout` (file names, metadata, card snippets), `graphs` (torch → ONNX), `attention` (the encoder's
attention as exported: the relative-position bias folded into the attention product where that runs faster, and
windowed layers without work on the padding),
`quantize` (INT8), `runtime` (`OnnxSamModel`, parity, latency).
"""

from .graphs import export_onnx, export_vision_encoder
from .layout import (BOX_DECODER_FILE, DECODER_FILE, DECODER_INT8_FILE, ENCODER_FILE, ENCODER_INT8_FILE,
                     MISSING_EXTRA_MESSAGE, ONNX_SUBFOLDER, MissingOnnxExtraError, onnx_usage_snippet, require_onnx,
                     transformers_js_snippet)
from .quantize import INT8_MIOU_DROP_THRESHOLD, int8_drop_warning, quantize_int8
from .runtime import OnnxSamModel, OrtLatencyCache, check_parity, ort_latency_ms, ort_session

__all__ = [
    "ONNX_SUBFOLDER", "ENCODER_FILE", "ENCODER_INT8_FILE", "DECODER_FILE", "DECODER_INT8_FILE", "BOX_DECODER_FILE",
    "MISSING_EXTRA_MESSAGE", "MissingOnnxExtraError", "require_onnx", "export_onnx", "export_vision_encoder",
    "quantize_int8", "OnnxSamModel", "ort_session", "ort_latency_ms", "OrtLatencyCache", "check_parity",
    "INT8_MIOU_DROP_THRESHOLD", "int8_drop_warning", "onnx_usage_snippet", "transformers_js_snippet",
]
