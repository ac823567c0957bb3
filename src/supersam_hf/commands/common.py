"""What every command shares: its output folder (checked before any work) and the shared data flags."""

from __future__ import annotations

import logging
import functools
from pathlib import Path
from typing import Any

from ..arguments import DataArguments, OutputArguments
from ..errors import SupersamError, UnsupportedSetupError
from ..outputs import prepare_output_dir

logger = logging.getLogger(__name__)


def hub_repo_flags(hub_model_id: str | None, hub_private_repo: bool | None, repo_id: str | None = None,
                   private: bool = False) -> tuple[str | None, bool]:
    """(repo id, private) from transformers' Hub flags (`--hub_model_id`, `--hub_private_repo`), with the older
    `--repo_id` / `--private` kept as deprecated aliases (a warning says so; both names at once must agree)."""
    for old, new, old_value, new_value in (("--repo_id", "--hub_model_id", repo_id, hub_model_id),
                                           ("--private", "--hub_private_repo", private or None, hub_private_repo)):
        if old_value is None:
            continue
        logger.warning("%s is deprecated and will be removed; use %s (the name transformers' scripts use).", old, new)
        if new_value is not None and new_value != old_value:
            raise SupersamError(f"{old} {old_value!r} and {new} {new_value!r} disagree; give only {new}.")
    return hub_model_id or repo_id, bool(hub_private_repo if hub_private_repo is not None else private)


def prepare_output(output_args: OutputArguments, *inputs: str | None, overwrite: bool | None = None) -> Path:
    """`--output_dir`, checked before any long work: not one of `inputs` (model, dataset, ...; Hub ids are skipped),
    not inside or around one, writable, and empty unless `--overwrite_output_dir` (or `overwrite`). Returns it
    resolved; nothing is created or deleted here."""
    return prepare_output_dir(
        output_args.output_dir,
        overwrite=output_args.overwrite_output_dir if overwrite is None else overwrite,
        inputs=[value for value in inputs if value],
    )


def data_kwargs(data_args: DataArguments) -> dict[str, Any]:
    """The shared data flags as `SamSegmentationData` keyword arguments (the same in every stage)."""
    return {
        "image_column": data_args.image_column,
        "mask_column": data_args.mask_column,
        "mask_kind": data_args.mask_kind,
        "intensity_normalization": data_args.intensity_normalization,
        "min_mask_area": data_args.min_mask_area,
        "category_ids": data_args.category_ids,
    }


def load_data(data_args: DataArguments, split: str | None, split_flag: str | None = None):
    """The dataset of `--dataset_name` (map-style, or a `datasets.IterableDataset` with `--streaming`); a map-style
    dataset (or split) of 0 rows is refused in one line naming `split_flag`."""
    from ..checks import load_dataset_rows
    from ..data import load_segmentation_dataset

    if data_args.shuffle_buffer_size < 1:
        raise SupersamError(f"--shuffle_buffer_size must be >= 1, got {data_args.shuffle_buffer_size}.")
    loader = functools.partial(load_segmentation_dataset, streaming=data_args.streaming, image_dir=data_args.image_dir)
    if data_args.streaming:
        return loader(data_args.dataset_name, split=split, config_name=data_args.dataset_config_name)
    return load_dataset_rows(loader, data_args.dataset_name, split=split, config_name=data_args.dataset_config_name,
                             split_flag=split_flag)


def refuse_streaming(data_args: DataArguments, stage: str) -> None:
    """Stages that need random access over their images (the search scores every subnet on the same ones)."""
    if data_args.streaming:
        raise UnsupportedSetupError(f"supersam {stage} does not stream (it reads its images many times); drop "
                                    "--streaming (train, evaluate and convert stream).")
