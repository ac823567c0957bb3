"""ONNX Runtime inference of an export: `OnnxSamModel`, called like a `SamModel` in evaluation, and the
ORT-vs-PyTorch parity check."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import SamModel
from transformers.models.sam.modeling_sam import SamImageSegmentationOutput

from ..errors import ModelFileError, SupersamError
from .graphs import DECODERS, IMAGE_INPUTS, _exportable
from .layout import (BOX_DECODER_FILE, DECODER_FILE, DECODER_INT8_FILE, ENCODER_FILE, ENCODER_INT8_FILE, _config_from_file,
                     _onnx_folder, require_onnx)

def ort_session(path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session with full graph optimisation; `threads` intra-op threads (None: all cores)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


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


def _decoder_layouts(key: str) -> list[list[str]]:
    """The inputs decoder `key` (of `export_onnx`) may take: the optimum / transformers.js layout (with
    image_positional_embeddings), or that of files of earlier versions (without)."""
    prompts = list(DECODERS[key][2])
    return [[*IMAGE_INPUTS, *prompts], [IMAGE_INPUTS[0], *prompts]]


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
        self.point_decoder = _checked_session(decoder, _decoder_layouts("prompt_encoder_mask_decoder"), threads, providers)
        box_file = folder / BOX_DECODER_FILE
        self.box_decoder = (_checked_session(box_file, _decoder_layouts("prompt_encoder_mask_decoder_boxes"), threads,
                                             providers) if box_file.is_file() else None)
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
        if input_points is not None and input_boxes is not None:
            raise SupersamError("The ONNX export has one decoder for points and one for boxes; pass one prompt kind.")
        if input_boxes is not None:
            if self.box_decoder is None:
                raise SupersamError(f"No {BOX_DECODER_FILE} in {str(self.folder)!r}; export with boxes=True.")
            decoder, feeds = self.box_decoder, {"input_boxes": input_boxes}
        elif input_points is not None:
            if input_labels is None:  # as SamModel: every point is a foreground point
                input_labels = torch.ones(input_points.shape[:-1], dtype=torch.int64)
            decoder, feeds = self.point_decoder, {"input_points": input_points, "input_labels": input_labels}
        else:
            raise SupersamError("Pass input_points (+ input_labels) or input_boxes: the ONNX decoder needs a prompt.")
        if image_embeddings is None:
            image_embeddings = self.get_image_embeddings(pixel_values)
        feeds["image_embeddings"] = image_embeddings
        if "image_positional_embeddings" in {arg.name for arg in decoder.get_inputs()}:
            feeds["image_positional_embeddings"] = self.image_positional_embeddings(image_embeddings.shape[0])
        iou, masks = _run(decoder, feeds)
        return SamImageSegmentationOutput(iou_scores=iou, pred_masks=masks)


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
