"""Bring-your-own-data: COCO / SA-1B annotations (pycocotools), `objects` columns, images/ + masks/ folders,
streaming (in-order equality with map-style, exact resume), every instance scored, contradicting mask kinds."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from helpers import tiny_processor, tiny_sam
from supersam_hf.data import SamSegmentationData, SamStreamingData, load_segmentation_dataset
from supersam_hf.errors import DataError
from supersam_hf.evaluation import evaluate_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

H, W = 40, 48


@pytest.fixture(scope="module")
def processor():
    return tiny_processor(64)


def compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    runs = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def box_mask(y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def write_coco(folder: Path, name: str = "instances_train.json", image_folder: str = "images") -> Path:
    """3 images: a (polygon of two parts, compressed RLE, uncompressed RLE; bboxes deliberately wrong), b (a crowd
    region, a degenerate polygon, one polygon of category 2), c (no annotation)."""
    (folder / image_folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for file in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(folder / image_folder / file)
    wrong = [0.0, 0.0, 1.0, 1.0]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": wrong, "area": 0,
         "segmentation": [[2, 2, 14, 2, 14, 12, 2, 12], [30, 30, 40, 30, 35, 38]]},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": wrong, "area": 0,
         "segmentation": compressed(box_mask(20, 30, 5, 25))},
        {"id": 3, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": wrong, "area": 0,
         "segmentation": uncompressed(box_mask(3, 9, 30, 46))},
        {"id": 4, "image_id": 2, "category_id": 1, "iscrowd": 1, "bbox": wrong, "area": 0,
         "segmentation": uncompressed(box_mask(0, 20, 0, 20))},
        {"id": 5, "image_id": 2, "category_id": 1, "iscrowd": 0, "bbox": wrong, "area": 0,
         "segmentation": [[5, 5, 9, 5]]},  # two points: no area
        {"id": 6, "image_id": 2, "category_id": 2, "iscrowd": 0, "bbox": wrong, "area": 0,
         "segmentation": [[20, 20, 44, 20, 44, 36, 20, 36]]},
    ]
    images = [{"id": i + 1, "file_name": f, "width": W, "height": H} for i, f in enumerate(("a.png", "b.png", "c.png"))]
    categories = [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]
    path = folder / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def by_hand(path: Path, image_id: int, category_ids=None) -> np.ndarray:
    """The image's non-crowd masks decoded by pycocotools' COCO.annToMask, non-empty, largest first."""
    coco = COCO(str(path))

    def degenerate(segmentation) -> bool:  # fewer than 3 points: pycocotools itself fails on it
        return isinstance(segmentation, list) and all(len(polygon) < 6 for polygon in segmentation)

    masks = [coco.annToMask(a).astype(bool) for a in coco.imgToAnns[image_id]
             if not a["iscrowd"] and not degenerate(a["segmentation"])
             and (category_ids is None or a["category_id"] in category_ids)]
    masks = [m for m in masks if m.any()]
    order = sorted(range(len(masks)), key=lambda k: (-int(masks[k].sum()), k))
    return np.stack([masks[k] for k in order])


def full_masks(data) -> list[np.ndarray]:
    items = list(data) if isinstance(data, SamStreamingData) else [data[i] for i in range(len(data))]
    return [item["full_masks"].numpy() for item in items]


# ---------------------------------------------------------------------------------------------------------------
# COCO annotation files
# ---------------------------------------------------------------------------------------------------------------


def test_coco_file_decodes_like_pycocotools_by_hand(tmp_path, processor, caplog):
    path = write_coco(tmp_path)
    dataset = load_segmentation_dataset(path)
    assert len(dataset) == 3 and dataset[0]["image"].size == (W, H)
    data = SamSegmentationData(dataset, processor, return_full_masks=True, prompt="box")
    assert data.mask_kind == "coco" and data.row_indices == [0, 1]
    masks = full_masks(data)
    for got, image_id in zip(masks, (1, 2)):
        expected = by_hand(path, image_id)
        assert got.shape == expected.shape and np.array_equal(got, expected)
    assert masks[0].shape[0] == 3 and masks[1].shape[0] == 1  # crowd and degenerate annotations left out
    counts = data.counts
    assert (counts.coco.crowd, counts.coco.empty, counts.unannotated_images, counts.skipped_images) == (1, 1, 1, 1)
    assert "1 crowd regions" in caplog.text and "1 annotations that decode to an empty mask" in caplog.text
    # The prompt box is the decoded mask's extent (the files' bboxes are wrong on purpose).
    example = data[0]
    scale = example["reshaped_input_sizes"].double() / example["original_sizes"].double()
    boxes = example["input_boxes"].double() / scale[[1, 0, 1, 0]]
    for box, mask in zip(boxes, masks[0]):
        ys, xs = np.nonzero(mask)
        assert box.round().tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]


def test_coco_category_filter_min_area_and_image_resolution(tmp_path, processor):
    # COCO's own layout: annotations/instances_val.json next to val/ (no images/ folder).
    path = write_coco(tmp_path / "annotations", name="instances_val.json", image_folder="../val")
    assert (tmp_path / "val" / "a.png").is_file()
    dataset = load_segmentation_dataset(path)
    data = SamSegmentationData(dataset, processor, return_full_masks=True, category_ids=[2])
    assert data.row_indices == [0, 1]
    for got, image_id in zip(full_masks(data), (1, 2)):
        assert np.array_equal(got, by_hand(path, image_id, category_ids={2}))
    assert data.counts.coco.other_category == 3  # ids 1, 2 and the degenerate 5 (the crowd 4 counts as crowd)
    big = SamSegmentationData(dataset, processor, return_full_masks=True, min_mask_area=160)
    assert [m.sum(axis=(1, 2)).tolist() for m in full_masks(big)] == [[200], [384]]  # 159 px and 96 px left out
    # Images elsewhere: --image_dir, and a clear line when they are nowhere.
    moved = tmp_path / "elsewhere"
    shutil.move(str(tmp_path / "val"), moved)
    with pytest.raises(DataError, match="--image_dir"):
        load_segmentation_dataset(path)
    assert len(load_segmentation_dataset(path, image_dir=moved)) == 3
    (moved / "b.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 images are missing .*'b.png'"):
        load_segmentation_dataset(path, image_dir=moved)


def test_sa1b_per_image_json_and_folder(tmp_path, processor):
    masks = [box_mask(2, 20, 3, 30), box_mask(25, 38, 10, 44)]
    Image.fromarray(np.full((H, W, 3), 90, dtype=np.uint8)).save(tmp_path / "sa_1.jpg")
    annotations = [{"id": k, "segmentation": compressed(m), "bbox": [0, 0, 1, 1], "area": 1, "predicted_iou": 0.9,
                    "point_coords": [[5, 5]], "stability_score": 0.9, "crop_box": [0, 0, W, H]}
                   for k, m in enumerate(masks)]
    record = {"image": {"image_id": 1, "width": W, "height": H, "file_name": "sa_1.jpg"}, "annotations": annotations}
    (tmp_path / "sa_1.json").write_text(json.dumps(record))
    for source in (tmp_path / "sa_1.json", tmp_path):  # one file, or the unpacked archive folder
        data = SamSegmentationData(load_segmentation_dataset(source), processor, return_full_masks=True)
        assert data.mask_kind == "coco"
        assert np.array_equal(full_masks(data)[0], np.stack(masks))  # 486 px, then 442 px


# ---------------------------------------------------------------------------------------------------------------
# objects columns (Hub / save_to_disk)
# ---------------------------------------------------------------------------------------------------------------


def test_objects_column_with_polygons_and_with_rle(tmp_path, processor):
    image = Image.fromarray(np.full((H, W, 3), 120, dtype=np.uint8))
    polygon = [[4.0, 4.0, 20.0, 4.0, 20.0, 18.0, 4.0, 18.0]]
    rle_mask = box_mask(22, 35, 8, 40)
    polygons = datasets.Dataset.from_list(
        [{"image": image, "width": W, "height": H,
          "objects": {"bbox": [[0.0, 0.0, 1.0, 1.0]], "category": [3], "segmentation": [polygon]}}],
        features=datasets.Features({"image": datasets.Image(), "width": datasets.Value("int32"),
                                    "height": datasets.Value("int32"),
                                    "objects": {"bbox": datasets.List(datasets.List(datasets.Value("float32"))),
                                                "category": datasets.List(datasets.Value("int64")),
                                                "segmentation": datasets.List(datasets.List(datasets.List(
                                                    datasets.Value("float32"))))}}),
    )
    rle = datasets.Dataset.from_list(  # list of dicts, compressed RLE, no width/height column (taken from the image)
        [{"image": image, "objects": [{"bbox": [0.0, 0.0, 1.0, 1.0], "segmentation": compressed(rle_mask)},
                                      {"bbox": [0.0, 0.0, 1.0, 1.0], "segmentation": compressed(box_mask(2, 8, 30, 44))}]}],
    )
    counts = datasets.Dataset.from_list(  # uncompressed RLE (run lengths)
        [{"image": image, "objects": {"segmentation": [uncompressed(rle_mask)], "iscrowd": [0]}}])
    polygons.save_to_disk(str(tmp_path / "polygons"))
    loaded = load_segmentation_dataset(tmp_path / "polygons")
    data = SamSegmentationData(loaded, processor, return_full_masks=True)
    assert data.mask_kind == "coco" and data.mask_column == "objects"
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, H, W))).astype(bool)
    assert np.array_equal(full_masks(data)[0], expected[None])
    data = SamSegmentationData(rle, processor, return_full_masks=True, category_ids=None)
    got = full_masks(data)[0]
    assert np.array_equal(got, np.stack([rle_mask, box_mask(2, 8, 30, 44)]))
    assert np.array_equal(full_masks(SamSegmentationData(counts, processor, return_full_masks=True))[0], rle_mask[None])
    with pytest.raises(DataError, match=r"--mask_kind instance contradicts column 'objects'.*detected kind: coco"):
        SamSegmentationData(rle, processor, mask_kind="instance")


def test_objects_column_whose_first_row_has_no_object(processor):
    image = Image.fromarray(np.zeros((H, W, 3), np.uint8))
    polygon = [[1.0, 1.0, 15.0, 1.0, 15.0, 15.0, 1.0, 15.0]]
    rows = datasets.Dataset.from_list([{"image": image, "objects": []},
                                       {"image": image, "objects": [{"segmentation": polygon, "bbox": [0.0] * 4}]}])
    data = SamSegmentationData(rows, processor, return_full_masks=True)  # detected from the column's type
    assert data.mask_kind == "coco" and data.row_indices == [1] and data.counts.unannotated_images == 1
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, H, W))).astype(bool)
    assert np.array_equal(full_masks(data)[0], expected[None])


# ---------------------------------------------------------------------------------------------------------------
# images/ + masks/ folders
# ---------------------------------------------------------------------------------------------------------------


def _images(folder: Path, names) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for name in names:
        Image.fromarray(np.full((H, W, 3), 60, dtype=np.uint8)).save(folder / "images" / f"{name}.jpg")


def test_images_masks_folder_instance_id_pngs(tmp_path, processor):
    _images(tmp_path, ["x", "y"])
    maps = {"x": np.zeros((H, W), np.uint8), "y": np.zeros((H, W), np.uint8)}
    maps["x"][2:12, 2:20] = 1
    maps["x"][20:30, 10:40] = 2
    maps["y"][5:25, 5:25] = 7
    for name, label in maps.items():
        Image.fromarray(label).save(tmp_path / "masks" / f"{name}.png")
    dataset = load_segmentation_dataset(tmp_path)
    data = SamSegmentationData(dataset, processor, return_full_masks=True)
    assert data.mask_kind == "instance"
    got = full_masks(data)
    assert np.array_equal(got[0], np.stack([maps["x"] == 2, maps["x"] == 1]))
    assert np.array_equal(got[1], (maps["y"] == 7)[None])
    (tmp_path / "masks" / "y.png").unlink()
    with pytest.raises(DataError, match=r"no mask for 1 image\(s\) \(first: y.jpg"):
        load_segmentation_dataset(tmp_path)


def test_images_masks_folder_one_png_per_instance(tmp_path, processor):
    _images(tmp_path, ["x", "x_2", "z"])  # "x_2" is an image too: its masks are x_2_*.png, not x's
    masks = {"x_a": box_mask(1, 9, 1, 9), "x_b": box_mask(20, 30, 5, 45), "x_2_0": box_mask(10, 20, 10, 20)}
    for name, mask in masks.items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "masks" / f"{name}.png")
    data = SamSegmentationData(load_segmentation_dataset(tmp_path), processor, return_full_masks=True)
    assert data.mask_kind == "masks" and data.row_indices == [0, 1]  # z has no mask: skipped, counted
    got = full_masks(data)
    assert np.array_equal(got[0], np.stack([masks["x_b"], masks["x_a"]]))
    assert np.array_equal(got[1], masks["x_2_0"][None])
    assert data.counts.unannotated_images == 1
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "masks" / "w_1.png")
    with pytest.raises(DataError, match="w_1.png matches no image"):
        load_segmentation_dataset(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# mask kinds and instance counts
# ---------------------------------------------------------------------------------------------------------------


def grid_map(count: int, side: int, cell: int) -> np.ndarray:
    """A side×side id map with `count` square instances of (cell-1)² px on a grid."""
    label = np.zeros((side, side), dtype=np.int32)
    per_row = side // cell
    for k in range(count):
        r, c = divmod(k, per_row)
        label[r * cell:(r + 1) * cell - 1, c * cell:(c + 1) * cell - 1] = k + 1
    return label


def test_id_map_given_as_masks_is_refused(processor):
    label = grid_map(5, 40, 8)
    dataset = datasets.Dataset.from_dict({"image": [np.zeros((40, 40, 3), np.uint8)], "label": [label]})
    with pytest.raises(DataError, match=r"--mask_kind masks contradicts column 'label'.*6 distinct values "
                                        r"\(detected kind: instance\)"):
        SamSegmentationData(dataset, processor, mask_kind="masks")
    binary = datasets.Dataset.from_dict({"image": [np.zeros((40, 40, 3), np.uint8)], "label": [(label > 0) * 255]})
    assert len(SamSegmentationData(binary, processor, mask_kind="masks")) == 1  # a real binary mask is fine


def test_every_instance_is_scored_unless_capped(processor):
    """20 and 361 instances per image: all scored by default; a cap is explicit and reported."""
    model = tiny_sam(num_layers=2, image_size=64)
    maps = [grid_map(20, 76, 6), grid_map(361, 76, 4)]  # 25 px and 9 px instances
    dataset = datasets.Dataset.from_dict({"image": [np.full((76, 76, 3), 100, np.uint8)] * 2, "label": maps})
    data = SamSegmentationData(dataset, processor, return_full_masks=True, min_mask_area=1, prompt="box")
    assert [len(k) for k in data._keys] == [20, 361]
    result = evaluate_model(model, data, processor, prompt="box", batch_size=1, show_progress=False)
    assert result["num_objects"] == 381
    assert result["max_instances_per_image"] is None and result["num_instances_left_out"] == 0
    capped = evaluate_model(model, SamSegmentationData(dataset, processor, return_full_masks=True, min_mask_area=1,
                                                       max_instances_per_image=16, prompt="box"),
                            processor, prompt="box", batch_size=2, show_progress=False)
    assert capped["num_objects"] == 32
    assert capped["max_instances_per_image"] == 16 and capped["num_instances_left_out"] == 4 + 345


def test_many_instances_are_decoded_in_chunks_with_the_same_scores(processor, monkeypatch):
    """361 prompts: one image embedding, prompts decoded 64 at a time (bounded memory), scores as in one forward."""
    import supersam_hf.evaluation.masks as masks

    model = tiny_sam(num_layers=2, image_size=64)
    dataset = datasets.Dataset.from_dict({"image": [np.full((76, 76, 3), 100, np.uint8)], "label": [grid_map(361, 76, 4)]})
    data = SamSegmentationData(dataset, processor, return_full_masks=True, min_mask_area=1, prompt="point")
    chunked = evaluate_model(model, data, processor, prompt="point", mask_selection="oracle", show_progress=False)
    monkeypatch.setattr(masks, "PROMPTS_PER_FORWARD", 1000)
    whole = evaluate_model(model, data, processor, prompt="point", mask_selection="oracle", show_progress=False)
    assert chunked["num_objects"] == whole["num_objects"] == 361
    for key in ("miou", "per_image_miou", "mean_dice"):
        assert chunked[key] == pytest.approx(whole[key], abs=1e-4)


def test_evaluate_command_writes_the_instance_cap(tmp_path, processor):
    from supersam_hf.cli import main as cli_main

    model = tiny_sam(num_layers=2, image_size=64)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    dataset = datasets.Dataset.from_dict({"image": [np.full((76, 76, 3), 100, np.uint8)], "label": [grid_map(20, 76, 6)]})
    dataset.save_to_disk(str(tmp_path / "data"))
    base = ["evaluate", "--model_name_or_path", str(tmp_path / "model"), "--dataset_name", str(tmp_path / "data"),
            "--device", "cpu"]
    assert cli_main([*base, "--output_dir", str(tmp_path / "all")]) == 0
    everything = json.loads((tmp_path / "all" / "eval_results.json").read_text())
    assert everything["num_objects"] == 20 and everything["max_instances_per_image"] is None
    assert cli_main([*base, "--output_dir", str(tmp_path / "cap"), "--max_instances_per_image", "16"]) == 0
    capped = json.loads((tmp_path / "cap" / "eval_results.json").read_text())
    assert (capped["num_objects"], capped["max_instances_per_image"], capped["num_instances_left_out"]) == (16, 16, 4)
    # Streaming the same rows gives the same results.
    assert cli_main([*base, "--output_dir", str(tmp_path / "stream"), "--streaming"]) == 0
    streamed = json.loads((tmp_path / "stream" / "eval_results.json").read_text())
    assert streamed == everything


# ---------------------------------------------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes():
    from supersam_hf.data import make_synthetic_shapes

    return make_synthetic_shapes(9, image_size=64, seed=3, max_shapes=3)


def test_streaming_in_order_equals_map_style(shapes, processor, tmp_path):
    mapped = SamSegmentationData(shapes, processor, return_full_masks=True, prompt="point", seed=5)
    streamed = SamStreamingData(shapes.to_iterable_dataset(num_shards=3), processor, return_full_masks=True,
                                prompt="point", seed=5)
    examples = list(streamed)
    assert [e["row"] for e in examples] == mapped.row_indices
    for index, example in enumerate(examples):
        for key, value in mapped[index].items():
            assert torch.equal(value, example[key]), key
    model = tiny_sam(num_layers=2, image_size=64)
    for prompt in ("point", "box"):
        a = evaluate_model(model, shapes, processor, prompt=prompt, batch_size=2, show_progress=False)
        b = evaluate_model(model, shapes.to_iterable_dataset(num_shards=3), processor, prompt=prompt, batch_size=2,
                           show_progress=False)
        assert a == b
    # A COCO file streams too (converted to shards of the local dataset).
    path = write_coco(tmp_path)
    stream = load_segmentation_dataset(path, streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert [np.array_equal(a, b) for a, b in zip(
        full_masks(SamStreamingData(stream, processor, return_full_masks=True)),
        full_masks(SamSegmentationData(load_segmentation_dataset(path), processor, return_full_masks=True)))] == [True] * 2


def _collate(examples):
    """Each example by its image (the stream's row numbers restart in every worker)."""
    # A content digest, not hash(): DataLoader workers started by spawn / forkserver salt str/bytes hashes anew.
    return {"images": [hashlib.sha1(e["pixel_values"].numpy().tobytes()).hexdigest() for e in examples],
            "points": torch.cat([e["input_points"] for e in examples])}


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_resume_sees_the_same_examples(shapes, processor, workers):
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader():
        data = SamStreamingData(shapes.to_iterable_dataset(num_shards=4), processor, prompt="point", seed=1,
                                shuffle=True, shuffle_buffer_size=3)
        data.set_epoch(2)
        return StatefulDataLoader(data, batch_size=2, collate_fn=_collate, num_workers=workers)

    straight_loader = loader()
    straight = list(straight_loader)
    # Each iteration (each worker) reads its own datasets object: the shared one's epoch, a torch tensor in shared
    # memory that forked workers share, is never set (two workers' concurrent set_epoch could add it twice).
    assert straight_loader.dataset.dataset.epoch == 0
    order = [image for batch in straight for image in batch["images"]]
    mapped = SamSegmentationData(shapes, processor)
    everything = [hashlib.sha1(mapped[i]["pixel_values"].numpy().tobytes()).hexdigest() for i in range(len(mapped))]
    assert sorted(order) == sorted(everything) and order != everything  # every row once, shuffled
    first = loader()
    iterator = iter(first)
    seen = [next(iterator) for _ in range(2)]
    state = first.state_dict()  # the "kill" after two batches
    del iterator
    resumed = loader()
    resumed.load_state_dict(json.loads(json.dumps(state)))  # what the checkpoint holds
    rest = list(resumed)
    assert [b["images"] for b in seen + rest] == [b["images"] for b in straight]
    for a, b in zip(seen + rest, straight):
        assert torch.equal(a["points"], b["points"])  # the same prompts too


def test_split_across_ranks_covers_the_stream_once(shapes, processor):
    def key(example):
        return example["pixel_values"].numpy().tobytes()

    whole = {key(SamSegmentationData(shapes, processor)[i]) for i in range(len(shapes))}
    parts = [[key(e) for e in SamStreamingData(shapes.to_iterable_dataset(num_shards=3), processor, rank=r,
                                                 world_size=3)] for r in range(3)]
    assert all(len(p) == 3 for p in parts) and set(sum(parts, [])) == whole and len(whole) == 9


def test_streaming_benchmark_smoke_mode(tmp_path):
    """benchmarks/streaming_throughput.py --smoke runs end to end (both readers see every image)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    output = tmp_path / "smoke.md"
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "streaming_throughput.py"), "--smoke", "--output",
                           str(output)], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    text = output.read_text()
    assert "streaming / map-style = " in text and "12 images in 2 parquet shards, 2 workers" in text


def test_commands_read_a_coco_file_and_convert_streams_only_its_calibration_rows(tmp_path, processor):
    from supersam_hf.cli import main as cli_main

    model = tiny_sam(num_layers=2, image_size=64)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    path = write_coco(tmp_path / "coco")
    base = ["--model_name_or_path", str(tmp_path / "model"), "--dataset_name", str(path), "--device", "cpu"]
    assert cli_main(["evaluate", *base, "--output_dir", str(tmp_path / "eval"), "--category_ids", "2"]) == 0
    result = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert (result["num_objects"], result["num_images"]) == (2, 2)  # one object of category 2 in each image
    assert cli_main(["convert", *base, "--output_dir", str(tmp_path / "supernet"), "--streaming",
                     "--num_calibration_images", "2", "--calibration_batch_size", "2"]) == 0
    report = json.loads(next((tmp_path / "supernet").glob("*prioriti*.json")).read_text())
    assert report["num_images"] == 2
