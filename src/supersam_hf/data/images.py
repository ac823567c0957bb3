"""Any image (PIL of any mode, numpy array, torch tensor; 8-bit, 16-bit or float) → the RGB uint8 image SAM expects."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any numeric image array to uint8 (rules in `to_rgb_image`)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.complexfloating) or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"Cannot turn an image of dtype {array.dtype} into RGB; give uint8, uint16 or float pixels.")
    values = array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype.itemsize == 2 or (values.size and values.min() >= 0 and values.max() <= 65535):
            # 16-bit data (uint16 / int16 / PIL "I;16", or a wider int holding 16-bit values): /257.
            values = np.clip(values, 0, 65535) * (255.0 / 65535.0)
        else:
            values = _min_max(values)
    else:
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        else:
            values = _min_max(values)
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def to_rgb_image(image: Any) -> Image.Image:
    """Any image (PIL of any mode, numpy array, torch tensor) → a 3-channel uint8 RGB PIL image.

    Scaling, so that every source reaches SAM's 0–255 input range the same way:
      * PIL RGB/RGBA/L/LA/P/1/CMYK…: `Image.convert("RGB")` (alpha dropped, grey replicated to 3 channels).
      * uint8: unchanged; bool: ×255.
      * 16-bit integers (uint16, int16, PIL "I;16"): divided by 257, i.e. scaled by the 16-bit range (65535 → 255).
      * wider integers (PIL "I", int32/int64): treated as 16-bit when all values lie in [0, 65535], else min–max.
      * floats (PIL "F"): ×255 when all values lie in [0, 1], else min–max normalised to [0, 255] (NaN/inf → 0).
    Arrays may be (H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4}; C=1 is replicated, C=4 loses its alpha.
    """
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
        raise ValueError(
            f"Cannot read an image of shape {tuple(array.shape)}: expected (H, W), (H, W, C) or (C, H, W) with C in 1..4."
        )
    channels = array.shape[-1]
    array = array[..., :1] if channels in (1, 2) else array[..., :3]
    array = _to_uint8(np.ascontiguousarray(array))
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


__all__ = ["to_rgb_image"]
