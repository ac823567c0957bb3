"""What every command shares: its output folder (checked before any work) and the shared data flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..arguments import DataArguments, OutputArguments
from ..outputs import prepare_output_dir


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
    }
