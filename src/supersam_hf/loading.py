"""THE loader: a Hub id, a Hugging Face cache entry or a local folder → model (SAM converted, supernet) + processor.

Every stage's command loads its inputs here, and library functions take the loaded objects, as Hugging Face
example scripts do. One resolver (`load_config_dict`) reads `config.json` through transformers' own
`PreTrainedConfig.get_config_dict`, so a Hub id, a cached snapshot (`HF_HUB_OFFLINE=1`) and a folder behave alike,
and `revision` / `token` / `subfolder` pass through; what is not a SAM ("sam") or SuperSAM ("supersam") checkpoint
is refused by name, in one line.

    supernet = load_supernet("facebook/sam-vit-base")          # SAM converted on load, or a saved supernet
    model = load_sam_model("my-export")                        # as stored: SamModel ("sam") / SuperSamModel
    processor = load_processor("my-supernet")                  # next to the model, else its recorded base_model
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedConfig, SamModel, SamProcessor

from .errors import ModelFileError
from .checks import check_finite, check_loading_info, check_model_folder, check_model_size, check_state_dict
from .modeling_supersam import SuperSamModel

logger = logging.getLogger(__name__)

MODEL_TYPES = ("sam", "supersam")
ADAPTER_CONFIG = "adapter_config.json"


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _looks_like_path(name: str) -> bool:
    """A name that can only be a local path: a Hub id is "name" or "namespace/name"."""
    return name.startswith((".", "~")) or os.path.isabs(name) or name.count("/") > 1 or "\\" in name


def _hub_kwargs(revision: str | None, token: str | bool | None, subfolder: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"subfolder": subfolder or ""}
    if revision is not None:
        kwargs["revision"] = revision
    if token is not None:
        kwargs["token"] = token
    return kwargs


def adapter_base(name_or_path: str | os.PathLike) -> str | None:
    """The base model of a folder holding only a LoRA adapter (`adapter_config.json`, no `config.json`), else None."""
    path = Path(name_or_path).expanduser()
    if not (path / ADAPTER_CONFIG).is_file() or (path / "config.json").is_file():
        return None
    try:
        return json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFileError(f"{path / ADAPTER_CONFIG} is not a valid PEFT adapter config ({error}).") from None


def load_config_dict(
    name_or_path: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None, subfolder: str = ""
) -> dict[str, Any]:
    """The `config.json` of a SAM / SuperSAM checkpoint (Hub id, cache or folder), checked to be one of them.

    Raises `FileNotFoundError` for a missing folder, a folder without config.json or a Hub id that is neither in
    the cache nor reachable, and `ValueError` for a config of another model type; each in one line saying what to do.
    """
    name = os.fspath(name_or_path)
    local = Path(name).expanduser()
    if local.is_file():
        raise ModelFileError(f"{name!r} is a file; give the model folder written by save_pretrained, or a Hub id.")
    if local.is_dir():
        if not (local / subfolder / "config.json").is_file():
            raise FileNotFoundError(
                f"{name!r} is a folder without config.json: not a model saved by save_pretrained (nor a Hub snapshot); "
                "pass the folder holding config.json and model.safetensors, or a Hub model id."
            )
    elif _looks_like_path(name):
        raise FileNotFoundError(f"No model folder at {name!r}; check the path (--model_name_or_path).")
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(name, **_hub_kwargs(revision, token, subfolder))
    except (OSError, ValueError) as error:
        if local.is_dir():
            raise ModelFileError(f"{name!r}: its config.json cannot be read ({error}).") from None
        where = "the Hugging Face cache (HF_HUB_OFFLINE is set)" if _offline() else "the Hugging Face Hub or cache"
        raise FileNotFoundError(
            f"{name!r} is not a local folder and could not be loaded from {where}: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None
    model_type = config_dict.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ModelFileError(
            f"{name!r} holds a model of type {model_type!r}; expected a SAM checkpoint ('sam', e.g. "
            "facebook/sam-vit-base) or a SuperSAM supernet ('supersam')."
        )
    return config_dict


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _from_pretrained(cls, name: str, model_type: str, hub_kwargs: dict) -> SamModel:
    """`cls.from_pretrained`, refusing weights that do not fit (missing, unexpected, wrongly shaped: named) and
    non-finite weights (named); any other failure (corrupt or truncated files, bad config values) is one line."""
    local = Path(name).expanduser()
    if local.is_dir():
        check_model_folder(local / hub_kwargs.get("subfolder", ""), what=f"{model_type} model")
    try:
        model, info = cls.from_pretrained(name, output_loading_info=True, **hub_kwargs)
    except Exception as error:  # noqa: BLE001 - corrupt/truncated weights, bad config values: one clear line
        if "ignore_mismatched_sizes" in str(error):  # shapes differ from the config: name the tensors
            _, info = cls.from_pretrained(name, output_loading_info=True, ignore_mismatched_sizes=True, **hub_kwargs)
            check_loading_info(info, f"{name!r}")
        first = " ".join(str(error).split())[:300]
        raise ModelFileError(
            f"Could not load the {model_type} model {name!r} ({type(error).__name__}: {first}); re-download or "
            "re-save it."
        ) from error
    check_state_dict(model, info, f"{name!r}")
    check_finite(model, f"{name!r}")
    return model


def load_model(
    name_or_path: str | os.PathLike,
    *,
    as_supernet: bool = True,
    require_supernet: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    subfolder: str = "",
    device: str | torch.device | None = None,
) -> SamModel:
    """A SAM or SuperSAM checkpoint from a Hub id, the HF cache or a folder, in eval mode on `device`.

    Args:
        as_supernet: return a `SuperSamModel` (a plain SAM is converted on load, weights unchanged); False returns
            the model as stored: `SamModel` for "sam", `SuperSamModel` for "supersam".
        require_supernet: refuse a plain SAM checkpoint (stages that need a converted, prioritized supernet).
        revision / token / subfolder: passed to `from_pretrained` (Hub branch, tag or commit; access token).
        device: default cuda when available, else cpu.

    A folder holding only a LoRA adapter (`adapter_config.json`) loads its base supernet with the adapter merged.
    """
    name = os.fspath(name_or_path)
    base = adapter_base(name) if Path(name).expanduser().is_dir() else None
    if base is not None:
        from peft import PeftModel

        supernet = load_model(base, revision=revision, token=token, device="cpu")
        model = PeftModel.from_pretrained(supernet, name).merge_and_unload()
        return model.to(_device(device)).eval()
    config_dict = load_config_dict(name, revision=revision, token=token, subfolder=subfolder)
    model_type = config_dict["model_type"]
    check_model_size(config_dict, f"{name!r} (config.json)")  # an absurd size is refused before any allocation
    if require_supernet and model_type != "supersam":
        raise ModelFileError(
            f"{name!r} is a plain SAM checkpoint, not a supernet: run `supersam convert` (and `supersam train`) "
            "first, and give the supernet folder it writes."
        )
    cls = SuperSamModel if as_supernet or model_type == "supersam" else SamModel
    model = _from_pretrained(cls, name, model_type, _hub_kwargs(revision, token, subfolder))
    return model.to(_device(device)).eval()


def load_supernet(name_or_path: str | os.PathLike, **kwargs) -> SuperSamModel:
    """`load_model(..., as_supernet=True)`: a saved supernet, or a SAM checkpoint converted on load."""
    return load_model(name_or_path, as_supernet=True, **kwargs)


def load_sam_model(name_or_path: str | os.PathLike, **kwargs) -> SamModel:
    """`load_model(..., as_supernet=False)`: the checkpoint as stored (an export stays a plain `SamModel`)."""
    return load_model(name_or_path, as_supernet=False, **kwargs)


def recorded_base_model(model: Any) -> str | None:
    """The SAM checkpoint a supernet was converted from, as recorded in its config (`base_model`), else None."""
    value = getattr(getattr(model, "config", None), "base_model", None)
    return value if isinstance(value, str) and value else None


def load_processor(
    model_name_or_path: str | os.PathLike | None,
    processor_name_or_path: str | os.PathLike | None = None,
    base_model: str | None = None,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    subfolder: str = "",
) -> SamProcessor:
    """The `SamProcessor` for a model: `processor_name_or_path` when given, else the one saved next to the model,
    else the one of its `base_model` (the SAM checkpoint a supernet records). `FileNotFoundError` says where it
    looked when none has one."""
    candidates: list[tuple[str, dict]] = []
    if processor_name_or_path and _looks_like_path(os.fspath(processor_name_or_path)) and not Path(
        processor_name_or_path
    ).expanduser().is_dir():
        raise FileNotFoundError(
            f"--processor_name_or_path {os.fspath(processor_name_or_path)!r}: no such folder; give a folder holding "
            "a saved SamProcessor (processor_config.json / preprocessor_config.json) or a Hub id, or leave it unset "
            "to use the processor saved next to the model."
        )
    if processor_name_or_path:
        candidates.append((os.fspath(processor_name_or_path), {"token": token} if token is not None else {}))
    else:
        if model_name_or_path:
            candidates.append((os.fspath(model_name_or_path), _hub_kwargs(revision, token, subfolder)))
        adapter = adapter_base(model_name_or_path) if model_name_or_path and Path(model_name_or_path).is_dir() else None
        for extra in (adapter, base_model):
            if extra and extra not in [c for c, _ in candidates]:
                candidates.append((extra, {"token": token} if token is not None else {}))
    problems = []
    for name, kwargs in candidates:
        try:
            return SamProcessor.from_pretrained(name, **{k: v for k, v in kwargs.items() if v != ""})
        except (OSError, ValueError, TypeError) as error:
            problems.append(f"{name!r} ({str(error).splitlines()[0] if str(error) else type(error).__name__})")
    looked = "; ".join(problems) if problems else "nowhere: no model or processor was given"
    raise FileNotFoundError(
        f"No SamProcessor found. Looked in {looked}. Save the processor next to the model "
        "(processor.save_pretrained(folder)) or pass --processor_name_or_path."
    )


__all__ = [
    "MODEL_TYPES",
    "adapter_base",
    "load_config_dict",
    "load_model",
    "load_processor",
    "load_sam_model",
    "load_supernet",
    "recorded_base_model",
]
