"""SAM's training losses on low-resolution mask logits: focal + dice (20:1), IoU-head MSE, and in-place distillation.

Shapes follow `SamModel` and `SamCollator`: `pred_masks` (B, P, M, h, w) logits, `iou_scores` (B, P, M), `labels`
(B, P, h, w) in {0, 1}, `instance_mask` (B, P) with False on padded prompt slots. Padded slots are removed by
boolean indexing before any loss is computed, so whatever the model predicts there (even NaN) cannot leak in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import SupersamError
from .types import LossType

LOSS_TYPES = LossType.values()


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per-mask focal loss (mean over the last two dims), as in SAM / RetinaNet; reduces the weight of easy pixels."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per-mask soft dice loss 1 - (2|p∩t| + s) / (|p| + |t| + s); `smooth` keeps empty masks finite (0 when both empty)."""
    prob = logits.sigmoid().flatten(-2)
    targets = targets.flatten(-2)
    intersection = (prob * targets).sum(-1)
    return 1 - (2 * intersection + smooth) / (prob.sum(-1) + targets.sum(-1) + smooth)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask binary cross-entropy (mean over pixels)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(-2).mean(-1)


@torch.no_grad()
def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask IoU of the binarised prediction (logit > 0) with the target; two empty masks have IoU 1."""
    pred = (logits > 0).flatten(-2)
    target = (targets > 0.5).flatten(-2)
    intersection = (pred & target).sum(-1).float()
    union = (pred | target).sum(-1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def _check_shapes(pred_masks: torch.Tensor, iou_scores: torch.Tensor, labels: torch.Tensor, instance_mask) -> None:
    if pred_masks.dim() != 5:
        raise ValueError(f"pred_masks must be (B, P, M, h, w) logits, got shape {tuple(pred_masks.shape)}.")
    if iou_scores.shape != pred_masks.shape[:3]:
        raise ValueError(f"iou_scores must be (B, P, M) = {tuple(pred_masks.shape[:3])}, got {tuple(iou_scores.shape)}.")
    expected = (*pred_masks.shape[:2], *pred_masks.shape[-2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels must be (B, P, h, w) = {expected} to match pred_masks, got {tuple(labels.shape)}; build targets at "
            "the decoder's low resolution (SamSegmentationData does) or pad P like SamCollator."
        )
    if instance_mask is not None and tuple(instance_mask.shape) != tuple(pred_masks.shape[:2]):
        raise ValueError(f"instance_mask must be (B, P) = {tuple(pred_masks.shape[:2])}, got {tuple(instance_mask.shape)}.")


def _check_inputs(pred_masks, iou_scores, labels, instance_mask, loss_type, single_masks, single_iou_scores) -> None:
    if loss_type not in LOSS_TYPES:
        raise SupersamError(f"Unknown loss_type {loss_type!r}; valid types are {LOSS_TYPES}.")
    _check_shapes(pred_masks, iou_scores, labels, instance_mask)
    if (single_masks is None) != (single_iou_scores is None):
        raise ValueError("Pass single_masks and single_iou_scores together (the single-mask output and its IoU score).")
    if single_masks is not None:
        _check_shapes(single_masks, single_iou_scores, labels, instance_mask)
        if single_masks.shape[2] != 1:
            raise ValueError(f"single_masks must hold one mask per prompt (B, P, 1, h, w), got {tuple(single_masks.shape)}.")


def sam_loss(
    pred_masks: torch.Tensor,
    iou_scores: torch.Tensor,
    labels: torch.Tensor,
    instance_mask: torch.Tensor | None = None,
    loss_type: str = "focal_dice",
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    bce_weight: float = 1.0,
    return_mask_index: bool = False,
    single_masks: torch.Tensor | None = None,
    single_iou_scores: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """SAM's loss, averaged over real (non-padded) instances.

    loss_type:
      * "focal_dice" (SAM's recipe): focal_weight · focal + dice_weight · dice;
      * "dice": dice_weight · dice;
      * "dice_bce": bce_weight · bce + dice_weight · dice.
    Plus iou_weight · MSE between the IoU head's `iou_scores` and each predicted mask's actual IoU with the target
    (detached). With M > 1 masks per prompt only the mask with the lowest mask loss is back-propagated (SAM's
    ambiguity-aware training); the IoU loss covers all M masks.

    `single_masks` (B, P, 1, h, w) and `single_iou_scores` (B, P, 1): SAM's single-mask output (what
    `multimask_output=False` returns, see `training.mask_outputs`), given for unambiguous prompts (a box, several
    points). Its mask loss is added in full (no selection) and its IoU prediction joins the MSE, so the output
    that box-prompt users call trains too; the result then also holds "single" (its unweighted mask loss).

    Returns a dict of scalars: "loss" (total), the unweighted components ("focal"/"bce", "dice", "iou"), and, when
    `return_mask_index`, "mask_index" (B, P) long: the selected mask per instance (-1 on padded slots), e.g. to
    distil exactly those masks with `mask_distillation_loss`.
    """
    _check_inputs(pred_masks, iou_scores, labels, instance_mask, loss_type, single_masks, single_iou_scores)
    if instance_mask is None:
        instance_mask = torch.ones(pred_masks.shape[:2], dtype=torch.bool, device=pred_masks.device)
    instance_mask = instance_mask.to(device=pred_masks.device, dtype=torch.bool)
    names = _TERMS[loss_type]
    weights = {"focal": focal_weight, "dice": dice_weight, "bce": bce_weight}
    index = torch.full(pred_masks.shape[:2], -1, dtype=torch.long, device=pred_masks.device)
    if not instance_mask.any():  # no real instance: a zero that still touches the graph (keeps DDP in step)
        zero = sum(t.sum() * 0 for t in (pred_masks, iou_scores, single_masks, single_iou_scores) if t is not None)
        out = {"loss": zero, **{name: zero.detach() for name in names}, "iou": zero.detach()}
        if single_masks is not None:
            out["single"] = zero.detach()
    else:  # padded slots removed by boolean indexing: (N, M, h, w) logits, (N, M) scores
        single = None if single_masks is None else (single_masks[instance_mask], single_iou_scores[instance_mask])
        out, index[instance_mask] = _instance_terms(pred_masks[instance_mask], iou_scores[instance_mask],
                                                    labels[instance_mask], names, weights, iou_weight, single)
    if return_mask_index:
        out["mask_index"] = index
    return out


_TERMS = {"focal_dice": ("focal", "dice"), "dice": ("dice",), "dice_bce": ("bce", "dice")}
_PER_MASK = {"focal": sigmoid_focal_loss, "dice": dice_loss, "bce": bce_loss}


def _instance_terms(logits, scores, labels, names, weights, iou_weight, single):
    """`sam_loss` over N real instances: (its terms, the selected mask of each instance)."""
    logits, scores = logits.float(), scores.float()
    targets = labels.to(logits.dtype)[:, None].expand_as(logits)  # (N, M, h, w)
    per_mask = {name: _PER_MASK[name](logits, targets) for name in names}  # each (N, M)
    mask_loss = sum(weights[name] * per_mask[name] for name in names)
    best = mask_loss.detach().argmin(dim=-1)  # (N,)
    rows = torch.arange(len(best), device=best.device)
    out = {"loss": mask_loss[rows, best].mean(), **{name: per_mask[name][rows, best].mean() for name in names}}
    iou_target = mask_iou(logits.detach(), targets)
    if single is not None:  # the single output: its full mask loss, and its IoU score in the MSE
        single_logits = single[0].float()  # (N, 1, h, w)
        single_loss = sum(weights[name] * _PER_MASK[name](single_logits, targets[:, :1]) for name in names)[:, 0]
        out["single"] = single_loss.detach().mean()
        out["loss"] = out["loss"] + single_loss.mean()
        scores = torch.cat([scores, single[1].float()], dim=-1)
        iou_target = torch.cat([iou_target, mask_iou(single_logits.detach(), targets[:, :1])], dim=-1)
    out["iou"] = F.mse_loss(scores, iou_target)
    out["loss"] = out["loss"] + iou_weight * out["iou"]
    return out, best


def mask_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    instance_mask: torch.Tensor | None = None,
    mask_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-place knowledge distillation: the student's masks fit the teacher's detached mask probabilities.

    Per pixel this is the binary KL divergence KL(teacher ‖ student) = BCE(student, soft teacher targets) minus the
    teacher's entropy: the same gradient as soft-target BCE, but exactly 0 when student == teacher. Logits are
    (B, P, M, h, w) or (B, P, h, w). With `mask_index` (B, P) (e.g. `sam_loss(..., return_mask_index=True)`)
    only that mask of each instance is distilled; otherwise all M, output token by output token. Padded slots
    (`instance_mask` False) are excluded; the result is the mean over pixels, masks and real instances.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}."
        )
    if student_logits.dim() == 4:
        student_logits, teacher_logits = student_logits[:, :, None], teacher_logits[:, :, None]
    if student_logits.dim() != 5:
        raise ValueError(f"Expected (B, P, M, h, w) or (B, P, h, w) logits, got shape {tuple(student_logits.shape)}.")
    teacher_logits = teacher_logits.detach()
    if instance_mask is None:
        instance_mask = torch.ones(student_logits.shape[:2], dtype=torch.bool, device=student_logits.device)
    instance_mask = instance_mask.to(device=student_logits.device, dtype=torch.bool)
    student = student_logits[instance_mask].float()  # (N, M, h, w)
    teacher = teacher_logits[instance_mask].float()
    if mask_index is not None:
        chosen = mask_index.to(student.device)[instance_mask]
        rows = torch.arange(len(chosen), device=student.device)
        student, teacher = student[rows, chosen][:, None], teacher[rows, chosen][:, None]
    if student.shape[0] == 0:
        return student_logits.sum() * 0
    p_teacher = teacher.sigmoid()
    kl = p_teacher * (F.logsigmoid(teacher) - F.logsigmoid(student)) + (1 - p_teacher) * (
        F.logsigmoid(-teacher) - F.logsigmoid(-student)
    )
    return kl.mean()


__all__ = ["LOSS_TYPES", "sam_loss", "mask_distillation_loss", "sigmoid_focal_loss", "dice_loss", "bce_loss", "mask_iou"]
