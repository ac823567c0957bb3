"""The "box itself as the mask" reference (evaluation.box_reference_miou): exact on hand-made shapes, the same
numbers inside `evaluate_model`; and evaluation batches that stream."""

import math

import datasets
import numpy as np
import pytest
from helpers import tiny_processor, tiny_supernet
from PIL import Image

from supersam_hf.data import make_synthetic_shapes
from supersam_hf.evaluation import EvaluationData, box_reference_miou, evaluate_model


def _one_object_dataset(label: np.ndarray) -> datasets.Dataset:
    size = label.shape[0]
    image = Image.fromarray(np.full((size, size, 3), 127, dtype=np.uint8))
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.Array2D(shape=label.shape, dtype="int32")})
    return datasets.Dataset.from_dict({"image": [image], "label": [label.astype(np.int32)]}, features=features)


def test_a_square_fills_its_box():
    label = np.zeros((100, 100), dtype=np.int32)
    label[13:41, 52:77] = 1  # a 28 x 25 rectangle, not aligned to anything
    result = box_reference_miou(_one_object_dataset(label), tiny_processor(64))
    assert result["miou"] == 1.0 and result["num_objects"] == 1
    assert result["prompt"] == "box" and result["reference"] == "box"


def test_a_disc_fills_pi_over_4_of_its_box():
    radius = 40
    yy, xx = np.mgrid[:100, :100]
    disc = (yy - 50) ** 2 + (xx - 50) ** 2 <= radius**2
    result = box_reference_miou(_one_object_dataset(disc.astype(np.int32)), tiny_processor(128))
    box_area = (2 * radius + 1) ** 2  # inclusive pixel box around the disc
    assert result["miou"] == pytest.approx(disc.sum() / box_area, abs=1e-9)  # exactly the pixel count ratio
    assert result["miou"] == pytest.approx(math.pi / 4, abs=0.025)  # π/4 up to pixelisation (~2/r)


def test_same_pass_as_the_model():
    dataset = make_synthetic_shapes(6, image_size=64, seed=5, min_shapes=2, max_shapes=5)
    processor = tiny_processor(64)
    reference = box_reference_miou(dataset, processor, batch_size=4)
    model = evaluate_model(tiny_supernet(num_layers=2), dataset, processor, prompt="box", box_reference=True,
                           batch_size=3, show_progress=False)
    assert model["box_reference_miou"] == reference["miou"]
    assert model["box_reference_per_image_miou"] == reference["per_image_miou"]
    assert model["num_objects"] == reference["num_objects"] and 0.3 < reference["miou"] < 1.0
    with pytest.raises(ValueError, match="box prompts"):
        evaluate_model(tiny_supernet(num_layers=2), dataset, processor, prompt="point", box_reference=True)


def test_prepared_batches_stream_beyond_their_cache_and_score_the_same():
    dataset = make_synthetic_shapes(5, image_size=64, seed=2)
    processor = tiny_processor(64)
    supernet = tiny_supernet(num_layers=2)
    cached = EvaluationData.prepare(dataset, processor, batch_size=2)
    one_batch = _batch_megabytes(cached) * 1.5  # room for one batch of tensors, not two
    streamed = EvaluationData.prepare(dataset, processor, batch_size=2, cache_mb=one_batch)
    nothing = EvaluationData.prepare(dataset, processor, batch_size=2, cache_mb=0)
    results = [evaluate_model(supernet, data, processor, show_progress=False) for data in (cached, streamed, nothing)]
    assert results[0] == results[1] == results[2]
    assert len(cached.batches) == 3 and cached.num_images == 5
    assert (cached.batches.cached_batches, streamed.batches.cached_batches, nothing.batches.cached_batches) == (3, 1, 0)
    # A streamed batch is collated again on each use, with the same prompts.
    again = streamed.batches[-1]
    assert again is not streamed.batches[-1] and (again["input_boxes"] == streamed.batches[2]["input_boxes"]).all()
    with pytest.raises(ValueError, match="cache_mb"):
        EvaluationData.prepare(dataset, processor, cache_mb=-1)


def _batch_megabytes(data: EvaluationData) -> float:
    from supersam_hf.evaluation.inputs import _batch_bytes

    return _batch_bytes(data.batches[0]) / 2**20
