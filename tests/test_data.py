"""data.py: synthetic shapes, HF dataset → SAM examples (mask kinds, image modes, geometry, prompts), collator."""

from __future__ import annotations

import logging

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SamModel

from supersam_hf.configuration_supersam import build_sam_config
from supersam_hf.data import (
    ExampleOptions,
    SamCollator,
    SamSegmentationData,
    load_segmentation_dataset,
    make_synthetic_shapes,
    model_inputs,
    to_rgb_image,
)
from supersam_hf.losses import sam_loss
from helpers import tiny_processor

S = 64
LOW = S // 4


@pytest.fixture(scope="module")
def processor():
    return tiny_processor(S)


@pytest.fixture(scope="module")
def processor128():
    return tiny_processor(128)


def two_box_map(height: int = 40, width: int = 48) -> np.ndarray:
    """A 40×48 instance map: instance 1 (12×10 px) and instance 2 (6×20 px), 120 px each."""
    label = np.zeros((height, width), dtype=np.uint8)
    label[5:17, 4:14] = 1
    label[25:31, 20:40] = 2
    return label


def dataset_of(images, masks, mask_column: str = "label") -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": list(images), mask_column: list(masks)})


def orig_coords(coords: torch.Tensor, example: dict) -> torch.Tensor:
    """Map processor (resized) xy points (..., 2) or xyxy boxes (..., 4) back to original pixels."""
    old_h, old_w = example["original_sizes"].tolist()
    new_h, new_w = example["reshaped_input_sizes"].tolist()
    scale = torch.tensor([new_w / old_w, new_h / old_h], dtype=torch.float64)
    pairs = coords.double().reshape(*coords.shape[:-1], -1, 2) / scale
    return pairs.reshape(coords.shape)


# ---------------------------------------------------------------------------------------------------------------
# synthetic shapes
# ---------------------------------------------------------------------------------------------------------------


def test_synthetic_shapes_domains_determinism_and_round_trip(tmp_path):
    a = make_synthetic_shapes(6, image_size=S, seed=1, domain="A", max_shapes=4)
    b = make_synthetic_shapes(6, image_size=S, seed=1, domain="B", max_shapes=4)
    assert a.column_names == ["image", "label"]
    for ds in (a, b):
        row = ds[0]
        assert isinstance(row["image"], Image.Image) and row["image"].mode == "RGB" and row["image"].size == (S, S)
        label = np.asarray(row["label"])
        assert label.shape == (S, S)
        for r in range(len(ds)):
            ids = np.unique(np.asarray(ds[r]["label"]))
            assert ids[0] == 0 and 1 <= ids[-1] <= 4
            assert list(ids[1:]) == list(range(1, ids[-1] + 1))  # consecutive instance ids
            areas = np.bincount(np.asarray(ds[r]["label"]).ravel())[1:]
            assert areas.min() >= 0.01 * S * S  # learnable sizes
    # Deterministic under seed, different under another seed.
    again = make_synthetic_shapes(6, image_size=S, seed=1, domain="A", max_shapes=4)
    assert np.array_equal(np.asarray(again[3]["image"]), np.asarray(a[3]["image"]))
    assert np.array_equal(np.asarray(again[3]["label"]), np.asarray(a[3]["label"]))
    other = make_synthetic_shapes(6, image_size=S, seed=2, domain="A", max_shapes=4)
    assert not np.array_equal(np.asarray(other[3]["image"]), np.asarray(a[3]["image"]))
    # Domains differ visibly: A is bright, B is dark.
    mean_a = np.mean([np.asarray(im, dtype=np.float32).mean() for im in a["image"]])
    mean_b = np.mean([np.asarray(im, dtype=np.float32).mean() for im in b["image"]])
    assert mean_a > mean_b + 60
    # save_to_disk / load_from_disk round trip (also through load_segmentation_dataset).
    a.save_to_disk(str(tmp_path / "a"))
    loaded = datasets.load_from_disk(str(tmp_path / "a"))
    via_helper = load_segmentation_dataset(tmp_path / "a")
    for ds in (loaded, via_helper):
        assert ds.features == a.features and len(ds) == len(a)
        assert np.array_equal(np.asarray(ds[5]["image"]), np.asarray(a[5]["image"]))
        assert np.array_equal(np.asarray(ds[5]["label"]), np.asarray(a[5]["label"]))
    with pytest.raises(ValueError, match="domain"):
        make_synthetic_shapes(1, domain="C")


# ---------------------------------------------------------------------------------------------------------------
# mask kinds and image modes
# ---------------------------------------------------------------------------------------------------------------


def _rgb(height: int = 40, width: int = 48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("kind", ["instance", "masks", "semantic"])
def test_mask_kinds_shapes_and_dtypes(processor, kind):
    label = two_box_map()
    if kind == "instance":
        ds = dataset_of([_rgb()], [Image.fromarray(label.astype(np.uint8), "L")])
        expected_areas = [120, 120]
    elif kind == "masks":
        masks = [label == 1, label == 2, np.zeros_like(label, dtype=bool)]  # the empty mask is dropped
        ds = dataset_of([_rgb()], [masks], mask_column="masks")
        expected_areas = [120, 120]
    else:
        semantic = label.copy()
        semantic[33:37, 2:10] = 2  # a second part of class 2: one class = one (multi-part) mask
        semantic[:, 44:] = 255  # ignored pixels never form a mask
        ds = dataset_of([_rgb()], [semantic], mask_column="semantic_map")
        expected_areas = [120, 120 + 32]
    data = SamSegmentationData(ds, processor, mask_kind=None if kind != "semantic" else "semantic", return_full_masks=True)
    assert data.mask_kind == kind
    example = data[0]
    assert example["pixel_values"].shape == (3, S, S) and example["pixel_values"].dtype == torch.float32
    assert example["input_points"].shape == (2, 1, 2) and example["input_points"].dtype == torch.float32
    assert example["input_labels"].shape == (2, 1) and example["input_labels"].dtype == torch.long
    assert example["input_boxes"].shape == (2, 4) and example["input_boxes"].dtype == torch.float32
    assert example["labels"].shape == (2, LOW, LOW) and example["labels"].dtype == torch.float32
    assert set(example["labels"].unique().tolist()) == {0.0, 1.0}
    assert example["original_sizes"].tolist() == [40, 48] and example["reshaped_input_sizes"].tolist() == [53, 64]
    full = example["full_masks"]
    assert full.shape == (2, 40, 48) and full.dtype == torch.bool
    assert sorted(full.flatten(1).sum(1).tolist()) == sorted(expected_areas)
    if kind == "semantic":
        assert not full[:, :, 44:].any()


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16", "float", "RGBA"])
def test_image_modes(processor, mode):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(40, 48), dtype=np.uint8)
    if mode == "RGB":
        image = Image.fromarray(np.stack([base] * 3, -1), "RGB")
    elif mode == "L":
        image = Image.fromarray(base, "L")
    elif mode == "I;16":
        image = Image.fromarray(base.astype(np.uint16) * 257)
        assert image.mode == "I;16"
    elif mode == "float":
        image = base.astype(np.float32) / 255.0
    else:
        image = Image.fromarray(np.dstack([base, base, base, np.full_like(base, 7)]), "RGBA")
    ds = dataset_of([image], [two_box_map()])
    # "range": the dtype-range scaling, exact for full-range data (the default "percentile" stretches each image)
    example = SamSegmentationData(ds, processor, intensity_normalization="range")[0]
    assert example["pixel_values"].shape == (3, S, S) and example["pixel_values"].dtype == torch.float32
    reference = SamSegmentationData(dataset_of([Image.fromarray(base, "L")], [two_box_map()]), processor)[0]
    # Every mode reaches the same 0-255 RGB image, hence the same pixel values.
    torch.testing.assert_close(example["pixel_values"], reference["pixel_values"], atol=1e-5, rtol=0)


def test_to_rgb_image_scaling_rules():
    sixteen = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    assert np.asarray(to_rgb_image(sixteen, "range"))[0, :, 0].tolist() == [0, 100, 255]
    assert np.asarray(to_rgb_image(np.array([[0.0, 0.5, 1.0]]), "range"))[0, :, 1].tolist() == [0, 128, 255]
    assert np.asarray(to_rgb_image(np.array([[-1.0, 4.0, 9.0]]), "range"))[0, :, 2].tolist() == [0, 128, 255]
    # the default: per-image percentiles, so 12-bit camera data (0-4095) is not black (÷257 would peak at 16)
    twelve = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    assert np.asarray(to_rgb_image(twelve)).max() == 255 and np.asarray(to_rgb_image(twelve, "range")).max() == 16
    chw = np.zeros((3, 5, 7), dtype=np.uint8)
    chw[1] = 9
    out = np.asarray(to_rgb_image(chw))
    assert out.shape == (5, 7, 3) and out[..., 1].max() == 9 and out[..., 0].max() == 0
    with pytest.raises(ValueError, match="shape"):
        to_rgb_image(np.zeros((2, 3, 4, 5)))


# ---------------------------------------------------------------------------------------------------------------
# geometry and prompts
# ---------------------------------------------------------------------------------------------------------------


def test_known_square_lands_in_resized_and_padded_low_res_mask(processor128):
    # Image 100 wide × 60 high → resized to 128 × 77 (scale 1.28 in x, 77/60 in y), padded bottom to 128 × 128,
    # low-res 32 × 32 (4 px per cell). Square rows 25..49, cols 50..74 → resized rows 32..63, cols 64..95
    # (nearest-exact) → low-res rows 8..15, cols 16..23.
    label = np.zeros((60, 100), dtype=np.uint8)
    label[25:50, 50:75] = 1
    ds = dataset_of([np.zeros((60, 100, 3), dtype=np.uint8)], [label])
    example = SamSegmentationData(ds, processor128, return_full_masks=True)[0]
    assert example["reshaped_input_sizes"].tolist() == [77, 128]
    expected = torch.zeros(32, 32)
    expected[8:16, 16:24] = 1
    assert torch.equal(example["labels"][0], expected)
    # SAM's own post-processing (upscale, crop the padding, resize) maps the target back onto the square.
    logits = (example["labels"] * 2 - 1)[None, :, None]  # (1, P, 1, 32, 32)
    restored = processor128.post_process_masks(
        logits, example["original_sizes"][None], example["reshaped_input_sizes"][None]
    )[0][0, 0]
    iou = (restored & example["full_masks"][0]).sum() / (restored | example["full_masks"][0]).sum()
    assert restored.shape == (60, 100) and iou > 0.9


def test_points_inside_masks_and_boxes_around_them(processor):
    ds = make_synthetic_shapes(3, image_size=48, seed=3, max_shapes=4)
    data = SamSegmentationData(ds, processor, num_positive_points=3, num_negative_points=2, return_full_masks=True)
    for i in range(len(data)):
        example = data[i]
        masks = example["full_masks"]
        points = orig_coords(example["input_points"], example).round().long()  # (P, n, 2) xy
        assert example["input_labels"].tolist() == [[1, 1, 1, 0, 0]] * len(masks)
        for p, mask in enumerate(masks):
            inside = mask[points[p, :, 1], points[p, :, 0]]
            assert inside.tolist() == [True, True, True, False, False]
            ys, xs = torch.nonzero(mask, as_tuple=True)
            box = orig_coords(example["input_boxes"][p], example)
            tight = torch.tensor([xs.min(), ys.min(), xs.max(), ys.max()], dtype=torch.float64)
            torch.testing.assert_close(box, tight, atol=1e-4, rtol=0)


def test_box_jitter_bounded_clipped_and_random(processor):
    ds = make_synthetic_shapes(4, image_size=48, seed=4, max_shapes=3)
    plain = SamSegmentationData(ds, processor, prompt="box")
    jitter = SamSegmentationData(ds, processor, prompt="box", box_jitter=3)
    moved = False
    for i in range(len(plain)):
        a, b = plain[i], jitter[i]
        box_a = orig_coords(a["input_boxes"], a)
        box_b = orig_coords(b["input_boxes"], b)
        assert ((box_a - box_b).abs() <= 3 + 1e-4).all()
        assert (box_b >= -1e-4).all() and (box_b <= 47 + 1e-4).all()
        assert (box_b[:, 0] <= box_b[:, 2]).all() and (box_b[:, 1] <= box_b[:, 3]).all()
        moved |= bool(((box_a - box_b).abs() > 0.5).any())
    assert moved


def test_prompts_deterministic_per_seed_and_vary_per_epoch(processor):
    ds = make_synthetic_shapes(2, image_size=48, seed=5)
    first = SamSegmentationData(ds, processor, num_positive_points=4, seed=7)
    second = SamSegmentationData(ds, processor, num_positive_points=4, seed=7)
    assert torch.equal(first[1]["input_points"], second[1]["input_points"])
    epoch0 = first[1]["input_points"]
    first.set_epoch(1)
    assert not torch.equal(first[1]["input_points"], epoch0)
    first.set_epoch(0)
    assert torch.equal(first[1]["input_points"], epoch0)
    other_seed = SamSegmentationData(ds, processor, num_positive_points=4, seed=8)
    assert not torch.equal(other_seed[1]["input_points"], epoch0)
    options = ExampleOptions(num_positive_points=4, seed=8)  # one options object, a keyword overriding a field
    assert torch.equal(SamSegmentationData(ds, processor, options, seed=7)[1]["input_points"], epoch0)
    assert options.seed == 8 and SamSegmentationData(ds, processor, options).seed == 8


def test_max_instances_keeps_largest(processor):
    label = np.zeros((40, 48), dtype=np.uint8)
    label[0:10, 0:10] = 1  # 100 px
    label[20:40, 0:20] = 2  # 400 px
    label[0:15, 30:45] = 3  # 225 px
    data = SamSegmentationData(dataset_of([_rgb()], [label]), processor, max_instances_per_image=2, return_full_masks=True)
    areas = data[0]["full_masks"].flatten(1).sum(1).tolist()
    assert areas == [400, 225]


# ---------------------------------------------------------------------------------------------------------------
# errors and skipping
# ---------------------------------------------------------------------------------------------------------------


def test_empty_images_skipped_and_counted(processor, caplog):
    tiny = np.zeros((40, 48), dtype=np.uint8)
    tiny[0:3, 0:3] = 1  # 9 px < min_mask_area=16
    ignored = np.full((40, 48), 255, dtype=np.uint8)  # only ignore_index
    ds = dataset_of([_rgb()] * 4, [np.zeros((40, 48), np.uint8), two_box_map(), tiny, ignored])
    with caplog.at_level(logging.WARNING, logger="supersam_hf.data"):
        data = SamSegmentationData(ds, processor)
    assert len(data) == 1 and data.num_skipped_images == 3 and data.row_indices == [1]
    assert any("skipped 3 of 4" in record.getMessage() for record in caplog.records)
    with pytest.raises(ValueError, match="min_mask_area"):
        SamSegmentationData(dataset_of([_rgb()] * 2, [np.zeros((40, 48), np.uint8), tiny]), processor)


def test_clear_errors(processor):
    ds = datasets.Dataset.from_dict({"photo": [_rgb()], "gt": [two_box_map()]})
    with pytest.raises(ValueError, match=r"\['photo', 'gt'\].*image_column="):
        SamSegmentationData(ds, processor)
    with pytest.raises(ValueError, match=r"\['photo', 'gt'\].*mask_column="):
        SamSegmentationData(ds, processor, image_column="photo")
    assert len(SamSegmentationData(ds, processor, image_column="photo", mask_column="gt")) == 1
    good = dataset_of([_rgb()], [two_box_map()])
    with pytest.raises(ValueError, match="instance.*masks.*semantic"):
        SamSegmentationData(good, processor, mask_kind="panoptic")
    with pytest.raises(ValueError, match="point.*box.*mixed"):
        SamSegmentationData(good, processor, prompt="scribble")
    with pytest.raises(ValueError, match="split"):
        SamSegmentationData(datasets.DatasetDict({"train": good}), processor)
    with pytest.raises(ValueError, match="mask size"):
        SamSegmentationData(dataset_of([_rgb(30, 30)], [two_box_map()]), processor)[0]


def test_load_segmentation_dataset_splits_and_files(tmp_path):
    ds = make_synthetic_shapes(2, image_size=32, seed=0)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_segmentation_dataset(tmp_path / "dd")) == 2
    assert len(load_segmentation_dataset(str(tmp_path / "dd"), split="test")) == 1
    with pytest.raises(ValueError, match=r"\['train', 'test'\]"):
        load_segmentation_dataset(tmp_path / "dd", split="validation")
    datasets.DatasetDict({"a": ds, "b": ds}).save_to_disk(str(tmp_path / "ab"))
    with pytest.raises(ValueError, match=r"several splits \['a', 'b'\]"):
        load_segmentation_dataset(tmp_path / "ab")
    with pytest.raises(FileNotFoundError):
        load_segmentation_dataset(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="Unsupported data file"):
        load_segmentation_dataset(tmp_path / "notes.txt")


# ---------------------------------------------------------------------------------------------------------------
# collator and the one-encoder-pass-per-image forward
# ---------------------------------------------------------------------------------------------------------------


def _examples(processor, num_negative_points: int = 0):
    three = np.zeros((40, 48), dtype=np.uint8)
    three[0:10, 0:10], three[20:30, 0:20], three[0:10, 30:40] = 1, 2, 3
    one = np.zeros((40, 48), dtype=np.uint8)
    one[10:30, 10:30] = 5
    data = SamSegmentationData(
        dataset_of([_rgb(), _rgb()], [three, one]), processor, num_negative_points=num_negative_points,
        return_full_masks=True,
    )
    return [data[0], data[1]]


def test_collator_pads_instances(processor):
    examples = _examples(processor, num_negative_points=1)
    batch = SamCollator(prompt="point")(examples)
    assert batch["pixel_values"].shape == (2, 3, S, S)
    assert batch["original_sizes"].shape == (2, 2) and batch["reshaped_input_sizes"].shape == (2, 2)
    assert batch["input_points"].shape == (2, 3, 2, 2) and batch["input_labels"].shape == (2, 3, 2)
    assert "input_boxes" not in batch
    assert batch["labels"].shape == (2, 3, LOW, LOW)
    assert batch["instance_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert (batch["input_labels"][1, 1:] == -10).all() and (batch["input_points"][1, 1:] == -10).all()
    assert batch["input_labels"][1, 0].tolist() == [1, 0]
    assert (batch["labels"][1, 1:] == 0).all() and batch["labels"][1, 0].sum() > 0
    torch.testing.assert_close(batch["input_points"][0], examples[0]["input_points"])
    assert isinstance(batch["full_masks"], list) and batch["full_masks"][1].shape == (1, 40, 48)

    boxes = SamCollator(prompt="box")(examples)
    assert boxes["input_boxes"].shape == (2, 3, 4) and "input_points" not in boxes
    assert (boxes["input_boxes"][1, 1:] == 0).all()
    torch.testing.assert_close(boxes["input_boxes"][1, 0], examples[1]["input_boxes"][0])
    assert set(model_inputs(boxes)) == {"pixel_values", "input_boxes"}

    mixed_a, mixed_b = SamCollator(prompt="mixed", seed=3), SamCollator(prompt="mixed", seed=3)
    kinds = ["input_points" in mixed_a(examples) for _ in range(12)]
    assert kinds == ["input_points" in mixed_b(examples) for _ in range(12)]
    assert len(set(kinds)) == 2
    with pytest.raises(ValueError, match="point.*box.*mixed"):
        SamCollator(prompt="lasso")


def test_one_encoder_pass_per_image_forward(processor128):
    torch.manual_seed(0)
    model = SamModel(build_sam_config()).eval()
    ds = make_synthetic_shapes(2, image_size=96, seed=11, min_shapes=2, max_shapes=4)
    data = SamSegmentationData(ds, processor128)
    assert all(data[i]["labels"].shape[0] >= 2 for i in range(2))
    calls = []
    model.vision_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    for prompt in ("point", "box"):
        calls.clear()
        batch = SamCollator(prompt=prompt)([data[0], data[1]])
        out = model(**model_inputs(batch))
        assert calls == [2]  # one vision-encoder call for the batch, batch size 2 → one pass per image
        num_prompts = batch["labels"].shape[1]
        assert out.pred_masks.shape == (2, num_prompts, 3, 32, 32)
        assert out.pred_masks.shape[-2:] == batch["labels"].shape[-2:]
        loss = sam_loss(out.pred_masks, out.iou_scores, batch["labels"], batch["instance_mask"])["loss"]
        assert torch.isfinite(loss)
