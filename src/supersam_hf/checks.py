"""Checks that stop a wrong result from passing silently: weights that do not match, non-finite weights or metrics,
corrupt safetensors files, bad numbers and mistyped argument files. Each raises `ValueError` with one message that
names the problem (which file, key or field) and what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import math
import numbers
import os
import pickle
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from .errors import DataError, ModelFileError, SupersamError

MAX_NAMED = 5  # how many keys / tensors a message lists before "… and N more"
T = TypeVar("T")


def _first(names: Iterable[Any], limit: int = MAX_NAMED) -> str:
    names = sorted(str(name) for name in names)
    shown = ", ".join(names[:limit])
    return shown + (f" … and {len(names) - limit} more" if len(names) > limit else "")


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------


def check_loading_info(
    loading_info: Mapping[str, Any],
    source: str,
    *,
    allow_missing: Sequence[str] = (),
    allow_unexpected: Sequence[str] = (),
) -> None:
    """Refuse a checkpoint whose weights do not match the model, from `from_pretrained(..., output_loading_info=True)`.

    `loading_info` holds `missing_keys`, `unexpected_keys` and optionally `mismatched_keys` (tuples `(key, checkpoint
    shape, model shape)`) and `error_msgs`. Keys matching a regex in `allow_missing` / `allow_unexpected` (searched
    with `re.search`) are accepted. Raises ValueError naming the first few offending keys of each kind.
    """
    missing = [k for k in loading_info.get("missing_keys", ()) if not _matches(k, allow_missing)]
    unexpected = [k for k in loading_info.get("unexpected_keys", ()) if not _matches(k, allow_unexpected)]
    mismatched = [_mismatch_text(entry) for entry in loading_info.get("mismatched_keys", ())]
    errors = [str(message) for message in loading_info.get("error_msgs", ()) if message]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weights ({_first(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} weights of the wrong shape ({_first(mismatched)})")
    if errors:
        problems.append(f"loading errors ({_first(errors, 2)})")
    if problems:
        raise ModelFileError(
            f"{source} does not match the model: {'; '.join(problems)}. The checkpoint is partial or of another "
            "architecture/size; re-download or re-save it, or pass the matching --model_name_or_path."
        )


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(re.search(pattern, key) for pattern in patterns)


def _mismatch_text(entry: Any) -> str:
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        key, checkpoint_shape, model_shape = entry
        return f"{key}: checkpoint {tuple(checkpoint_shape)} vs model {tuple(model_shape)}"
    return str(entry)


def check_state_dict(
    model: torch.nn.Module,
    state_dict_or_loading_info: Mapping[str, Any] | Iterable[str],
    source: str,
    *,
    allow_missing: Sequence[str] = (),
    allow_unexpected: Sequence[str] = (),
) -> None:
    """Refuse weights that do not fit `model`: missing, unexpected or wrongly shaped keys → ValueError naming them.

    Accepts transformers' loading info (a mapping with `missing_keys`), a state dict (name → tensor; shapes are
    compared too) or just the key names (e.g. `safe_open(...).keys()`). Weights the model ties to others
    (`_tied_weights_keys`, not stored by `save_pretrained`) and the model's `_keys_to_ignore_on_load_missing` /
    `_keys_to_ignore_on_load_unexpected` patterns are accepted.
    """
    allow_missing = (*allow_missing, *(getattr(model, "_keys_to_ignore_on_load_missing", None) or ()))
    allow_unexpected = (*allow_unexpected, *(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()))
    if isinstance(state_dict_or_loading_info, Mapping) and "missing_keys" in state_dict_or_loading_info:
        check_loading_info(
            state_dict_or_loading_info, source, allow_missing=allow_missing, allow_unexpected=allow_unexpected
        )
        return
    expected = model.state_dict()
    given = state_dict_or_loading_info
    keys = set(given.keys() if isinstance(given, Mapping) else given)
    tied = set(_tied_keys(model))
    mismatched = []
    if isinstance(given, Mapping):
        for key in keys & set(expected):
            shape = getattr(given[key], "shape", None)
            if shape is not None and tuple(shape) != tuple(expected[key].shape):
                mismatched.append((key, tuple(shape), tuple(expected[key].shape)))
    info = {
        "missing_keys": [k for k in expected if k not in keys and k not in tied],
        "unexpected_keys": [k for k in keys if k not in expected],
        "mismatched_keys": mismatched,
    }
    check_loading_info(info, source, allow_missing=allow_missing, allow_unexpected=allow_unexpected)


def _tied_keys(model: torch.nn.Module) -> Iterable[str]:
    """Names of weights tied to another weight (transformers 5: `{target: source}` per module; 4: a list)."""
    for prefix, module in model.named_modules():
        tied = getattr(module, "_tied_weights_keys", None) or ()
        for key in tied.keys() if isinstance(tied, Mapping) else tied:
            yield f"{prefix}.{key}" if prefix else key


def check_finite(model_or_state_dict: torch.nn.Module | Mapping[str, Any], source: str) -> None:
    """Refuse non-finite (NaN / inf) weights: ValueError naming the first few tensors that hold them.

    Checks a module's parameters and buffers, or a state dict's floating tensors (meta tensors are skipped).
    """
    if isinstance(model_or_state_dict, torch.nn.Module):
        named = [*model_or_state_dict.named_parameters(), *model_or_state_dict.named_buffers()]
    else:
        named = list(model_or_state_dict.items())
    broken = []
    with torch.no_grad():
        for name, tensor in named:
            if not isinstance(tensor, torch.Tensor) or tensor.is_meta or not tensor.is_floating_point():
                continue
            if not bool(torch.isfinite(tensor).all()):
                broken.append(name)
    if broken:
        raise ModelFileError(
            f"{source} has non-finite weights (NaN or inf) in {len(broken)} tensors ({_first(broken)}); its results "
            "would be meaningless. Use an earlier checkpoint, or re-download / re-train it."
        )


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


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def check_safetensors_file(path: str | Path, *, read_tensors: bool = False) -> list[str]:
    """The tensor names of a valid safetensors file; ValueError naming the file when it is truncated or corrupt.

    The header, and that every tensor lies within the file, are validated by `safetensors.safe_open`; with
    `read_tensors` every tensor is also read (slower, catches a file whose data region was overwritten).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the folder or file that holds the weights.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            if read_tensors:
                for name in names:
                    handle.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ModelFileError(
            f"{path} is not a valid safetensors file (truncated or corrupt: {error}); re-download or re-save it."
        ) from error
    return names


def check_model_folder(path: str | Path, what: str = "model") -> list[Path]:
    """A local model folder must hold config.json and safetensors weights; returns the weight files (all validated).

    Raises FileNotFoundError naming what is missing and ValueError for a corrupt config or weights file. Sharded
    checkpoints (`model.safetensors.index.json`) are checked shard by shard.
    """
    from .outputs import read_json_file

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist; pass an existing folder or a Hub model id.")
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder} has no config.json, so it is not a saved {what}; pass the folder that holds "
                                "config.json and model.safetensors (save_pretrained's output).")
    read_json_file(config, what=f"{what} config", remedy="re-download or re-save the model", expect=dict)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_file(index, what="weights index", remedy="re-download or re-save the model", expect=dict)
        files = sorted({folder / name for name in (weight_map.get("weight_map") or {}).values()})
    else:
        files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
    if not files:
        raise FileNotFoundError(f"{folder} has config.json but no model.safetensors weights; re-download or re-save "
                                f"the {what} (save_pretrained writes both).")
    for file in files:
        check_safetensors_file(file)
    return files


@contextlib.contextmanager
def named_load_errors(path: str | Path, what: str, remedy: str) -> Iterator[None]:
    """Turn a failure while reading `path` into one ValueError naming it, what it is and the way out.

    Wrap library loaders that fail with messages naming no file, e.g. `accelerator.load_state(checkpoint)` on a
    corrupt `optimizer.bin` ("Unsupported operand 246") or on a checkpoint of another model size (a size mismatch):
    `with named_load_errors(checkpoint, "training checkpoint", "resume from the previous checkpoint"):`.
    A missing file stays a FileNotFoundError.
    """
    from safetensors import SafetensorError

    try:
        yield
    except FileNotFoundError:
        raise
    except (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError, OSError) as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        if len(reason) > 300:
            reason = reason[:297] + "..."
        raise ModelFileError(f"{what} {path} is corrupt or does not fit this model ({reason}); {remedy}.") from error


# ----------------------------------------------------------------------------------------------------------------
# Typed argument files
# ----------------------------------------------------------------------------------------------------------------


def strict_dataclass_from_dict(cls: type[T], data: Mapping[str, Any], source: str) -> T:
    """Build dataclass `cls` from a JSON/YAML mapping, refusing unknown keys and values of the wrong type.

    `HfArgumentParser.parse_dict(..., allow_extra_keys=False)` refuses unknown keys but passes `"max_steps": "ten"`
    through; this names the field and the expected type instead. Ints are exact (no bool, no float); floats accept
    ints; `Optional`, unions, `Literal`, enums (by value), `list`/`tuple`/`dict` and their item types are checked.
    """
    if not isinstance(data, Mapping):
        raise SupersamError(f"{source} must hold a mapping of argument names to values, got a {type(data).__name__}.")
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SupersamError(
            f"{source}: unknown argument {unknown[0]!r}{hint}; valid arguments: {', '.join(sorted(fields))}."
        )
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        expected = hints.get(key, Any)
        if not _has_type(value, expected):
            raise SupersamError(
                f"{source}: argument {key!r} must be {_type_name(expected)}, got {value!r} "
                f"({type(value).__name__}); fix the value in the file."
            )
    return cls(**{key: _coerce(value, hints.get(key, Any)) for key, value in data.items()})


def _has_type(value: Any, expected: Any) -> bool:
    """Whether a JSON/YAML value fits a dataclass annotation (unknown annotations accept anything)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any or expected is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in args)
    if expected is type(None):
        return value is None
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        return isinstance(value, expected) or value in [member.value for member in expected]
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected in (str, Path):
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or expected in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item_types = [arg for arg in args if arg is not Ellipsis] or [Any]
        return all(_has_type(item, item_types[0] if len(item_types) == 1 else Any) for item in value)
    if origin in (dict, Mapping) or expected is dict:
        return isinstance(value, Mapping)
    return True  # another class: its own __init__ / __post_init__ validates what the file gives


def _coerce(value: Any, expected: Any) -> Any:
    """JSON has no tuples, paths or enums: convert lists, strings and numbers to what the (checked) field says."""
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(expected) if arg is not type(None)]
        if value is None or len(options) != 1:
            return value
        expected = options[0]
    if isinstance(expected, type) and issubclass(expected, enum.Enum) and not isinstance(value, expected):
        member = expected(value)
        return member.value if isinstance(member, str) else member  # str enums stay plain strings, as parsed flags are
    if expected is float and isinstance(value, int):
        return float(value)
    if expected is Path and isinstance(value, str):
        return Path(value)
    if (typing.get_origin(expected) is tuple or expected is tuple) and isinstance(value, list):
        return tuple(value)
    return value


def _type_name(expected: Any) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if expected is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in expected)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path string"}
    if expected in names:
        return names[expected]
    if origin in (list, tuple, Sequence) or expected in (list, tuple):
        items = [arg for arg in args if arg is not Ellipsis]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        item = items[0] if len(items) == 1 else Any
        return "a list" + (f" of {plural.get(item) or _type_name(item)}" if item is not Any else "")
    return getattr(expected, "__name__", str(expected))


def read_args_file(path: str | Path) -> dict[str, Any]:
    """The mapping of argument names to values in a .json or .yaml/.yml file; ValueError / FileNotFoundError naming
    the file when it is missing, unreadable or not a mapping (an empty YAML file is an empty mapping)."""
    from .outputs import read_json_file

    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        if not path.is_file():
            raise FileNotFoundError(f"arguments file {path} does not exist.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            reason = " ".join(str(error).split())
            raise SupersamError(f"arguments file {path} is not valid YAML ({reason}); fix the file.") from error
    else:
        data = read_json_file(path, what="arguments file", remedy="fix the file")
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise SupersamError(f"arguments file {path} must hold a mapping of argument names to values, got a "
                         f"{type(data).__name__}.")
    return dict(data)


def load_args_file(cls: type[T], path: str | Path) -> T:
    """Arguments dataclass `cls` from a .json or .yaml/.yml file, strictly typed (see `strict_dataclass_from_dict`)."""
    return strict_dataclass_from_dict(cls, read_args_file(path), source=str(path))


__all__ = [
    "check_finite",
    "check_finite_metric",
    "check_loading_info",
    "check_model_folder",
    "check_positive",
    "check_safetensors_file",
    "check_state_dict",
    "is_finite_metric",
    "load_args_file",
    "named_load_errors",
    "read_args_file",
    "strict_dataclass_from_dict",
]


# The sizes of SAM's parts that decide its memory, with transformers' defaults (SamVisionConfig, SamMaskDecoderConfig).
_VISION_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 1024,
                    "patch_size": 16, "output_channels": 256, "window_size": 14, "num_channels": 3}
_DECODER_DEFAULTS = {"hidden_size": 256, "num_hidden_layers": 2, "mlp_dim": 2048, "num_attention_heads": 8,
                     "iou_head_hidden_dim": 256}


def machine_memory_bytes() -> int | None:
    """This machine's memory for the process: physical memory, or a smaller cgroup limit (containers); None if unknown."""
    limits = []
    with contextlib.suppress(ValueError, OSError, AttributeError):
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            value = int(Path(cgroup).read_text().strip())
            if 0 < value < 1 << 60:
                limits.append(value)
    return min(limits) if limits else None


def _size_field(section: Mapping[str, Any], defaults: Mapping[str, int], key: str, where: str, source: str) -> int:
    value = section.get(key, defaults[key])
    if value is None:
        value = defaults[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "window_size" else 1):
        raise ModelFileError(f"{source}: {where}.{key} must be a positive integer, got {value!r}; fix the config.json "
                             "or re-download the model.")
    return value


def estimate_model_memory(config: Mapping[str, Any], source: str = "config.json") -> dict[str, int]:
    """From a SAM / SuperSAM `config.json` (a dict), before any model is built: its parameters and the bytes of its
    float32 weights and of the activations of one image's forward (the largest layer's MLP and attention maps).
    A size field that is not a positive integer is a ModelFileError naming it."""
    vision = config.get("vision_config") or {}
    decoder = config.get("mask_decoder_config") or {}
    if not isinstance(vision, Mapping) or not isinstance(decoder, Mapping):
        raise ModelFileError(f"{source}: vision_config and mask_decoder_config must be objects; fix the config.json.")
    v = {key: _size_field(vision, _VISION_DEFAULTS, key, "vision_config", source) for key in _VISION_DEFAULTS}
    d = {key: _size_field(decoder, _DECODER_DEFAULTS, key, "mask_decoder_config", source) for key in _DECODER_DEFAULTS}
    hidden, layers = v["hidden_size"], v["num_hidden_layers"]
    mlp_values = [vision.get("mlp_dim") or int(hidden * float(vision.get("mlp_ratio") or 4.0))]
    choices = config.get("mlp_dim_choices")  # a supernet's widths
    if isinstance(choices, list):
        mlp_values += [c for row in choices for c in (row if isinstance(row, list) else [row]) if isinstance(c, int)]
    mlp = max(int(m) for m in mlp_values if isinstance(m, (int, float)) and not isinstance(m, bool))
    side = max(v["image_size"] // v["patch_size"], 1)
    tokens = side * side
    head_dim = max(hidden // v["num_attention_heads"], 1)
    per_layer = 4 * hidden * hidden + 2 * hidden * mlp + 9 * hidden + mlp + 2 * (2 * side - 1) * head_dim
    vision_params = (layers * per_layer + v["num_channels"] * v["patch_size"] ** 2 * hidden + tokens * hidden
                     + hidden * v["output_channels"] + 9 * v["output_channels"] ** 2)
    dh = d["hidden_size"]
    decoder_params = d["num_hidden_layers"] * (8 * dh * dh + 2 * dh * d["mlp_dim"]) + 16 * dh * dh + 8 * dh * d[
        "iou_head_hidden_dim"]
    params = vision_params + decoder_params
    attention = v["num_attention_heads"] * tokens * tokens  # a global-attention layer's scores, one image
    activations = 4 * (tokens * (4 * hidden + mlp) + attention)
    return {"params": params, "weight_bytes": 4 * params, "activation_bytes": activations}


def check_model_size(config: Mapping[str, Any], source: str, memory_bytes: int | None = None) -> dict[str, int]:
    """Refuse, before allocating anything, a config whose float32 weights plus one image's activations exceed this
    machine's memory (`machine_memory_bytes`, or `memory_bytes`): one line with the estimate. Returns the estimate."""
    estimate = estimate_model_memory(config, source)
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    needed = estimate["weight_bytes"] + estimate["activation_bytes"]
    if memory is not None and needed > memory:
        gib = 1024**3
        raise ModelFileError(
            f"{source}: this config describes a model of about {estimate['params']:,} parameters "
            f"({estimate['weight_bytes'] / gib:,.1f} GiB of float32 weights) needing {estimate['activation_bytes'] / gib:,.1f} "
            f"GiB of activations for one image, more than this machine's {memory / gib:,.1f} GiB of memory; check its "
            "vision_config sizes (num_hidden_layers, hidden_size, mlp_dim, image_size / patch_size)."
        )
    return estimate


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
