"""mIoU evaluation of a SAM model or a supernet's subnet, through the `sam_miou` `evaluate` metric.

One example is one image with all of its instances (see `supersam_hf.data`): the instances are the image's prompt
batch, so the image encoder runs once per image and the mask decoder decodes every instance of it together.
Predicted masks are brought back to the original image size by `SamProcessor.post_process_masks` (binarized at
logit 0) and compared with the ground-truth masks at that resolution.

Which of SAM's three multimask outputs is scored (`mask_selection`):

* ``"single"``: the model's own choice, the output with the highest *predicted* IoU (`iou_scores`). This is what a
  user gets from the model without ground truth, so it is the honest deployment number (and the default).
* ``"oracle"``: the output with the highest IoU against the ground truth, as the SuperSAM reference code reports.
  Always >= "single"; use it to compare with numbers from the paper.
* ``"single_output"``: SAM called with ``multimask_output=False``: its one single-mask output, the convention of
  box-prompt users (HF's SAM fine-tuning guide, SAM's own advice for boxes and several points).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import SamModel, SamProcessor

from .errors import SupersamError
from .arguments import DEFAULT_PROMPT_TYPE, DataArguments, EvaluateArguments, with_keywords
from .data import SamCollator, SamSegmentationData, SamStreamingData, model_inputs
from .errors import UnsupportedSetupError
from .metrics import load_sam_miou
from .modeling_supersam import SuperSamModel
from .results import EvaluationResult
from .search_space import SubnetConfig
from .types import EvaluationPromptType, MaskSelection

logger = logging.getLogger(__name__)

PROMPTS = EvaluationPromptType.values()
MASK_SELECTIONS = MaskSelection.values()


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------


def parse_subnet(spec: str | os.PathLike | dict | SubnetConfig) -> SubnetConfig:
    """A subnet from a `SubnetConfig`, a dict, a path to a JSON file, or inline JSON.

    The JSON is an object with `kept_layers` and `mlp_dims` at the top level (extra keys, e.g. the metrics in
    `best_subnet.json` or `pareto.json` entries, are ignored) or nested under `"subnet"` / `"config"`.
    """
    if isinstance(spec, SubnetConfig):
        return spec
    if isinstance(spec, dict):
        data = spec
    else:
        text = os.fspath(spec).strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise SupersamError(f"The subnet is not valid inline JSON ({error}): {text[:80]!r}") from None
        else:
            path = Path(text).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"No subnet JSON file at {text!r} (give a .json file or inline JSON).")
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise SupersamError(f"{text!r} is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise SupersamError(f"A subnet JSON must be an object with 'kept_layers' and 'mlp_dims', got {type(data).__name__}.")
    for key in ("subnet", "config"):
        if "kept_layers" not in data and isinstance(data.get(key), dict):
            data = data[key]
    return SubnetConfig.from_dict(data)


class PreparedBatches(Sequence):
    """The collated batches of an `EvaluationData`, built on demand: batch i is collated from its rows when asked for.

    The first batches are kept after their first use while their tensors fit in `cache_bytes`; the rest are
    collated again on every pass (decode + resize + normalise per batch), so memory stays bounded at 1024 px
    (~15 MB per image) however many images are scored. Prompts are seeded per row, so every pass is identical.
    """

    def __init__(self, data: SamSegmentationData, prompt: str, batch_size: int, count: int, cache_bytes: int) -> None:
        self.data, self.prompt, self.batch_size, self.count = data, prompt, int(batch_size), int(count)
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[int, dict[str, Any]] = {}
        self._cached_bytes = 0
        self._cache_full = False

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)} batches)")
        index %= len(self)
        if index in self._cache:
            return self._cache[index]
        indices = range(index * self.batch_size, min((index + 1) * self.batch_size, self.count))
        batch = SamCollator(prompt=self.prompt, seed=self.data.seed)([self.data[i] for i in indices])
        batch["image_ids"] = [str(self.data.row_indices[i]) for i in indices]
        size = _batch_bytes(batch)
        if not self._cache_full and self._cached_bytes + size <= self.cache_bytes:
            self._cache[index] = batch
            self._cached_bytes += size
        else:
            self._cache_full = True  # keep a prefix only: later batches stream on every pass
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))

    @property
    def cached_batches(self) -> int:
        return len(self._cache)

    @property
    def num_instances_left_out(self) -> int:
        """Instances of the scored images that `max_instances_per_image` left out."""
        return int(sum(self.data.instances_left_out[: self.count]))


class StreamedBatches:
    """The collated batches of a `SamStreamingData`, read in order from the stream on every pass (no `len`).

    The images of a pass (at most `max_images`) and the instances the cap left out are counted as they come
    (`num_images`, `num_instances_left_out`, after a pass); `image_ids` are the rows' positions in the stream, so
    an in-order stream scores exactly the map-style rows with the same ids and prompts."""

    def __init__(self, data: SamStreamingData, prompt: str, batch_size: int, max_images: int | None) -> None:
        self.data, self.prompt, self.batch_size, self.max_images = data, prompt, int(batch_size), max_images
        self.num_images = 0
        self.num_instances_left_out = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import itertools

        self.num_images = self.num_instances_left_out = 0
        collator = SamCollator(prompt=self.prompt, seed=self.data.seed)
        examples = iter(self.data)
        if self.max_images is not None:
            examples = itertools.islice(examples, int(self.max_images))
        while True:
            chunk = list(itertools.islice(examples, self.batch_size))
            if not chunk:
                return
            batch = collator(chunk)
            batch["image_ids"] = [str(example["row"]) for example in chunk]
            self.num_images += len(chunk)
            self.num_instances_left_out += sum(int(example["instances_left_out"]) for example in chunk)
            yield batch


def _batch_bytes(batch: dict[str, Any]) -> int:
    tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)] + list(batch.get("full_masks", []))
    return sum(t.numel() * t.element_size() for t in tensors)


# Collated evaluation batches kept in memory between passes (the search scores many subnets on the same images).
DEFAULT_CACHE_MB = 256


@dataclass
class EvaluationData:
    """Evaluation batches prepared once and reusable (the search scores many subnets on the same images).

    `batches` is a `PreparedBatches`: a sequence of `SamCollator` batches (with `full_masks` and `image_ids`, the
    dataset row of each image) collated on demand from the rows; only the first batches, up to `cache_mb` of
    tensors, stay in memory, so a search over many 1024-px images streams them instead of holding them all.
    """

    batches: PreparedBatches | StreamedBatches
    prompt: str
    seed: int
    num_images: int | None  # None for a stream (known after a pass: batches.num_images)
    num_skipped_images: int = 0
    max_instances_per_image: int | None = None

    @classmethod
    def prepare(
        cls,
        dataset,
        processor=None,
        prompt: str = DEFAULT_PROMPT_TYPE,
        batch_size: int = 4,
        max_images: int | None = None,
        seed: int = 0,
        image_column: str | None = None,
        mask_column: str | None = None,
        mask_kind: str | None = None,
        cache_mb: float = DEFAULT_CACHE_MB,
        max_instances_per_image: int | None = None,
    ) -> "EvaluationData":
        if isinstance(dataset, EvaluationData):
            return dataset
        data = as_evaluation_dataset(dataset, processor, prompt, seed, image_column, mask_column, mask_kind,
                                     max_instances_per_image)
        if isinstance(data, SamStreamingData):  # read again on every pass
            _image_count(data, batch_size, max_images)
            return cls(batches=StreamedBatches(data, prompt, batch_size, max_images), prompt=prompt, seed=data.seed,
                       num_images=None, max_instances_per_image=data.max_instances_per_image)
        count = _image_count(data, batch_size, max_images)
        if cache_mb < 0:
            raise SupersamError(f"cache_mb must be >= 0, got {cache_mb}.")
        batches = PreparedBatches(data, prompt, batch_size, count, int(cache_mb * 2**20))
        return cls(batches=batches, prompt=prompt, seed=data.seed, num_images=count,
                   num_skipped_images=data.num_skipped_images, max_instances_per_image=data.max_instances_per_image)


def as_evaluation_dataset(
    dataset,
    processor,
    prompt: str = DEFAULT_PROMPT_TYPE,
    seed: int = 0,
    image_column: str | None = None,
    mask_column: str | None = None,
    mask_kind: str | None = None,
    max_instances_per_image: int | None = None,
) -> SamSegmentationData | SamStreamingData:
    """An HF `datasets.Dataset` (or a ready `SamSegmentationData`) → `SamSegmentationData` with `full_masks`; a
    streaming `datasets.IterableDataset` (or a ready `SamStreamingData`) → `SamStreamingData` read in order.
    Every instance is scored unless `max_instances_per_image` caps them (largest first)."""
    if prompt not in PROMPTS:
        raise SupersamError(f"Unknown prompt {prompt!r}; evaluation prompts are {PROMPTS}.")
    if isinstance(dataset, SamStreamingData):
        if not dataset.return_full_masks or dataset.shuffle:
            raise SupersamError("Evaluate a SamStreamingData built with return_full_masks=True and shuffle=False, or "
                             "pass the datasets.IterableDataset itself.")
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        if processor is None:
            raise SupersamError("Pass the model's SamProcessor to evaluate on a datasets.IterableDataset.")
        return SamStreamingData(dataset, processor, image_column=image_column, mask_column=mask_column,
                                mask_kind=mask_kind, prompt=prompt, seed=seed, return_full_masks=True,
                                max_instances_per_image=max_instances_per_image)
    if isinstance(dataset, SamSegmentationData):
        if not dataset.return_full_masks:
            dataset = copy.copy(dataset)  # shallow: same rows and prompts, plus the full-resolution masks
            dataset.return_full_masks = True
        return dataset
    if isinstance(dataset, (datasets.Dataset, datasets.DatasetDict)):
        if processor is None:
            raise SupersamError("Pass the model's SamProcessor to evaluate on a datasets.Dataset.")
        return SamSegmentationData(
            dataset,
            processor,
            image_column=image_column,
            mask_column=mask_column,
            mask_kind=mask_kind,
            prompt=prompt,
            seed=seed,
            return_full_masks=True,
            max_instances_per_image=max_instances_per_image,
        )
    raise SupersamError(
        f"Cannot evaluate on a {type(dataset).__name__}; pass a datasets.Dataset, a SamSegmentationData or an "
        "EvaluationData."
    )


def _image_count(data, batch_size: int, max_images: int | None) -> int | None:
    if batch_size < 1:
        raise SupersamError(f"batch_size must be >= 1, got {batch_size}.")
    if max_images is not None and max_images < 1:
        raise SupersamError(f"max_images must be >= 1 (or None for all images), got {max_images}.")
    if isinstance(data, SamStreamingData):
        return None  # known after the pass
    return len(data) if max_images is None else min(len(data), int(max_images))


def _iter_batches(data, prompt: str, batch_size: int, max_images: int | None) -> PreparedBatches | StreamedBatches:
    """The batches of one pass, collated one at a time (nothing is kept: `cache_bytes=0`; a stream is read once)."""
    count = _image_count(data, batch_size, max_images)
    if isinstance(data, SamStreamingData):
        return StreamedBatches(data, prompt, batch_size, max_images)
    return PreparedBatches(data, prompt, batch_size, count, cache_bytes=0)


# ----------------------------------------------------------------------------------------------------------------
# Masks → metric
# ----------------------------------------------------------------------------------------------------------------


def _pairwise_iou(candidates: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """IoU of each of (K, H, W) bool candidates with a (H, W) bool reference (both empty = 1)."""
    inter = (candidates & reference).flatten(1).sum(1).double()
    union = (candidates | reference).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _crop_pair(prediction: torch.Tensor, reference: torch.Tensor):
    """Both masks cropped to the bounding box of their union, as numpy bool arrays.

    IoU and Dice only count pixels where a mask is set, all of which lie inside that box, so the scores are
    unchanged while the metric receives far fewer pixels (it stores masks as nested lists, which is slow at full
    resolution). Two empty masks become 1×1 empty masks (still scored 1, the metric's convention)."""
    union = prediction | reference
    rows = torch.nonzero(union.any(dim=1)).flatten()
    cols = torch.nonzero(union.any(dim=0)).flatten()
    if len(rows) == 0:
        empty = torch.zeros(1, 1, dtype=torch.bool)
        return empty.numpy(), empty.numpy()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return prediction[r0:r1, c0:c1].cpu().numpy(), reference[r0:r1, c0:c1].cpu().numpy()


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


# Prompts decoded per forward and post-processed at a time: an image with hundreds of instances (SA-1B has ~100,
# dense scenes several hundred) is decoded in chunks from one image embedding, so memory stays bounded.
PROMPTS_PER_FORWARD = 64


def _forward(model, inputs: dict[str, torch.Tensor], multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred_masks (B, P, 3 or 1, L, L), iou_scores (B, P, 3 or 1)) of one batch; above `PROMPTS_PER_FORWARD`
    prompts the image is encoded once and its prompts decoded in chunks (SAM decodes every prompt independently)."""
    prompt_key = "input_boxes" if "input_boxes" in inputs else "input_points"
    count = inputs[prompt_key].shape[1]
    if count <= PROMPTS_PER_FORWARD:
        outputs = model(**inputs, multimask_output=multimask_output)
        return outputs.pred_masks, outputs.iou_scores
    embeddings = model.get_image_embeddings(inputs["pixel_values"])
    masks, scores = [], []
    for start in range(0, count, PROMPTS_PER_FORWARD):
        chunk = {k: v[:, start:start + PROMPTS_PER_FORWARD] for k, v in inputs.items() if k != "pixel_values"}
        outputs = model(image_embeddings=embeddings, **chunk, multimask_output=multimask_output)
        masks.append(outputs.pred_masks)
        scores.append(outputs.iou_scores)
    return torch.cat(masks, dim=1), torch.cat(scores, dim=1)


@torch.no_grad()
def _model_masks(model, batch, processor, mask_selection: str) -> list[torch.Tensor]:
    """One forward of `model` on a batch (one encoder pass per image): per image, bool (P_i, H, W) masks at the
    original size, one per object (the model's own choice, or the oracle's best of three)."""
    device, dtype = _model_device_dtype(model)
    inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
    for key in ("pixel_values", "input_boxes", "input_points"):
        if key in inputs:
            inputs[key] = inputs[key].to(dtype)
    pred_masks, iou_scores = _forward(model, inputs, multimask_output=mask_selection != "single_output")
    low_res = pred_masks.float()  # (B, P, 3, L, L) logits, or (B, P, 1, L, L) for "single_output"
    if mask_selection == "single":
        best = iou_scores.float().argmax(dim=-1)  # (B, P): the model's own choice
        index = best[..., None, None, None].expand(-1, -1, 1, *low_res.shape[-2:])
        low_res = torch.gather(low_res, 2, index)  # (B, P, 1, L, L)
    chosen = []
    for b, truth in enumerate(batch["full_masks"]):  # the collator's padding slots are dropped
        picked = []
        for start in range(0, int(truth.shape[0]), PROMPTS_PER_FORWARD):
            stop = min(start + PROMPTS_PER_FORWARD, int(truth.shape[0]))
            image_masks = processor.post_process_masks(
                [low_res[b, start:stop]], batch["original_sizes"][b:b + 1], batch["reshaped_input_sizes"][b:b + 1],
                mask_threshold=0.0, binarize=True,
            )[0]
            part = truth[start:stop].to(image_masks.device)
            picks = [0 if mask_selection != "oracle" else int(_pairwise_iou(image_masks[k], part[k]).argmax())
                     for k in range(part.shape[0])]
            picked += [image_masks[k, pick] for k, pick in enumerate(picks)]
        chosen.append(torch.stack(picked) if picked else torch.zeros(0, *truth.shape[1:], dtype=torch.bool))
    return chosen


def box_masks(batch: dict[str, Any]) -> list[torch.Tensor]:
    """The box prompts of a collated batch, filled, as masks: per image bool (P_i, H, W) at the original size.

    Boxes are mapped back from the processor's resized coordinates (scaled by original / resized size) and filled
    inclusively (x0..x1, y0..y1 in pixel indices, the convention of `SamSegmentationData`'s boxes), so a mask that
    fills its box is reproduced exactly."""
    filled = []
    for b, truth in enumerate(batch["full_masks"]):
        count, height, width = truth.shape
        scale = batch["original_sizes"][b].double() / batch["reshaped_input_sizes"][b].double()  # (h, w)
        boxes = batch["input_boxes"][b, :count].double() * scale[[1, 0, 1, 0]]
        x0, y0, x1, y1 = boxes.round().long().unbind(-1)
        cols, rows = torch.arange(width), torch.arange(height)
        inside_x = (cols[None] >= x0[:, None].clamp(0, width - 1)) & (cols[None] <= x1[:, None].clamp(0, width - 1))
        inside_y = (rows[None] >= y0[:, None].clamp(0, height - 1)) & (rows[None] <= y1[:, None].clamp(0, height - 1))
        filled.append(inside_y[:, :, None] & inside_x[:, None, :])
    return filled


def _add_to_metric(metric, chosen: list[torch.Tensor], batch: dict[str, Any]) -> None:
    """Add one batch's predicted masks (per image, (P_i, H, W) bool, aligned with `full_masks`) to the metric."""
    predictions, references, image_ids = [], [], []
    for image_masks, truth, image_id in zip(chosen, batch["full_masks"], batch["image_ids"]):
        truth = truth.to(image_masks.device)
        for k in range(truth.shape[0]):
            prediction, reference = _crop_pair(image_masks[k], truth[k])
            predictions.append(prediction)
            references.append(reference)
            image_ids.append(image_id)
    metric.add_batch(predictions=predictions, references=references, image_ids=image_ids)


def _score_batches(model, batches, processor, mask_selection: str, metrics: dict, show_progress: bool) -> None:
    """Score every batch: `metrics["model"]` gets the model's masks (skipped when `model` is None) and, if present,
    `metrics["box_reference"]` the filled box prompts; both go through the same crop-and-metric path."""
    from tqdm.auto import tqdm

    total = len(batches) if hasattr(batches, "__len__") else None  # a stream has no length
    for batch in tqdm(batches, total=total, desc="evaluate", unit="batch", disable=not show_progress, leave=False):
        if model is not None:
            _add_to_metric(metrics["model"], _model_masks(model, batch, processor, mask_selection), batch)
        if "box_reference" in metrics:
            _add_to_metric(metrics["box_reference"], box_masks(batch), batch)


def _is_runtime_model(model) -> bool:
    """A non-torch model that evaluation can call like a SamModel: `get_image_embeddings` and `__call__` returning
    `iou_scores` / `pred_masks`, plus `eval` / `train` / `parameters` for device and mode (`OnnxSamModel`)."""
    return all(callable(getattr(model, name, None)) for name in ("get_image_embeddings", "__call__", "eval", "train",
                                                                  "parameters"))


_METRICS: dict[str, Any] = {}


def _metric(name: str = "model"):
    """A `sam_miou` metric, loaded once per process and role (in memory: nothing is written to the cache folder)."""
    if name not in _METRICS:
        _METRICS[name] = load_sam_miou(keep_in_memory=True, experiment_id=f"supersam-{name}")
    return _METRICS[name]


def _compute(names: list[str]) -> dict[str, dict]:
    """Compute the named metrics; on any error drop them all (they may hold a partial evaluation)."""
    try:
        return {name: _metric(name).compute() for name in names}
    except BaseException:
        for name in names:
            _METRICS.pop(name, None)
        raise


# ----------------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------------


# evaluate_model's keyword conveniences: keyword -> its EvaluateArguments field (the library's older names
# included: `prompt` is --prompt_type), and keyword -> its DataArguments field (`max_images` is --max_eval_images).
EVALUATE_KEYWORDS = {"prompt": "prompt_type", "prompt_type": "prompt_type", "subnet": "subnet",
                     "search_dir": "search_dir", "mask_selection": "mask_selection", "batch_size": "batch_size",
                     "seed": "seed", "device": "device", "max_instances_per_image": "max_instances_per_image"}
EVALUATE_DATA_KEYWORDS = {"max_images": "max_eval_images", "max_eval_images": "max_eval_images",
                          "image_column": "image_column", "mask_column": "mask_column", "mask_kind": "mask_kind"}


def resolve_subnet(spec, search_dir: str | os.PathLike | None = None) -> SubnetConfig | None:
    """The subnet an `EvaluateArguments.subnet` names: None, a `SubnetConfig`, a dict, a JSON file or inline JSON
    (`parse_subnet`), or 'best' / 'pareto:N' of the `supersam search` folder `search_dir`."""
    if spec is None:
        return None
    if isinstance(spec, str) and (spec.strip() == "best" or spec.strip().startswith("pareto:")):
        if search_dir is None:
            raise SupersamError(f"--subnet {spec.strip()} needs --search_dir (the output folder of `supersam search`).")
        from .search.results import select_subnet  # search imports this module

        return select_subnet(spec.strip(), search_dir)
    return parse_subnet(spec)


def evaluate_model(
    model: SamModel,
    dataset,
    processor: SamProcessor | None = None,
    args: EvaluateArguments | None = None,
    data_args: DataArguments | None = None,
    *,
    show_progress: bool = True,
    box_reference: bool = False,
    state=None,
    **keywords,
) -> EvaluationResult:
    """Mean IoU of a SAM model (or of one subnet of a supernet) on a segmentation dataset.

    Args:
        model: a `SamModel` or a `SuperSamModel` (load a Hub id or folder with `supersam_hf.loading.load_sam_model`),
            or a runtime model called like one (`onnx_export.OnnxSamModel`: an export's ONNX files in ONNX Runtime;
            `params` is then None).
        dataset: a `datasets.Dataset` with image and mask columns (wrapped in `SamSegmentationData` with
            `return_full_masks=True`), a streaming `datasets.IterableDataset` (read once, in order, through
            `SamStreamingData`: the same scores as the map-style rows), a ready `SamSegmentationData` (its own
            rows, prompts, seed and instance cap), or an `EvaluationData` prepared once for many evaluations.
        processor: the model's `SamProcessor` (`supersam_hf.loading.load_processor`).
        args: the `EvaluateArguments` the CLI parses (`supersam evaluate`'s flags; None: their defaults). Its
            `onnx` / `onnx_int8` choose the model the CLI loads and are not read here.
        data_args: the `DataArguments` the CLI parses; read: `max_eval_images`, and `image_column` /
            `mask_column` / `mask_kind` when `dataset` is a raw dataset. None: their defaults.
        **keywords: conveniences for the fields of `args` / `data_args` (see `EVALUATE_KEYWORDS` and
            `EVALUATE_DATA_KEYWORDS`), e.g. `prompt="point", max_images=8`; they override `args` / `data_args`
            (neither object is changed). An unknown keyword is refused. The fields:
        subnet: evaluate this subnet of a `SuperSamModel` (under `model.subnet(subnet)`); None = the model as it
            is (its active subnet, if any, else the full model).
        subnet: (also a JSON file, inline JSON, or 'best' / 'pareto:N' with `search_dir`).
        prompt / prompt_type: "point" (one positive point per instance) or "box" (the instance's bounding box).
        mask_selection: "single" (the output with the highest predicted IoU, what the model itself would return),
            "oracle" (the best of the three outputs against the ground truth, as the SuperSAM code reports) or
            "single_output" (the model called with `multimask_output=False`: its single-mask output).
        batch_size: images per forward; every instance of an image is decoded in the same forward.
        max_images / max_eval_images: score only the first `max_images` images (in dataset order).
        seed: prompts are drawn reproducibly from this seed (a ready `SamSegmentationData` keeps its own).
        image_column / mask_column / mask_kind: passed to `SamSegmentationData` (default: auto-detected).
        show_progress: tqdm bar over batches.
        device: move the model there first (it stays there); default: where the model already is.
        box_reference: with box prompts, also score "the box itself as the mask" in the same pass, through the same
            metric (see `box_reference_miou`): the result gains `box_reference_miou` and
            `box_reference_per_image_miou`, the score a model gets by copying its prompt.
        max_instances_per_image: score at most this many instances per image (the largest); None (default)
            scores every instance. The cap and the instances it left out are in the result.
        state: accelerate's `PartialState` (or an `Accelerator`) of a multi-process run: every process must call
            with the same arguments; the batches are split across the processes (contiguous shares, in order), the
            per-object statistics are gathered, and every process returns the result of the one-process run on the
            same data (the same objects in the same order, scored by the same metric code). None: this process
            scores everything.

    Returns:
        An `EvaluationResult` (`supersam_hf.results`; `to_dict()` is eval_results.json): the metric's `miou`, `per_image_miou`, `mean_dice`, `num_objects`, `num_images`, and how they were
        measured: `prompt`, `mask_selection`, `resolution` ("original": masks compared at the image's own size),
        `seed`, `subnet` (its name, or None for a whole model), `subnet_config`, `params` (parameters of the
        standard checkpoint that was, or would be, exported); with `box_reference` also `box_reference_miou` /
        `box_reference_per_image_miou`; always `max_instances_per_image` (None: every instance was scored) and
        `num_instances_left_out` (instances of the scored images that the cap left out).

    Runs under `torch.no_grad` in eval mode; the model's train/eval mode and active subnet are restored afterwards.
    """
    args, data = with_keywords(args, EvaluateArguments, keywords, EVALUATE_KEYWORDS, "evaluate_model", data_args,
                               EVALUATE_DATA_KEYWORDS)
    prompt, mask_selection, batch_size, seed = args.prompt_type, args.mask_selection, args.batch_size, args.seed
    device, max_instances_per_image = args.device, args.max_instances_per_image
    subnet = resolve_subnet(args.subnet, args.search_dir)
    _check_arguments(model, processor, prompt, mask_selection, box_reference)
    if device is not None:
        model = model.to(device)
    active, params = _active_subnet_and_params(model, subnet)
    batches, data_seed, cap = _batches(dataset, processor, prompt, batch_size, data["max_eval_images"], seed,
                                       data["image_column"], data["mask_column"], data["mask_kind"],
                                       max_instances_per_image)
    names = ["model", "box_reference"] if box_reference else ["model"]
    distributed = state is not None and state.num_processes > 1
    all_batches = batches
    if distributed:  # this process's share of the batches; statistics gathered by `compute`
        if isinstance(batches, StreamedBatches):
            raise UnsupportedSetupError("evaluating a streamed dataset is not split across processes; run evaluate "
                                        "--streaming without `accelerate launch`, or without --streaming.")
        batches = _process_share(batches, state)
        metrics = {n: GatheredMetric(_metric(n)) for n in names}
        show_progress = show_progress and state.is_local_main_process
    else:
        metrics = {n: _metric(n) for n in names}
    was_training = model.training
    model.eval()
    try:
        with model.subnet(active) if isinstance(model, SuperSamModel) else contextlib.nullcontext():
            _score_batches(model, batches, processor, mask_selection, metrics, show_progress)
    except BaseException:
        for name in names:
            _METRICS.pop(name, None)  # they may hold a partial evaluation: the next call starts from fresh ones
        raise
    finally:
        model.train(was_training)
    computed = {n: metrics[n].compute() for n in names} if distributed else _compute(names)
    result = _result(computed, prompt, mask_selection, data_seed, active, params)
    result.max_instances_per_image, result.num_instances_left_out = _instance_record(all_batches, cap)
    return result


def _instance_record(batches, cap: int | None) -> tuple[int | None, int]:
    """The instance cap of a scored pass and how many instances of its images the cap left out."""
    if cap is not None and batches.num_instances_left_out:
        logger.warning("max_instances_per_image=%d: %d instances of the scored images were left out (the smallest).",
                       cap, batches.num_instances_left_out)
    return cap, int(batches.num_instances_left_out)


class _Share(Sequence):
    """Batches `indices` of a batch sequence (built on demand, like the sequence itself)."""

    def __init__(self, batches: Sequence, indices: list[int]) -> None:
        self.batches, self.indices = batches, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.batches[self.indices[index]]


def _process_share(batches: Sequence, state) -> _Share:
    """This process's contiguous share of the batches (`split_between_processes`: process 0 the first ones), so the
    gathered objects are in the one-process order. Whole batches are shared, never re-batched: each image is
    scored in the very batch (and padding) of a one-process run."""
    with state.split_between_processes(list(range(len(batches)))) as indices:
        return _Share(batches, indices)


class GatheredMetric:
    """One process's part of a `sam_miou` evaluation split across processes.

    `add_batch` keeps, per object, the metric's own `mask_statistics` (intersection and sizes: three integers, not
    the masks) and its image id; `compute` gathers every process's objects in process order
    (`accelerate.utils.gather_object`) and scores them with the metric's `scores_from_statistics`, the code its
    `compute` runs, so every process gets the one-process result.
    """

    def __init__(self, metric) -> None:
        self.module = sys.modules[type(metric).__module__]  # the loaded metric script: its maths, not a copy
        self.stats: list = []
        self.image_ids: list[str] = []

    def add_batch(self, *, predictions, references, image_ids) -> None:
        self.stats.append(self.module.mask_statistics(predictions, references))
        self.image_ids.extend(str(i) for i in image_ids)

    def compute(self) -> dict[str, Any]:
        from accelerate.utils import gather_object

        local = np.concatenate(self.stats) if self.stats else np.zeros((0, 3), dtype=np.int64)
        parts = gather_object([(local, self.image_ids)])  # one (stats, ids) per process, process 0 first
        stats = np.concatenate([part[0] for part in parts])
        image_ids = [image_id for part in parts for image_id in part[1]]
        return self.module.scores_from_statistics(stats, image_ids)


def _result(computed: dict[str, dict], prompt: str, mask_selection: str, seed: int, active: SubnetConfig | None,
            params: int | None) -> EvaluationResult:
    """`evaluate_model`'s result from the computed metrics (the model's, and "box_reference" if it was scored) and
    how they were measured, as plain Python numbers."""
    scores = computed["model"]
    extra = {}
    if "box_reference" in computed:
        extra = {"box_reference_miou": float(computed["box_reference"]["miou"]),
                 "box_reference_per_image_miou": float(computed["box_reference"]["per_image_miou"])}
    return EvaluationResult(
        miou=float(scores["miou"]),
        per_image_miou=float(scores["per_image_miou"]),
        mean_dice=float(scores["mean_dice"]),
        num_objects=int(scores["num_objects"]),
        num_images=int(scores["num_images"]),
        prompt=str(prompt),  # a plain string also when given as PromptType / MaskSelection (YAML card metadata)
        mask_selection=str(mask_selection),
        resolution="original",
        seed=int(seed),
        subnet=active.name if active is not None else None,
        subnet_config=active.to_dict() if active is not None else None,
        params=int(params) if params is not None else None,
        **extra,
    )


def _check_arguments(model, processor, prompt: str, mask_selection: str, box_reference: bool) -> None:
    if mask_selection not in MASK_SELECTIONS:
        raise SupersamError(f"Unknown mask_selection {mask_selection!r}; choose one of {MASK_SELECTIONS}.")
    if prompt not in PROMPTS:
        raise SupersamError(f"Unknown prompt {prompt!r}; evaluation prompts are {PROMPTS}.")
    if not isinstance(model, SamModel) and not _is_runtime_model(model):
        raise SupersamError(
            f"evaluate_model needs a SamModel, a SuperSamModel or a runtime model called like one (e.g. "
            f"onnx_export.OnnxSamModel), got {type(model).__name__}; load a checkpoint with "
            "supersam_hf.loading.load_sam_model(name_or_path)."
        )
    if box_reference and prompt != "box":
        raise SupersamError("box_reference compares with box prompts: pass prompt='box' (a point gives no such shortcut).")
    if processor is None:
        raise SupersamError("Pass the model's SamProcessor (processor=...; supersam_hf.loading.load_processor).")
    if not isinstance(model, SuperSamModel):  # a supernet resizes its input itself; an exported SAM does not
        pad = getattr(getattr(processor, "image_processor", None), "pad_size", None) or {}
        size = getattr(getattr(getattr(model, "config", None), "vision_config", None), "image_size", None)
        if size is not None and pad.get("height") not in (None, size):
            raise SupersamError(
                f"The model takes {size} px images but the processor pads to {pad['height']} px: use the processor "
                "saved next to the model (an export at a smaller input resolution has its own; "
                "supersam_hf.loading.load_processor(model folder)).")


def _active_subnet_and_params(model, subnet) -> tuple[SubnetConfig | None, int | None]:
    """The subnet that will run (the given one, else the model's active one) and its exported parameter count
    (None for a runtime model such as ONNX Runtime, whose weights are not torch parameters)."""
    if subnet is not None:
        if not isinstance(model, SuperSamModel):
            raise SupersamError("A subnet can only be evaluated on a SuperSamModel (a supernet); this is a plain SamModel.")
        subnet = parse_subnet(subnet)
    active = subnet if subnet is not None else getattr(model, "active_subnet", None)
    if isinstance(model, SuperSamModel):
        return active, model.count_parameters(active)
    if isinstance(model, SamModel):
        return active, sum(p.numel() for p in model.parameters())
    return active, None


def _batches(dataset, processor, prompt, batch_size, max_images, seed, image_column, mask_column, mask_kind,
             max_instances_per_image=None):
    """The batches to score (an `EvaluationData`'s, or one pass over a dataset), their prompt seed and the
    instance cap they were built with (None: every instance)."""
    if isinstance(dataset, EvaluationData):
        if dataset.prompt != prompt:
            raise SupersamError(f"The EvaluationData was prepared with prompt={dataset.prompt!r}, not {prompt!r}.")
        return dataset.batches, dataset.seed, dataset.max_instances_per_image
    data = as_evaluation_dataset(dataset, processor, prompt, seed, image_column, mask_column, mask_kind,
                                 max_instances_per_image)
    return _iter_batches(data, prompt, batch_size, max_images), data.seed, data.max_instances_per_image


def box_reference_miou(
    dataset,
    processor: SamProcessor | None = None,
    batch_size: int = 4,
    max_images: int | None = None,
    seed: int = 0,
    image_column: str | None = None,
    mask_column: str | None = None,
    mask_kind: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """mIoU of "the box itself as the mask": each object's box prompt, filled, scored as its predicted mask.

    The reference every box-prompt figure should be read against (a model that copies its prompt scores this).
    It scores exactly the objects and boxes `evaluate_model(..., prompt="box")` scores on the same arguments
    (same instance selection, seed, images), through the same metric path at the original image size. Returns the
    metric's fields plus how they were measured: `prompt` "box", `reference` "box", `seed`, `mask_selection`
    None. `processor` defaults to a 64-px one: the reference never looks at pixels and boxes are mapped back to
    the original size, so the result does not depend on it (up to box rounding).
    """
    if processor is None and not isinstance(dataset, EvaluationData):
        from .data import build_sam_processor

        processor = build_sam_processor(64)
    batches, data_seed, _ = _batches(dataset, processor, "box", batch_size, max_images, seed, image_column,
                                     mask_column, mask_kind)
    try:
        _score_batches(None, batches, processor, "single", {"box_reference": _metric("box_reference")}, show_progress)
    except BaseException:
        _METRICS.pop("box_reference", None)
        raise
    scores = _compute(["box_reference"])["box_reference"]
    return {
        "miou": float(scores["miou"]),
        "per_image_miou": float(scores["per_image_miou"]),
        "mean_dice": float(scores["mean_dice"]),
        "num_objects": int(scores["num_objects"]),
        "num_images": int(scores["num_images"]),
        "prompt": "box",
        "reference": "box",
        "mask_selection": None,
        "resolution": "original",
        "seed": int(data_seed),
    }


__all__ = [
    "EvaluationData",
    "GatheredMetric",
    "MASK_SELECTIONS",
    "PROMPTS",
    "PreparedBatches",
    "StreamedBatches",
    "as_evaluation_dataset",
    "box_masks",
    "box_reference_miou",
    "evaluate_model",
    "parse_subnet",
]
