"""Hugging Face datasets → SAM examples: the map-style and streaming wrappers, COCO-style annotations (pycocotools),
images/ + masks/ folders, the prompt-batch collator, images, synthetic data."""

from .coco import CocoStats, coco_rles, decode_rles, is_coco_objects, load_coco_json
from .collator import MODEL_INPUT_KEYS, POINT_PAD_VALUE, PROMPT_TYPES, SamCollator, model_inputs
from .columns import IMAGE_COLUMN_CANDIDATES, MASK_COLUMN_CANDIDATES, MASK_KINDS
from .dataset import SamSegmentationData
from .examples import InstanceCounts
from .loading import build_sam_processor, load_segmentation_dataset
from .options import ExampleOptions
from .folders import load_images_masks_folder
from .streaming import DEFAULT_SHUFFLE_BUFFER_SIZE, SamStreamingData, streamed_rows
from .images import to_rgb_image
from .synthetic import HARD_SHAPE_KINDS, SYNTHETIC_DOMAINS, make_hard_shapes, make_synthetic_shapes

__all__ = [
    "CocoStats",
    "DEFAULT_SHUFFLE_BUFFER_SIZE",
    "ExampleOptions",
    "InstanceCounts",
    "SamStreamingData",
    "coco_rles",
    "decode_rles",
    "is_coco_objects",
    "load_coco_json",
    "load_images_masks_folder",
    "streamed_rows",
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
