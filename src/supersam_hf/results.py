"""Typed results of the stages: `TrainingResult`, `EvaluationResult`, `ExportResult` (the search's is
`supersam_hf.search.SearchResult`).

Each is a dataclass whose `to_dict()` is exactly the JSON the stage writes (`training_summary.json`,
`eval_results.json`, an export's `subnet.json`) and whose `save(folder)` writes that file; `load(folder)` reads
one back. The demo, the model card and the commands read attributes.

Transitional: each result is also a read-only `Mapping` over `to_dict()` (`result["miou"]`, `result.get(...)`,
`"key" in result`, `dict(result)`), so code written against the former plain dicts keeps working; new code reads
attributes.
"""

from __future__ import annotations

import json
import os
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .errors import ModelFileError
from .outputs import read_json_file
from .search_space import SubnetConfig

TRAINING_FILE = "training_summary.json"
EVALUATION_FILE = "eval_results.json"
EXPORT_FILE = "subnet.json"


def _plain(value: Any) -> Any:
    """`value` with every nested result replaced by its `to_dict()` (for JSON)."""
    if isinstance(value, _Result):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


class _Result(Mapping):
    """A stage result: `to_dict()` (its JSON), `save(folder)`, and a read-only Mapping over `to_dict()`."""

    FILE: ClassVar[str]
    INDENT_NEWLINE: ClassVar[bool] = True  # the file ends with a newline
    NOT_IN_FILE: ClassVar[tuple[str, ...]] = ()  # required fields the file spreads over its top-level keys

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The result as the stage's JSON file holds it."""

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `to_dict()` as `<folder>/<FILE>` (the file the stage writes) and return its path."""
        path = Path(folder) / self.FILE
        text = json.dumps(self.to_dict(), indent=2, default=_json_default)
        path.write_text(text + ("\n" if self.INDENT_NEWLINE else ""), encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: str | os.PathLike) -> dict[str, Any]:
        """`<folder>/<FILE>` as a dict with every field the result needs; a missing, corrupt or incomplete file is
        one clear error naming it."""
        path = Path(folder) / cls.FILE
        data = read_json_file(path, what=f"{cls.__name__} file", remedy="pass the output folder of its stage",
                              expect=dict)
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data and name not in cls.NOT_IN_FILE]
        if missing:
            raise ModelFileError(f"{path} lacks {', '.join(missing)}: not a complete {cls.FILE}; write it again with "
                                 "the stage that makes it.")
        return data

    # -- the read-only Mapping (transitional: dict-style readers of the former plain dicts) --------------------
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(eq=False)
class EvaluationResult(_Result):
    """What `evaluate_model` measured (`eval_results.json`).

    miou / per_image_miou / mean_dice / num_objects / num_images: the metric's scores and counts.
    prompt, mask_selection, resolution ("original": masks compared at the image's own size), seed: how measured.
    subnet / subnet_config: the scored subnet's name and dict (None for a whole model); params: parameters of the
    standard checkpoint that was or would be exported (None for a runtime model).
    box_reference_miou / box_reference_per_image_miou: the box itself as the mask (only with `box_reference`).
    max_instances_per_image (None: every instance scored) and num_instances_left_out.
    runtime: set by `supersam evaluate --onnx` (ONNX Runtime and its encoder precision).
    Equal results compare equal, also to the plain dict of the same content.
    """

    FILE: ClassVar[str] = EVALUATION_FILE

    miou: float
    per_image_miou: float
    mean_dice: float
    num_objects: int
    num_images: int
    prompt: str
    mask_selection: str | None
    seed: int
    resolution: str = "original"
    subnet: str | None = None
    subnet_config: dict[str, Any] | None = None
    params: int | None = None
    box_reference_miou: float | None = None
    box_reference_per_image_miou: float | None = None
    max_instances_per_image: int | None = None
    num_instances_left_out: int = 0
    runtime: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "miou": self.miou, "per_image_miou": self.per_image_miou, "mean_dice": self.mean_dice,
            "num_objects": self.num_objects, "num_images": self.num_images, "prompt": self.prompt,
            "mask_selection": self.mask_selection, "resolution": self.resolution, "seed": self.seed,
            "subnet": self.subnet, "subnet_config": self.subnet_config, "params": self.params,
        }
        if self.box_reference_miou is not None:
            out["box_reference_miou"] = self.box_reference_miou
            out["box_reference_per_image_miou"] = self.box_reference_per_image_miou
        out["max_instances_per_image"] = self.max_instances_per_image
        out["num_instances_left_out"] = self.num_instances_left_out
        if self.runtime is not None:
            out["runtime"] = self.runtime
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvaluationResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "EvaluationResult":
        """The `eval_results.json` that `supersam evaluate` wrote into `folder`."""
        return cls.from_dict(cls.read(folder))


@dataclass(eq=False)
class TrainingResult(_Result):
    """The outcome of `train_supernet` (`training_summary.json` in its output_dir).

    global_step / start_step: the last step and where this call started (a resumed run starts later).
    train_runtime_s, steps_per_second: of this call's steps. num_processes, subnets_per_step,
    trainable_parameters, lora: the setup. final_loss: the last step's losses per subnet slot.
    max_instances_per_image / instances_left_out (None when streaming) / streaming: the training data.
    final_eval: the last validation record (mIoU of the largest and smallest subnets), or None.
    last_checkpoint: the folder of the last checkpoint. engine: the distributed engine and precision.
    """

    FILE: ClassVar[str] = TRAINING_FILE
    INDENT_NEWLINE: ClassVar[bool] = False

    global_step: int
    start_step: int
    train_runtime_s: float
    steps_per_second: float | None
    num_processes: int
    subnets_per_step: int
    trainable_parameters: int
    lora: bool
    final_loss: dict[str, float]
    max_instances_per_image: int | None
    instances_left_out: int | None
    streaming: bool
    final_eval: dict[str, Any] | None
    last_checkpoint: str
    engine: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.engine is None:
            out.pop("engine")
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "TrainingResult":
        """The `training_summary.json` that `train_supernet` wrote into its output_dir `folder`."""
        return cls.from_dict(cls.read(folder))


@dataclass(eq=False)
class ExportResult(_Result):
    """What `export_subnet` wrote (`subnet.json` of the export folder).

    subnet: the exported `SubnetConfig` (its fields are top-level in the JSON, so `SubnetConfig.from_json` reads
    the file back). params / macs and base_params / base_macs: the subnet's and the largest subnet's size and MACs
    (`macs_per` says for what input). base_model: the SAM checkpoint as recorded. metrics: the card's evaluation
    (an `evaluate_model` result, or one per prompt type). onnx: the ONNX files' summary (with `onnx=True`).
    output_dir: the export folder (not in the JSON).
    """

    FILE: ClassVar[str] = EXPORT_FILE
    NOT_IN_FILE: ClassVar[tuple[str, ...]] = ("subnet",)  # its fields are the top-level keys of subnet.json

    subnet: SubnetConfig
    params: int
    macs: int
    base_params: int
    base_macs: int
    macs_per: str
    base_model: str | None = None
    metrics: Any = None
    onnx: dict[str, Any] | None = None
    output_dir: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {
            **self.subnet.to_dict(), "name": self.subnet.name, "params": self.params, "macs": self.macs,
            "base_params": self.base_params, "base_macs": self.base_macs, "macs_per": self.macs_per,
            "base_model": self.base_model, "metrics": _plain(self.metrics),
        }
        if self.onnx is not None:
            out["onnx"] = self.onnx
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ExportResult":
        """The `subnet.json` of the export folder `folder`."""
        data = cls.read(folder)
        return cls(subnet=SubnetConfig.from_dict(data), params=data["params"], macs=data["macs"],
                   base_params=data["base_params"], base_macs=data["base_macs"], macs_per=data["macs_per"],
                   base_model=data.get("base_model"), metrics=data.get("metrics"), onnx=data.get("onnx"),
                   output_dir=Path(folder))


__all__ = ["EVALUATION_FILE", "EXPORT_FILE", "TRAINING_FILE", "EvaluationResult", "ExportResult", "TrainingResult"]
