"""Loading a segmentation dataset from any source this tool reads (Hub, `save_to_disk`, data files, COCO / SA-1B
annotations, images/ + masks/ folders), map-style or streaming; and the SAM processor of the small built models."""

from __future__ import annotations

import os
from typing import Any

import datasets

from ..errors import DataError
from .coco import is_sa1b_folder, load_coco_json, load_sa1b_folder, read_annotation_json
from .folders import is_images_masks_folder, load_images_masks_folder

_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


def _pick_split(data: Any, split: str | None, source: str) -> datasets.Dataset:
    if not isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict, dict)):
        # A single saved Dataset has no split names; only the default split can mean it.
        if split not in (None, "train"):
            raise DataError(f"{source!r} holds a single dataset without splits; split={split!r} cannot be selected. "
                             "Save a DatasetDict with that split, or leave split unset.")
        return data
    splits = list(data.keys())
    if split is not None:
        if split not in data:
            raise DataError(f"{source!r} has no split {split!r}; its splits are {splits}. Pass split=<one of them>.")
        return data[split]
    if "train" in data:
        return data["train"]
    if len(splits) == 1:
        return data[splits[0]]
    raise DataError(f"{source!r} has several splits {splits} and none is 'train'; pass split=<one of them>.")


def build_sam_processor(image_size: int = 1024, patch_size: int = 16):
    """A `SamProcessor` for a SAM whose encoder takes `image_size` px: longest side resized to it, padded square,
    and mask targets at the decoder's low resolution (4× the image-embedding size). SAM checkpoints ship their own
    processor; this one is for the small models built with `build_sam_config` (tests, demo)."""
    from transformers import SamImageProcessor, SamProcessor

    low_res = 4 * (image_size // patch_size)
    image_processor = SamImageProcessor(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": low_res},
        mask_pad_size={"height": low_res, "width": low_res},
    )
    return SamProcessor(image_processor=image_processor)



def load_segmentation_dataset(
    name_or_path: str | os.PathLike,
    split: str | None = None,
    config_name: str | None = None,
    *,
    streaming: bool = False,
    image_dir: str | os.PathLike | None = None,
    num_shards: int = 64,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load a segmentation dataset from a `save_to_disk` folder, a local file/folder, an annotation file or the Hub.

    * a folder written by `save_to_disk` → `datasets.load_from_disk` (a DatasetDict → `split`, default "train");
    * a COCO annotation file (`instances_*.json`, LVIS, Roboflow / CVAT exports) or an SA-1B per-image JSON →
      one row per image with COCO-style `objects` (`data.coco.load_coco_json`; images next to the file or under
      `image_dir`), and a folder of SA-1B per-image JSONs likewise;
    * a folder with `images/` and `masks/` (same stems: an instance-id PNG, or `stem_*.png` per instance);
    * a .parquet/.json/.jsonl/.csv/.arrow file → `load_dataset(<builder>, data_files=...)`;
    * another local folder (imagefolder, parquet shards, …) → `load_dataset(folder)`;
    * anything else is a Hub dataset name → `load_dataset(name, config_name, split=split)`.

    With `streaming=True` the result is a `datasets.IterableDataset` read on the fly: Hub datasets and data files
    through `load_dataset(..., streaming=True)` (nothing is downloaded first), the other layouts (already local)
    through `to_iterable_dataset(num_shards)` so that ranks and workers get whole shards.
    """
    source = os.fspath(name_or_path)
    path = os.path.expanduser(source)
    local = _load_local_layout(path, source, split, image_dir)
    if local is not None:
        return _as_streaming(local, num_shards) if streaming else local
    if image_dir is not None:
        raise DataError(f"--image_dir is for a COCO / SA-1B annotation file; {source!r} is not one.")
    return _pick_split(_load_with_datasets(path, source, split, config_name, streaming), split, source)


def _load_with_datasets(path: str, source: str, split: str | None, config_name: str | None, streaming: bool) -> Any:
    """What `datasets.load_dataset` reads: a local folder, a data file, or a Hub dataset name."""
    if os.path.isdir(path):
        try:
            return datasets.load_dataset(path, streaming=streaming)
        except Exception as error:  # noqa: BLE001 - re-raised with the accepted layouts
            raise DataError(
                f"Could not load the folder {source!r} as a dataset ({error}). Expected a `save_to_disk` folder, an "
                "images/ + masks/ folder, an imagefolder, or data files (parquet/json/csv) readable by "
                "`datasets.load_dataset`."
            ) from error
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FILE_BUILDERS:
            raise DataError(
                f"Unsupported data file {source!r}: expected one of {sorted(_FILE_BUILDERS)} (or a COCO annotation "
                "JSON) or a dataset folder."
            )
        return datasets.load_dataset(_FILE_BUILDERS[ext], data_files=path, streaming=streaming)
    if source.startswith((".", "~")) or os.path.isabs(source):
        raise FileNotFoundError(f"No dataset file or folder at {source!r}.")
    try:
        return datasets.load_dataset(source, config_name, split=split, streaming=streaming)
    except Exception as error:  # noqa: BLE001 - re-raised with what was tried
        raise DataError(
            f"{source!r} is not a local path, and loading it as a Hub dataset failed ({error}). Give a "
            "`save_to_disk` folder, a local data file/folder, or a reachable Hub dataset name."
        ) from error


def _load_local_layout(path: str, source: str, split: str | None, image_dir) -> datasets.Dataset | None:
    """The map-style dataset of a local layout this tool reads itself (save_to_disk, COCO / SA-1B annotations,
    images/ + masks/), or None for what `datasets.load_dataset` reads."""
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, marker)) for marker in ("dataset_dict.json", "state.json")):
            return _pick_split(datasets.load_from_disk(path), split, source)
        if is_images_masks_folder(path):
            return _pick_split(load_images_masks_folder(path), split, source)
        if is_sa1b_folder(path):
            return _pick_split(load_sa1b_folder(path, image_dir), split, source)
    elif os.path.isfile(path) and path.lower().endswith(".json"):
        parsed = read_annotation_json(path)
        if parsed is not None:
            return _pick_split(load_coco_json(path, image_dir, parsed=parsed), split, source)
    return None


def _as_streaming(dataset: datasets.Dataset, num_shards: int) -> datasets.IterableDataset:
    """A local map-style dataset as an IterableDataset with up to `num_shards` contiguous shards."""
    return dataset.to_iterable_dataset(num_shards=max(1, min(int(num_shards), len(dataset))))


__all__ = ["build_sam_processor", "load_segmentation_dataset"]
