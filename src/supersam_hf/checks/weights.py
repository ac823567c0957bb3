"""Weights and model files that do not fit: missing, unexpected or wrongly shaped keys, non-finite tensors,
truncated or corrupt safetensors files and model folders, and library loaders that fail without naming the file."""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFileError

MAX_NAMED = 5  # how many keys / tensors a message lists before "… and N more"


def _first(names: Iterable[Any], limit: int = MAX_NAMED) -> str:
    names = sorted(str(name) for name in names)
    shown = ", ".join(names[:limit])
    return shown + (f" … and {len(names) - limit} more" if len(names) > limit else "")


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
    from ..outputs import read_json_file

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
