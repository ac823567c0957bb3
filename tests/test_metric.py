"""The `sam_miou` evaluate metric: hand-computed IoU/Dice cases, edge-case conventions, offline loading."""

import math
import os
import socket

import numpy as np
import pytest

from supersam_hf.metrics import SAM_MIOU_PATH, load_sam_miou


@pytest.fixture(scope="module")
def metric():
    return load_sam_miou()


def mask(rows):
    return np.array(rows, dtype=bool)


REF = mask([[1, 1], [1, 1]])  # 4 reference pixels


def test_perfect_prediction_scores_one(metric):
    out = metric.compute(predictions=[REF], references=[REF])
    assert out["miou"] == 1.0 and out["mean_dice"] == 1.0 and out["num_objects"] == 1


def test_half_overlap_without_false_positives(metric):
    # prediction covers 2 of the 4 reference pixels: I=2, U=4 -> IoU 1/2; Dice 2*2/(2+4) = 2/3
    out = metric.compute(predictions=[mask([[1, 1], [0, 0]])], references=[REF])
    assert out["miou"] == pytest.approx(0.5)
    assert out["mean_dice"] == pytest.approx(2 / 3)


def test_prediction_with_extra_pixels():
    # reference 2 pixels; prediction the same 2 plus 4 false positives: I=2, U=6 -> 1/3; Dice 4/8
    ref = mask([[1, 1, 0], [0, 0, 0], [0, 0, 0]])
    pred = mask([[1, 1, 1], [1, 1, 1], [0, 0, 0]])
    out = load_sam_miou().compute(predictions=[pred], references=[ref])
    assert out["miou"] == pytest.approx(1 / 3)
    assert out["mean_dice"] == pytest.approx(0.5)


def test_empty_prediction_scores_zero(metric):
    out = metric.compute(predictions=[np.zeros((2, 2), bool)], references=[REF])
    assert out["miou"] == 0.0 and out["mean_dice"] == 0.0


def test_empty_reference_conventions(metric):
    empty = np.zeros((2, 2), bool)
    # both empty: documented as a perfect prediction
    out = metric.compute(predictions=[empty], references=[empty])
    assert out["miou"] == 1.0 and out["mean_dice"] == 1.0
    # empty reference, non-empty prediction: only false positives
    out = metric.compute(predictions=[REF], references=[empty])
    assert out["miou"] == 0.0 and out["mean_dice"] == 0.0
    # or leave empty references out altogether
    out = metric.compute(
        predictions=[empty, REF, mask([[1, 1], [0, 0]])],
        references=[empty, empty, REF],
        ignore_empty_references=True,
    )
    assert out["num_objects"] == 1 and out["miou"] == pytest.approx(0.5)


def test_mean_over_objects_of_mixed_sizes(metric):
    preds = [REF, mask([[1, 1], [0, 0]]), np.zeros((3, 5), bool)]
    refs = [REF, REF, np.ones((3, 5), bool)]
    out = metric.compute(predictions=preds, references=refs)
    assert out["miou"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert out["per_image_miou"] == pytest.approx(out["miou"])  # no image ids: every object is its own image
    assert out["num_objects"] == 3 and out["num_images"] == 3


def test_per_image_mean_differs_from_per_object_mean(metric):
    # image "a": three objects with IoU 1, 1, 1; image "b": one object with IoU 0
    preds = [REF, REF, REF, np.zeros((2, 2), bool)]
    refs = [REF, REF, REF, REF]
    out = metric.compute(predictions=preds, references=refs, image_ids=["a", "a", "a", "b"])
    assert out["miou"] == pytest.approx(3 / 4)
    assert out["per_image_miou"] == pytest.approx((1 + 0) / 2)
    assert out["num_images"] == 2


def test_accumulates_batches_with_image_ids(metric):
    metric.add_batch(predictions=[REF, REF], references=[REF, REF], image_ids=[0, 0])
    metric.add(prediction=np.zeros((2, 2), bool), reference=REF, image_id=1)
    out = metric.compute()
    assert out["num_objects"] == 3 and out["num_images"] == 2
    assert out["miou"] == pytest.approx(2 / 3) and out["per_image_miou"] == pytest.approx(0.5)


def test_accepts_torch_and_integer_masks(metric):
    torch = pytest.importorskip("torch")
    pred = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    out = metric.compute(predictions=[pred], references=[REF.astype(np.uint8)])
    assert out["miou"] == pytest.approx(0.5)


def test_shape_mismatch_is_a_clear_error(metric):
    expected = r"Object 1: prediction shape \(2, 3\) does not match reference shape \(3, 2\)"
    with pytest.raises(ValueError, match=expected):
        metric.compute(predictions=[REF, np.ones((2, 3), bool)], references=[REF, np.ones((3, 2), bool)])


def test_image_ids_length_must_match(metric):
    with pytest.raises(ValueError, match="image_ids"):
        metric.compute(predictions=[REF], references=[REF], image_ids=["a", "b"])


def test_loads_with_evaluate_load_offline(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise OSError("network access attempted while loading a local metric")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert os.path.isabs(SAM_MIOU_PATH) and os.path.isfile(os.path.join(SAM_MIOU_PATH, "sam_miou.py"))
    loaded = evaluate.load(SAM_MIOU_PATH)
    assert type(loaded).__name__ == "SamMeanIoU"
    out = loaded.compute(predictions=[mask([[1, 1], [0, 0]])], references=[REF])
    assert set(out) == {"miou", "per_image_miou", "mean_dice", "num_objects", "num_images"}
    assert out["miou"] == pytest.approx(0.5)
    assert math.isclose(out["mean_dice"], 2 / 3)


def test_no_objects_gives_nan(metric):
    out = metric.compute(predictions=[], references=[])
    assert out["num_objects"] == 0 and math.isnan(out["miou"]) and math.isnan(out["per_image_miou"])
