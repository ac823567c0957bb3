"""torch → ONNX: the image encoder and the prompt encoder + mask decoder of a `transformers.SamModel`, traced with
the TorchScript exporter under optimum's input and output names (see the package docstring for why this exporter)."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from transformers import SamConfig, SamModel

from ..errors import SupersamError
from .attention import export_attention
from .layout import BOX_DECODER_FILE, DECODER_FILE, ENCODER_FILE, ONNX_SUBFOLDER, _save_with_metadata, require_onnx


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


_BATCH = {0: "batch_size"}
_PER_PROMPT = {0: "batch_size", 1: "point_batch_size"}
_PER_POINT = {0: "batch_size", 1: "point_batch_size", 2: "nb_points_per_image"}
ENCODER_AXES = {"pixel_values": _BATCH, "image_embeddings": _BATCH, "image_positional_embeddings": _BATCH}
_IMAGE_AXES = {"image_embeddings": _BATCH, "image_positional_embeddings": _BATCH}
IMAGE_INPUTS = list(_IMAGE_AXES)  # the decoders' first inputs
_OUTPUT_AXES = {"iou_scores": _PER_PROMPT, "pred_masks": _PER_PROMPT}
# export_onnx's key -> (file, wrapper, prompt inputs with their dynamic axes); the inputs are the image's then these
DECODERS = {
    "prompt_encoder_mask_decoder": (DECODER_FILE, _PointDecoder,
                                    {"input_points": _PER_POINT, "input_labels": _PER_POINT}),
    "prompt_encoder_mask_decoder_boxes": (BOX_DECODER_FILE, _BoxDecoder, {"input_boxes": _PER_PROMPT}),
}


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


def _trace(module: torch.nn.Module, example: dict, path: Path, axes: dict, opset: int, config: SamConfig) -> Path:
    """TorchScript export of `module` to `path` (inputs: the keys of `axes` but the last two, taken from `example`;
    outputs: its last two keys), with `config` in the file's metadata. Its TracerWarnings concern SamModel's input
    checks and SDPA's `is_causal` test, which are constant for SAM (shapes are checked by ONNX Runtime, attention is
    never causal), so they are silenced, as is the deprecation notice of this exporter (chosen on purpose; see the
    package docstring)."""
    inputs, outputs = list(axes)[:-2], list(axes)[-2:]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(module, tuple(example[name] for name in inputs), str(path), input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
                          dynamo=False)
    _save_with_metadata(path, config)
    return path


def export_vision_encoder(model: SamModel, path: str | os.PathLike, *, opset: int = 17) -> Path:
    """Write only the image encoder (`pixel_values` → `image_embeddings`, `image_positional_embeddings`; dynamic
    batch) to `path`, with the attention written for export (`attention.export_attention`: the relative-position bias
    folded into the attention product where that runs faster, no `qkv` / `proj` work on the windows' padding)."""
    require_onnx()
    model, path = _exportable(model), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with export_attention(model):
        return _trace(_VisionEncoder(model), _example_inputs(model.config), path, ENCODER_AXES, opset, model.config)


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
    for key, (file, wrapper, prompts) in DECODERS.items():
        if boxes or wrapper is not _BoxDecoder:
            axes = {**_IMAGE_AXES, **prompts, **_OUTPUT_AXES}
            paths[key] = _trace(wrapper(model), example, folder / file, axes, opset, model.config)
    return paths
