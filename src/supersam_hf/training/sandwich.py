"""One step of the sandwich rule: which subnets train (largest, smallest, sampled), their prompts, and the
forward + backward of every slot on one micro-batch (gradients accumulate in the shared weights).

Everything random is a function of (seed, step, ...), never of a process's global RNG, so every process of a
multi-process run trains the same subnets, and a resumed run reproduces the straight run.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Sequence

import numpy as np
import torch
from accelerate import Accelerator

from ..data import SamCollator, model_inputs
from ..elastic import RESOLUTION
from ..errors import SupersamError
from ..losses import mask_distillation_loss, sam_loss
from ..modeling_supersam import SuperSamModel
from ..search_space import SearchSpace, SubnetConfig
from .mask_outputs import capture_single_output, single_output, unambiguous_prompts


class NonFiniteLossError(SupersamError):
    """Training produced a NaN/inf loss or gradient; raised before the optimizer step, so no weight is touched."""


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from a tuple of values, identical in every process and Python session (unlike `hash`)."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sandwich_subnets(space: SearchSpace, seed: int, step: int, num_random: int) -> list[tuple[str, SubnetConfig]]:
    """The (slot name, subnet) pairs of one sandwich step: largest, smallest, then `num_random` sampled subnets.

    The bread spans every elastic dimension: the largest is the full supernet, the smallest (`space.smallest()`)
    keeps `min_layers` layers at the narrowest MLP width, the narrowest embedding width and the smallest input
    resolution; the sampled subnets draw depth, MLP widths, embedding width and resolution (`space.sample`).

    Slot k's subnet comes from `torch.Generator().manual_seed(stable_seed(seed, step, k))`, never from a process's
    global RNG, so all processes of a distributed run (and a resumed run) train the same subnets at each step.
    """
    slots = [("largest", space.largest()), ("smallest", space.smallest())]
    for k in range(1, num_random + 1):
        generator = torch.Generator().manual_seed(stable_seed(seed, "subnet", step, k))
        slots.append((f"random_{k}", space.sample(generator=generator)))
    return slots


class SeededEpochSampler(torch.utils.data.Sampler):
    """Random order that depends only on (seed, epoch): the same on every process, re-drawn exactly on resume."""

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(stable_seed(self.seed, "data", self.epoch))
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


class SandwichCollator:
    """`SamCollator` batches carrying the prompt kinds the run may use (points and/or boxes).

    For "mixed" both are collated and the training loop picks one per micro-batch from (seed, step, micro-batch),
    instead of relying on the collator's call counter, which restarts on resume and differs between workers.
    """

    def __init__(self, prompt_type: str) -> None:
        self.points = SamCollator(prompt="point") if prompt_type in ("point", "mixed") else None
        self.boxes = SamCollator(prompt="box") if prompt_type in ("box", "mixed") else None

    def __call__(self, examples):
        batch = (self.points or self.boxes)(examples)
        if self.points is not None and self.boxes is not None:
            batch["input_boxes"] = self.boxes(examples)["input_boxes"]
        return batch


def prompt_kind(prompt_type: str, seed: int, step: int, micro: int, point_fraction: float = 0.5) -> str:
    """The prompt kind of one micro-batch: fixed, or for "mixed" a seeded draw (same on every process) that is
    "point" with probability `point_fraction`."""
    if prompt_type != "mixed":
        return prompt_type
    return "point" if np.random.default_rng((seed, step, micro)).random() < point_fraction else "box"


def batch_model_inputs(batch: dict, kind: str) -> dict[str, torch.Tensor]:
    """`SamModel.forward` inputs of a collated batch, with only the prompts of `kind`."""
    inputs = model_inputs(batch)
    drop = ("input_boxes",) if kind == "point" else ("input_points", "input_labels")
    return {k: v for k, v in inputs.items() if k not in drop}


def unwrap_supernet(module: torch.nn.Module) -> SuperSamModel:
    """The `SuperSamModel` inside a (DDP-unwrapped) model, also through a PEFT wrapper."""
    if hasattr(module, "get_base_model"):
        module = module.get_base_model()
    if not isinstance(module, SuperSamModel):
        raise TypeError(f"Expected a SuperSamModel (optionally PEFT-wrapped), got {type(module).__name__}.")
    return module


def sandwich_backward(
    accelerator: Accelerator,
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    instance_mask: torch.Tensor,
    slots: Sequence[tuple[str, SubnetConfig]],
    loss_type: str = "focal_dice",
    distill_weight: float = 0.0,
    sync: bool = True,
    iou_weight: float = 1.0,
) -> dict[str, dict[str, torch.Tensor]]:
    """Forward + backward of every slot's subnet on one micro-batch; gradients accumulate in the shared weights.

    `model` is what `accelerator.prepare` returned (maybe DDP-wrapped); subnets are switched on the unwrapped
    supernet, whose modules the wrapper calls. Each slot's graph is freed by its own backward, so peak memory is
    that of the largest subnet alone. With DDP every backward except the last one (when `sync`) runs under
    `accelerator.no_sync`: gradients are all-reduced once per optimizer step. DDP's reducer (with
    `find_unused_parameters=True`) still averages a parameter that only an earlier, unsynchronised slot used: it
    marks parameters used anywhere within the no_sync window, so every process ends with identical gradients.

    With `distill_weight > 0` the first slot (the largest) is the teacher: every later slot adds
    `distill_weight · mask_distillation_loss` towards the teacher's detached logits of the mask that SAM's loss
    selected for the teacher. Returns per slot the detached "loss" (total) and, with distillation, "distill".

    Both of SAM's calling conventions train (SAM's recipe): the best of the three multimask outputs always, and for
    unambiguous prompts (a box, several points) also the single-mask output that `multimask_output=False` returns
    (read from the same forward, `training.mask_outputs`).
    """
    supernet = unwrap_supernet(accelerator.unwrap_model(model))
    if distill_weight > 0 and slots[0][0] != "largest":
        raise ValueError("In-place distillation needs the largest subnet in the first slot (the teacher).")
    results: dict[str, dict[str, torch.Tensor]] = {}
    teacher = None
    single = unambiguous_prompts(inputs)  # SAM's recipe: also train the multimask_output=False output
    try:
        for index, (name, cfg) in enumerate(slots):
            last = sync and index == len(slots) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                supernet.set_subnet(cfg)
                pred_masks, terms = _slot_loss(supernet, model, inputs, labels, instance_mask, loss_type, single,
                                               return_mask_index=distill_weight > 0 and teacher is None,
                                               iou_weight=iou_weight)
                loss, record = terms["loss"], {}
                if distill_weight > 0 and teacher is None:
                    teacher = (pred_masks.detach(), terms["mask_index"])
                elif distill_weight > 0:
                    distill = mask_distillation_loss(pred_masks, teacher[0], instance_mask, teacher[1])
                    loss = loss + distill_weight * distill
                    record["distill"] = distill.detach()
                accelerator.backward(loss)
                record["loss"] = loss.detach()
                results[name] = record
                del pred_masks, terms, loss
    finally:
        supernet.reset_subnet()
    return results


def _slot_loss(supernet: SuperSamModel, model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
               instance_mask: torch.Tensor, loss_type: str, single: bool, return_mask_index: bool,
               iou_weight: float = 1.0):
    """(pred_masks at the targets' size, `sam_loss` terms) of the active subnet's forward; with `single` the
    single-mask output (read from the same forward) is scored too."""
    with capture_single_output(supernet.mask_decoder) if single else contextlib.nullcontext() as captured:
        outputs = model(**inputs, multimask_output=True)
    single_masks, single_scores = single_output(supernet.mask_decoder, captured) if single else (None, None)
    # A smaller-input subnet's low-resolution masks, upsampled to the targets' size.
    pred_masks = RESOLUTION.masks_like(outputs.pred_masks, labels)
    if single_masks is not None:
        single_masks = RESOLUTION.masks_like(single_masks, labels)
    terms = sam_loss(pred_masks, outputs.iou_scores, labels, instance_mask, loss_type=loss_type,
                     return_mask_index=return_mask_index, single_masks=single_masks, single_iou_scores=single_scores,
                     iou_weight=iou_weight)
    return pred_masks, terms

__all__ = [
    "NonFiniteLossError",
    "SandwichCollator",
    "SeededEpochSampler",
    "batch_model_inputs",
    "prompt_kind",
    "sandwich_backward",
    "sandwich_subnets",
    "stable_seed",
    "unwrap_supernet",
]
