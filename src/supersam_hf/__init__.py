"""supersam_hf: turn a Hugging Face SAM checkpoint into smaller standard SAM checkpoints through a SuperSAM supernet."""

from transformers import AutoConfig, AutoModel

from .configuration_supersam import SuperSamConfig, build_sam_config
from .modeling_supersam import SuperSamModel
from .search_space import SearchSpace, SubnetConfig
from .types import (
    EvaluationPromptType,
    IntensityNormalization,
    LatencyBackend,
    LogLevel,
    LossType,
    LrSchedulerType,
    MaskKind,
    MaskSelection,
    MixedPrecision,
    PromptType,
    SearchStrategy,
    SizeMetric,
)

__version__ = "0.1.0"

AutoConfig.register("supersam", SuperSamConfig)
AutoModel.register(SuperSamConfig, SuperSamModel)

# One function per stage (and the loader), imported on first use so `import supersam_hf` stays light.
_LAZY = {
    "load_model": "loading",
    "load_supernet": "loading",
    "load_sam_model": "loading",
    "load_processor": "loading",
    "prioritize": "prioritization",
    "SupernetTrainingArguments": "training",
    "train_supernet": "training",
    "search_subnets": "search",
    "evaluate_model": "evaluation",
    "export_subnet": "export",
    "TrainingResult": "results",
    "EvaluationResult": "results",
    "ExportResult": "results",
    "SearchResult": "search",
    "SamSegmentationData": "data",
    "SamStreamingData": "data",
    "load_segmentation_dataset": "data",
    "make_synthetic_shapes": "data",
    "use_fast_sam_rel_pos": "fast_rel_pos",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SuperSamConfig", "SuperSamModel", "SubnetConfig", "SearchSpace", "build_sam_config", "__version__", *_LAZY]
__all__ += ["EvaluationPromptType", "IntensityNormalization", "LatencyBackend", "LogLevel", "LossType", "LrSchedulerType",
            "MaskKind", "MaskSelection", "MixedPrecision", "PromptType", "SearchStrategy",
            "SizeMetric"]
