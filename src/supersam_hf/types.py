"""One str-valued enum per choice set (prompt types, mask kinds, intensity normalizations, ...).

In the style of transformers' `ExplicitEnum`: a member *is* its string (`PromptType.BOX == "box"`, `str()`,
f-strings and `json.dumps` give the plain value), and an unknown value raises a `SupersamError` naming the valid
ones. Dataclass fields typed with an enum become `choices` in `HfArgumentParser` (the parsed value is the plain
string) and are checked by value in .json / .yaml argument files. Every tuple of allowed values in the package
(`PROMPT_TYPES`, `MASK_KINDS`, `INTENSITY_MODES`, ...) is derived from these: `PromptType.values()`.
"""

from __future__ import annotations

from enum import Enum

from .errors import SupersamError


class ExplicitEnum(str, Enum):
    """A str-valued enum whose members are their strings, with a clear error for an unknown value."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)

    @classmethod
    def _missing_(cls, value: object) -> None:
        raise SupersamError(f"{value!r} is not a valid {cls.__name__}; choose one of {', '.join(cls.values())}.")

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The plain string values, in definition order (what CLI choices and messages list)."""
        return tuple(member.value for member in cls)


class PromptType(ExplicitEnum):
    """The prompt per object: a point, a box, or in training "mixed" (point or box per micro-batch, seeded)."""

    POINT = "point"
    BOX = "box"
    MIXED = "mixed"


class EvaluationPromptType(ExplicitEnum):
    """The prompt types a model is scored with (evaluate, search, export, the card): "mixed" is only a training
    schedule. A subset of `PromptType` (its members compare equal to `PromptType`'s)."""

    POINT = PromptType.POINT.value
    BOX = PromptType.BOX.value


class MaskKind(ExplicitEnum):
    """How a dataset stores masks: an instance id map, a stack of binary masks, a semantic class map, COCO objects."""

    INSTANCE = "instance"
    MASKS = "masks"
    SEMANTIC = "semantic"
    COCO = "coco"


class IntensityNormalization(ExplicitEnum):
    """How images that are not 8-bit reach 0-255 (see `supersam_hf.intensity`)."""

    PERCENTILE = "percentile"
    RANGE = "range"
    MINMAX = "minmax"


class MaskSelection(ExplicitEnum):
    """Which mask is scored: of SAM's three outputs the model's own choice (highest predicted IoU) or the best
    against the ground truth, or the one mask of `multimask_output=False`."""

    SINGLE = "single"
    ORACLE = "oracle"
    SINGLE_OUTPUT = "single_output"


class LatencyBackend(ExplicitEnum):
    """What a latency budget times: the PyTorch forward of the extracted subnet, or its encoder in ONNX Runtime."""

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


class LogLevel(ExplicitEnum):
    """Logging level of supersam_hf's messages."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LossType(ExplicitEnum):
    """The mask loss of training (plus the IoU-head MSE)."""

    FOCAL_DICE = "focal_dice"
    DICE = "dice"
    DICE_BCE = "dice_bce"


class LrSchedulerType(ExplicitEnum):
    """The learning-rate schedules training offers (names of `transformers.get_scheduler`)."""

    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"


class MixedPrecision(ExplicitEnum):
    """accelerate's mixed precision modes that training offers."""

    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"


class SearchStrategy(ExplicitEnum):
    """How the search proposes subnets: OpenTuner, or uniform random sampling (for comparison)."""

    OPENTUNER = "opentuner"
    RANDOM = "random"


class SizeMetric(ExplicitEnum):
    """What the demo's size budgets reduce: the encoder's MACs per image or the checkpoint's parameters."""

    PARAMS = "params"
    MACS = "macs"


__all__ = [
    "EvaluationPromptType",
    "ExplicitEnum",
    "IntensityNormalization",
    "LatencyBackend",
    "LogLevel",
    "LossType",
    "LrSchedulerType",
    "MaskKind",
    "MaskSelection",
    "MixedPrecision",
    "PromptType",
    "SearchStrategy",
    "SizeMetric",
]
