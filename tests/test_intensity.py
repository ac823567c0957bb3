"""Microscopy intensities survive: per-image percentile scaling of non-8-bit images, old range scaling as a mode."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from supersam_hf.intensity import INTENSITY_MODES, LowDynamicRangeWarning, normalize_intensity


def _tile(high: int, dtype=np.uint16, shape=(64, 64), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, high + 1, size=shape).astype(dtype)
    tile.flat[0], tile.flat[1] = 0, high  # the full range is present
    return tile


def test_uint16_8bit_data_reaches_full_range():
    tile = _tile(235)
    old = normalize_intensity(tile, mode="range")
    assert old.max() == 1  # the dtype-range scaling: 235 / 257 rounds to 1 — a black image
    new = normalize_intensity(tile)
    assert new.dtype == np.uint8 and new.shape == tile.shape
    assert new.max() == 255 and new.min() == 0
    assert len(np.unique(new)) > 200  # the 236 input levels stay distinct


def test_12bit_camera_data_reaches_full_range():
    tile = _tile(4095)
    assert normalize_intensity(tile, mode="range").max() == 16  # 4095 / 257, old behaviour
    new = normalize_intensity(tile)
    assert new.max() == 255 and new.min() == 0
    assert np.all(np.diff(new.ravel()[np.argsort(tile.ravel(), kind="stable")].astype(int)) >= 0)  # monotone


def test_percentiles_ignore_outliers():
    tile = np.full((100, 100), 1000, dtype=np.uint16)
    tile[:, :50] = 2000
    tile[0, :3] = 65535  # three hot pixels (0.03 %) above the 99.8th percentile
    out = normalize_intensity(tile)
    assert out[50, 0] == 255 and out[50, 99] == 0 and out[0, 0] == 255
    assert normalize_intensity(tile, mode="minmax")[50, 0] == round((2000 - 1000) * 255 / (65535 - 1000))


def test_uint8_and_bool_are_unchanged_in_every_mode():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    mask = image > 100
    for mode in INTENSITY_MODES:
        assert normalize_intensity(image, mode=mode) is image
        np.testing.assert_array_equal(normalize_intensity(mask, mode=mode), mask.astype(np.uint8) * 255)


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.array([[0, 257, 65535]], dtype=np.uint16), [[0, 1, 255]]),
        (np.array([[0, 257, 65535]], dtype=np.int32), [[0, 1, 255]]),
        (np.array([[-10, 0, 100000]], dtype=np.int64), [[0, 0, 255]]),
        (np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [[0, 128, 255]]),
        (np.array([[np.nan, 2.0, 4.0]], dtype=np.float64), [[0, 128, 255]]),
    ],
)
def test_range_mode_is_the_old_dtype_scaling(array, expected):
    np.testing.assert_array_equal(normalize_intensity(array, mode="range"), np.array(expected, dtype=np.uint8))


def test_color_images_share_one_scale():
    image = np.zeros((8, 8, 3), dtype=np.uint16)
    image[..., 0] = 400  # red twice as bright as green: the ratio survives
    image[..., 1] = 200
    image[0, 0, :] = 0
    out = normalize_intensity(image, mode="minmax")
    assert out.shape == (8, 8, 3)
    assert out[4, 4, 0] == 255 and abs(int(out[4, 4, 1]) - 128) <= 1 and out[4, 4, 2] == 0


def test_float_images_with_nan_and_inf():
    image = np.linspace(-5.0, 5.0, 1000).reshape(25, 40)
    image[0, 0], image[0, 1], image[0, 2] = np.nan, np.inf, -np.inf
    out = normalize_intensity(image)
    assert out[0, 0] == 0 and out[0, 1] == 255 and out[0, 2] == 0
    assert out[-1, -1] == 255 and out[0, 3] == 0  # both beyond the 1st / 99.8th percentiles
    assert 0 < out[12, 20] < 255


def test_constant_image_is_zeros_and_warns():
    for array in (np.full((8, 8), 1234, dtype=np.uint16), np.full((8, 8, 3), 0.3, dtype=np.float32)):
        with pytest.warns(LowDynamicRangeWarning, match="constant"):
            out = normalize_intensity(array)
        assert out.dtype == np.uint8 and not out.any()


def test_tiny_dynamic_range_warns():
    tile = (1000 + _tile(3, seed=1)).astype(np.uint16)  # four levels on an offset
    with pytest.warns(LowDynamicRangeWarning, match="only 4 intensity levels between 1000 and 1003"):
        out = normalize_intensity(tile)
    assert out.max() == 255
    drift = 100.0 + np.linspace(0.0, 1e-5, 64).reshape(8, 8)
    with pytest.warns(LowDynamicRangeWarning, match="tiny dynamic range"):
        normalize_intensity(drift)


def test_normal_images_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalize_intensity(_tile(235))
        normalize_intensity(np.random.default_rng(0).random((32, 32)).astype(np.float32))
        normalize_intensity(_tile(3), warn=False)


def test_sparse_spots_fall_back_to_full_range():
    image = np.zeros((100, 100), dtype=np.uint16)
    image[50, 50] = 500  # one bright spot: both percentiles are 0
    out = normalize_intensity(image)
    assert out[50, 50] == 255 and out.sum() == 255


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Unknown intensity normalization 'auto'; choose one of percentile, range"):
        normalize_intensity(np.zeros((2, 2), np.uint16), mode="auto")
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        normalize_intensity(np.zeros((2, 2), np.uint16), low=99.0, high=1.0)
    with pytest.raises(ValueError, match="dtype complex"):
        normalize_intensity(np.zeros((2, 2), np.complex64))


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32, np.int64, np.uint32])
def test_integer_percentiles_equal_numpy(dtype):
    from supersam_hf.intensity import _percentiles

    rng = np.random.default_rng(1)
    spans = [(0, 236, 4097), (-300, 300, 1000), (5, 6, 7), (0, 4096, 1), (10**6, 10**6 + 50, 99), (-32768, 32767, 5000)]
    for low, high, size in spans:
        if np.iinfo(dtype).min > low or np.iinfo(dtype).max < high:
            continue
        values = rng.integers(low, high, size).astype(dtype)
        for quantiles in [(1.0, 99.8), (0.0, 100.0), (25.0, 50.0)]:
            assert _percentiles(values, quantiles) == tuple(float(v) for v in np.percentile(values, quantiles))
