"""SAM's single-mask output (`multimask_output=False`) alongside its three multimask outputs, from one forward.

SAM's mask decoder always computes four masks, one per mask token, and only then slices: token 0 for
`multimask_output=False`, tokens 1-3 for `multimask_output=True`. Training calls the model with
`multimask_output=True`; `capture_single_output` records, by forward hooks on the decoder's own modules, what
token 0's mask is made of (its hypernetwork output, the upscaled image embedding, the IoU head's four scores), and
`single_output` rebuilds exactly the mask and score that `multimask_output=False` would have returned (the same
operations on the same tensors, so gradients flow into every weight that produced them). SAM's recipe then
supervises that output for unambiguous prompts (a box, several points) and the best of the three for one point
(`unambiguous_prompts`, `losses.sam_loss(single_masks=...)`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def unambiguous_prompts(inputs: dict[str, torch.Tensor]) -> bool:
    """Whether a batch's prompts are unambiguous in SAM's sense: a box, or several points per prompt (one point may
    mean a part or the whole, so it keeps the three-output, best-of-three supervision)."""
    if inputs.get("input_boxes") is not None:
        return True
    points = inputs.get("input_points")
    return points is not None and points.shape[2] > 1


@contextlib.contextmanager
def capture_single_output(mask_decoder: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward of `mask_decoder` (a transformers `SamMaskDecoder`) leaves in the yielded
    dict what `single_output` needs; the hooks are removed on exit."""
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args, output):
            captured[name] = output
        return hook

    handles = [
        mask_decoder.output_hypernetworks_mlps[0].register_forward_hook(keep("hyper_in")),
        mask_decoder.upscale_conv2.register_forward_hook(keep("upscaled")),
        mask_decoder.iou_prediction_head.register_forward_hook(keep("iou_pred")),
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def single_output(mask_decoder: torch.nn.Module, captured: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(masks (B, P, 1, h, w), iou_scores (B, P, 1)): the decoder's `multimask_output=False` output of the last
    forward inside `capture_single_output`."""
    if not {"hyper_in", "upscaled", "iou_pred"} <= set(captured):
        raise RuntimeError("No mask-decoder forward was captured: call the model inside capture_single_output.")
    hyper_in = captured["hyper_in"]  # (B, P, C): token 0's hypernetwork output
    upscaled = mask_decoder.activation(captured["upscaled"])  # (B * P, C, h, w), as the decoder computes it
    batch, prompts, channels = hyper_in.shape
    height, width = upscaled.shape[-2:]
    upscaled = upscaled.reshape(batch, prompts, channels, height * width)
    masks = (hyper_in[:, :, None, :] @ upscaled).reshape(batch, prompts, 1, height, width)
    return masks, captured["iou_pred"][:, :, 0:1]


__all__ = ["capture_single_output", "single_output", "unambiguous_prompts"]
