"""mIoU evaluation of a SAM model or a supernet's subnet, through the `sam_miou` `evaluate` metric.

`inputs`: the subnet and the collated batches of a dataset; `masks`: the masks scored (the model's, with its
`mask_selection`, or the filled box prompts) and how they reach the metric; `distributed`: a run split across
processes; `runner`: `evaluate_model` and `box_reference_miou`.
"""

from .distributed import GatheredMetric
from .inputs import (
    DEFAULT_CACHE_MB,
    MASK_SELECTIONS,
    PROMPTS,
    EvaluationData,
    PreparedBatches,
    StreamedBatches,
    as_evaluation_dataset,
    parse_subnet,
    resolve_subnet,
)
from .masks import box_masks
from .runner import EVALUATE_DATA_KEYWORDS, EVALUATE_KEYWORDS, box_reference_miou, evaluate_model

__all__ = [
    "DEFAULT_CACHE_MB",
    "EVALUATE_DATA_KEYWORDS",
    "EVALUATE_KEYWORDS",
    "EvaluationData",
    "GatheredMetric",
    "MASK_SELECTIONS",
    "PROMPTS",
    "PreparedBatches",
    "StreamedBatches",
    "as_evaluation_dataset",
    "box_masks",
    "box_reference_miou",
    "evaluate_model",
    "parse_subnet",
    "resolve_subnet",
]
