"""Image intensities → SAM's 0–255 input range, so that microscopy data (12/16-bit, float) keeps its contrast.

SAM reads 8-bit RGB. Scaling a 16-bit image by its dtype range (÷257) turns typical microscopy data black: a
fluorescence tile stored as uint16 with values 0–235 peaks at 1/255, 12-bit camera data (0–4095) at 14/255.
Microscopy tools (csbdeep's `normalize`, Cellpose, StarDist) instead scale each image by robust percentiles of its
own values; that is the default here ("percentile", 1st–99.8th). uint8 and bool images are never rescaled.

Modes (`INTENSITY_MODES`), for every image that is not uint8 or bool:
  * "percentile": per image, `low`th percentile → 0 and `high`th → 255, clipped (NaN → 0, +inf → 255).
  * "range": the dtype range, as before: 16-bit integers ÷257 (wider integers too when all values lie in
    [0, 65535]), floats in [0, 1] ×255; anything else min–max.
  * "minmax": per image, minimum → 0 and maximum → 255.
Statistics are taken over the whole image, all channels together, so colours keep their balance.
"""

from __future__ import annotations

import warnings

import numpy as np

from .errors import DataError
from .types import IntensityNormalization

INTENSITY_MODES = IntensityNormalization.values()
HISTOGRAM_SPAN = 1 << 20  # integer images spanning at most this many values get their percentiles from a histogram
MIN_LEVELS = 16  # fewer distinct intensity levels than this between the percentiles: warn (posterised, noisy input)


class LowDynamicRangeWarning(UserWarning):
    """An image's intensities span almost no range: after scaling it is (nearly) flat or posterised."""


def normalize_intensity(
    array: np.ndarray, mode: str = "percentile", low: float = 1.0, high: float = 99.8, warn: bool = True
) -> np.ndarray:
    """Scale an image array of any numeric dtype and shape ((H, W), (H, W, C), ...) to uint8 (see module docstring).

    uint8 is returned unchanged and bool becomes 0/255 in every mode. A constant image becomes zeros (no NaN). With
    `warn`, an image whose intensities span fewer than `MIN_LEVELS` levels (or, for floats, less than 0.1 % of their
    magnitude) raises a `LowDynamicRangeWarning`: such an image is mostly noise after scaling.
    """
    if mode not in INTENSITY_MODES:
        raise DataError(f"Unknown intensity normalization {mode!r}; choose one of {', '.join(INTENSITY_MODES)}.")
    if not 0.0 <= low < high <= 100.0:
        raise DataError(f"Percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}.")
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.complexfloating) or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"Cannot turn an image of dtype {array.dtype} into RGB; give uint8, uint16 or float pixels.")
    if mode == "range":
        return _range_scale(array)
    values = array.astype(np.float64)
    integer = np.issubdtype(array.dtype, np.integer)
    finite = values.ravel() if integer else values[np.isfinite(values)]
    if finite.size == 0:
        lower = upper = 0.0
    elif mode == "percentile":
        lower, upper = _percentiles(array if integer else finite, (low, high))
        if upper <= lower:  # e.g. sparse spots on a flat background: fall back to the full range
            lower, upper = float(finite.min()), float(finite.max())
    else:
        lower, upper = float(finite.min()), float(finite.max())
    if warn:
        _warn_if_flat(finite, lower, upper, integer)
    if upper <= lower:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (values - lower) * (255.0 / (upper - lower))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _percentiles(values: np.ndarray, quantiles: tuple[float, float]) -> tuple[float, float]:
    """`np.percentile(values, quantiles)` (linear method); for integers of a narrow span through a histogram,
    which gives the same numbers several times faster on camera-sized images."""
    flat = values.ravel()
    if np.issubdtype(flat.dtype, np.integer):
        smallest, largest = int(flat.min()), int(flat.max())
        if largest - smallest <= HISTOGRAM_SPAN:
            if np.issubdtype(flat.dtype, np.unsignedinteger):  # offsets from the minimum, without overflow
                offsets = flat - np.array(smallest, dtype=flat.dtype)
            else:
                offsets = flat.astype(np.int64) - smallest
            cumulative = np.cumsum(np.bincount(offsets.astype(np.intp), minlength=largest - smallest + 1))
            result = []
            for quantile in quantiles:
                position = quantile / 100.0 * (flat.size - 1)
                below = int(np.floor(position))
                ranks = [below, min(below + 1, flat.size - 1)]  # 0-based ranks of the sorted values around it
                first, second = (smallest + int(np.searchsorted(cumulative, r, side="right")) for r in ranks)
                fraction, step = position - below, second - first  # numpy's lerp, so the numbers are identical
                result.append(first + step * fraction if fraction < 0.5 else second - step * (1 - fraction))
            return float(result[0]), float(result[1])
    first, second = np.percentile(flat, quantiles)
    return float(first), float(second)


def _range_scale(array: np.ndarray) -> np.ndarray:
    """The dtype-range scaling (16-bit ÷257, [0, 1] floats ×255, else min–max; NaN/inf → 0)."""
    values = array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype.itemsize == 2 or (values.size and values.min() >= 0 and values.max() <= 65535):
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


def _warn_if_flat(finite: np.ndarray, lower: float, upper: float, integer: bool) -> None:
    """Warn when the scaled window [lower, upper] holds too few intensity levels to carry an image."""
    if upper <= lower:
        detail = f"constant ({lower:g})" if finite.size else "no finite value"
    elif integer and upper - lower + 1 < MIN_LEVELS:
        levels = np.unique(finite[(finite >= lower) & (finite <= upper)]).size
        detail = f"only {levels} intensity levels between {lower:g} and {upper:g}"
    elif not integer and (upper - lower) < 1e-3 * max(abs(lower), abs(upper)):
        detail = f"a range of {upper - lower:g} on values near {upper:g}"
    else:
        return
    warnings.warn(
        f"An image has a tiny dynamic range ({detail}); after scaling to 0-255 it is flat or mostly noise. Check "
        "the image data (wrong channel, dark frame, or values stored with an offset).",
        LowDynamicRangeWarning,
        stacklevel=3,
    )


__all__ = ["INTENSITY_MODES", "LowDynamicRangeWarning", "normalize_intensity"]
