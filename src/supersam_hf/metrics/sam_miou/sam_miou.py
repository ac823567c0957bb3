# Copyright 2025 The supersam_hf authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
"""SAM mean IoU: per-object mask IoU averaged over objects (and over images), plus mean Dice.

This file is an `evaluate` metric script: `evaluate.load("/path/to/sam_miou")` copies it into the modules cache and
imports it on its own, so it must not import anything from `supersam_hf` (all maths lives here).
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import numpy as np

_CITATION = """\
@article{supersam2025,
  title={SuperSAM: Crafting a SAM Supernetwork via Structured Pruning and Unstructured Parameter Prioritization},
  journal={arXiv preprint arXiv:2501.08504},
  year={2025}
}
"""

_DESCRIPTION = """\
Mean intersection-over-union of binary object masks, the accuracy measure of promptable segmentation (SAM).
Each (prediction, reference) pair is one object, e.g. the mask predicted for one prompt and its ground-truth mask.
For every object IoU = |P & R| / |P | R| and Dice = 2 |P & R| / (|P| + |R|); `miou` averages IoU over objects,
`per_image_miou` first averages the objects of each image and then averages the images.

Edge cases (documented conventions):
- prediction empty, reference non-empty (or the reverse): IoU 0 and Dice 0 (nothing of the object was found,
  or only false positives were predicted).
- prediction and reference both empty: IoU 1 and Dice 1 (the prediction is exactly right; there is no object to
  miss). Pass `ignore_empty_references=True` to leave such objects (every object whose reference is empty) out.
- prediction and reference of different shapes: `ValueError` naming the object index and both shapes.
- no objects at all: every score is NaN and `num_objects` is 0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D masks): one binary mask per object (bool, or 0/1 integers; numpy arrays, torch
        tensors or nested lists). Masks of different objects may have different shapes.
    references (`list` of 2-D masks): the ground-truth mask of each object, same shape as its prediction.
    image_ids (`list` of `str` or `int`, *optional*): the image each object belongs to, used for `per_image_miou`.
        Also accepted by `add_batch` (and `add(..., image_id=...)`). Objects without an id (`None` or `""`) each
        count as an image of their own, so without `image_ids` `per_image_miou` equals `miou`.
    ignore_empty_references (`bool`, *optional*, defaults to `False`): leave out objects whose reference mask is
        empty instead of scoring them (1 if the prediction is also empty, else 0).

Returns:
    miou (`float`): mean over objects of the per-object IoU.
    per_image_miou (`float`): mean over images of the mean IoU of each image's objects.
    mean_dice (`float`): mean over objects of the per-object Dice coefficient.
    num_objects (`int`): number of objects scored.
    num_images (`int`): number of distinct images among the scored objects.

Examples:
    >>> import numpy as np
    >>> sam_miou = evaluate.load("path/to/sam_miou")
    >>> ref = np.array([[1, 1], [1, 1]], dtype=bool)
    >>> pred = np.array([[1, 1], [0, 0]], dtype=bool)
    >>> results = sam_miou.compute(predictions=[pred], references=[ref])
    >>> results["miou"], round(results["mean_dice"], 4)
    (0.5, 0.6667)
"""

_NO_ID = ""
_MASK = datasets.List(datasets.List(datasets.Value("bool")))


def _as_mask(mask: Any, what: str, index: int) -> np.ndarray:
    """One mask as a 2-D bool array; a clear error for ragged or non-2-D input."""
    try:
        array = np.asarray(mask, dtype=bool)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{what}[{index}] is not a rectangular 2-D mask: {error}") from None
    if array.ndim != 2:
        raise ValueError(f"{what}[{index}] must be a 2-D mask, got shape {array.shape}")
    return array


def mask_statistics(predictions, references) -> np.ndarray:
    """Per-object (intersection, |prediction|, |reference|) counts, shape (num_objects, 3), int64."""
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references")
    stats = np.zeros((len(predictions), 3), dtype=np.int64)
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        pred = _as_mask(pred, "predictions", i)
        ref = _as_mask(ref, "references", i)
        if pred.shape != ref.shape:
            raise ValueError(
                f"Object {i}: prediction shape {pred.shape} does not match reference shape {ref.shape}; "
                "resize predictions to the reference size first (e.g. SamProcessor.post_process_masks)"
            )
        stats[i] = (np.count_nonzero(pred & ref), np.count_nonzero(pred), np.count_nonzero(ref))
    return stats


def iou_and_dice(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-object IoU and Dice from `mask_statistics`; both-empty objects score 1 (see the conventions above)."""
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, 3)
    inter, pred_sum, ref_sum = stats[:, 0], stats[:, 1], stats[:, 2]
    union = pred_sum + ref_sum - inter
    total = pred_sum + ref_sum
    both_empty = total == 0
    iou = np.where(both_empty, 1.0, inter / np.where(both_empty, 1.0, union))
    dice = np.where(both_empty, 1.0, 2.0 * inter / np.where(both_empty, 1.0, total))
    return iou, dice


def per_image_mean(values: np.ndarray, image_ids) -> float:
    """Mean over images of the mean of each image's values; objects without an id are images of their own."""
    groups: dict[Any, list[float]] = {}
    for k, (value, image_id) in enumerate(zip(values, image_ids)):
        key = ("object", k) if image_id in (None, _NO_ID) else ("image", image_id)
        groups.setdefault(key, []).append(float(value))
    return float(np.mean([np.mean(v) for v in groups.values()])) if groups else float("nan")


def _normalize_image_ids(image_ids, count: int) -> list[str]:
    """Image ids as strings, `""` standing for "no id" (`evaluate` cannot store nulls in a string column)."""
    if image_ids is None:
        return [_NO_ID] * count
    image_ids = [_NO_ID if i is None else str(i) for i in image_ids]
    if len(image_ids) != count:
        raise ValueError(f"Got {len(image_ids)} image_ids for {count} objects")
    return image_ids


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SamMeanIoU(evaluate.Metric):
    """Per-object mask IoU averaged over objects and over images (see the module description)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": _MASK, "references": _MASK, "image_ids": datasets.Value("string")}
            ),
            reference_urls=["https://arxiv.org/abs/2501.08504"],
        )

    # `image_ids` is a stored column (so it survives `add_batch` and distributed gathering), but optional:
    # `evaluate` requires every feature, so fill it with "" (no id) when it is not given.
    def add_batch(self, *, predictions=None, references=None, image_ids=None, **kwargs):
        """Add a batch of objects (masks), optionally with the id of the image each belongs to."""
        if predictions is not None:
            image_ids = _normalize_image_ids(image_ids, len(predictions))
        return super().add_batch(predictions=predictions, references=references, image_ids=image_ids, **kwargs)

    def add(self, *, prediction=None, reference=None, image_id=None, **kwargs):
        """Add one object (mask pair), optionally with the id of its image."""
        image_ids = _NO_ID if image_id is None else str(image_id)
        return super().add(prediction=prediction, reference=reference, image_ids=image_ids, **kwargs)

    def compute(self, *, predictions=None, references=None, image_ids=None, **kwargs) -> dict | None:
        """Score the given objects plus those added before (see the arguments below)."""
        if predictions is not None:
            image_ids = _normalize_image_ids(image_ids, len(predictions))
        return super().compute(predictions=predictions, references=references, image_ids=image_ids, **kwargs)

    def _compute(self, predictions, references, image_ids=None, ignore_empty_references: bool = False):
        return scores_from_statistics(mask_statistics(predictions, references), image_ids, ignore_empty_references)


def scores_from_statistics(stats, image_ids=None, ignore_empty_references: bool = False) -> dict:
    """The metric's result from per-object `mask_statistics` (and image ids), e.g. statistics gathered from several
    processes: exactly what `compute` returns for the same objects in the same order."""
    stats = np.asarray(stats, dtype=np.int64).reshape(-1, 3)
    image_ids = _normalize_image_ids(image_ids, len(stats))
    if ignore_empty_references:
        keep = stats[:, 2] > 0
        stats = stats[keep]
        image_ids = [i for i, k in zip(image_ids, keep) if k]
    iou, dice = iou_and_dice(stats)
    num = len(iou)
    distinct = {("object", k) if i in (None, _NO_ID) else ("image", i) for k, i in enumerate(image_ids)}
    return {
        "miou": float(iou.mean()) if num else float("nan"),
        "per_image_miou": per_image_mean(iou, image_ids),
        "mean_dice": float(dice.mean()) if num else float("nan"),
        "num_objects": int(num),
        "num_images": len(distinct),
    }
