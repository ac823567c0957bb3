"""Any image (PIL of any mode, numpy array, torch tensor; 8-bit, 16-bit or float) → the RGB uint8 image SAM expects."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..intensity import INTENSITY_MODES, normalize_intensity
from ..types import IntensityNormalization

DEFAULT_INTENSITY_NORMALIZATION = IntensityNormalization.PERCENTILE.value


def to_rgb_image(image: Any, intensity_normalization: str = DEFAULT_INTENSITY_NORMALIZATION) -> Image.Image:
    """Any image (PIL of any mode, numpy array, torch tensor) → a 3-channel uint8 RGB PIL image.

    Scaling, so that every source reaches SAM's 0–255 input range the same way:
      * PIL RGB/RGBA/L/LA/P/1/CMYK…: `Image.convert("RGB")` (alpha dropped, grey replicated to 3 channels).
      * uint8: unchanged; bool: ×255.
      * anything else (16-bit and wider integers, PIL "I;16" / "I" / "F", floats): `normalize_intensity` with
        `intensity_normalization` (`--intensity_normalization`): "percentile" (default: per image, 1st → 0 and
        99.8th percentile → 255, as microscopy tools do, so 12-bit or 8-bit-in-16-bit data keeps its contrast),
        "range" (the dtype range: 16-bit ÷257, [0, 1] floats ×255) or "minmax". A tiny dynamic range warns.
    Arrays may be (H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4}; C=1 is replicated, C=4 loses its alpha.
    A string is refused: decode paths first (`SamSegmentationData` casts a column of image paths to `datasets.Image`).
    """
    if isinstance(image, (str, bytes)):
        raise DataError(
            f"Got the string {str(image)[:80]!r} where an image was expected: the image column holds file paths or "
            "text, not decoded images. Cast it with dataset.cast_column(column, datasets.Image())."
        )
    if isinstance(image, Image.Image):
        if image.mode == "RGB":
            return image
        if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            return image.convert("RGB")
        array = np.asarray(image)
    elif isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
    else:
        array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4) and array.shape[0] in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first → channels-last
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise DataError(
            f"Cannot read an image of shape {tuple(array.shape)}: expected (H, W), (H, W, C) or (C, H, W) with C in 1..4."
        )
    channels = array.shape[-1]
    array = array[..., :1] if channels in (1, 2) else array[..., :3]
    array = normalize_intensity(np.ascontiguousarray(array), mode=intensity_normalization)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


__all__ = ["DEFAULT_INTENSITY_NORMALIZATION", "INTENSITY_MODES", "to_rgb_image"]
