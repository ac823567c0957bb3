"""`ExampleOptions`: how the rows of a dataset become SAM examples, shared by `SamSegmentationData` and
`SamStreamingData` (the one place their options, defaults and checks are written)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import DataError, SupersamError
from ..intensity import INTENSITY_MODES
from .collator import PROMPT_TYPES
from .columns import MASK_KINDS
from .images import DEFAULT_INTENSITY_NORMALIZATION


@dataclass(kw_only=True)
class ExampleOptions:
    r"""How rows become examples; the wrappers take one (`options=`) or its fields as keywords.

    Args:
        image_column / mask_column: column names; `None` auto-detects common names (image, img, pixel_values,
            picture / label, labels, mask, masks, annotation(s), segmentation, seg, instance_map, semantic_map,
            objects).
        mask_kind: "instance" (2-D map, one id per instance), "masks" (list or (N, H, W) stack of binary masks),
            "semantic" (2-D class map, each present class is one possibly multi-part mask) or "coco" (COCO-style
            objects: polygons, uncompressed or compressed RLE, decoded with pycocotools; crowd regions skipped).
            `None` auto-detects from the first row. A kind that contradicts the data (an id map given as "masks",
            objects given as a map kind) is refused with the detected kind. Colour-coded RGB maps count each
            distinct colour as one id.
        ignore_index: map value that belongs to no mask (void/boundary pixels; they are background in the
            targets). `None` disables it (e.g. binary 0/255 masks read as an instance map). The default 255 is
            8-bit maps' void: in a map holding ids above 255 it is an ordinary instance.
        background_ids: map values that are background (instance and semantic maps).
        min_mask_area: instances with fewer pixels (original resolution) are dropped; images left with none are
            skipped, counted in `counts` and reported in a warning.
        max_instances_per_image: keep at most this many instances per image, largest first (ties: lower id
            first); `None` (default) keeps every instance. What a cap leaves out is counted
            (`counts.instances_left_out`) and reported.
        category_ids: with "coco", keep only objects of these categories.
        prompt: "point", "box" or "mixed"; the default prompt of `collator()`. Examples always carry both kinds.
        num_positive_points / num_negative_points: points per instance, uniform inside / outside its mask.
        box_jitter: each box coordinate moves by a random integer in [-box_jitter, box_jitter] px, then is clipped.
        seed: prompts are drawn from `numpy.random.default_rng((seed, row_index, epoch))`; `set_epoch` varies
            them per epoch reproducibly.
        return_full_masks: also return `full_masks`, bool (P, H, W) at the original size, for evaluation.
        low_res_size: side of the decoder's low-resolution masks (4× the image-embedding size); default the
            processor's `mask_pad_size`, else pad_size // 4 (right for patch size 16).
        intensity_normalization: how images that are not 8-bit reach 0-255 (`to_rgb_image`).
    """

    image_column: str | None = None
    mask_column: str | None = None
    mask_kind: str | None = None
    ignore_index: int | None = 255
    background_ids: Sequence[int] = (0,)
    min_mask_area: int = 16
    max_instances_per_image: int | None = None
    category_ids: Sequence[int] | None = None
    prompt: str = "point"
    num_positive_points: int = 1
    num_negative_points: int = 0
    box_jitter: int = 0
    seed: int = 0
    return_full_masks: bool = False
    low_res_size: int | None = None
    intensity_normalization: str = DEFAULT_INTENSITY_NORMALIZATION

    def __post_init__(self) -> None:
        """Refuse an unknown mask kind, prompt or intensity mode and out-of-range counts before any work; store
        the counts as ints and the id lists as tuples."""
        if self.mask_kind is not None and self.mask_kind not in MASK_KINDS:
            raise DataError(f"Unknown mask_kind {self.mask_kind!r}; valid kinds are {MASK_KINDS} (or None to "
                            "auto-detect).")
        if self.prompt not in PROMPT_TYPES:
            raise SupersamError(f"Unknown prompt {self.prompt!r}; valid prompts are {PROMPT_TYPES}.")
        if self.intensity_normalization not in INTENSITY_MODES:
            raise SupersamError(f"Unknown intensity_normalization {self.intensity_normalization!r}; choose one of "
                                f"{INTENSITY_MODES} (--intensity_normalization).")
        if self.num_positive_points < 1 or self.num_negative_points < 0:
            raise SupersamError(f"Need num_positive_points >= 1 and num_negative_points >= 0, got "
                                f"{self.num_positive_points} and {self.num_negative_points}.")
        if self.box_jitter < 0 or self.min_mask_area < 0 or self.seed < 0:
            raise SupersamError("box_jitter, min_mask_area and seed must be >= 0.")
        if self.max_instances_per_image is not None and self.max_instances_per_image < 1:
            raise SupersamError(f"--max_instances_per_image must be >= 1 (or unset: every instance), got "
                                f"{self.max_instances_per_image}.")
        for name in ("min_mask_area", "num_positive_points", "num_negative_points", "box_jitter", "seed"):
            setattr(self, name, int(getattr(self, name)))
        if self.max_instances_per_image is not None:
            self.max_instances_per_image = int(self.max_instances_per_image)
        self.background_ids = tuple(int(b) for b in self.background_ids)
        if self.category_ids is not None:
            self.category_ids = tuple(int(c) for c in self.category_ids)

    @classmethod
    def build(cls, options: ExampleOptions | None = None, **overrides) -> ExampleOptions:
        """`options` (default: the defaults) with the fields given as keywords replaced, checked again."""
        if options is None:
            return cls(**overrides)
        if not isinstance(options, cls):
            raise TypeError(f"options must be an ExampleOptions, got {type(options).__name__}; give the other "
                            "settings by keyword.")
        return dataclasses.replace(options, **overrides) if overrides else options


__all__ = ["ExampleOptions"]
