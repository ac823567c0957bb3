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
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import SamConfig, SamModel
from transformers.models.sam.modeling_sam import SamImageSegmentationOutput

from .errors import ModelFileError, SupersamError
from .outputs import record_tool_outputs

logger = logging.getLogger(__name__)

__all__ = [
    "ONNX_SUBFOLDER",
    "ENCODER_FILE",
    "ENCODER_INT8_FILE",
    "DECODER_FILE",
    "DECODER_INT8_FILE",
    "BOX_DECODER_FILE",
    "MISSING_EXTRA_MESSAGE",
    "MissingOnnxExtraError",
    "require_onnx",
    "export_onnx",
    "export_vision_encoder",
    "quantize_int8",
    "OnnxSamModel",
    "ort_session",
    "ort_latency_ms",
    "OrtLatencyCache",
    "check_parity",
    "INT8_MIOU_DROP_THRESHOLD",
    "int8_drop_warning",
    "onnx_usage_snippet",
    "transformers_js_snippet",
]

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


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------


class _VisionEncoder(torch.nn.Module):
    """`pixel_values` → `image_embeddings`, `image_positional_embeddings` (optimum's SAM encoder outputs)."""

    def __init__(self, sam: SamModel):
        super().__init__()
        self.sam = sam

    def forward(self, pixel_values: torch.Tensor):
        embeddings = self.sam.vision_encoder(pixel_values).last_hidden_state
        positional = self.sam.get_image_wide_positional_embeddings().repeat(pixel_values.shape[0], 1, 1, 1)
        return embeddings, positional


class _Decoder(torch.nn.Module):
    """Prompt encoder + mask decoder, as `SamModel.forward` runs them after the image encoder, with the image-wide
    positional embedding as an input (optimum's SAM decoder)."""

    def __init__(self, sam: SamModel):
        super().__init__()
        self.sam = sam

    def decode(self, image_embeddings, image_positional_embeddings, **prompts):
        sparse, dense = self.sam.prompt_encoder(input_points=prompts.get("input_points"),
                                                input_labels=prompts.get("input_labels"),
                                                input_boxes=prompts.get("input_boxes"), input_masks=None)
        masks, scores = self.sam.mask_decoder(image_embeddings=image_embeddings,
                                              image_positional_embeddings=image_positional_embeddings,
                                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                              multimask_output=True)[:2]
        return scores, masks


class _PointDecoder(_Decoder):
    """Prompt encoder + mask decoder for point prompts."""

    def forward(self, image_embeddings, image_positional_embeddings, input_points, input_labels):
        return self.decode(image_embeddings, image_positional_embeddings, input_points=input_points,
                           input_labels=input_labels)


class _BoxDecoder(_Decoder):
    """Prompt encoder + mask decoder for box prompts."""

    def forward(self, image_embeddings, image_positional_embeddings, input_boxes):
        return self.decode(image_embeddings, image_positional_embeddings, input_boxes=input_boxes)


_OUTPUT_AXES = {"iou_scores": {0: "batch_size", 1: "point_batch_size"},
                "pred_masks": {0: "batch_size", 1: "point_batch_size"}}
_PROMPT_AXES = {0: "batch_size", 1: "point_batch_size", 2: "nb_points_per_image"}
_IMAGE_AXES = {"image_embeddings": {0: "batch_size"}, "image_positional_embeddings": {0: "batch_size"}}


def _exportable(model: SamModel) -> SamModel:
    """The model in eval mode, on CPU in float32 (a copy only if it is elsewhere); rejects supernets."""
    if not isinstance(model, SamModel):
        raise SupersamError(f"ONNX export needs a transformers SamModel, got {type(model).__name__}.")
    if getattr(model.config, "model_type", "sam") != "sam":
        raise SupersamError(
            f"ONNX export needs a plain SamModel, got a {model.config.model_type!r} model; export a subnet of a "
            "supernet with supernet.extract_subnet(cfg) first, so the files hold only the subnet's weights."
        )
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        model = copy.deepcopy(model).to("cpu", torch.float32)
    return model.eval()


def _example_inputs(config: SamConfig) -> dict[str, torch.Tensor]:
    """One image, one prompt: the smallest inputs (every axis is exported as dynamic)."""
    size = config.vision_config.image_size
    grid = config.prompt_encoder_config.image_embedding_size
    generator = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(1, config.vision_config.num_channels, size, size, generator=generator),
        "image_embeddings": torch.randn(1, config.vision_config.output_channels, grid, grid, generator=generator),
        "image_positional_embeddings": torch.randn(1, config.vision_config.output_channels, grid, grid,
                                                   generator=generator),
        "input_points": torch.rand(1, 1, 1, 2, generator=generator) * size,
        "input_labels": torch.ones(1, 1, 1, dtype=torch.int64),
        "input_boxes": torch.tensor([[[0.25, 0.25, 0.75, 0.75]]]) * size,
    }


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


def _has_external_data(path: Path) -> bool:
    onnx, _ = require_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)


def _trace(module: torch.nn.Module, args: tuple, path: Path, names: tuple[list, list], axes: dict, opset: int) -> None:
    """TorchScript export. Its TracerWarnings concern SamModel's input checks and SDPA's `is_causal` test, which
    are constant for SAM (shapes are checked by ONNX Runtime, attention is never causal), so they are silenced, as
    is the deprecation notice of this exporter (chosen on purpose; see the module docstring)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(module, args, str(path), input_names=names[0], output_names=names[1],
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)


def export_vision_encoder(model: SamModel, path: str | os.PathLike, *, opset: int = 17) -> Path:
    """Write only the image encoder (`pixel_values` → `image_embeddings`, `image_positional_embeddings`; dynamic
    batch) to `path`."""
    require_onnx()
    model, path = _exportable(model), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _example_inputs(model.config)
    axes = {"pixel_values": {0: "batch_size"}, "image_embeddings": {0: "batch_size"},
            "image_positional_embeddings": {0: "batch_size"}}
    _trace(_VisionEncoder(model), (example["pixel_values"],), path,
           (["pixel_values"], ["image_embeddings", "image_positional_embeddings"]), axes, opset)
    _save_with_metadata(path, model.config)
    return path


def export_onnx(model: SamModel, output_dir: str | os.PathLike, *, opset: int = 17, boxes: bool = True) -> dict[str, Path]:
    """Export `model` to `output_dir/onnx/`: encoder, point decoder and (with `boxes`) box decoder.

    Returns {"vision_encoder", "prompt_encoder_mask_decoder"[, "prompt_encoder_mask_decoder_boxes"]} → path.
    Existing files of these names are replaced; nothing else in the folder is touched.
    """
    require_onnx()
    model = _exportable(model)
    folder = Path(output_dir) / ONNX_SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    example = _example_inputs(model.config)
    paths = {"vision_encoder": export_vision_encoder(model, folder / ENCODER_FILE, opset=opset)}

    path = folder / DECODER_FILE
    names = (["image_embeddings", "image_positional_embeddings", "input_points", "input_labels"],
             ["iou_scores", "pred_masks"])
    axes = {**_IMAGE_AXES, "input_points": _PROMPT_AXES, "input_labels": _PROMPT_AXES, **_OUTPUT_AXES}
    args = (example["image_embeddings"], example["image_positional_embeddings"], example["input_points"],
            example["input_labels"])
    _trace(_PointDecoder(model), args, path, names, axes, opset)
    _save_with_metadata(path, model.config)
    paths["prompt_encoder_mask_decoder"] = path

    if boxes:
        path = folder / BOX_DECODER_FILE
        names = (["image_embeddings", "image_positional_embeddings", "input_boxes"], ["iou_scores", "pred_masks"])
        axes = {**_IMAGE_AXES, "input_boxes": {0: "batch_size", 1: "point_batch_size"}, **_OUTPUT_AXES}
        args = (example["image_embeddings"], example["image_positional_embeddings"], example["input_boxes"])
        _trace(_BoxDecoder(model), args, path, names, axes, opset)
        _save_with_metadata(path, model.config)
        paths["prompt_encoder_mask_decoder_boxes"] = path
    return paths


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


# ----------------------------------------------------------------------------------------------------------------
# ONNX Runtime inference
# ----------------------------------------------------------------------------------------------------------------


def ort_session(path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session with full graph optimisation; `threads` intra-op threads (None: all cores)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def _config_from_file(path: Path) -> SamConfig:
    onnx, _ = require_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    props = {prop.key: prop.value for prop in proto.metadata_props}
    if CONFIG_METADATA_KEY not in props:
        raise ModelFileError(f"{path} has no '{CONFIG_METADATA_KEY}' metadata; re-export it with supersam_hf.export_onnx.")
    return SamConfig(**json.loads(props[CONFIG_METADATA_KEY]))


_ORT_TO_NUMPY = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32",
                 "tensor(double)": "float64", "tensor(float16)": "float16"}


def _run(session, feeds: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Run a session on torch tensors (cast to the graph's input types) → torch tensors."""
    types = {arg.name: _ORT_TO_NUMPY[arg.type] for arg in session.get_inputs()}
    arrays = {name: value.detach().cpu().numpy().astype(types[name], copy=False) for name, value in feeds.items()
              if name in types}  # files of earlier versions take no image_positional_embeddings
    return [torch.from_numpy(out) for out in session.run(None, arrays)]


def _onnx_file_errors(path: Path, read: Any) -> Any:
    """`read()`; a missing, truncated, random or otherwise unreadable ONNX file is one ModelFileError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"No {path.name} in {str(path.parent)!r}; export the model again with "
                                "`supersam export --onnx`.")
    try:
        return read()
    except ModelFileError:
        raise
    except Exception as error:  # noqa: BLE001 - protobuf DecodeError, ONNX Runtime's InvalidProtobuf / Fail / ...
        first = " ".join(str(error).split())[:200]
        raise ModelFileError(f"{path} is not a readable ONNX model ({type(error).__name__}: {first}); export it "
                             "again with `supersam export --onnx`.") from error


def _checked_session(path: Path, layouts: list[list[str]], threads: int | None, providers: list[str] | None):
    """An ONNX Runtime session of `path`, which must take exactly the inputs of one of `layouts` (a wrong file of
    the export is named)."""
    session = _onnx_file_errors(path, lambda: ort_session(path, threads, providers))
    found = [arg.name for arg in session.get_inputs()]
    if found not in layouts:
        raise ModelFileError(f"{path} is not the ONNX file this export expects there (inputs {found}, expected "
                             f"{layouts[0]}); export the model again with `supersam export --onnx`.")
    return session


class OnnxSamModel:
    """A SAM exported to ONNX, run with ONNX Runtime, called like a `SamModel` in evaluation.

    `model(pixel_values=... | image_embeddings=..., input_points=..., input_labels=... | input_boxes=...,
    multimask_output=True)` returns a `SamImageSegmentationOutput` with `iou_scores` and `pred_masks` as CPU
    tensors, so `SamProcessor.post_process_masks` and the project's metric apply unchanged. `config` is the exported
    model's `SamConfig` (read from the files' metadata).

    Args:
        onnx_dir: the export folder or its `onnx/` subfolder.
        int8: use `vision_encoder_quantized.onnx` and `prompt_encoder_mask_decoder_quantized.onnx` (see
            `quantize_int8`; what transformers.js runs with dtype "q8") instead of the float files.
        threads: ONNX Runtime intra-op threads (None: its default, all cores).
        providers: execution providers (default: CPU).
    """

    training = False

    def __init__(self, onnx_dir: str | os.PathLike, *, int8: bool = False, threads: int | None = None,
                 providers: list[str] | None = None):
        folder = _onnx_folder(onnx_dir)
        encoder = folder / (ENCODER_INT8_FILE if int8 else ENCODER_FILE)
        if not encoder.is_file():
            raise FileNotFoundError(f"No {encoder.name} in {str(folder)!r}; create it with quantize_int8({str(folder)!r}).")
        self.folder, self.int8 = folder, int8
        self.config = _onnx_file_errors(encoder, lambda: _config_from_file(encoder))
        self.encoder = _checked_session(encoder, [["pixel_values"]], threads, providers)
        decoder = folder / (DECODER_INT8_FILE if int8 else DECODER_FILE)
        if not decoder.is_file():
            raise ModelFileError(f"No {decoder.name} in {str(folder)!r}; export it again (export_onnx, quantize_int8).")
        # The optimum / transformers.js layout takes image_positional_embeddings; files of earlier versions do not.
        self.point_decoder = _checked_session(
            decoder, [["image_embeddings", "image_positional_embeddings", "input_points", "input_labels"],
                      ["image_embeddings", "input_points", "input_labels"]], threads, providers)
        box_file = folder / BOX_DECODER_FILE
        self.box_decoder = (_checked_session(box_file, [["image_embeddings", "image_positional_embeddings", "input_boxes"],
                                                        ["image_embeddings", "input_boxes"]], threads, providers)
                            if box_file.is_file() else None)
        self._positional: torch.Tensor | None = None  # (1, C, h, w): the same for every image

    @classmethod
    def from_pretrained(cls, onnx_dir: str | os.PathLike, **kwargs) -> "OnnxSamModel":
        return cls(onnx_dir, **kwargs)

    # Duck-typing with the parts of `torch.nn.Module` that evaluation code touches.
    device = torch.device("cpu")
    dtype = torch.float32

    def parameters(self) -> Iterator[torch.Tensor]:
        """One empty CPU float32 tensor: code reading `next(model.parameters())` for device/dtype works."""
        yield torch.empty(0)

    def eval(self) -> "OnnxSamModel":
        return self

    def train(self, mode: bool = True) -> "OnnxSamModel":
        if mode:
            raise SupersamError("An ONNX Runtime model cannot be trained; train the PyTorch model and export again.")
        return self

    def to(self, *args, **kwargs) -> "OnnxSamModel":
        return self

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) pixel values → (batch, C, h, w) image embeddings."""
        size = self.config.vision_config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[-2:]) != (size, size):
            raise SupersamError(f"pixel_values must be (batch, 3, {size}, {size}), got {tuple(pixel_values.shape)}; "
                             "resize and pad with the model's SamProcessor.")
        embeddings, *positional = _run(self.encoder, {"pixel_values": pixel_values})
        if positional:  # files of earlier versions compute it in the decoder
            self._positional = positional[0][:1]
        return embeddings

    def image_positional_embeddings(self, batch_size: int = 1) -> torch.Tensor:
        """The image-wide positional embedding the decoders take, (batch_size, C, h, w). It depends on the weights
        only: taken from an encoder run (one on a blank image if none ran yet)."""
        if self._positional is None:
            size = self.config.vision_config.image_size
            self.get_image_embeddings(torch.zeros(1, self.config.vision_config.num_channels, size, size))
        return self._positional.expand(batch_size, -1, -1, -1)

    def __call__(self, pixel_values=None, input_points=None, input_labels=None, input_boxes=None,
                 image_embeddings=None, multimask_output: bool = True, **unused) -> SamImageSegmentationOutput:
        if (pixel_values is None) == (image_embeddings is None):
            raise SupersamError("Pass exactly one of pixel_values and image_embeddings.")
        if not multimask_output:
            raise SupersamError("The ONNX decoder was exported with multimask_output=True (optimum's convention: three "
                             "masks); pick one by iou_scores, or run the PyTorch model for multimask_output=False.")
        if image_embeddings is None:
            image_embeddings = self.get_image_embeddings(pixel_values)
        needs = {arg.name for arg in self.point_decoder.get_inputs()}
        positional = (self.image_positional_embeddings(image_embeddings.shape[0])
                      if "image_positional_embeddings" in needs else None)
        if input_points is not None and input_boxes is not None:
            raise SupersamError("The ONNX export has one decoder for points and one for boxes; pass one prompt kind.")
        if input_boxes is not None:
            if self.box_decoder is None:
                raise SupersamError(f"No {BOX_DECODER_FILE} in {str(self.folder)!r}; export with boxes=True.")
            iou, masks = _run(self.box_decoder, {"image_embeddings": image_embeddings, "input_boxes": input_boxes,
                                                 **({"image_positional_embeddings": positional}
                                                    if positional is not None else {})})
        elif input_points is not None:
            if input_labels is None:  # as SamModel: every point is a foreground point
                input_labels = torch.ones(input_points.shape[:-1], dtype=torch.int64)
            feeds = {"image_embeddings": image_embeddings, "image_positional_embeddings": positional,
                     "input_points": input_points, "input_labels": input_labels}
            iou, masks = _run(self.point_decoder, feeds)
        else:
            raise SupersamError("Pass input_points (+ input_labels) or input_boxes: the ONNX decoder needs a prompt.")
        return SamImageSegmentationOutput(iou_scores=iou, pred_masks=masks)


# ----------------------------------------------------------------------------------------------------------------
# Latency
# ----------------------------------------------------------------------------------------------------------------


def _encoder_input_shape(session, image_size: int | None, batch_size: int) -> tuple[int, ...]:
    shape = session.get_inputs()[0].shape  # e.g. ["batch_size", 3, 1024, 1024]
    static = [dim if isinstance(dim, int) else None for dim in shape]
    if image_size is not None:
        static[-2:] = [image_size, image_size]
    if None in static[1:]:
        raise SupersamError(f"The encoder's input shape {shape} is not fixed; pass image_size.")
    return (batch_size, *static[1:])


def ort_latency_ms(model_or_path: SamModel | str | os.PathLike, image_size: int | None = None, *,
                   batch_size: int = 1, warmup: int = 2, repeats: int = 5, threads: int | None = None) -> float:
    """Median ONNX Runtime (CPU) latency of the image encoder in milliseconds, after `warmup` runs.

    `model_or_path`: an encoder `.onnx` file, an export folder, or a `SamModel` (its encoder is exported to a
    temporary file first; cache the result per subnet, e.g. with `OrtLatencyCache`). `image_size` defaults to the
    encoder's input size.
    """
    if repeats < 1 or warmup < 0:
        raise SupersamError(f"Need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    if isinstance(model_or_path, SamModel):
        with tempfile.TemporaryDirectory() as tmp:
            path = export_vision_encoder(model_or_path, Path(tmp) / ENCODER_FILE)
            return ort_latency_ms(path, image_size, batch_size=batch_size, warmup=warmup, repeats=repeats, threads=threads)
    path = Path(model_or_path)
    if path.is_dir():
        path = _onnx_folder(path) / ENCODER_FILE
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    pixels = torch.randn(_encoder_input_shape(session, image_size, batch_size), generator=torch.Generator().manual_seed(0))
    feeds = {name: pixels.numpy()}
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


class OrtLatencyCache:
    """ORT encoder latencies (ms) keyed by a caller's string (e.g. a subnet's name), persisted as JSON.

    The file records the ONNX Runtime version, the machine and the thread count; a file written under different
    ones is not reused (its timings would not describe this runtime), and is overwritten on the next save.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, threads: int | None = None,
                 warmup: int = 2, repeats: int = 5):
        _, ort = require_onnx()
        self.path = Path(path) if path is not None else None
        self.threads, self.warmup, self.repeats = threads, warmup, repeats
        self.runtime = {"onnxruntime": ort.__version__, "machine": platform.machine(), "processor": platform.processor(),
                        "cpu_count": os.cpu_count(), "threads": threads}
        self.entries: dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            data = json.loads(self.path.read_text())
            if data.get("runtime") == self.runtime:
                self.entries = {str(k): float(v) for k, v in data.get("latency_ms", {}).items()}
            else:
                logger.warning("Ignoring ORT latencies in %s: measured under %s, now %s.", self.path,
                               data.get("runtime"), self.runtime)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def measure(self, key: str, model: SamModel, image_size: int | None = None) -> float:
        """The cached latency of `key`, or time `model`'s encoder in ORT now, store and save it."""
        if key not in self.entries:
            self.entries[key] = ort_latency_ms(model, image_size, warmup=self.warmup, repeats=self.repeats,
                                               threads=self.threads)
            self.save()
        return self.entries[key]

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"runtime": self.runtime, "latency_ms": self.entries}
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
        tmp.replace(self.path)
        record_tool_outputs(self.path.parent, [self.path.absolute()], tool="supersam search")


# ----------------------------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------------------------


def _max_errors(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max |a|): the relative error is against the reference's scale."""
    diff = float((reference.float() - candidate.float()).abs().max())
    scale = float(reference.float().abs().max())
    return diff, diff / scale if scale > 0 else diff


@torch.no_grad()
def check_parity(model: SamModel, onnx_dir: str | os.PathLike | OnnxSamModel, inputs: Mapping[str, torch.Tensor],
                 *, int8: bool = False) -> dict[str, float | int | bool]:
    """ORT-vs-PyTorch errors on `inputs` (`pixel_values` plus points+labels or boxes, in model coordinates).

    Returns max abs / relative (to the reference's max magnitude) errors of `image_embeddings`, `iou_scores` and
    `pred_masks` logits, and mask agreement after thresholding the low-resolution logits at 0: the fraction of
    equal pixels and the count of differing ones (`masks_identical` when there are none).
    """
    runner = onnx_dir if isinstance(onnx_dir, OnnxSamModel) else OnnxSamModel(onnx_dir, int8=int8)
    model = _exportable(model)
    prompts = {k: v for k, v in inputs.items() if k in ("input_points", "input_labels", "input_boxes")}
    reference_embeddings = model.get_image_embeddings(inputs["pixel_values"].float())
    reference = model(image_embeddings=reference_embeddings, multimask_output=True, **prompts)
    embeddings = runner.get_image_embeddings(inputs["pixel_values"])
    outputs = runner(image_embeddings=embeddings, multimask_output=True, **prompts)

    result: dict[str, float | int | bool] = {}
    for name, ref, out in (("embeddings", reference_embeddings, embeddings),
                           ("iou_scores", reference.iou_scores, outputs.iou_scores),
                           ("pred_masks", reference.pred_masks, outputs.pred_masks)):
        result[f"{name}_max_abs"], result[f"{name}_max_rel"] = _max_errors(ref, out)
    differing = int(((reference.pred_masks > 0) != (outputs.pred_masks > 0)).sum())
    result["mask_pixels_differing"] = differing
    result["mask_agreement"] = 1.0 - differing / reference.pred_masks.numel()
    result["masks_identical"] = differing == 0
    return result


INT8_MIOU_DROP_THRESHOLD = 0.01  # absolute mIoU (one point): larger INT8 drops are reported loudly


def int8_drop_warning(fp32_miou: float, int8_miou: float, threshold: float = INT8_MIOU_DROP_THRESHOLD) -> str | None:
    """A loud message when the INT8 encoder loses more than `threshold` mIoU against fp32 on the same data, else None."""
    drop = fp32_miou - int8_miou
    if drop <= threshold:
        return None
    return (f"WARNING: the INT8 encoder loses {drop:.4f} mIoU ({fp32_miou:.4f} fp32 -> {int8_miou:.4f} INT8), more "
            f"than the {threshold:.4f} threshold; prefer onnx/{ENCODER_FILE} where accuracy matters.")


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
