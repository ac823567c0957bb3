"""INT8: dynamic quantization of the encoder under transformers.js's "q8" names, and the warning when it costs
accuracy."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .layout import (DECODER_FILE, DECODER_INT8_FILE, ENCODER_FILE, ENCODER_INT8_FILE, _config_from_file, _onnx_folder,
                     _save_with_metadata, require_onnx)


def quantize_int8(onnx_dir: str | os.PathLike) -> Path:
    """Dynamic INT8 quantization of the encoder's MatMul/Gemm weights → `vision_encoder_quantized.onnx` beside it,
    and the fp32 decoder as `prompt_encoder_mask_decoder_quantized.onnx`: the pair transformers.js loads for its
    "q8" dtype (the browser's default). Returns the quantized encoder's path.

    Activations are quantized on the fly (no calibration data). The patch-embedding and neck convolutions stay in
    float (about 1 % of a ViT-B encoder's MACs). The graph is shape-inferred and optimised first (`quant_pre_process`), as ONNX Runtime recommends (ONNX shape
    inference only: ORT's symbolic shape inference does not complete on SAM's windowed attention).
    """
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder = _onnx_folder(onnx_dir)
    source, target = folder / ENCODER_FILE, folder / ENCODER_INT8_FILE
    config = _config_from_file(source)
    large = _has_external_data(source)  # a model over 2 GB (e.g. ViT-H) keeps its weights beside the graph
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True, save_as_external_data=large,
                          all_tensors_to_one_file=large)
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         use_external_data_format=large)
    _save_with_metadata(target, config)
    decoder = folder / DECODER_FILE
    if decoder.is_file():
        shutil.copyfile(decoder, folder / DECODER_INT8_FILE)
    return target


def _has_external_data(path: Path) -> bool:
    onnx, _ = require_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)


INT8_MIOU_DROP_THRESHOLD = 0.01  # absolute mIoU (one point): larger INT8 drops are reported loudly


def int8_drop_warning(fp32_miou: float, int8_miou: float, threshold: float = INT8_MIOU_DROP_THRESHOLD) -> str | None:
    """A loud message when the INT8 encoder loses more than `threshold` mIoU against fp32 on the same data, else None."""
    drop = fp32_miou - int8_miou
    if drop <= threshold:
        return None
    return (f"WARNING: the INT8 encoder loses {drop:.4f} mIoU ({fp32_miou:.4f} fp32 -> {int8_miou:.4f} INT8), more "
            f"than the {threshold:.4f} threshold; prefer onnx/{ENCODER_FILE} where accuracy matters.")
