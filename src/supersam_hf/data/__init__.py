"""Hugging Face datasets → SAM examples: the dataset wrapper, the prompt-batch collator, images, synthetic data."""

from .collator import MODEL_INPUT_KEYS, POINT_PAD_VALUE, PROMPT_TYPES, SamCollator, model_inputs
from .dataset import (
    IMAGE_COLUMN_CANDIDATES,
    MASK_COLUMN_CANDIDATES,
    MASK_KINDS,
    SamSegmentationData,
    build_sam_processor,
    load_segmentation_dataset,
)
from .images import to_rgb_image
from .synthetic import HARD_SHAPE_KINDS, SYNTHETIC_DOMAINS, make_hard_shapes, make_synthetic_shapes

__all__ = [
    "HARD_SHAPE_KINDS",
    "IMAGE_COLUMN_CANDIDATES",
    "MASK_COLUMN_CANDIDATES",
    "MASK_KINDS",
    "MODEL_INPUT_KEYS",
    "POINT_PAD_VALUE",
    "PROMPT_TYPES",
    "SYNTHETIC_DOMAINS",
    "SamCollator",
    "SamSegmentationData",
    "build_sam_processor",
    "load_segmentation_dataset",
    "make_hard_shapes",
    "make_synthetic_shapes",
    "model_inputs",
    "to_rgb_image",
]
