"""The per-row work both wrappers share (`SamSegmentationData`, `SamStreamingData`): which instances of a row are
kept, their masks, prompts and low-resolution targets, and what was left out (`InstanceCounts`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch

from ..errors import DataError, SupersamError
from .coco import CocoStats, coco_rles, decode_rles, rle_areas
from .collator import SamCollator
from .columns import _decode_image_paths, _id_map, _mask_stack, _pick_columns, _refuse_id_map_as_masks, _resolve_mask_kind
from .images import to_rgb_image
from .options import ExampleOptions
from .prompts import low_res_targets, sample_prompts

logger = logging.getLogger(__name__)


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


def _refuse_dataset_dict(dataset: Any) -> None:
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(
            f"Got a DatasetDict with splits {list(dataset.keys())}; pass one split, e.g. dataset['train']."
        )


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


class _ExampleBuilder:
    """Settings and per-row work shared by the map-style (`SamSegmentationData`) and the streaming
    (`SamStreamingData`) wrapper: every `ExampleOptions` field is an attribute of the wrapper."""

    def _setup(self, processor: Any, options: ExampleOptions) -> None:
        for option in dataclasses.fields(options):
            setattr(self, option.name, getattr(options, option.name))
        self.processor = processor
        self.epoch = 0
        self.counts = InstanceCounts()
        self.pad_size, self.low_res_size = _pad_and_low_res_sizes(processor, options.low_res_size)

    def _find_columns(self, dataset: Any, first_row: dict | None = None) -> Any:
        """Pick the image and mask columns, decode a column of image paths, settle the mask kind; returns the
        dataset to read. `first_row`: a stream's first row (a map-style dataset's is read here)."""
        columns = list(dataset.column_names or first_row.keys())
        self.image_column, self.mask_column = _pick_columns(columns, self.image_column, self.mask_column)
        dataset = _decode_image_paths(dataset, self.image_column, None if first_row is None else first_row[self.image_column])
        if first_row is None:
            first_mask = dataset.select_columns([self.mask_column])[0][self.mask_column]
        else:
            first_mask = first_row[self.mask_column]
        feature = (dataset.features or {}).get(self.mask_column)
        self.mask_kind = _resolve_mask_kind(self.mask_kind, feature, first_mask, self.mask_column)
        return dataset

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

    def _coco_rles(self, raw: Any, size: tuple[int, int], stats: CocoStats | None = None) -> list[dict]:
        return coco_rles(raw, size[0], size[1], self.category_ids, stats)

    def _candidates(self, raw: Any, size: Callable[[], tuple[int, int]] | None) -> list[tuple[int, int]]:
        """(area, key) of every instance of one image (keys: map ids, or indices into the mask list / decoded
        objects); images without any annotation are counted in `self.counts`."""
        counts = self.counts
        if self.mask_kind == "coco":
            stats = CocoStats()
            rles = self._coco_rles(raw, size(), stats) if raw is not None else []
            counts.coco.add(stats)
            if not rles and not (stats.crowd or stats.empty or stats.other_category):
                counts.unannotated_images += 1
            return [(area, k) for k, area in enumerate(rle_areas(rles))]
        if self.mask_kind == "masks":
            _refuse_id_map_as_masks(raw, self.mask_column)
            stack = _mask_stack(raw) if raw is not None and np.size(raw) else np.zeros((0, 0, 0), dtype=bool)
            if len(stack) == 0:  # an image without annotation: no instances (counted, reported once)
                counts.unannotated_images += 1
            areas = stack.reshape(len(stack), -1).sum(axis=1) if len(stack) else []
            return [(int(a), k) for k, a in enumerate(areas)]
        ids, pixel_counts = np.unique(_id_map(raw), return_counts=True)
        excluded = set(self.background_ids) | ({int(self.ignore_index)} if self.ignore_index is not None else set())
        if self.ignore_index == 255 and len(ids) and ids[-1] > 255 and 255 not in self.background_ids:
            excluded.discard(255)  # 8-bit maps' "void": in a map with more ids, 255 is an instance like the rest
        return [(int(c), int(i)) for i, c in zip(ids, pixel_counts) if int(i) not in excluded]

    def _select_instances(self, raw: Any, size: Callable[[], tuple[int, int]] | None = None) -> tuple[list[int], int]:
        """Keys of the kept instances of one image (area >= min_mask_area, largest first, at most
        max_instances_per_image) and how many qualifying instances the cap left out; counted in `self.counts`.
        `size` gives the image's (height, width), needed to decode COCO polygons."""
        counts = self.counts
        counts.images += 1
        kept = [(area, key) for area, key in self._candidates(raw, size) if area >= max(self.min_mask_area, 1)]
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
        points, point_labels, boxes = sample_prompts(masks, rng, self.num_positive_points, self.num_negative_points,
                                                     self.box_jitter)
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
            "labels": low_res_targets(masks, (int(reshaped[0]), int(reshaped[1])), self.pad_size, self.low_res_size),
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

    def collator(self) -> SamCollator:
        """A `SamCollator` using this dataset's prompt type and seed."""
        return SamCollator(prompt=self.prompt, seed=self.seed)


__all__ = ["InstanceCounts"]
