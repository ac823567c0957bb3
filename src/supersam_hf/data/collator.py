"""The prompt-batch collator: `SamSegmentationData` examples → `SamModel.forward` batches (+ targets)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..types import PromptType

PROMPT_TYPES = PromptType.values()
# Keys of a collated batch that `SamModel.forward` accepts (the rest are targets and bookkeeping).
MODEL_INPUT_KEYS = ("pixel_values", "input_points", "input_labels", "input_boxes")
POINT_PAD_VALUE = -10  # SAM's "not a point": the prompt encoder zeroes these embeddings


class SamCollator:
    """Stacks `SamSegmentationData` examples; instances are padded to the batch's largest prompt batch P.

    Output: `pixel_values` (B, 3, S, S), `original_sizes` (B, 2), `reshaped_input_sizes` (B, 2), then for "point"
    `input_points` (B, P, n, 2) + `input_labels` (B, P, n) (padding: coordinates and labels -10, SAM's ignored
    point) or for "box" `input_boxes` (B, P, 4) (padding: zeros); `labels` (B, P, L, L) float (padding: zeros);
    `instance_mask` (B, P) bool (False = padding; losses skip those slots); `full_masks` as a list of (P_i, H, W)
    bool tensors when the examples have them. "mixed" picks point or box per batch from
    `default_rng((seed, batch_counter))`, so a run is reproducible. `model_inputs(batch)` selects what
    `SamModel.forward` takes: one encoder pass per image, the image's instances decoded together.
    """

    def __init__(self, prompt: str = "point", seed: int = 0) -> None:
        if prompt not in PROMPT_TYPES:
            raise DataError(f"Unknown prompt {prompt!r}; valid prompts are {PROMPT_TYPES}.")
        self.prompt = prompt
        self.seed = int(seed)
        self.batch_counter = 0

    def _prompt_for_batch(self) -> str:
        if self.prompt != "mixed":
            return self.prompt
        rng = np.random.default_rng((self.seed, self.batch_counter))
        return "point" if rng.random() < 0.5 else "box"

    def __call__(self, examples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, Any]:
        if not examples:
            raise DataError("SamCollator got an empty list of examples.")
        prompt = self._prompt_for_batch()
        self.batch_counter += 1
        num_prompts = max(int(ex["labels"].shape[0]) for ex in examples)
        batch_size = len(examples)
        low_h, low_w = examples[0]["labels"].shape[-2:]
        labels = torch.zeros(batch_size, num_prompts, low_h, low_w, dtype=torch.float32)
        instance_mask = torch.zeros(batch_size, num_prompts, dtype=torch.bool)
        batch: dict[str, Any] = {
            "pixel_values": torch.stack([ex["pixel_values"] for ex in examples]),
            "original_sizes": torch.stack([ex["original_sizes"] for ex in examples]),
            "reshaped_input_sizes": torch.stack([ex["reshaped_input_sizes"] for ex in examples]),
        }
        if prompt == "point":
            num_points = max(int(ex["input_points"].shape[1]) for ex in examples)
            points = torch.full((batch_size, num_prompts, num_points, 2), float(POINT_PAD_VALUE))
            point_labels = torch.full((batch_size, num_prompts, num_points), POINT_PAD_VALUE, dtype=torch.long)
        else:
            boxes = torch.zeros(batch_size, num_prompts, 4)
        for b, ex in enumerate(examples):
            count = int(ex["labels"].shape[0])
            labels[b, :count] = ex["labels"]
            instance_mask[b, :count] = True
            if prompt == "point":
                n = int(ex["input_points"].shape[1])
                points[b, :count, :n] = ex["input_points"]
                point_labels[b, :count, :n] = ex["input_labels"]
            else:
                boxes[b, :count] = ex["input_boxes"]
        if prompt == "point":
            batch["input_points"], batch["input_labels"] = points, point_labels
        else:
            batch["input_boxes"] = boxes
        batch["labels"] = labels
        batch["instance_mask"] = instance_mask
        if all("full_masks" in ex for ex in examples):
            batch["full_masks"] = [ex["full_masks"] for ex in examples]
        return batch


def model_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The entries of a collated batch that `SamModel.forward` accepts (drops targets and bookkeeping)."""
    return {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}


__all__ = ["MODEL_INPUT_KEYS", "POINT_PAD_VALUE", "PROMPT_TYPES", "SamCollator", "model_inputs"]
