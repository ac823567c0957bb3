"""Numbers and datasets that must not pass silently: non-finite metrics, non-positive counts, empty datasets."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, SupersamError


def is_finite_metric(value: Any) -> bool:
    """True for a finite real number (int, float, 0-d tensor or numpy scalar); False for NaN, inf, None, text, bool."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            return False
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(float(value))


def check_finite_metric(value: Any, name: str) -> float:
    """`value` as a float when finite, else ValueError naming the metric: a NaN/inf is never ranked or exported."""
    if not is_finite_metric(value):
        raise SupersamError(
            f"metric {name} is {value!r}, not a finite number; the model or data produced NaN/inf. Check the model "
            "weights (non-finite weights) and the dataset before ranking or exporting."
        )
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """`value` as an int when a positive integer (or 0 with `allow_zero`), else ValueError naming the flag."""
    bound = "a non-negative" if allow_zero else "a positive"
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise SupersamError(f"--{name} must be {bound} integer, got {value!r}.")
    return int(value)



def load_dataset_rows(loader: Any, name: str, split: str | None = None, config_name: str | None = None,
                      split_flag: str | None = None) -> Any:
    """`loader(name, split=split, config_name=config_name)` (e.g. `data.load_segmentation_dataset`), refusing a
    dataset (or split) of 0 rows in one line naming the flag: datasets cannot even load a `save_to_disk` folder of 0
    rows (it has no data files; an IndexError inside `load_from_disk`)."""
    where = f"--dataset_name {name!r}" + (f" (split {split!r})" if split else "")
    what_to_do = "give a dataset with at least one annotated image" + (
        f", or choose another split ({split_flag})" if split_flag else "")
    try:
        dataset = loader(name, split=split, config_name=config_name)
    except IndexError as error:
        if Path(os.fspath(name)).expanduser().is_dir():
            raise DataError(f"{where} holds no rows (a dataset saved with 0 rows has no data files); "
                            f"{what_to_do}.") from error
        raise
    if len(dataset) == 0:
        raise DataError(f"{where} has 0 rows; {what_to_do}.")
    return dataset
