"""The prompts and the decoder targets of one image's instances: points and boxes drawn from the masks, and the masks
brought onto the decoder's low-resolution grid, aligned with the processor's resize + pad."""

from __future__ import annotations

import numpy as np
import torch

from .collator import POINT_PAD_VALUE


def sample_prompts(
    masks: np.ndarray, rng: np.random.Generator, num_positive_points: int = 1, num_negative_points: int = 0,
    box_jitter: int = 0,
) -> tuple[list[list[list[float]]], list[list[int]], list[list[float]]]:
    """Points (P, n, 2) xy, their labels (P, n) and boxes (P, 4) xyxy of bool (P, H, W) masks, in original pixel
    coordinates: positive points uniform inside a mask, negative ones outside; the box is the decoded mask's own
    extent (a stored `bbox` that disagrees does not matter), each coordinate moved by up to `box_jitter` px."""
    height, width = masks.shape[1:]
    points, point_labels, boxes = [], [], []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        chosen = rng.integers(len(xs), size=num_positive_points)
        pts = [[float(xs[j]), float(ys[j])] for j in chosen]
        labs = [1] * num_positive_points
        if num_negative_points:
            outside = np.flatnonzero(~mask.ravel())
            for _ in range(num_negative_points):
                if len(outside):
                    flat = int(outside[rng.integers(len(outside))])
                    pts.append([float(flat % width), float(flat // width)])
                    labs.append(0)
                else:  # the mask fills the image: a "not a point" the prompt encoder ignores
                    pts.append([0.0, 0.0])
                    labs.append(POINT_PAD_VALUE)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.int64)
        if box_jitter:
            box = box + rng.integers(-box_jitter, box_jitter + 1, size=4)
            box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
            box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])
        points.append(pts)
        point_labels.append(labs)
        boxes.append([float(v) for v in box])
    return points, point_labels, boxes


def low_res_targets(
    masks: np.ndarray, reshaped_size: tuple[int, int], pad_size: tuple[int, int], low_res_size: int
) -> torch.Tensor:
    """Bool (P, H, W) masks → float (P, L, L) targets on the decoder grid: resized to `reshaped_size` (nearest-exact,
    as the processor resized the image), padded bottom/right to `pad_size`, area-averaged over whole cells (≥ 0.5)."""
    num = masks.shape[0]
    new_h, new_w = reshaped_size
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(masks).to(torch.uint8)[:, None], size=(new_h, new_w), mode="nearest-exact"
    )[:, 0].bool()
    pad_h, pad_w = pad_size
    canvas = torch.zeros(num, pad_h, pad_w, dtype=torch.bool)
    canvas[:, :new_h, :new_w] = resized[:, :pad_h, :pad_w]
    kh, kw = pad_h // low_res_size, pad_w // low_res_size
    counts = canvas.view(num, low_res_size, kh, low_res_size, kw).sum(dim=(2, 4))
    return (counts * 2 >= kh * kw).float()


__all__ = ["low_res_targets", "sample_prompts"]
