"""Hugging Face datasets → SAM training/evaluation examples, and dataset loading.

One example is one image with all of its instances: the instances become the image's prompt batch, so the mask
decoder sees them together and the (expensive) image encoder runs once per image, never once per instance.
`SamProcessor` does every resize, pad and normalisation of images and prompt coordinates; the only thing done here
by hand is bringing ground-truth masks onto the decoder's low-resolution grid, aligned with the processor's
resize + pad (see `SamSegmentationData`).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from .coco import CocoStats, coco_rles, decode_rles, is_coco_objects, rle_areas
from .collator import POINT_PAD_VALUE, PROMPT_TYPES, SamCollator
from ..errors import DataError, SupersamError
from ..intensity import INTENSITY_MODES
from ..types import MaskKind
from .images import DEFAULT_INTENSITY_NORMALIZATION, to_rgb_image

logger = logging.getLogger(__name__)

IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values", "picture")
MASK_COLUMN_CANDIDATES = (
    "label",
    "labels",
    "mask",
    "masks",
    "annotation",
    "annotations",
    "segmentation",
    "seg",
    "instance_map",
    "semantic_map",
    "objects",
)
MASK_KINDS = MaskKind.values()


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _id_map(value: Any) -> np.ndarray:
    """An instance/semantic map (PIL, array, nested list) → 2-D int64; colour-coded maps → one id per colour."""
    array = _as_array(value)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        rgb = array[..., :3].astype(np.int64)
        if rgb.shape[-1] == 1 or (np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 0] == rgb[..., 2])):
            array = rgb[..., 0]
        else:  # colour-coded map: every distinct colour is one id, black stays 0
            array = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if array.ndim != 2:
        raise DataError(
            f"Expected a 2-D instance/semantic map, got shape {tuple(array.shape)}; for a stack of binary masks pass "
            "mask_kind='masks'."
        )
    if array.dtype != bool and not np.issubdtype(array.dtype, np.number):
        raise DataError(f"Mask map has non-numeric dtype {array.dtype}.")
    return array.astype(np.int64)


def _mask_stack(value: Any) -> np.ndarray:
    """A list / 3-D array of binary masks (PIL, arrays, nested lists) → bool (N, H, W); a single 2-D mask → N=1."""
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype == object):
        items = [_as_array(item) for item in value]
        if not items:
            return np.zeros((0, 0, 0), dtype=bool)
        shapes = {item.shape for item in items}
        if len(shapes) != 1:
            raise DataError(f"The binary masks of one image have different shapes {sorted(shapes)}.")
        array = np.stack(items)
    else:
        array = _as_array(value)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise DataError(f"Expected binary masks of shape (N, H, W), got {tuple(array.shape)}.")
    return array > 0


def _detect_mask_kind(value: Any) -> str:
    """Auto mask kind from one raw value: a 2-D map (PIL image, 2-D array/list) → "instance"; a stack → "masks";
    COCO-style objects (dict of lists / list of dicts with a `segmentation`) → "coco"."""
    if is_coco_objects(value):
        return "coco"
    if isinstance(value, Image.Image):
        return "instance"
    if isinstance(value, (list, tuple)):
        if not value:
            return "masks"
        first = value[0]
        if isinstance(first, Image.Image) or _as_array(first).ndim == 2:
            return "masks"
        return "instance"
    array = _as_array(value)
    if array.dtype == object or array.ndim == 3:
        return "masks"
    return "instance"


def _pick_column(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str) -> str:
    if given is not None:
        if given not in columns:
            raise DataError(f"{what}_column={given!r} is not a column of the dataset; its columns are {list(columns)}.")
        return given
    lowered = {c.lower(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise DataError(
        f"Could not find the {what} column: the dataset's columns are {list(columns)}, none of which is a common "
        f"{what} column name {list(candidates)}. Name it with {what}_column='<name>' (--{what}_column)."
    )


def _decode_image_paths(dataset: datasets.Dataset, column: str) -> datasets.Dataset:
    """A column of image file paths (strings), of undecoded images (`datasets.Image(decode=False)`) or of
    {"bytes", "path"} cells → cast to `datasets.Image()`, so rows decode to images; strings that are not existing
    files are refused with the real reason."""
    feature = dataset.features.get(column)
    undecoded = isinstance(feature, datasets.Image) and not feature.decode
    if undecoded or (isinstance(feature, dict) and set(feature) == {"bytes", "path"}):
        return dataset.cast_column(column, datasets.Image())
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        return dataset
    first = next((value for value in dataset[column][:8] if value), None)
    if first is None or not os.path.isfile(os.path.expanduser(first)):
        raise DataError(
            f"The image column {column!r} holds strings, not images, and {first!r} is not an existing image file "
            "(relative paths are read from the current folder). Give decoded images, or paths that exist."
        )
    logger.info("Image column %r holds file paths: decoding them as images (datasets.Image).", column)
    return dataset.cast_column(column, datasets.Image())


# ----------------------------------------------------------------------------------------------------------------
# Dataset wrapper
# ----------------------------------------------------------------------------------------------------------------


def _check_data_arguments(
    dataset: Any,
    mask_kind: str | None,
    prompt: str,
    intensity_normalization: str,
    num_positive_points: int,
    num_negative_points: int,
    box_jitter: int,
    min_mask_area: int,
    max_instances_per_image: int | None,
    seed: int,
) -> None:
    """Refuse what the wrappers cannot read before any work: a DatasetDict, an unknown mask kind, prompt or
    intensity mode, and out-of-range counts."""
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(
            f"Got a DatasetDict with splits {list(dataset.keys())}; pass one split, e.g. dataset['train']."
        )
    if mask_kind is not None and mask_kind not in MASK_KINDS:
        raise DataError(f"Unknown mask_kind {mask_kind!r}; valid kinds are {MASK_KINDS} (or None to auto-detect).")
    if prompt not in PROMPT_TYPES:
        raise SupersamError(f"Unknown prompt {prompt!r}; valid prompts are {PROMPT_TYPES}.")
    if intensity_normalization not in INTENSITY_MODES:
        raise SupersamError(f"Unknown intensity_normalization {intensity_normalization!r}; choose one of "
                         f"{INTENSITY_MODES} (--intensity_normalization).")
    if num_positive_points < 1 or num_negative_points < 0:
        raise SupersamError(
            f"Need num_positive_points >= 1 and num_negative_points >= 0, got {num_positive_points} and "
            f"{num_negative_points}."
        )
    if box_jitter < 0 or min_mask_area < 0 or seed < 0:
        raise SupersamError("box_jitter, min_mask_area and seed must be >= 0.")
    if max_instances_per_image is not None and max_instances_per_image < 1:
        raise SupersamError(f"--max_instances_per_image must be >= 1 (or unset: every instance), got "
                            f"{max_instances_per_image}.")


def _pad_and_low_res_sizes(processor: Any, low_res_size: int | None) -> tuple[tuple[int, int], int]:
    """The processor's square pad size (height, width) and the side of the decoder's low-resolution masks (given,
    else the processor's `mask_pad_size`, else pad height // 4); the processor must pad, and the pad size must be
    a multiple of the low-resolution side (the targets are area-averaged over whole cells)."""
    image_processor = getattr(processor, "image_processor", processor)
    pad_size = getattr(image_processor, "pad_size", None)
    if not getattr(image_processor, "do_pad", False) or pad_size is None:
        raise SupersamError("The SAM processor must pad images to a square (do_pad=True, pad_size={'height','width'}).")
    pad_size = (int(pad_size["height"]), int(pad_size["width"]))
    if low_res_size is None:
        # The processor's mask_pad_size is the decoder's output size (SAM: 256 for 1024 px, patch 16).
        mask_pad = getattr(processor.image_processor, "mask_pad_size", None) or {"height": pad_size[0] // 4}
        low_res_size = mask_pad["height"]
    low_res_size = int(low_res_size)
    if any(side % low_res_size for side in pad_size):
        raise SupersamError(f"pad_size {pad_size} must be a multiple of low_res_size {low_res_size}.")
    return pad_size, low_res_size


def _is_coco_feature(feature: Any) -> bool:
    """A column feature of COCO-style objects: a struct (or a list of structs) with a `segmentation` field, so a
    first row without any object is still read as "coco"."""
    inner = getattr(feature, "feature", feature)
    return isinstance(inner, dict) and "segmentation" in inner


def _check_mask_kind(mask_kind: str, raw: Any, column: str) -> None:
    """Refuse a mask kind that contradicts the data, in one line naming the kind the data has."""
    if mask_kind == "coco" and isinstance(raw, (list, tuple)) and not raw:
        return  # an image without objects: nothing to contradict
    coco = is_coco_objects(raw)
    if mask_kind == "coco" and not coco:
        raise DataError(f"--mask_kind coco contradicts column {column!r}: it holds {_detect_mask_kind(raw)!r} masks, "
                        "not COCO-style objects with a 'segmentation'; pass --mask_kind "
                        f"{_detect_mask_kind(raw)} or leave --mask_kind unset to auto-detect.")
    if mask_kind != "coco" and coco:
        raise DataError(f"--mask_kind {mask_kind} contradicts column {column!r}: it holds COCO-style objects "
                        "(detected kind: coco); pass --mask_kind coco or leave --mask_kind unset to auto-detect.")
    if mask_kind == "masks":
        _refuse_id_map_as_masks(raw, column)


def _refuse_id_map_as_masks(raw: Any, column: str) -> None:
    """`masks` reads each map as one binary mask (> 0): a single 2-D integer map with several ids would merge its
    instances into one object, so it is refused, naming the kind it is."""
    if raw is None or isinstance(raw, (list, tuple)):
        return
    array = _as_array(raw)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        return
    values = np.unique(array)
    if len(values) > 2:
        raise DataError(
            f"--mask_kind masks contradicts column {column!r}: it holds a 2-D id map with {len(values)} distinct "
            "values (detected kind: instance), which masks would merge into one object; pass --mask_kind instance "
            "(one object per id) or semantic (one per class), or leave --mask_kind unset."
        )


@dataclass
class InstanceCounts:
    """What turning rows into examples left out, for logs and results."""

    images: int = 0  # rows read
    skipped_images: int = 0  # rows without any instance kept
    unannotated_images: int = 0  # rows without any annotation at all
    instances: int = 0  # instances kept
    instances_left_out: int = 0  # instances above max_instances_per_image (the smallest ones)
    coco: CocoStats = field(default_factory=CocoStats)

    def to_dict(self) -> dict[str, int]:
        return {"images": self.images, "skipped_images": self.skipped_images,
                "unannotated_images": self.unannotated_images, "instances": self.instances,
                "instances_left_out": self.instances_left_out, "crowd_annotations_skipped": self.coco.crowd,
                "empty_annotations_skipped": self.coco.empty,
                "other_category_annotations_skipped": self.coco.other_category}


class _ExampleBuilder:
    """Settings and per-row work shared by the map-style (`SamSegmentationData`) and the streaming
    (`SamStreamingData`) wrapper: which instances of a row are kept, their masks, prompts and low-res targets."""

    def _setup(self, processor, mask_kind, ignore_index, background_ids, min_mask_area, max_instances_per_image,
               prompt, num_positive_points, num_negative_points, box_jitter, seed, return_full_masks, low_res_size,
               intensity_normalization, category_ids) -> None:
        self.processor = processor
        self.intensity_normalization = intensity_normalization
        self.mask_kind = mask_kind
        self.ignore_index = ignore_index
        self.background_ids = tuple(int(b) for b in background_ids)
        self.min_mask_area = int(min_mask_area)
        self.max_instances_per_image = None if max_instances_per_image is None else int(max_instances_per_image)
        self.category_ids = None if category_ids is None else tuple(int(c) for c in category_ids)
        self.prompt = prompt
        self.num_positive_points = int(num_positive_points)
        self.num_negative_points = int(num_negative_points)
        self.box_jitter = int(box_jitter)
        self.seed = int(seed)
        self.return_full_masks = return_full_masks
        self.epoch = 0
        self.counts = InstanceCounts()
        self.pad_size, self.low_res_size = _pad_and_low_res_sizes(processor, low_res_size)

    # Kept for code that reads the counters directly.
    @property
    def num_skipped_images(self) -> int:
        return self.counts.skipped_images

    @property
    def num_unannotated_images(self) -> int:
        return self.counts.unannotated_images

    @property
    def num_instances_left_out(self) -> int:
        return self.counts.instances_left_out

    # -- instances ------------------------------------------------------------------------------------------------

    def _excluded_ids(self) -> set[int]:
        excluded = set(self.background_ids)
        if self.ignore_index is not None:
            excluded.add(int(self.ignore_index))
        return excluded

    def _coco_rles(self, raw: Any, size: tuple[int, int], stats: CocoStats | None = None) -> list[dict]:
        return coco_rles(raw, size[0], size[1], self.category_ids, stats)

    def _select_instances(self, raw: Any, size: Callable[[], tuple[int, int]] | None = None) -> tuple[list[int], int]:
        """Keys of the kept instances of one image (area >= min_mask_area, largest first, at most
        max_instances_per_image) and how many qualifying instances the cap left out; counted in `self.counts`.
        `size` gives the image's (height, width), needed to decode COCO polygons."""
        counts = self.counts
        counts.images += 1
        if self.mask_kind == "coco":
            stats = CocoStats()
            rles = self._coco_rles(raw, size(), stats) if raw is not None else []
            counts.coco.add(stats)
            if not rles and not (stats.crowd or stats.empty or stats.other_category):
                counts.unannotated_images += 1
            candidates = [(area, k) for k, area in enumerate(rle_areas(rles))]
        elif self.mask_kind == "masks":
            _refuse_id_map_as_masks(raw, getattr(self, "mask_column", "mask"))
            stack = _mask_stack(raw) if raw is not None and np.size(raw) else np.zeros((0, 0, 0), dtype=bool)
            if len(stack) == 0:  # an image without annotation: no instances (counted, reported once)
                counts.unannotated_images += 1
            areas = stack.reshape(len(stack), -1).sum(axis=1) if len(stack) else []
            candidates = [(int(a), k) for k, a in enumerate(areas)]
        else:
            ids, pixel_counts = np.unique(_id_map(raw), return_counts=True)
            excluded = self._excluded_ids()
            if self.ignore_index == 255 and len(ids) and ids[-1] > 255 and 255 not in self.background_ids:
                excluded.discard(255)  # 8-bit maps' "void": in a map with more ids, 255 is an instance like the rest
            candidates = [(int(c), int(i)) for i, c in zip(ids, pixel_counts) if int(i) not in excluded]
        kept = [(area, key) for area, key in candidates if area >= max(self.min_mask_area, 1)]
        kept.sort(key=lambda item: (-item[0], item[1]))
        cap = len(kept) if self.max_instances_per_image is None else self.max_instances_per_image
        keys = [key for _, key in kept[:cap]]
        left_out = len(kept) - len(keys)
        counts.instances += len(keys)
        counts.instances_left_out += left_out
        if not keys:
            counts.skipped_images += 1
        return keys, left_out

    def _full_masks(self, raw: Any, keys: list[int], size: tuple[int, int]) -> np.ndarray:
        if self.mask_kind == "coco":
            rles = self._coco_rles(raw, size)
            return decode_rles([rles[k] for k in keys], *size)
        if self.mask_kind == "masks":
            return _mask_stack(raw)[keys]
        id_map = _id_map(raw)
        return id_map[None] == np.asarray(keys, dtype=np.int64)[:, None, None]

    # -- prompts --------------------------------------------------------------------------------------------------

    def _prompts(
        self, masks: np.ndarray, rng: np.random.Generator
    ) -> tuple[list[list[list[float]]], list[list[int]], list[list[float]]]:
        """Points (P, n, 2) xy, their labels (P, n) and boxes (P, 4) xyxy, in original pixel coordinates; the box is
        the decoded mask's own extent (a stored `bbox` that disagrees does not matter)."""
        height, width = masks.shape[1:]
        points, point_labels, boxes = [], [], []
        for mask in masks:
            ys, xs = np.nonzero(mask)
            chosen = rng.integers(len(xs), size=self.num_positive_points)
            pts = [[float(xs[j]), float(ys[j])] for j in chosen]
            labs = [1] * self.num_positive_points
            if self.num_negative_points:
                outside = np.flatnonzero(~mask.ravel())
                for _ in range(self.num_negative_points):
                    if len(outside):
                        flat = int(outside[rng.integers(len(outside))])
                        pts.append([float(flat % width), float(flat // width)])
                        labs.append(0)
                    else:  # the mask fills the image: a "not a point" the prompt encoder ignores
                        pts.append([0.0, 0.0])
                        labs.append(POINT_PAD_VALUE)
            box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.int64)
            if self.box_jitter:
                box = box + rng.integers(-self.box_jitter, self.box_jitter + 1, size=4)
                box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
                box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])
            points.append(pts)
            point_labels.append(labs)
            boxes.append([float(v) for v in box])
        return points, point_labels, boxes

    def _low_res_labels(self, masks: np.ndarray, reshaped_size: tuple[int, int]) -> torch.Tensor:
        """Bool (P, H, W) masks → float (P, L, L) targets on the decoder grid (resize → pad → area-average ≥ 0.5)."""
        num = masks.shape[0]
        new_h, new_w = reshaped_size
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(masks).to(torch.uint8)[:, None], size=(new_h, new_w), mode="nearest-exact"
        )[:, 0].bool()
        pad_h, pad_w = self.pad_size
        canvas = torch.zeros(num, pad_h, pad_w, dtype=torch.bool)
        canvas[:, :new_h, :new_w] = resized[:, :pad_h, :pad_w]
        low = self.low_res_size
        kh, kw = pad_h // low, pad_w // low
        counts = canvas.view(num, low, kh, low, kw).sum(dim=(2, 4))
        return (counts * 2 >= kh * kw).float()

    def _example(self, image: Any, raw: Any, keys: list[int], rng_key: tuple, where: str) -> dict[str, torch.Tensor]:
        """One example: the image through the processor, its kept instances' masks, prompts and targets."""
        image = to_rgb_image(image, self.intensity_normalization)
        masks = self._full_masks(raw, keys, (image.height, image.width))
        if masks.shape[1:] != (image.height, image.width):
            raise DataError(
                f"{where}: mask size {tuple(masks.shape[1:])} differs from image size {(image.height, image.width)} "
                "(H, W); masks must be at the image's resolution."
            )
        rng = np.random.default_rng(rng_key)
        points, point_labels, boxes = self._prompts(masks, rng)
        encoding = self.processor(
            images=image, input_points=[points], input_labels=[point_labels], input_boxes=[boxes], return_tensors="pt"
        )
        reshaped = encoding["reshaped_input_sizes"][0]
        example = {
            "pixel_values": encoding["pixel_values"][0],
            "original_sizes": encoding["original_sizes"][0].long(),
            "reshaped_input_sizes": reshaped.long(),
            "input_points": encoding["input_points"][0].float(),
            "input_labels": encoding["input_labels"][0].long(),
            "input_boxes": encoding["input_boxes"][0].float(),
            "labels": self._low_res_labels(masks, (int(reshaped[0]), int(reshaped[1]))),
        }
        if self.return_full_masks:
            example["full_masks"] = torch.from_numpy(np.ascontiguousarray(masks))
        return example

    def _report_counts(self, what: str) -> None:
        counts = self.counts
        if counts.skipped_images:
            logger.warning(
                "%s skipped %d of %d images with no instance of at least min_mask_area=%d pixels (%d of them have "
                "no annotation at all); they contribute no instances.",
                what, counts.skipped_images, counts.images, self.min_mask_area, counts.unannotated_images,
            )
        if counts.coco.crowd or counts.coco.empty:
            logger.warning("%s skipped %d crowd regions (iscrowd=1: groups, not single objects) and %d annotations "
                           "that decode to an empty mask.", what, counts.coco.crowd, counts.coco.empty)
        if counts.instances_left_out:
            logger.warning("%s keeps at most max_instances_per_image=%d instances per image (largest first): %d of "
                           "%d instances are left out.", what, self.max_instances_per_image,
                           counts.instances_left_out, counts.instances + counts.instances_left_out)

    def set_epoch(self, epoch: int) -> None:
        """Draw new (still reproducible) prompts for this epoch."""
        self.epoch = int(epoch)

    def collator(self) -> "SamCollator":
        """A `SamCollator` using this dataset's prompt type and seed."""
        return SamCollator(prompt=self.prompt, seed=self.seed)


_DOC_ARGS = r"""
    Args:
        processor: the `SamProcessor` of the model; it resizes/pads/normalises images and rescales prompts.
        image_column / mask_column: column names; `None` auto-detects common names (image, img, pixel_values,
            picture / label, labels, mask, masks, annotation(s), segmentation, seg, instance_map, semantic_map,
            objects).
        mask_kind: "instance" (2-D map, one id per instance), "masks" (list or (N, H, W) stack of binary masks),
            "semantic" (2-D class map, each present class is one possibly multi-part mask) or "coco" (COCO-style
            objects: polygons, uncompressed or compressed RLE, decoded with pycocotools; crowd regions skipped).
            `None` auto-detects from the first row. A kind that contradicts the data (an id map given as "masks",
            objects given as a map kind) is refused with the detected kind. Colour-coded RGB maps count each
            distinct colour as one id.
        ignore_index: map value that belongs to no mask (void/boundary pixels; they are background in the
            targets). `None` disables it (e.g. binary 0/255 masks read as an instance map). The default 255 is
            8-bit maps' void: in a map holding ids above 255 it is an ordinary instance.
        background_ids: map values that are background (instance and semantic maps).
        min_mask_area: instances with fewer pixels (original resolution) are dropped; images left with none are
            skipped, counted in `counts` and reported in a warning.
        max_instances_per_image: keep at most this many instances per image, largest first (ties: lower id
            first); `None` (default) keeps every instance. What a cap leaves out is counted
            (`counts.instances_left_out`) and reported.
        category_ids: with "coco", keep only objects of these categories.
        prompt: "point", "box" or "mixed"; the default prompt of `collator()`. Examples always carry both kinds.
        num_positive_points / num_negative_points: points per instance, uniform inside / outside its mask.
        box_jitter: each box coordinate moves by a random integer in [-box_jitter, box_jitter] px, then is clipped.
        seed: prompts are drawn from `numpy.random.default_rng((seed, row_index, epoch))`; `set_epoch` varies
            them per epoch reproducibly.
        return_full_masks: also return `full_masks`, bool (P, H, W) at the original size, for evaluation.
        low_res_size: side of the decoder's low-resolution masks (4× the image-embedding size); default the
            processor's `mask_pad_size`, else pad_size // 4 (right for patch size 16).
"""


class SamSegmentationData(_ExampleBuilder, torch.utils.data.Dataset):
    __doc__ = r"""Any `datasets.Dataset` with an image and a mask column → one SAM example per image (all its instances).

    `dataset` is a map-style `datasets.Dataset` (pick a split of a `DatasetDict` first); a streaming
    `datasets.IterableDataset` goes to `SamStreamingData`, which yields the same examples.
    """ + _DOC_ARGS + r"""
    `__getitem__` returns tensors for one image with P instances (S = processor pad size, L = low_res_size):
    `pixel_values` (3, S, S), `original_sizes` (2,), `reshaped_input_sizes` (2,), `input_points` (P, n, 2) float,
    `input_labels` (P, n) long (1 positive, 0 negative), `input_boxes` (P, 4) float xyxy — prompts in the
    processor's resized coordinates — and `labels` (P, L, L) float in {0, 1} (+ `full_masks` if asked).

    Low-res targets follow the processor's geometry exactly: each mask is resized to `reshaped_input_sizes` with
    nearest-exact sampling (the processor resized the image to that size), put in the top-left of an S×S zero
    canvas (the processor pads bottom/right), then area-averaged over (S/L)×(S/L) cells; a cell is foreground when
    at least half of it is covered (>= 0.5). `processor.post_process_masks` inverts exactly this geometry.
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        processor: Any,
        image_column: str | None = None,
        mask_column: str | None = None,
        mask_kind: str | None = None,
        ignore_index: int | None = 255,
        background_ids: Sequence[int] = (0,),
        min_mask_area: int = 16,
        max_instances_per_image: int | None = None,
        prompt: str = "point",
        num_positive_points: int = 1,
        num_negative_points: int = 0,
        box_jitter: int = 0,
        seed: int = 0,
        return_full_masks: bool = False,
        low_res_size: int | None = None,
        intensity_normalization: str = DEFAULT_INTENSITY_NORMALIZATION,
        category_ids: Sequence[int] | None = None,
    ) -> None:
        if isinstance(dataset, datasets.IterableDataset):
            raise DataError("SamSegmentationData needs random access; for a streaming datasets.IterableDataset use "
                            "SamStreamingData (the same examples, read on the fly).")
        _check_data_arguments(dataset, mask_kind, prompt, intensity_normalization, num_positive_points,
                              num_negative_points, box_jitter, min_mask_area, max_instances_per_image, seed)
        self._setup(processor, mask_kind, ignore_index, background_ids, min_mask_area, max_instances_per_image,
                    prompt, num_positive_points, num_negative_points, box_jitter, seed, return_full_masks,
                    low_res_size, intensity_normalization, category_ids)
        self.image_column = _pick_column(dataset.column_names, image_column, IMAGE_COLUMN_CANDIDATES, "image")
        dataset = _decode_image_paths(dataset, self.image_column)
        self.dataset = dataset
        self.mask_column = _pick_column(dataset.column_names, mask_column, MASK_COLUMN_CANDIDATES, "mask")
        if len(dataset) == 0:
            raise DataError("The dataset is empty (0 rows); check --dataset_name and the split.")
        self._image_view = dataset.select_columns([self.image_column])
        first = dataset.select_columns([self.mask_column])[0][self.mask_column]
        coco_feature = _is_coco_feature(dataset.features.get(self.mask_column))
        self.mask_kind = mask_kind or ("coco" if coco_feature else _detect_mask_kind(first))
        _check_mask_kind(self.mask_kind, first, self.mask_column)
        if self.mask_kind == "coco":  # objects stay Python objects; polygons need the image size
            size_columns = [c for c in ("height", "width") if c in dataset.column_names]
            self._mask_view = dataset.select_columns([self.mask_column, *size_columns])
        else:
            self._mask_view = dataset.select_columns([self.mask_column]).with_format("numpy")
        self._index_instances()

    def _row_size(self, row: int, record: dict) -> tuple[int, int]:
        """(height, width) of a row: its height/width columns, else the image file's header (not decoded)."""
        if record.get("height") is not None and record.get("width") is not None:
            return int(record["height"]), int(record["width"])
        if not isinstance(self.dataset.features.get(self.image_column), datasets.Image):
            image = to_rgb_image(self._image_view[row][self.image_column], self.intensity_normalization)
            return image.height, image.width
        if getattr(self, "_undecoded_images", None) is None:
            self._undecoded_images = self._image_view.cast_column(self.image_column, datasets.Image(decode=False))
        cell = self._undecoded_images[row][self.image_column]
        source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]
        with Image.open(source) as image:
            return image.height, image.width

    def _index_instances(self) -> None:
        """One pass over the masks: which rows have an instance (`row_indices`) and which instances each keeps
        (`_keys`: map ids, or indices into the mask list / decoded objects). Rows without one are skipped,
        counted and reported once here; no row with one is an error that says why."""
        self.row_indices: list[int] = []
        self._keys: list[list[int]] = []
        self.instances_left_out: list[int] = []  # per kept example: instances the cap left out
        for row in range(len(self.dataset)):
            record = self._mask_view[row]
            keys, left_out = self._select_instances(record[self.mask_column], lambda: self._row_size(row, record))
            if keys:
                self.row_indices.append(row)
                self._keys.append(keys)
                self.instances_left_out.append(left_out)
        if not self.row_indices:
            raise DataError(self._no_instance_message(len(self.dataset)))
        self._report_counts("SamSegmentationData")

    def _no_instance_message(self, num_rows: int) -> str:
        """Why no image has an instance, with the fix: binary 0/255 maps read as id maps are the common case."""
        values = None
        if self.mask_kind in ("instance", "semantic"):
            values = np.unique(_id_map(self._mask_view[0][self.mask_column]))
        binary = values is not None and self.ignore_index is not None and set(values.tolist()) == {0, int(self.ignore_index)}
        if binary:
            return (
                f"The masks in column {self.mask_column!r} hold only the values 0 and {self.ignore_index}: binary "
                f"masks, read here as {self.mask_kind} id maps where {self.ignore_index} means 'ignore'. Pass "
                "--mask_kind masks (mask_kind='masks') to read each map as one binary mask."
            )
        categories = f", category_ids={list(self.category_ids)}" if self.category_ids is not None else ""
        return (
            f"No image of the {num_rows} in the dataset has an instance of at least min_mask_area="
            f"{self.min_mask_area} pixels (mask_kind={self.mask_kind!r}, column {self.mask_column!r}, "
            f"background_ids={self.background_ids}, ignore_index={self.ignore_index}{categories}). Check --mask_kind "
            "and --mask_column, or lower --min_mask_area."
        )

    # -- torch Dataset ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.row_indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.row_indices[index]
        raw = self._mask_view[row][self.mask_column]
        image = self._image_view[row][self.image_column]
        return self._example(image, raw, self._keys[index], (self.seed, row, self.epoch), f"Row {row}")


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------

_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


def _pick_split(data: Any, split: str | None, source: str) -> datasets.Dataset:
    if not isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict, dict)):
        # A single saved Dataset has no split names; only the default split can mean it.
        if split not in (None, "train"):
            raise DataError(f"{source!r} holds a single dataset without splits; split={split!r} cannot be selected. "
                             "Save a DatasetDict with that split, or leave split unset.")
        return data
    splits = list(data.keys())
    if split is not None:
        if split not in data:
            raise DataError(f"{source!r} has no split {split!r}; its splits are {splits}. Pass split=<one of them>.")
        return data[split]
    if "train" in data:
        return data["train"]
    if len(splits) == 1:
        return data[splits[0]]
    raise DataError(f"{source!r} has several splits {splits} and none is 'train'; pass split=<one of them>.")


def build_sam_processor(image_size: int = 1024, patch_size: int = 16):
    """A `SamProcessor` for a SAM whose encoder takes `image_size` px: longest side resized to it, padded square,
    and mask targets at the decoder's low resolution (4× the image-embedding size). SAM checkpoints ship their own
    processor; this one is for the small models built with `build_sam_config` (tests, demo)."""
    from transformers import SamImageProcessor, SamProcessor

    low_res = 4 * (image_size // patch_size)
    image_processor = SamImageProcessor(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": low_res},
        mask_pad_size={"height": low_res, "width": low_res},
    )
    return SamProcessor(image_processor=image_processor)


def load_segmentation_dataset(
    name_or_path: str | os.PathLike,
    split: str | None = None,
    config_name: str | None = None,
    *,
    streaming: bool = False,
    image_dir: str | os.PathLike | None = None,
    num_shards: int = 64,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load a segmentation dataset from a `save_to_disk` folder, a local file/folder, an annotation file or the Hub.

    * a folder written by `save_to_disk` → `datasets.load_from_disk` (a DatasetDict → `split`, default "train");
    * a COCO annotation file (`instances_*.json`, LVIS, Roboflow / CVAT exports) or an SA-1B per-image JSON →
      one row per image with COCO-style `objects` (`data.coco.load_coco_json`; images next to the file or under
      `image_dir`), and a folder of SA-1B per-image JSONs likewise;
    * a folder with `images/` and `masks/` (same stems: an instance-id PNG, or `stem_*.png` per instance);
    * a .parquet/.json/.jsonl/.csv/.arrow file → `load_dataset(<builder>, data_files=...)`;
    * another local folder (imagefolder, parquet shards, …) → `load_dataset(folder)`;
    * anything else is a Hub dataset name → `load_dataset(name, config_name, split=split)`.

    With `streaming=True` the result is a `datasets.IterableDataset` read on the fly: Hub datasets and data files
    through `load_dataset(..., streaming=True)` (nothing is downloaded first), the other layouts (already local)
    through `to_iterable_dataset(num_shards)` so that ranks and workers get whole shards.
    """
    source = os.fspath(name_or_path)
    path = os.path.expanduser(source)
    local = _load_local_layout(path, source, split, image_dir)
    if local is not None:
        return _as_streaming(local, num_shards) if streaming else local
    if image_dir is not None:
        raise DataError(f"--image_dir is for a COCO / SA-1B annotation file; {source!r} is not one.")
    if os.path.isdir(path):
        try:
            data = datasets.load_dataset(path, streaming=streaming)
        except Exception as error:  # noqa: BLE001 - re-raised with the accepted layouts
            raise DataError(
                f"Could not load the folder {source!r} as a dataset ({error}). Expected a `save_to_disk` folder, an "
                "images/ + masks/ folder, an imagefolder, or data files (parquet/json/csv) readable by "
                "`datasets.load_dataset`."
            ) from error
        return _pick_split(data, split, source)
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FILE_BUILDERS:
            raise DataError(
                f"Unsupported data file {source!r}: expected one of {sorted(_FILE_BUILDERS)} (or a COCO annotation "
                "JSON) or a dataset folder."
            )
        data = datasets.load_dataset(_FILE_BUILDERS[ext], data_files=path, streaming=streaming)
        return _pick_split(data, split, source)
    if source.startswith((".", "~")) or os.path.isabs(source):
        raise FileNotFoundError(f"No dataset file or folder at {source!r}.")
    try:
        data = datasets.load_dataset(source, config_name, split=split, streaming=streaming)
    except Exception as error:  # noqa: BLE001 - re-raised with what was tried
        raise DataError(
            f"{source!r} is not a local path, and loading it as a Hub dataset failed ({error}). Give a "
            "`save_to_disk` folder, a local data file/folder, or a reachable Hub dataset name."
        ) from error
    return _pick_split(data, split, source)


def _load_local_layout(path: str, source: str, split: str | None, image_dir) -> datasets.Dataset | None:
    """The map-style dataset of a local layout this tool reads itself (save_to_disk, COCO / SA-1B annotations,
    images/ + masks/), or None for what `datasets.load_dataset` reads."""
    from .coco import is_sa1b_folder, load_coco_json, load_sa1b_folder, read_annotation_json
    from .folders import is_images_masks_folder, load_images_masks_folder

    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, marker)) for marker in ("dataset_dict.json", "state.json")):
            return _pick_split(datasets.load_from_disk(path), split, source)
        if is_images_masks_folder(path):
            return _pick_split(load_images_masks_folder(path), split, source)
        if is_sa1b_folder(path):
            return _pick_split(load_sa1b_folder(path, image_dir), split, source)
    elif os.path.isfile(path) and path.lower().endswith(".json"):
        parsed = read_annotation_json(path)
        if parsed is not None:
            return _pick_split(load_coco_json(path, image_dir, parsed=parsed), split, source)
    return None


def _as_streaming(dataset: datasets.Dataset, num_shards: int) -> datasets.IterableDataset:
    """A local map-style dataset as an IterableDataset with up to `num_shards` contiguous shards."""
    return dataset.to_iterable_dataset(num_shards=max(1, min(int(num_shards), len(dataset))))


__all__ = [
    "IMAGE_COLUMN_CANDIDATES",
    "InstanceCounts",
    "MASK_COLUMN_CANDIDATES",
    "MASK_KINDS",
    "SamSegmentationData",
    "build_sam_processor",
    "load_segmentation_dataset",
]
