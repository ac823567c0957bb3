"""The export's files in ONNX Runtime: `OnnxSamModel`, called like a `SamModel` in evaluation, the ORT-vs-PyTorch
parity check, and the encoder's latency (with a per-subnet cache of it for the search)."""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import SamModel
from transformers.models.sam.modeling_sam import SamImageSegmentationOutput

from ..errors import ModelFileError, SupersamError
from ..outputs import record_tool_outputs
from .graphs import DECODERS, IMAGE_INPUTS, _exportable, export_vision_encoder
from .layout import (BOX_DECODER_FILE, DECODER_FILE, DECODER_INT8_FILE, ENCODER_FILE, ENCODER_INT8_FILE, _config_from_file,
                     _onnx_folder, require_onnx)

logger = logging.getLogger(__name__)


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
