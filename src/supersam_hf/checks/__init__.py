"""Checks that stop a wrong result from passing silently: weights that do not match, non-finite weights or metrics,
corrupt safetensors files, bad numbers, mistyped argument files and models too large for this machine. Each raises
one error (a `SupersamError` kind) whose message names the problem (which file, key or field) and what to do.

`weights` (checkpoints and model files), `values` (metrics, counts, datasets), `args_files` (typed argument files),
`memory` (a config's size before any model is built); every check is importable from here.
"""

from .args_files import load_args_file, read_args_file, strict_dataclass_from_dict
from .memory import check_model_size, estimate_model_memory, machine_memory_bytes
from .values import check_finite_metric, check_positive, is_finite_metric, load_dataset_rows
from .weights import (
    check_finite,
    check_loading_info,
    check_model_folder,
    check_safetensors_file,
    check_state_dict,
    named_load_errors,
)

__all__ = [
    "check_finite",
    "check_finite_metric",
    "check_loading_info",
    "check_model_folder",
    "check_model_size",
    "check_positive",
    "check_safetensors_file",
    "check_state_dict",
    "estimate_model_memory",
    "is_finite_metric",
    "load_args_file",
    "load_dataset_rows",
    "machine_memory_bytes",
    "named_load_errors",
    "read_args_file",
    "strict_dataclass_from_dict",
]
