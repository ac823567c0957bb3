"""Elastic input resolution: the subnet sees its input at `SubnetPlan.image_size` pixels (square, whole patches)
instead of the supernet's `full_image_size`, so every encoder layer runs on fewer tokens.

Forward view: the encoder resizes `pixel_values` given at the full size (bilinear, antialiased) to the subnet's
size (`pixel_values` already at that size are used as they are), `pos_embed` is interpolated to the subnet's token
grid (bicubic), and the global layers' relative-position tables are interpolated by SAM's own `get_rel_pos` (it
resamples a table to the grid it meets). The prompt encoder's input size and embedding grid follow; prompts given in
the full frame are rescaled with the image (points, boxes, mask prompts).
Export: a standard SAM at that size (`vision_config.image_size`, the prompt encoder's sizes), `pos_embed` and the
global tables resampled exactly as the forward does, and a processor whose `longest_edge` / pad size match
(`export_processor`). No permutation. Cost: every token count follows the grid (`costs` reads it from the
exported config; the tables' parameters shrink with it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ENCODER, ElasticRule, StateDict, split_layer_key


def resize_pixels(pixel_values: torch.Tensor, size: int) -> torch.Tensor:
    """`pixel_values` (batch, channels, H, W) resized to size x size, bilinear and antialiased (computed in float32
    at least: the antialiased kernels have no bfloat16 / float16 CPU version)."""
    resized = F.interpolate(_at_least_float32(pixel_values), size=(size, size), mode="bilinear", align_corners=False,
                            antialias=True)
    return resized.to(pixel_values.dtype)


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """SAM's absolute position embedding (1, G, G, C) at a grid x grid token grid (bicubic, antialiased when
    shrinking, as ViTDet-style backbones resize theirs; in float32 at least); unchanged when the grid already
    matches."""
    if pos_embed.shape[1] == grid and pos_embed.shape[2] == grid:
        return pos_embed
    resized = F.interpolate(_at_least_float32(pos_embed.permute(0, 3, 1, 2)), size=(grid, grid), mode="bicubic",
                            align_corners=False, antialias=True)
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype)


def resample_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """A relative-position table (L, head_dim) at `length` rows, exactly as SAM's `get_rel_pos` resamples it
    (linear interpolation), so the exported table is what the supernet's forward computes from the full one."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.reshape(1, table.shape[0], -1).transpose(1, 2), size=length, mode="linear")
    return resized.reshape(-1, length).permute(1, 0)


def _grid(plan_size: int, config) -> int:
    return plan_size // config.vision_config.patch_size


class ResolutionRule(ElasticRule):
    """The input resolution of a subnet (`image_size`; the full one when None)."""

    name = "resolution"

    def activate(self, model, plan) -> None:
        size = None if plan is None or not plan.resized else plan.image_size
        full = model.config.vision_config.image_size
        grid = (size or full) // model.config.vision_config.patch_size
        model.vision_encoder.active_image_size = size
        model.vision_encoder.patch_embed.active_image_size = size
        model.prompt_encoder.input_image_size = size or full
        model.prompt_encoder.image_embedding_size = (grid, grid)

    @staticmethod
    def prompt_scale(model, pixel_values: torch.Tensor | None) -> float:
        """Factor from the prompts' frame to the active resolution's: prompts come in the frame of `pixel_values`
        (of the full size when only image embeddings are given)."""
        size = model.vision_encoder.active_image_size
        if size is None:
            return 1.0
        frame = pixel_values.shape[-1] if pixel_values is not None else model.config.vision_config.image_size
        return size / frame

    @staticmethod
    def prompts(model, scale: float, input_points, input_boxes, input_masks):
        """The prompts in the active resolution's frame (mask prompts at 4x its token grid)."""
        if scale != 1.0:
            input_points = None if input_points is None else input_points * scale
            input_boxes = None if input_boxes is None else input_boxes * scale
        if input_masks is not None:
            side = 4 * model.prompt_encoder.image_embedding_size[0]
            if input_masks.shape[-1] != side or input_masks.shape[-2] != side:
                input_masks = F.interpolate(input_masks.float(), size=(side, side), mode="bilinear",
                                            align_corners=False, antialias=True).to(input_masks.dtype)
        return input_points, input_boxes, input_masks

    @staticmethod
    def pixels(encoder, pixel_values: torch.Tensor) -> torch.Tensor:
        """The encoder's input at the active resolution: resized when given at the supernet's full size, as is
        otherwise (at the subnet's size it is used directly; any other size meets the patch embedding's own error)."""
        size, full = encoder.active_image_size, encoder.config.image_size
        if size is None or pixel_values.dim() != 4 or tuple(pixel_values.shape[-2:]) != (full, full):
            return pixel_values
        return resize_pixels(pixel_values, size)

    @staticmethod
    def pos_embed(pos_embed: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """`pos_embed` at the token grid of `hidden_states` (batch, grid, grid, channels)."""
        return resample_pos_embed(pos_embed, hidden_states.shape[1])

    @staticmethod
    def masks_like(pred_masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mask logits (..., h, w) of a smaller-input subnet upsampled (bilinear, as SAM's post-processing does) to
        the size of the target masks `labels` (..., H, W), so losses compare subnets of every resolution with the
        same targets; unchanged when the sizes already match."""
        size = tuple(labels.shape[-2:])
        if tuple(pred_masks.shape[-2:]) == size:
            return pred_masks
        flat = pred_masks.reshape(-1, 1, *pred_masks.shape[-2:])
        resized = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
        return resized.reshape(*pred_masks.shape[:-2], *size)

    @staticmethod
    def export_inputs(inputs: dict, plan) -> dict:
        """Model inputs made for the supernet (`pixel_values` at its full size, prompts in that frame) as the
        subnet's exported checkpoint takes them: `pixel_values` resized as the supernet's forward resizes them,
        point and box prompts rescaled with the image. Unchanged for a full-resolution subnet."""
        if not plan.resized or "pixel_values" not in inputs:
            return inputs
        scale = plan.image_size / inputs["pixel_values"].shape[-1]
        out = dict(inputs, pixel_values=resize_pixels(inputs["pixel_values"], plan.image_size))
        for key in ("input_points", "input_boxes"):
            if out.get(key) is not None:
                out[key] = out[key] * scale
        return out

    def export_config(self, config, plan) -> dict:
        if not plan.resized:
            return {}
        return {"vision_config": {"image_size": plan.image_size}, "prompt_encoder_config": {"image_size": plan.image_size}}

    def export_state(self, state: StateDict, config, plan) -> StateDict:
        if not plan.resized:
            return state
        vision = config.vision_config
        grid = _grid(plan.image_size, config)
        full_grid = _grid(plan.full_image_size, config)
        out = {}
        for key, tensor in state.items():
            layer = split_layer_key(key)
            if key == f"{ENCODER}pos_embed":
                tensor = resample_pos_embed(tensor, grid)
            elif layer is not None and layer[1] in ("attn.rel_pos_h", "attn.rel_pos_w"):
                is_global = layer[0] in vision.global_attn_indexes or vision.window_size == 0
                if is_global and tensor.shape[0] == 2 * full_grid - 1:
                    tensor = resample_rel_pos(tensor, 2 * grid - 1)
            out[key] = tensor
        return out

    @staticmethod
    def export_processor(processor, plan):
        """A copy of `processor` (a `SamProcessor`) for the exported checkpoint: images resized to the subnet's
        `longest_edge` and padded to its size, segmentation maps (the low-resolution targets) scaled by the same
        factor. The given processor is not changed."""
        if processor is None or not plan.resized:
            return processor
        image_processor = processor.image_processor
        data = image_processor.to_dict()
        size = plan.image_size
        data.update(size={"longest_edge": size}, pad_size={"height": size, "width": size})
        mask_pad = data.get("mask_pad_size")
        if mask_pad:
            mask = round(mask_pad["height"] * size / plan.full_image_size)
            data.update(mask_size={"longest_edge": mask}, mask_pad_size={"height": mask, "width": mask})
        # Rebuilt through the classes' own constructors: SamProcessor derives its prompt scaling from these sizes.
        return type(processor)(image_processor=type(image_processor).from_dict(data))


RESOLUTION = ResolutionRule()

__all__ = ["RESOLUTION", "ResolutionRule", "resample_pos_embed", "resample_rel_pos", "resize_pixels"]
