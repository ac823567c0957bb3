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
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import SamModel, SamProcessor

from .arguments import DEFAULT_PROMPT_TYPE
from .data import SamCollator, SamSegmentationData, build_sam_processor, model_inputs
from .metrics import load_sam_miou
from .modeling_supersam import SuperSamModel
from .search_space import SubnetConfig

logger = logging.getLogger(__name__)

PROMPTS = ("point", "box")
MASK_SELECTIONS = ("single", "oracle")


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
                raise ValueError(f"The subnet is not valid inline JSON ({error}): {text[:80]!r}") from None
        else:
            path = Path(text).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"No subnet JSON file at {text!r} (give a .json file or inline JSON).")
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{text!r} is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"A subnet JSON must be an object with 'kept_layers' and 'mlp_dims', got {type(data).__name__}.")
    for key in ("subnet", "config"):
        if "kept_layers" not in data and isinstance(data.get(key), dict):
            data = data[key]
    return SubnetConfig.from_dict(data)


@dataclass
class EvaluationData:
    """Collated evaluation batches, built once and reusable (the search scores many subnets on the same images).

    Every batch is a `SamCollator` batch (with `full_masks`) plus `image_ids`: the dataset row of each image.
    Holds pixel values and full-resolution masks of all images in memory.
    """

    batches: list[dict[str, Any]]
    prompt: str
    seed: int
    num_images: int
    num_skipped_images: int = 0

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
    ) -> "EvaluationData":
        if isinstance(dataset, EvaluationData):
            return dataset
        data = as_evaluation_dataset(dataset, processor, prompt, seed, image_column, mask_column, mask_kind)
        batches = list(_iter_batches(data, prompt, batch_size, max_images))
        return cls(
            batches=batches,
            prompt=prompt,
            seed=data.seed,
            num_images=sum(len(b["image_ids"]) for b in batches),
            num_skipped_images=data.num_skipped_images,
        )


def as_evaluation_dataset(
    dataset,
    processor,
    prompt: str = DEFAULT_PROMPT_TYPE,
    seed: int = 0,
    image_column: str | None = None,
    mask_column: str | None = None,
    mask_kind: str | None = None,
) -> SamSegmentationData:
    """An HF `datasets.Dataset` (or a ready `SamSegmentationData`) → `SamSegmentationData` with `full_masks`."""
    if prompt not in PROMPTS:
        raise ValueError(f"Unknown prompt {prompt!r}; evaluation prompts are {PROMPTS}.")
    if isinstance(dataset, SamSegmentationData):
        if not dataset.return_full_masks:
            dataset = copy.copy(dataset)  # shallow: same rows and prompts, plus the full-resolution masks
            dataset.return_full_masks = True
        return dataset
    if isinstance(dataset, (datasets.Dataset, datasets.DatasetDict)):
        if processor is None:
            raise ValueError("Pass the model's SamProcessor to evaluate on a datasets.Dataset.")
        return SamSegmentationData(
            dataset,
            processor,
            image_column=image_column,
            mask_column=mask_column,
            mask_kind=mask_kind,
            prompt=prompt,
            seed=seed,
            return_full_masks=True,
        )
    raise ValueError(
        f"Cannot evaluate on a {type(dataset).__name__}; pass a datasets.Dataset, a SamSegmentationData or an "
        "EvaluationData."
    )


def _iter_batches(data: SamSegmentationData, prompt: str, batch_size: int, max_images: int | None) -> Iterator[dict]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 (or None for all images), got {max_images}.")
    count = len(data) if max_images is None else min(len(data), int(max_images))
    collator = SamCollator(prompt=prompt, seed=data.seed)
    for start in range(0, count, batch_size):
        indices = range(start, min(start + batch_size, count))
        batch = collator([data[i] for i in indices])
        batch["image_ids"] = [str(data.row_indices[i]) for i in indices]
        yield batch


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


@torch.no_grad()
def _score_batches(model, batches, processor, mask_selection: str, metric, show_progress: bool, total=None) -> None:
    """Run the model on every batch (one forward per batch: one encoder pass per image) and add its masks to `metric`."""
    from tqdm.auto import tqdm

    device, dtype = _model_device_dtype(model)
    for batch in tqdm(batches, total=total, desc="evaluate", unit="batch", disable=not show_progress, leave=False):
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        if "input_boxes" in inputs:
            inputs["input_boxes"] = inputs["input_boxes"].to(dtype)
        if "input_points" in inputs:
            inputs["input_points"] = inputs["input_points"].to(dtype)
        outputs = model(**inputs, multimask_output=True)
        low_res = outputs.pred_masks.float()  # (B, P, 3, L, L) logits
        if mask_selection == "single":
            best = outputs.iou_scores.float().argmax(dim=-1)  # (B, P): the model's own choice
            index = best[..., None, None, None].expand(-1, -1, 1, *low_res.shape[-2:])
            low_res = torch.gather(low_res, 2, index)  # (B, P, 1, L, L)
        counts = [int(truth.shape[0]) for truth in batch["full_masks"]]  # drop the collator's padding slots
        masks = processor.post_process_masks(
            [low_res[b, :n] for b, n in enumerate(counts)], batch["original_sizes"], batch["reshaped_input_sizes"], mask_threshold=0.0, binarize=True
        )
        predictions, references, image_ids = [], [], []
        for image_masks, truth, image_id in zip(masks, batch["full_masks"], batch["image_ids"]):
            truth = truth.to(image_masks.device)
            for k in range(truth.shape[0]):
                candidates = image_masks[k]
                choice = 0 if mask_selection == "single" else int(_pairwise_iou(candidates, truth[k]).argmax())
                prediction, reference = _crop_pair(candidates[choice], truth[k])
                predictions.append(prediction)
                references.append(reference)
                image_ids.append(image_id)
        metric.add_batch(predictions=predictions, references=references, image_ids=image_ids)


_METRIC = None


def _metric():
    """The `sam_miou` metric, loaded once per process (in memory: nothing is written to the cache folder)."""
    global _METRIC
    if _METRIC is None:
        _METRIC = load_sam_miou(keep_in_memory=True)
    return _METRIC


# ----------------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------------


def evaluate_model(
    model: SamModel,
    dataset,
    processor: SamProcessor | None = None,
    subnet: SubnetConfig | dict | None = None,
    prompt: str = DEFAULT_PROMPT_TYPE,
    mask_selection: str = "single",
    batch_size: int = 4,
    max_images: int | None = None,
    seed: int = 0,
    image_column: str | None = None,
    mask_column: str | None = None,
    mask_kind: str | None = None,
    show_progress: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Mean IoU of a SAM model (or of one subnet of a supernet) on a segmentation dataset.

    Args:
        model: a `SamModel` or a `SuperSamModel` (load a Hub id or folder with `supersam_hf.loading.load_sam_model`).
        dataset: a `datasets.Dataset` with image and mask columns (wrapped in `SamSegmentationData` with
            `return_full_masks=True`), a ready `SamSegmentationData` (its own rows, prompts and seed), or an
            `EvaluationData` prepared once for many evaluations.
        processor: the model's `SamProcessor` (`supersam_hf.loading.load_processor`).
        subnet: evaluate this subnet of a `SuperSamModel` (under `model.subnet(subnet)`); None = the model as it
            is (its active subnet, if any, else the full model).
        prompt: "point" (one positive point per instance) or "box" (the instance's bounding box).
        mask_selection: "single" (the output with the highest predicted IoU, what the model itself would return)
            or "oracle" (the best of the three outputs against the ground truth, as the SuperSAM code reports).
        batch_size: images per forward; every instance of an image is decoded in the same forward.
        max_images: score only the first `max_images` images (in dataset order).
        seed: prompts are drawn reproducibly from this seed (a ready `SamSegmentationData` keeps its own).
        image_column / mask_column / mask_kind: passed to `SamSegmentationData` (default: auto-detected).
        show_progress: tqdm bar over batches.
        device: move the model there first (it stays there); default: where the model already is.

    Returns:
        The metric's `miou`, `per_image_miou`, `mean_dice`, `num_objects`, `num_images`, and how they were
        measured: `prompt`, `mask_selection`, `resolution` ("original": masks compared at the image's own size),
        `seed`, `subnet` (its name, or None for a whole model), `subnet_config`, `params` (parameters of the
        standard checkpoint that was, or would be, exported).

    Runs under `torch.no_grad` in eval mode; the model's train/eval mode and active subnet are restored afterwards.
    """
    if mask_selection not in MASK_SELECTIONS:
        raise ValueError(f"Unknown mask_selection {mask_selection!r}; choose one of {MASK_SELECTIONS}.")
    if prompt not in PROMPTS:
        raise ValueError(f"Unknown prompt {prompt!r}; evaluation prompts are {PROMPTS}.")
    if not isinstance(model, SamModel):
        raise ValueError(
            f"evaluate_model needs a SamModel or a SuperSamModel, got {type(model).__name__}; load a checkpoint with "
            "supersam_hf.loading.load_sam_model(name_or_path)."
        )
    if device is not None:
        model = model.to(device)
    if processor is None:
        raise ValueError("Pass the model's SamProcessor (processor=...; supersam_hf.loading.load_processor).")

    if subnet is not None:
        if not isinstance(model, SuperSamModel):
            raise ValueError("A subnet can only be evaluated on a SuperSamModel (a supernet); this is a plain SamModel.")
        subnet = parse_subnet(subnet)
    active = subnet if subnet is not None else getattr(model, "active_subnet", None)
    if isinstance(model, SuperSamModel):
        params = model.count_parameters(active)
    else:
        params = sum(p.numel() for p in model.parameters())

    if isinstance(dataset, EvaluationData):
        if dataset.prompt != prompt:
            raise ValueError(f"The EvaluationData was prepared with prompt={dataset.prompt!r}, not {prompt!r}.")
        batches, total, data_seed = dataset.batches, len(dataset.batches), dataset.seed
    else:
        data = as_evaluation_dataset(dataset, processor, prompt, seed, image_column, mask_column, mask_kind)
        batches, data_seed = _iter_batches(data, prompt, batch_size, max_images), data.seed
        count = len(data) if max_images is None else min(len(data), max_images)
        total = -(-count // batch_size)

    metric = _metric()
    was_training = model.training
    model.eval()
    try:
        if isinstance(model, SuperSamModel):
            with model.subnet(active):
                _score_batches(model, batches, processor, mask_selection, metric, show_progress, total)
        else:
            _score_batches(model, batches, processor, mask_selection, metric, show_progress, total)
        scores = metric.compute()
    except BaseException:
        global _METRIC
        _METRIC = None  # it may hold a partial evaluation: the next call starts from a fresh one
        raise
    finally:
        model.train(was_training)
    return {
        "miou": float(scores["miou"]),
        "per_image_miou": float(scores["per_image_miou"]),
        "mean_dice": float(scores["mean_dice"]),
        "num_objects": int(scores["num_objects"]),
        "num_images": int(scores["num_images"]),
        "prompt": prompt,
        "mask_selection": mask_selection,
        "resolution": "original",
        "seed": int(data_seed),
        "subnet": active.name if active is not None else None,
        "subnet_config": active.to_dict() if active is not None else None,
        "params": int(params),
    }


# ----------------------------------------------------------------------------------------------------------------
# The "box itself as the mask" reference
# ----------------------------------------------------------------------------------------------------------------


def filled_box(mask: np.ndarray) -> np.ndarray:
    """The mask's tight bounding box (the box prompt SAM is given, inclusive pixel bounds), filled; empty stays empty."""
    box = np.zeros_like(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if len(ys):
        box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return box


def box_reference_miou(
    dataset: Any,
    processor: Any = None,
    max_images: int | None = None,
    seed: int = 0,
    image_column: str | None = None,
    mask_column: str | None = None,
    mask_kind: str | None = None,
) -> dict[str, Any]:
    """mIoU of the trivial "model" that returns each object's box prompt, filled, as its mask.

    Scores exactly the objects `evaluate_model(..., prompt="box")` scores (instances selected by
    `SamSegmentationData`: area >= its `min_mask_area`, at most `max_instances_per_image`, the same first
    `max_images` images), through the same `sam_miou` metric at the original image size. Its box prompt is the
    mask's tight box (no jitter), so this is what a model scores by copying its prompt: box-prompt figures below
    it say nothing about segmentation. Returns the metric's fields plus `prompt`="box" and `reference`="box".

    `dataset` is a `datasets.Dataset` or a ready `SamSegmentationData`; `processor` is optional (the reference
    never looks at pixels, and ground-truth masks stay at the original size whatever the processor resizes to).
    """
    if processor is None:  # only instance selection needs one; masks stay at the original size whatever it resizes to
        processor = build_sam_processor(64)
    data = as_evaluation_dataset(dataset, processor, "box", seed, image_column, mask_column, mask_kind)
    count = len(data) if max_images is None else min(len(data), int(max_images))
    predictions, references, image_ids = [], [], []
    for i in range(count):
        for truth in data[i]["full_masks"].numpy():
            # Cropped to the box, as evaluation crops each pair to its union: same IoU, far fewer pixels to store.
            ys, xs = np.nonzero(truth)
            crop = truth[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            predictions.append(filled_box(crop))
            references.append(crop)
            image_ids.append(str(data.row_indices[i]))
    scores = load_sam_miou(keep_in_memory=True).compute(predictions=predictions, references=references, image_ids=image_ids)
    return {**scores, "prompt": "box", "reference": "box"}


__all__ = ["EvaluationData", "MASK_SELECTIONS", "PROMPTS", "as_evaluation_dataset", "box_reference_miou", "evaluate_model",
           "filled_box", "parse_subnet"]
