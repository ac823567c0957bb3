"""Helpers every command shares: the output folder check and the device choice."""

from __future__ import annotations

from pathlib import Path


def check_output_dir(output_dir: str, overwrite: bool, what: str = "output_dir") -> Path:
    """The output folder: refuses a file, and a non-empty folder unless `overwrite` (nothing is deleted here)."""
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--{what} {output} exists and is not a folder.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"--{what} {output} is not empty; choose a new folder or pass --overwrite_output_dir.")
    return output
