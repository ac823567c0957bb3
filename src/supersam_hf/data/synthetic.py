"""A synthetic instance-segmentation dataset: ellipses and polygons on two visually different domains (A, B).

Used by the demo (offline, no download) and the tests; numpy and PIL only, deterministic per (seed, domain, index).
"""

from __future__ import annotations

import datasets
import numpy as np
from PIL import Image, ImageDraw

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


def _background(rng: np.random.Generator, domain: str, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Float (size, size, 3) background: A = bright smooth two-colour gradient; B = dark stripes plus noise."""
    if domain == "A":
        c0, c1 = rng.uniform(170, 255, size=(2, 3))
        theta = rng.uniform(0, 2 * np.pi)
        t = (np.cos(theta) * xx + np.sin(theta) * yy) / size
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        image = c0 * (1 - t[..., None]) + c1 * t[..., None]
        return image + rng.normal(0, 2.0, size=image.shape)
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
        raise ValueError(f"Unknown synthetic domain {domain!r}; choose one of {SYNTHETIC_DOMAINS}.")
    if num_images < 0 or image_size < 8:
        raise ValueError(f"Need num_images >= 0 and image_size >= 8, got {num_images} and {image_size}.")
    if not 1 <= min_shapes <= max_shapes:
        raise ValueError(f"Need 1 <= min_shapes <= max_shapes, got min_shapes={min_shapes}, max_shapes={max_shapes}.")
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
        images.append(Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8), "RGB"))
        labels.append(label)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Array2D(shape=(image_size, image_size), dtype="int32")}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


__all__ = ["SYNTHETIC_DOMAINS", "make_synthetic_shapes"]
