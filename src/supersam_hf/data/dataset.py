"""Hugging Face datasets → SAM training/evaluation examples: the map-style wrapper (the per-row work it shares with
the streaming one is in `examples.py`, its options in `options.py`, loading in `loading.py`; re-exported here).

One example is one image with all of its instances: the instances become the image's prompt batch, so the mask
decoder sees them together and the (expensive) image encoder runs once per image, never once per instance.
`SamProcessor` does every resize, pad and normalisation of images and prompt coordinates; the only thing done here
by hand is bringing ground-truth masks onto the decoder's low-resolution grid, aligned with the processor's
resize + pad (see `SamSegmentationData`).
"""

from __future__ import annotations

import io
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .columns import IMAGE_COLUMN_CANDIDATES, MASK_COLUMN_CANDIDATES, MASK_KINDS, _id_map
from .examples import InstanceCounts, _ExampleBuilder, _refuse_dataset_dict
from .images import to_rgb_image
from .loading import build_sam_processor, load_segmentation_dataset
from .options import ExampleOptions


class SamSegmentationData(_ExampleBuilder, torch.utils.data.Dataset):
    r"""Any `datasets.Dataset` with an image and a mask column → one SAM example per image (all its instances).

    `dataset` is a map-style `datasets.Dataset` (pick a split of a `DatasetDict` first); a streaming
    `datasets.IterableDataset` goes to `SamStreamingData`, which yields the same examples. `processor` is the
    model's `SamProcessor` (it resizes/pads/normalises images and rescales prompts). How rows become examples
    (columns, mask kind, instances kept, prompts, seed, full masks) is an `ExampleOptions`, given as `options` or
    as its fields by keyword (`prompt="box", seed=0`); each of its fields is an attribute of the dataset.

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
        self, dataset: datasets.Dataset, processor: Any, options: ExampleOptions | None = None, **overrides: Any
    ) -> None:
        if isinstance(dataset, datasets.IterableDataset):
            raise DataError("SamSegmentationData needs random access; for a streaming datasets.IterableDataset use "
                            "SamStreamingData (the same examples, read on the fly).")
        _refuse_dataset_dict(dataset)
        self._setup(processor, ExampleOptions.build(options, **overrides))
        if len(dataset) == 0:
            raise DataError("The dataset is empty (0 rows); check --dataset_name and the split.")
        self.dataset = dataset = self._find_columns(dataset)
        self._image_view = dataset.select_columns([self.image_column])
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



__all__ = [
    "ExampleOptions",
    "IMAGE_COLUMN_CANDIDATES",
    "InstanceCounts",
    "MASK_COLUMN_CANDIDATES",
    "MASK_KINDS",
    "SamSegmentationData",
    "build_sam_processor",
    "load_segmentation_dataset",
]
