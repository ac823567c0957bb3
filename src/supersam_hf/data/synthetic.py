"""Synthetic instance-segmentation datasets on two visually different domains (A, B).

`make_synthetic_shapes`: ellipses and polygons (filling the box prompt already scores ~0.62 mIoU on them).
`make_hard_shapes`: rings, crescents, stars, L-shapes, crosses, thin bars, small and touching objects on textured
backgrounds, where the box is not the answer (box filling ~0.38): the demo's and the paper proxy's domains.

Used by the demo (offline, no download) and the tests; numpy and PIL only, deterministic per (seed, domain, index).
"""

from __future__ import annotations

import datasets
import numpy as np
from PIL import Image, ImageDraw

from ..errors import SupersamError

SYNTHETIC_DOMAINS = ("A", "B")



# Domain A: flat, mid-dark saturated shapes on bright smooth gradients. Domain B: bright neon, textured shapes on
# dark striped, noisy backgrounds. Different palettes, backgrounds and textures make B a real domain shift from A.
_PALETTE_A = np.array(
    [[200, 40, 40], [40, 70, 200], [30, 150, 60], [140, 50, 160], [220, 120, 20], [20, 140, 150]], dtype=np.float32
)
_PALETTE_B = np.array(
    [[0, 255, 255], [255, 0, 200], [255, 240, 0], [120, 255, 40], [255, 140, 0], [170, 120, 255]], dtype=np.float32
)


def _shape_mask(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """One random ellipse or polygon (bool, size×size), radius 10–25 % of the image so a tiny SAM can learn it."""
    cx, cy = rng.uniform(0.15, 0.85, size=2) * size
    radius = rng.uniform(0.10, 0.25) * size
    if rng.random() < 0.5:
        a, b = radius, radius * rng.uniform(0.5, 1.0)
        theta = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        return u * u + v * v <= 1.0
    num_vertices = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=num_vertices))
    radii = radius * rng.uniform(0.6, 1.0, size=num_vertices)
    vertices = [(float(cx + r * np.cos(t)), float(cy + r * np.sin(t))) for r, t in zip(radii, angles)]
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(vertices, fill=1)
    return np.asarray(canvas, dtype=bool)


def _gradient(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray, high: float, noise: float) -> np.ndarray:
    """Float (size, size, 3): a bright two-colour linear gradient in a random direction, plus Gaussian noise."""
    c0, c1 = rng.uniform(170, high, size=(2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    t = (np.cos(theta) * xx + np.sin(theta) * yy) / size
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = c0 * (1 - t[..., None]) + c1 * t[..., None]
    return image + rng.normal(0, noise, size=image.shape)


def _background(rng: np.random.Generator, domain: str, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Float (size, size, 3) background: A = bright smooth two-colour gradient; B = dark stripes plus noise."""
    if domain == "A":
        return _gradient(rng, size, yy, xx, high=255, noise=2.0)
    base = rng.uniform(10, 50, size=3)
    phi = rng.uniform(0, np.pi)
    freq = rng.uniform(6, 14)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(phi) * xx + np.sin(phi) * yy) / size)
    image = base + 35.0 * stripes[..., None]
    return image + rng.normal(0, 12.0, size=image.shape)


def _paint_shape(
    rng: np.random.Generator, domain: str, image: np.ndarray, region: np.ndarray, yy: np.ndarray, xx: np.ndarray
) -> None:
    """Paint one instance in place: flat colour (A) or a striped/checkered texture with noise (B)."""
    if domain == "A":
        colour = _PALETTE_A[rng.integers(len(_PALETTE_A))] + rng.uniform(-20, 20, size=3)
        image[region] = colour
        return
    colour = _PALETTE_B[rng.integers(len(_PALETTE_B))] + rng.uniform(-15, 15, size=3)
    period = rng.uniform(3, 8)
    if rng.random() < 0.5:
        pattern = ((xx[region] // period + yy[region] // period) % 2).astype(np.float32)
    else:
        angle = rng.uniform(0, np.pi)
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(angle) * xx[region] + np.sin(angle) * yy[region]) / period)
    texture = 0.6 + 0.4 * pattern
    image[region] = colour * texture[:, None] + rng.normal(0, 10.0, size=(int(region.sum()), 3))


def _as_dataset(images: list[np.ndarray], labels: list[np.ndarray], image_size: int) -> datasets.Dataset:
    """Float RGB canvases (rounded, clipped to 0-255) and int32 instance maps as an HF dataset (image, label)."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Array2D(shape=(image_size, image_size), dtype="int32")}
    )
    pictures = [Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8), "RGB") for image in images]
    return datasets.Dataset.from_dict({"image": pictures, "label": labels}, features=features)


def make_synthetic_shapes(
    num_images: int,
    image_size: int = 128,
    seed: int = 0,
    domain: str = "A",
    max_shapes: int = 4,
    min_shapes: int = 1,
    min_area_fraction: float = 0.01,
) -> datasets.Dataset:
    """A deterministic synthetic instance-segmentation dataset of ellipses and polygons (numpy/PIL only, fast).

    Columns: `image` (PIL RGB, `datasets.Image()`) and `label` (int32 instance map, `Array2D((S, S))`; 0 =
    background, 1..K instances, later shapes occlude earlier ones). Two visually distinct domains exist so a domain
    shift can be tested: "A" (flat shapes on bright gradients) and "B" (textured neon shapes on dark stripes).
    Instances whose visible area falls under `min_area_fraction` of the image are removed (shown as background), so
    every label is learnable; every image has at least one instance. Round-trips through `save_to_disk`.
    """
    if domain not in SYNTHETIC_DOMAINS:
        raise SupersamError(f"Unknown synthetic domain {domain!r}; choose one of {SYNTHETIC_DOMAINS}.")
    if num_images < 0 or image_size < 8:
        raise SupersamError(f"Need num_images >= 0 and image_size >= 8, got {num_images} and {image_size}.")
    if not 1 <= min_shapes <= max_shapes:
        raise SupersamError(f"Need 1 <= min_shapes <= max_shapes, got min_shapes={min_shapes}, max_shapes={max_shapes}.")
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    min_area = max(1, int(min_area_fraction * image_size * image_size))
    images, labels = [], []
    for index in range(num_images):
        rng = np.random.default_rng((seed, SYNTHETIC_DOMAINS.index(domain), index))
        for _attempt in range(20):  # an image whose shapes are all too small is redrawn (rare)
            label = np.zeros((image_size, image_size), dtype=np.int32)
            for k in range(1, int(rng.integers(min_shapes, max_shapes + 1)) + 1):
                label[_shape_mask(rng, image_size, yy, xx)] = k
            ids, areas = np.unique(label[label > 0], return_counts=True)
            kept = ids[areas >= min_area]
            if len(kept):
                break
        relabel = np.zeros(int(label.max()) + 1, dtype=np.int32)
        relabel[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
        label = relabel[label]
        image = _background(rng, domain, image_size, yy, xx)
        for k in range(1, len(kept) + 1):
            _paint_shape(rng, domain, image, label == k, yy, xx)
        images.append(image)
        labels.append(label)
    return _as_dataset(images, labels, image_size)


# ================================================================================================================
# Hard shapes: shapes whose bounding box is not the answer
# ================================================================================================================
#
# `make_synthetic_shapes` draws ellipses and convex-ish polygons: filling the prompt box already scores ~0.62 mIoU
# on them (`evaluation.box_reference_miou`), so a model that merely copies its box prompt looks like a good
# segmenter. `make_hard_shapes` draws shapes that fill their box poorly and must really be delineated (rings,
# crescents, stars, L-shapes, crosses, thin rotated bars, small objects, touching and overlapping instances) on
# textured backgrounds: box filling scores ~0.37-0.39 on both domains.
#
# Domains:
# * "A": flat, dark, saturated shapes (rings, crescents, L-shapes, crosses, stars, bars) on bright smooth gradients.
# * "B": bright, textured (checkered / striped) shapes on dark textured noise backgrounds (intensity polarity and
#   texture reversed w.r.t. A), a shape mix leaning to stars, thin bars, crosses and small objects, more instances
#   and more contact between them. A model trained on A alone transfers poorly to B.

HARD_SHAPE_KINDS = ("ring", "crescent", "star", "l_shape", "cross", "bar", "small")
# Probability of each shape kind (order of HARD_SHAPE_KINDS) per domain.
HARD_SHAPE_MIX = {
    "A": (0.22, 0.20, 0.16, 0.16, 0.12, 0.10, 0.04),
    "B": (0.12, 0.12, 0.20, 0.12, 0.14, 0.18, 0.12),
}
# Instances drawn per image (inclusive range) and the probability that a shape is placed touching/overlapping an
# earlier one (its centre one combined radius away, so they meet) instead of anywhere.
HARD_INSTANCES = {"A": (3, 5), "B": (4, 7)}
HARD_CONTACT_PROBABILITY = {"A": 0.3, "B": 0.5}

_HARD_PALETTE_A = np.array([[170, 30, 30], [30, 50, 170], [20, 120, 40], [110, 30, 130], [190, 100, 10], [10, 110, 120]],
                      dtype=np.float32)
_HARD_PALETTE_B = np.array([[0, 255, 255], [255, 60, 210], [255, 240, 40], [140, 255, 60], [255, 160, 40], [190, 150, 255]],
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


_HARD_SHAPES = {"ring": _ring, "crescent": _crescent, "star": _star, "l_shape": _l_shape, "cross": _cross, "bar": _bar,
           "small": _small}


def _place(rng: np.random.Generator, size: int, centres: list, domain: str) -> tuple[float, float, float]:
    """Centre and radius of the next shape: anywhere, or (with HARD_CONTACT_PROBABILITY) touching an earlier one."""
    r = rng.uniform(0.12, 0.22) * size if domain == "A" else rng.uniform(0.09, 0.2) * size
    if centres and rng.random() < HARD_CONTACT_PROBABILITY[domain]:
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


def _hard_background(rng: np.random.Generator, domain: str, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Float (S, S, 3): A = bright smooth two-colour gradient; B = dark textured noise."""
    if domain == "A":
        return _gradient(rng, size, yy, xx, high=250, noise=3.0)
    base = rng.uniform(15, 55, size=3)
    pattern = _texture(rng, yy, xx, (5, 12))
    return base + 40.0 * pattern[..., None] + rng.normal(0, 12.0, size=(size, size, 3))


def _hard_paint(rng: np.random.Generator, domain: str, image: np.ndarray, region: np.ndarray, yy, xx) -> None:
    """Paint one visible instance in place: A flat dark colour; B bright colour times a texture, plus noise."""
    if domain == "A":
        image[region] = _HARD_PALETTE_A[rng.integers(len(_HARD_PALETTE_A))] + rng.uniform(-20, 20, size=3)
        return
    colour = _HARD_PALETTE_B[rng.integers(len(_HARD_PALETTE_B))] + rng.uniform(-20, 20, size=3)
    texture = 0.55 + 0.45 * _texture(rng, yy[region], xx[region], (3, 7))
    image[region] = colour * texture[:, None] + rng.normal(0, 10.0, size=(int(region.sum()), 3))


# ----------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------


def _draw_label(rng: np.random.Generator, domain: str, size: int, yy, xx, min_area: int, instances) -> np.ndarray:
    """One instance map: shapes drawn in turn (later ones occlude), instances under `min_area` px removed, ids 1..K."""
    mix = np.asarray(HARD_SHAPE_MIX[domain])
    for _attempt in range(20):  # an image whose shapes are all too small is redrawn (rare)
        label = np.zeros((size, size), dtype=np.int32)
        centres: list = []
        for k in range(1, int(rng.integers(instances[0], instances[1] + 1)) + 1):
            kind = HARD_SHAPE_KINDS[int(rng.choice(len(HARD_SHAPE_KINDS), p=mix / mix.sum()))]
            cx, cy, r = _place(rng, size, centres, domain)
            label[_HARD_SHAPES[kind](rng, size, yy, xx, cx, cy, r, rng.uniform(0, 2 * np.pi))] = k
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
    crosses, thin rotated bars and small objects, often touching or overlapping (see `HARD_SHAPE_MIX`, `HARD_INSTANCES`).
    Domain "A" draws flat dark shapes on bright gradients, "B" bright textured shapes on dark textured noise
    with more stars, bars and small objects. Instances whose visible area is under `min_area_fraction` of the
    image are removed; every image has at least one instance. Image `i` depends only on (seed, domain, i).
    `min_shapes` / `max_shapes` override the domain's instance count range.
    """
    if domain not in SYNTHETIC_DOMAINS:
        raise SupersamError(f"Unknown synthetic domain {domain!r}; choose one of {SYNTHETIC_DOMAINS}.")
    if num_images < 0 or image_size < 32:
        raise SupersamError(f"Need num_images >= 0 and image_size >= 32, got {num_images} and {image_size}.")
    low, high = HARD_INSTANCES[domain]
    low, high = low if min_shapes is None else min_shapes, high if max_shapes is None else max_shapes
    if not 1 <= low <= high:
        raise SupersamError(f"Need 1 <= min_shapes <= max_shapes, got min_shapes={low}, max_shapes={high}.")
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    min_area = max(1, int(min_area_fraction * image_size * image_size))
    images, labels = [], []
    for index in range(num_images):
        rng = np.random.default_rng((seed, 100 + SYNTHETIC_DOMAINS.index(domain), index))
        label = _draw_label(rng, domain, image_size, yy, xx, min_area, (low, high))
        image = _hard_background(rng, domain, image_size, yy, xx)
        for k in range(1, int(label.max()) + 1):
            _hard_paint(rng, domain, image, label == k, yy, xx)
        images.append(image)
        labels.append(label)
    return _as_dataset(images, labels, image_size)


__all__ = ["HARD_SHAPE_KINDS", "SYNTHETIC_DOMAINS", "make_hard_shapes", "make_synthetic_shapes"]
