"""Synthetic shapes whose bounding box is not the answer, and the "box itself as the mask" reference.

`make_synthetic_shapes` draws ellipses and convex-ish polygons: filling the prompt box already scores ~0.62 mIoU
on them, so a model that merely copies its box prompt looks like a good segmenter. `make_hard_shapes` draws shapes
that fill their box poorly and must really be delineated (rings, crescents, stars, L-shapes, crosses, thin rotated
bars, small objects, touching and overlapping instances) on textured backgrounds, and `box_reference_miou` scores
that trivial "model" with the project's mIoU definition, so every box-prompt figure can be read against it.

Same output format as `make_synthetic_shapes`: columns `image` (PIL RGB) and `label` (int32 instance map,
`Array2D((S, S))`; 0 = background, 1..K instances, later shapes occlude earlier ones).

Domains:
* "A": flat, dark, saturated shapes (rings, crescents, L-shapes, crosses, stars, bars) on bright smooth gradients.
* "B": bright, textured (checkered / striped) shapes on dark textured noise backgrounds (intensity polarity and
  texture reversed w.r.t. A), a shape mix leaning to stars, thin bars, crosses and small objects, more instances
  and more contact between them. A model trained on A alone transfers poorly to B.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
from PIL import Image, ImageDraw

HARD_DOMAINS = ("A", "B")
SHAPE_KINDS = ("ring", "crescent", "star", "l_shape", "cross", "bar", "small")
# Probability of each shape kind (order of SHAPE_KINDS) per domain.
SHAPE_MIX = {
    "A": (0.22, 0.20, 0.16, 0.16, 0.12, 0.10, 0.04),
    "B": (0.12, 0.12, 0.20, 0.12, 0.14, 0.18, 0.12),
}
# Instances drawn per image (inclusive range) and the probability that a shape is placed touching/overlapping an
# earlier one (its centre one combined radius away, so they meet) instead of anywhere.
INSTANCES = {"A": (3, 5), "B": (4, 7)}
CONTACT_PROBABILITY = {"A": 0.3, "B": 0.5}

_PALETTE_A = np.array([[170, 30, 30], [30, 50, 170], [20, 120, 40], [110, 30, 130], [190, 100, 10], [10, 110, 120]],
                      dtype=np.float32)
_PALETTE_B = np.array([[0, 255, 255], [255, 60, 210], [255, 240, 40], [140, 255, 60], [255, 160, 40], [190, 150, 255]],
                      dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Shapes: each returns a bool (S, S) mask centred at (cx, cy) with "radius" r (half its extent), rotated by theta.
# ----------------------------------------------------------------------------------------------------------------


def _polygon(size: int, points: np.ndarray, cx: float, cy: float, theta: float) -> np.ndarray:
    """Rasterise a polygon given in local coordinates (N, 2), rotated by theta and moved to (cx, cy)."""
    c, s = np.cos(theta), np.sin(theta)
    xs = cx + points[:, 0] * c - points[:, 1] * s
    ys = cy + points[:, 0] * s + points[:, 1] * c
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in zip(xs, ys)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _local(yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in the shape's rotated frame."""
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(theta), np.sin(theta)
    return dx * c + dy * s, -dx * s + dy * c


def _ring(rng, size, yy, xx, cx, cy, r, theta) -> np.ndarray:
    """An (elliptic) annulus: the hole is 45-70 % of the outer radius."""
    u, v = _local(yy, xx, cx, cy, theta)
    d = np.sqrt(u * u + (v / rng.uniform(0.7, 1.0)) ** 2)
    return (d <= r) & (d >= r * rng.uniform(0.45, 0.7))


def _crescent(rng, size, yy, xx, cx, cy, r, theta) -> np.ndarray:
    """A disc with a second, shifted disc cut out of it."""
    u, v = _local(yy, xx, cx, cy, theta)
    shift, cut = r * rng.uniform(0.35, 0.6), r * rng.uniform(0.8, 1.0)
    return (u * u + v * v <= r * r) & ((u - shift) ** 2 + v * v > cut * cut)


def _star(rng, size, yy, xx, cx, cy, r, theta) -> np.ndarray:
    """A 4-6 pointed star, inner radius 35-50 % of the outer one."""
    points = int(rng.integers(4, 7))
    angles = np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, r, r * rng.uniform(0.35, 0.5))
    return _polygon(size, np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1), cx, cy, theta)


def _l_shape(rng, size, yy, xx, cx, cy, r, theta) -> np.ndarray:
    """An L of two arms of length 2r, each 25-40 % of its length thick, rotated."""
    t = 2 * r * rng.uniform(0.25, 0.4)
    arm = 2 * r
    pts = np.array([[0, 0], [arm, 0], [arm, t], [t, t], [t, arm], [0, arm]], dtype=np.float64) - arm / 2
    return _polygon(size, pts, cx, cy, theta)


def _cross(rng, size, yy, xx, cx, cy, r, theta) -> np.ndarray:
    """A plus sign of two bars of half-thickness 15-25 % of r."""
    u, v = _local(yy, xx, cx, cy, theta)
    h = r * rng.uniform(0.15, 0.25)
    inside = (np.abs(u) <= r) & (np.abs(v) <= r)
    return inside & ((np.abs(u) <= h) | (np.abs(v) <= h))


def _bar(rng, size, yy, xx, cx, cy, r, theta) -> np.ndarray:
    """A thin bar (5-8 px wide) at 20-70 degrees, so it fills little of its axis-aligned box."""
    angle = rng.uniform(np.deg2rad(20), np.deg2rad(70)) + np.pi / 2 * int(rng.integers(4))
    u, v = _local(yy, xx, cx, cy, angle)
    half_width = rng.uniform(2.5, 4.0) * size / 128
    return (np.abs(u) <= r * 1.3) & (np.abs(v) <= half_width)


def _small(rng, size, yy, xx, cx, cy, r, theta) -> np.ndarray:
    """A small object (radius 5-8 px at 128 px): a disc or a small star."""
    small_r = rng.uniform(5, 8) * size / 128
    if rng.random() < 0.5:
        u, v = _local(yy, xx, cx, cy, theta)
        return u * u + v * v <= small_r * small_r
    return _star(rng, size, yy, xx, cx, cy, small_r * 1.3, theta)


_SHAPES = {"ring": _ring, "crescent": _crescent, "star": _star, "l_shape": _l_shape, "cross": _cross, "bar": _bar,
           "small": _small}


def _place(rng: np.random.Generator, size: int, centres: list, domain: str) -> tuple[float, float, float]:
    """Centre and radius of the next shape: anywhere, or (with CONTACT_PROBABILITY) touching an earlier one."""
    r = rng.uniform(0.12, 0.22) * size if domain == "A" else rng.uniform(0.09, 0.2) * size
    if centres and rng.random() < CONTACT_PROBABILITY[domain]:
        px, py, pr = centres[int(rng.integers(len(centres)))]
        angle = rng.uniform(0, 2 * np.pi)
        dist = (pr + r) * rng.uniform(0.7, 1.0)
        cx, cy = px + dist * np.cos(angle), py + dist * np.sin(angle)
        cx, cy = float(np.clip(cx, 0.1 * size, 0.9 * size)), float(np.clip(cy, 0.1 * size, 0.9 * size))
    else:
        cx, cy = (float(v) for v in rng.uniform(0.15, 0.85, size=2) * size)
    return cx, cy, r


# ----------------------------------------------------------------------------------------------------------------
# Appearance
# ----------------------------------------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, period_range: tuple[float, float]) -> np.ndarray:
    """A random checkerboard or sinusoidal stripe pattern in [0, 1] over the grid."""
    period = rng.uniform(*period_range)
    angle = rng.uniform(0, np.pi)
    c, s = np.cos(angle), np.sin(angle)
    u, v = xx * c + yy * s, -xx * s + yy * c
    if rng.random() < 0.5:
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    return 0.5 + 0.5 * np.sin(2 * np.pi * u / period)


def _background(rng: np.random.Generator, domain: str, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Float (S, S, 3): A = bright smooth two-colour gradient; B = dark textured noise."""
    if domain == "A":
        c0, c1 = rng.uniform(170, 250, size=(2, 3))
        theta = rng.uniform(0, 2 * np.pi)
        t = (np.cos(theta) * xx + np.sin(theta) * yy) / size
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return c0 * (1 - t[..., None]) + c1 * t[..., None] + rng.normal(0, 3.0, size=(size, size, 3))
    base = rng.uniform(15, 55, size=3)
    pattern = _texture(rng, yy, xx, (5, 12))
    return base + 40.0 * pattern[..., None] + rng.normal(0, 12.0, size=(size, size, 3))


def _paint(rng: np.random.Generator, domain: str, image: np.ndarray, region: np.ndarray, yy, xx) -> None:
    """Paint one visible instance in place: A flat dark colour; B bright colour times a texture, plus noise."""
    if domain == "A":
        image[region] = _PALETTE_A[rng.integers(len(_PALETTE_A))] + rng.uniform(-20, 20, size=3)
        return
    colour = _PALETTE_B[rng.integers(len(_PALETTE_B))] + rng.uniform(-20, 20, size=3)
    texture = 0.55 + 0.45 * _texture(rng, yy[region], xx[region], (3, 7))
    image[region] = colour * texture[:, None] + rng.normal(0, 10.0, size=(int(region.sum()), 3))


# ----------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------


def _draw_label(rng: np.random.Generator, domain: str, size: int, yy, xx, min_area: int, instances) -> np.ndarray:
    """One instance map: shapes drawn in turn (later ones occlude), instances under `min_area` px removed, ids 1..K."""
    mix = np.asarray(SHAPE_MIX[domain])
    for _attempt in range(20):  # an image whose shapes are all too small is redrawn (rare)
        label = np.zeros((size, size), dtype=np.int32)
        centres: list = []
        for k in range(1, int(rng.integers(instances[0], instances[1] + 1)) + 1):
            kind = SHAPE_KINDS[int(rng.choice(len(SHAPE_KINDS), p=mix / mix.sum()))]
            cx, cy, r = _place(rng, size, centres, domain)
            label[_SHAPES[kind](rng, size, yy, xx, cx, cy, r, rng.uniform(0, 2 * np.pi))] = k
            centres.append((cx, cy, r))
        ids, areas = np.unique(label[label > 0], return_counts=True)
        kept = ids[areas >= min_area]
        if len(kept):
            break
    relabel = np.zeros(int(label.max()) + 1, dtype=np.int32)
    relabel[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return relabel[label]


def make_hard_shapes(
    num_images: int,
    image_size: int = 128,
    seed: int = 0,
    domain: str = "A",
    min_shapes: int | None = None,
    max_shapes: int | None = None,
    min_area_fraction: float = 0.004,
) -> datasets.Dataset:
    """A deterministic synthetic instance-segmentation dataset of shapes that fill their bounding box poorly.

    Columns and format as `make_synthetic_shapes`: `image` (PIL RGB) and `label` (int32 instance map; 0 =
    background, 1..K instances, later shapes occlude earlier ones). Shapes: rings, crescents, stars, L-shapes,
    crosses, thin rotated bars and small objects, often touching or overlapping (see `SHAPE_MIX`, `INSTANCES`).
    Domain "A" draws flat dark shapes on bright gradients, "B" bright textured shapes on dark textured noise
    with more stars, bars and small objects. Instances whose visible area is under `min_area_fraction` of the
    image are removed; every image has at least one instance. Image `i` depends only on (seed, domain, i).
    `min_shapes` / `max_shapes` override the domain's instance count range.
    """
    if domain not in HARD_DOMAINS:
        raise ValueError(f"Unknown synthetic domain {domain!r}; choose one of {HARD_DOMAINS}.")
    if num_images < 0 or image_size < 32:
        raise ValueError(f"Need num_images >= 0 and image_size >= 32, got {num_images} and {image_size}.")
    low, high = INSTANCES[domain]
    low, high = low if min_shapes is None else min_shapes, high if max_shapes is None else max_shapes
    if not 1 <= low <= high:
        raise ValueError(f"Need 1 <= min_shapes <= max_shapes, got min_shapes={low}, max_shapes={high}.")
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    min_area = max(1, int(min_area_fraction * image_size * image_size))
    images, labels = [], []
    for index in range(num_images):
        rng = np.random.default_rng((seed, 100 + HARD_DOMAINS.index(domain), index))
        label = _draw_label(rng, domain, image_size, yy, xx, min_area, (low, high))
        image = _background(rng, domain, image_size, yy, xx)
        for k in range(1, int(label.max()) + 1):
            _paint(rng, domain, image, label == k, yy, xx)
        images.append(Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8), "RGB"))
        labels.append(label)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Array2D(shape=(image_size, image_size), dtype="int32")}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


# ----------------------------------------------------------------------------------------------------------------
# The box reference
# ----------------------------------------------------------------------------------------------------------------


def filled_box(mask: np.ndarray) -> np.ndarray:
    """The mask's tight bounding box (the box prompt SAM is given, inclusive pixel bounds), filled; empty stays empty."""
    box = np.zeros_like(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if len(ys):
        box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return box


def box_reference_miou(
    dataset: Any,
    processor: Any = None,
    max_images: int | None = None,
    seed: int = 0,
    image_column: str | None = None,
    mask_column: str | None = None,
    mask_kind: str | None = None,
) -> dict[str, Any]:
    """mIoU of the trivial "model" that returns each object's box prompt, filled, as its mask.

    Scores exactly the objects `evaluate_model(..., prompt="box")` scores (instances selected by
    `SamSegmentationData`: area >= its `min_mask_area`, at most `max_instances_per_image`, the same first
    `max_images` images), through the same `sam_miou` metric at the original image size. Its box prompt is the
    mask's tight box (no jitter), so this is what a model scores by copying its prompt: box-prompt figures below
    it say nothing about segmentation. Returns the metric's fields plus `prompt`="box" and `reference`="box".

    `dataset` is a `datasets.Dataset` or a ready `SamSegmentationData`; `processor` is optional (the reference
    never looks at pixels, and ground-truth masks stay at the original size whatever the processor resizes to).
    """
    from .data import build_sam_processor
    from .evaluation import as_evaluation_dataset
    from .metrics import load_sam_miou

    if processor is None:  # only instance selection needs one; masks stay at the original size whatever it resizes to
        processor = build_sam_processor(64)
    data = as_evaluation_dataset(dataset, processor, "box", seed, image_column, mask_column, mask_kind)
    count = len(data) if max_images is None else min(len(data), int(max_images))
    predictions, references, image_ids = [], [], []
    for i in range(count):
        for truth in data[i]["full_masks"].numpy():
            # Cropped to the box, as evaluation crops each pair to its union: same IoU, far fewer pixels to store.
            ys, xs = np.nonzero(truth)
            crop = truth[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            predictions.append(filled_box(crop))
            references.append(crop)
            image_ids.append(str(data.row_indices[i]))
    scores = load_sam_miou(keep_in_memory=True).compute(predictions=predictions, references=references, image_ids=image_ids)
    return {**scores, "prompt": "box", "reference": "box"}


__all__ = ["HARD_DOMAINS", "SHAPE_KINDS", "make_hard_shapes", "filled_box", "box_reference_miou"]
