"""Masks to score: a model's (one forward per batch, at the original image size) or the filled box prompts, and
how one batch of them reaches the `sam_miou` metric.

Predicted masks are brought back to the original image size by `SamProcessor.post_process_masks` (binarized at
logit 0) and compared with the ground-truth masks at that resolution. Which of SAM's three multimask outputs is
scored (`mask_selection`):

* ``"single"``: the model's own choice, the output with the highest *predicted* IoU (`iou_scores`). This is what a
  user gets from the model without ground truth, so it is the honest deployment number (and the default).
* ``"oracle"``: the output with the highest IoU against the ground truth, as the SuperSAM reference code reports.
  Always >= "single"; use it to compare with numbers from the paper.
* ``"single_output"``: SAM called with ``multimask_output=False``: its one single-mask output, the convention of
  box-prompt users (HF's SAM fine-tuning guide, SAM's own advice for boxes and several points).
"""

from __future__ import annotations

from typing import Any

import torch

from ..data import model_inputs


def _pairwise_iou(candidates: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """IoU of each of (K, H, W) bool candidates with a (H, W) bool reference (both empty = 1)."""
    inter = (candidates & reference).flatten(1).sum(1).double()
    union = (candidates | reference).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _crop_pair(prediction: torch.Tensor, reference: torch.Tensor):
    """Both masks cropped to the bounding box of their union, as numpy bool arrays.

    IoU and Dice only count pixels where a mask is set, all of which lie inside that box, so the scores are
    unchanged while the metric receives far fewer pixels (it stores masks as nested lists, which is slow at full
    resolution). Two empty masks become 1×1 empty masks (still scored 1, the metric's convention)."""
    union = prediction | reference
    rows = torch.nonzero(union.any(dim=1)).flatten()
    cols = torch.nonzero(union.any(dim=0)).flatten()
    if len(rows) == 0:
        empty = torch.zeros(1, 1, dtype=torch.bool)
        return empty.numpy(), empty.numpy()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return prediction[r0:r1, c0:c1].cpu().numpy(), reference[r0:r1, c0:c1].cpu().numpy()




# Prompts decoded per forward and post-processed at a time: an image with hundreds of instances (SA-1B has ~100,
# dense scenes several hundred) is decoded in chunks from one image embedding, so memory stays bounded.
PROMPTS_PER_FORWARD = 64


def _forward(model, inputs: dict[str, torch.Tensor], multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred_masks (B, P, 3 or 1, L, L), iou_scores (B, P, 3 or 1)) of one batch; above `PROMPTS_PER_FORWARD`
    prompts the image is encoded once and its prompts decoded in chunks (SAM decodes every prompt independently)."""
    prompt_key = "input_boxes" if "input_boxes" in inputs else "input_points"
    count = inputs[prompt_key].shape[1]
    if count <= PROMPTS_PER_FORWARD:
        outputs = model(**inputs, multimask_output=multimask_output)
        return outputs.pred_masks, outputs.iou_scores
    embeddings = model.get_image_embeddings(inputs["pixel_values"])
    masks, scores = [], []
    for start in range(0, count, PROMPTS_PER_FORWARD):
        chunk = {k: v[:, start:start + PROMPTS_PER_FORWARD] for k, v in inputs.items() if k != "pixel_values"}
        outputs = model(image_embeddings=embeddings, **chunk, multimask_output=multimask_output)
        masks.append(outputs.pred_masks)
        scores.append(outputs.iou_scores)
    return torch.cat(masks, dim=1), torch.cat(scores, dim=1)


@torch.no_grad()
def _model_masks(model, batch, processor, mask_selection: str) -> list[torch.Tensor]:
    """One forward of `model` on a batch (one encoder pass per image): per image, bool (P_i, H, W) masks at the
    original size, one per object (the model's own choice, or the oracle's best of three)."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
    for key in ("pixel_values", "input_boxes", "input_points"):
        if key in inputs:
            inputs[key] = inputs[key].to(dtype)
    pred_masks, iou_scores = _forward(model, inputs, multimask_output=mask_selection != "single_output")
    low_res = pred_masks.float()  # (B, P, 3, L, L) logits, or (B, P, 1, L, L) for "single_output"
    if mask_selection == "single":
        best = iou_scores.float().argmax(dim=-1)  # (B, P): the model's own choice
        index = best[..., None, None, None].expand(-1, -1, 1, *low_res.shape[-2:])
        low_res = torch.gather(low_res, 2, index)  # (B, P, 1, L, L)
    chosen = []
    for b, truth in enumerate(batch["full_masks"]):  # the collator's padding slots are dropped
        picked = []
        for start in range(0, int(truth.shape[0]), PROMPTS_PER_FORWARD):
            stop = min(start + PROMPTS_PER_FORWARD, int(truth.shape[0]))
            image_masks = processor.post_process_masks(
                [low_res[b, start:stop]], batch["original_sizes"][b:b + 1], batch["reshaped_input_sizes"][b:b + 1],
                mask_threshold=0.0, binarize=True,
            )[0]
            part = truth[start:stop].to(image_masks.device)
            picks = [0 if mask_selection != "oracle" else int(_pairwise_iou(image_masks[k], part[k]).argmax())
                     for k in range(part.shape[0])]
            picked += [image_masks[k, pick] for k, pick in enumerate(picks)]
        chosen.append(torch.stack(picked) if picked else torch.zeros(0, *truth.shape[1:], dtype=torch.bool))
    return chosen


def box_masks(batch: dict[str, Any]) -> list[torch.Tensor]:
    """The box prompts of a collated batch, filled, as masks: per image bool (P_i, H, W) at the original size.

    Boxes are mapped back from the processor's resized coordinates (scaled by original / resized size) and filled
    inclusively (x0..x1, y0..y1 in pixel indices, the convention of `SamSegmentationData`'s boxes), so a mask that
    fills its box is reproduced exactly."""
    filled = []
    for b, truth in enumerate(batch["full_masks"]):
        count, height, width = truth.shape
        scale = batch["original_sizes"][b].double() / batch["reshaped_input_sizes"][b].double()  # (h, w)
        boxes = batch["input_boxes"][b, :count].double() * scale[[1, 0, 1, 0]]
        x0, y0, x1, y1 = boxes.round().long().unbind(-1)
        cols, rows = torch.arange(width), torch.arange(height)
        inside_x = (cols[None] >= x0[:, None].clamp(0, width - 1)) & (cols[None] <= x1[:, None].clamp(0, width - 1))
        inside_y = (rows[None] >= y0[:, None].clamp(0, height - 1)) & (rows[None] <= y1[:, None].clamp(0, height - 1))
        filled.append(inside_y[:, :, None] & inside_x[:, None, :])
    return filled


def _add_to_metric(metric, chosen: list[torch.Tensor], batch: dict[str, Any]) -> None:
    """Add one batch's predicted masks (per image, (P_i, H, W) bool, aligned with `full_masks`) to the metric."""
    predictions, references, image_ids = [], [], []
    for image_masks, truth, image_id in zip(chosen, batch["full_masks"], batch["image_ids"]):
        truth = truth.to(image_masks.device)
        for k in range(truth.shape[0]):
            prediction, reference = _crop_pair(image_masks[k], truth[k])
            predictions.append(prediction)
            references.append(reference)
            image_ids.append(image_id)
    metric.add_batch(predictions=predictions, references=references, image_ids=image_ids)


def score_batches(model, batches, processor, mask_selection: str, metrics: dict, show_progress: bool) -> None:
    """Score every batch: `metrics["model"]` gets the model's masks (skipped when `model` is None) and, if present,
    `metrics["box_reference"]` the filled box prompts; both go through the same crop-and-metric path."""
    from tqdm.auto import tqdm

    total = len(batches) if hasattr(batches, "__len__") else None  # a stream has no length
    for batch in tqdm(batches, total=total, desc="evaluate", unit="batch", disable=not show_progress, leave=False):
        if model is not None:
            _add_to_metric(metrics["model"], _model_masks(model, batch, processor, mask_selection), batch)
        if "box_reference" in metrics:
            _add_to_metric(metrics["box_reference"], box_masks(batch), batch)
