"""Which columns hold the images and the masks, how masks are stored (mask kinds), and their decoding into arrays.

Shared by the map-style and the streaming wrapper, so both read a row the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..types import MaskKind
from .coco import is_coco_objects

logger = logging.getLogger(__name__)

IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values", "picture")
MASK_COLUMN_CANDIDATES = ("label", "labels", "mask", "masks", "annotation", "annotations", "segmentation", "seg",
                          "instance_map", "semantic_map", "objects")
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


def _pick_columns(columns: Sequence[str], image_column: str | None, mask_column: str | None) -> tuple[str, str]:
    """The (image, mask) columns: the given names (checked), else the first common name found."""
    return (_pick_column(columns, image_column, IMAGE_COLUMN_CANDIDATES, "image"),
            _pick_column(columns, mask_column, MASK_COLUMN_CANDIDATES, "mask"))


def _decode_image_paths(dataset: Any, column: str, first: Any = None) -> Any:
    """A column of image file paths (strings), of undecoded images (`datasets.Image(decode=False)`) or of
    {"bytes", "path"} cells → cast to `datasets.Image()`, so rows decode to images; strings that are not existing
    files are refused with the real reason. `first`: a stream's first value (its features may be unknown: then a
    string means paths); a map-style dataset's first non-empty value is read here."""
    feature = (dataset.features or {}).get(column)
    undecoded = isinstance(feature, datasets.Image) and not feature.decode
    if undecoded or (isinstance(feature, dict) and set(feature) == {"bytes", "path"}):
        return dataset.cast_column(column, datasets.Image())
    strings = isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
    if not strings and not (feature is None and isinstance(first, str)):
        return dataset
    if isinstance(dataset, datasets.Dataset):
        first = next((value for value in dataset[column][:8] if value), None)
    if first is None or not os.path.isfile(os.path.expanduser(first)):
        raise DataError(
            f"The image column {column!r} holds strings, not images, and {first!r} is not an existing image file "
            "(relative paths are read from the current folder). Give decoded images, or paths that exist."
        )
    logger.info("Image column %r holds file paths: decoding them as images (datasets.Image).", column)
    return dataset.cast_column(column, datasets.Image())


def _resolve_mask_kind(given: str | None, feature: Any, first: Any, column: str) -> str:
    """The mask kind: the given one, else "coco" for a column of COCO-style structs (so a first row without any
    object is still read as "coco"), else detected from the first row; a kind that contradicts the data is refused
    in one line naming the kind the data has."""
    inner = getattr(feature, "feature", feature)
    kind = given or ("coco" if isinstance(inner, dict) and "segmentation" in inner else _detect_mask_kind(first))
    if kind == "coco" and isinstance(first, (list, tuple)) and not first:
        return kind  # an image without objects: nothing to contradict
    coco = is_coco_objects(first)
    if kind == "coco" and not coco:
        raise DataError(f"--mask_kind coco contradicts column {column!r}: it holds {_detect_mask_kind(first)!r} "
                        "masks, not COCO-style objects with a 'segmentation'; pass --mask_kind "
                        f"{_detect_mask_kind(first)} or leave --mask_kind unset to auto-detect.")
    if kind != "coco" and coco:
        raise DataError(f"--mask_kind {kind} contradicts column {column!r}: it holds COCO-style objects "
                        "(detected kind: coco); pass --mask_kind coco or leave --mask_kind unset to auto-detect.")
    if kind == "masks":
        _refuse_id_map_as_masks(first, column)
    return kind


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


__all__ = ["IMAGE_COLUMN_CANDIDATES", "MASK_COLUMN_CANDIDATES", "MASK_KINDS"]
