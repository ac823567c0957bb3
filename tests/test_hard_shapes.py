"""data.synthetic.make_hard_shapes and evaluation.box_reference_miou: shapes where the box is not the answer, and
the "box itself as the mask" reference."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
from PIL import Image

from supersam_hf.data import make_hard_shapes, make_synthetic_shapes
from supersam_hf.evaluation import box_reference_miou, evaluate_model
from helpers import tiny_processor, tiny_sam


def filled_box(mask: np.ndarray) -> np.ndarray:
    """The mask's tight bounding box, filled (inclusive pixel bounds); empty stays empty."""
    box = np.zeros_like(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if len(ys):
        box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return box


def dataset_of(labels: list[np.ndarray]) -> datasets.Dataset:
    images = [Image.fromarray(np.zeros((*label.shape, 3), dtype=np.uint8)) for label in labels]
    return datasets.Dataset.from_dict({"image": images, "label": labels})


def disc(size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2


def test_square_fills_its_box_exactly():
    label = np.zeros((64, 64), dtype=np.int32)
    label[10:30, 5:45] = 1
    result = box_reference_miou(dataset_of([label]))
    assert result["miou"] == 1.0
    assert result["num_objects"] == 1 and result["prompt"] == "box"


def test_disc_fills_pi_over_4_of_its_box():
    radius = 40
    mask = disc(128, 63, 63, radius)
    result = box_reference_miou(dataset_of([mask.astype(np.int32)]))
    # Exactly the pixel count over the (2r+1)^2 box, and pi/4 up to the one-pixel rim of pixelisation.
    assert result["miou"] == pytest.approx(mask.sum() / (2 * radius + 1) ** 2, abs=1e-12)
    assert abs(result["miou"] - math.pi / 4) < 2 / radius


def test_reference_averages_objects_and_skips_what_evaluation_skips():
    label = np.zeros((64, 64), dtype=np.int32)
    label[2:12, 2:12] = 1  # a square: 1.0
    label[disc(64, 40, 40, 15)] = 2  # a disc: ~0.75
    label[60:63, 60:63] = 3  # 9 px < min_mask_area=16 of SamSegmentationData: not scored, as in evaluate_model
    expected_disc = (label == 2).sum() / filled_box(label == 2).sum()
    result = box_reference_miou(dataset_of([label]))
    assert result["num_objects"] == 2
    assert result["miou"] == pytest.approx((1.0 + expected_disc) / 2, abs=1e-12)


def test_reference_scores_the_objects_evaluate_model_scores():
    data = make_hard_shapes(4, image_size=64, seed=3, domain="B")
    result = evaluate_model(tiny_sam(num_layers=2, image_size=64), data, tiny_processor(64), prompt="box", show_progress=False)
    reference = box_reference_miou(data)
    assert reference["num_objects"] == result["num_objects"] > 4
    assert reference["num_images"] == result["num_images"] == 4
    assert box_reference_miou(data, max_images=2)["num_images"] == 2


def test_filled_box_of_empty_mask_is_empty():
    assert not filled_box(np.zeros((8, 8), dtype=bool)).any()


def test_same_format_as_synthetic_shapes():
    hard = make_hard_shapes(3, image_size=64, seed=0)
    easy = make_synthetic_shapes(3, image_size=64, seed=0)
    assert hard.features == easy.features
    for row in hard:
        label = np.asarray(row["label"])
        assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
        ids = np.unique(label[label > 0])
        assert ids.tolist() == list(range(1, len(ids) + 1))  # consecutive instance ids, at least one
        assert min((label == k).sum() for k in ids) >= int(0.004 * 64 * 64)


def test_deterministic_per_seed_and_domain():
    def arrays(ds):
        return [np.asarray(r["image"]) for r in ds], [np.asarray(r["label"]) for r in ds]

    first, again = arrays(make_hard_shapes(4, image_size=64, seed=7)), arrays(make_hard_shapes(4, image_size=64, seed=7))
    for x, y in zip(first[0] + first[1], again[0] + again[1]):
        np.testing.assert_array_equal(x, y)
    other = arrays(make_hard_shapes(4, image_size=64, seed=8))
    assert not all(np.array_equal(x, y) for x, y in zip(first[1], other[1]))
    domain_b = arrays(make_hard_shapes(4, image_size=64, seed=7, domain="B"))
    assert not all(np.array_equal(x, y) for x, y in zip(first[0], domain_b[0]))
    # Image i depends only on (seed, domain, i): a longer dataset starts with the same images.
    longer = arrays(make_hard_shapes(6, image_size=64, seed=7))
    np.testing.assert_array_equal(longer[1][3], first[1][3])


def test_domains_differ_in_polarity():
    """A: dark shapes on bright backgrounds; B: bright shapes on dark backgrounds."""
    for domain, shapes_brighter in (("A", False), ("B", True)):
        ds = make_hard_shapes(6, image_size=64, seed=1, domain=domain)
        for row in ds:
            grey, label = np.asarray(row["image"]).mean(axis=-1), np.asarray(row["label"])
            assert (grey[label > 0].mean() > grey[label == 0].mean()) == shapes_brighter


@pytest.mark.parametrize("domain", ["A", "B"])
def test_box_filling_stays_at_most_045(domain):
    result = box_reference_miou(make_hard_shapes(48, image_size=128, seed=11, domain=domain))
    assert result["num_objects"] > 150
    assert result["miou"] <= 0.45
    # The old shapes are where the box nearly is the answer: the new generator must be clearly harder.
    easy = box_reference_miou(make_synthetic_shapes(48, 128, seed=11, domain=domain, min_shapes=3, max_shapes=7))
    assert easy["miou"] > result["miou"] + 0.1


def test_bad_arguments():
    with pytest.raises(ValueError, match="domain"):
        make_hard_shapes(1, domain="C")
    with pytest.raises(ValueError, match="min_shapes"):
        make_hard_shapes(1, min_shapes=3, max_shapes=2)
    with pytest.raises(ValueError, match="image_size"):
        make_hard_shapes(1, image_size=16)
