"""COCO-style annotations (polygons, uncompressed and compressed RLE) → binary masks, through `pycocotools`.

Three places hold them, and all end as rows with an `objects` column that `SamSegmentationData` decodes on the fly
(`mask_kind="coco"`):

* a COCO annotation file (`instances_*.json`; also LVIS, Roboflow / CVAT exports) or an SA-1B per-image JSON
  (`sa_N.json`), read by `load_coco_json` into one row per image: `image` (the file, resolved next to the JSON or
  under `image_dir`), `image_id`, `width`, `height` and `objects` (`id`, `bbox`, `category_id`, `iscrowd`, `area`,
  `segmentation` stored as its JSON text, since polygons and RLE do not share one Arrow type);
* a Hub or `save_to_disk` dataset whose rows carry `objects: {bbox, segmentation, ...}` (dict of lists or list of
  dicts; `segmentation` a polygon list, an RLE dict or its JSON text);
* a folder of SA-1B per-image JSONs next to their images.

Decoding is pycocotools' own: polygons → `frPyObjects` + `merge`, uncompressed RLE → `frPyObjects`, compressed RLE
as is, then `area` / `decode`. Crowd regions (`iscrowd=1`) are skipped (they are groups, not single objects), and
an annotation that decodes to no pixel (a degenerate polygon, an empty RLE) is skipped and counted, never an error.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ..errors import DataError

logger = logging.getLogger(__name__)

OBJECTS_COLUMN = "objects"
_CATEGORY_KEYS = ("category_id", "category", "label")
_CROWD_KEYS = ("iscrowd", "is_crowd")


def _mask_utils():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as error:  # pragma: no cover - an install dependency
        raise ImportError("COCO-style annotations need pycocotools: pip install pycocotools.") from error
    return mask_utils


# ----------------------------------------------------------------------------------------------------------------
# objects → RLEs
# ----------------------------------------------------------------------------------------------------------------


def is_coco_objects(value: Any) -> bool:
    """Whether a cell holds COCO-style objects: a dict of lists or a list of dicts with a `segmentation` entry."""
    if isinstance(value, dict):
        return "segmentation" in value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
        return "segmentation" in value[0]
    return False


def _as_object_list(objects: Any) -> list[dict[str, Any]]:
    """`objects` as a list of per-object dicts (datasets gives a dict of lists for a `Sequence` of structs)."""
    if objects is None:
        return []
    if isinstance(objects, dict):
        if "segmentation" not in objects:
            raise DataError(f"COCO-style objects need a 'segmentation' entry; got the keys {sorted(objects)}.")
        count = len(objects["segmentation"])
        return [{key: values[i] for key, values in objects.items() if values is not None and len(values) == count}
                for i in range(count)]
    if isinstance(objects, (list, tuple)):
        return [dict(obj) for obj in objects]
    raise DataError(f"COCO-style objects must be a dict of lists or a list of dicts, got {type(objects).__name__}.")


def _first(obj: dict[str, Any], keys: Sequence[str], default: Any = None) -> Any:
    for key in keys:
        if obj.get(key) is not None:
            return obj[key]
    return default


def _segmentation(value: Any) -> Any:
    """A segmentation cell as pycocotools takes it: polygons (list of lists), or an RLE dict."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise DataError(f"A COCO segmentation string is not JSON ({error}): {str(value)[:60]!r}.") from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return value


@dataclass
class CocoStats:
    """What decoding left out: crowd regions, annotations of other categories, annotations with no pixel."""

    crowd: int = 0
    other_category: int = 0
    empty: int = 0

    def add(self, other: "CocoStats") -> None:
        self.crowd += other.crowd
        self.other_category += other.other_category
        self.empty += other.empty


def coco_rles(
    objects: Any, height: int, width: int, category_ids: Iterable[int] | None = None, stats: CocoStats | None = None
) -> list[dict[str, Any]]:
    """One pycocotools RLE per usable object of an image (crowd regions, other categories and annotations that
    decode to no pixel are left out and counted in `stats`). Polygons need the image's `height` and `width`."""
    mask_utils = _mask_utils()
    wanted = None if category_ids is None else {int(c) for c in category_ids}
    stats = stats if stats is not None else CocoStats()
    rles = []
    for obj in _as_object_list(objects):
        if int(_first(obj, _CROWD_KEYS, 0) or 0):
            stats.crowd += 1
            continue
        if wanted is not None and int(_first(obj, _CATEGORY_KEYS, -1)) not in wanted:
            stats.other_category += 1
            continue
        segmentation = _segmentation(obj.get("segmentation"))
        rle = _to_rle(mask_utils, segmentation, int(height), int(width))
        if rle is None or int(mask_utils.area(rle)) == 0:
            stats.empty += 1
            continue
        rles.append(rle)
    return rles


def _to_rle(mask_utils, segmentation: Any, height: int, width: int) -> dict[str, Any] | None:
    """pycocotools' reading of one segmentation (as `COCO.annToRLE`); None for one without any polygon of 3 points."""
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise DataError(f"A COCO RLE needs 'size' and 'counts'; got the keys {sorted(segmentation)}.")
        size = [int(s) for s in segmentation["size"]]
        if size != [height, width]:
            raise DataError(f"A COCO RLE of size {size} (h, w) belongs to an image of size {[height, width]}; the "
                            "annotation does not match its image.")
        counts = segmentation["counts"]
        if isinstance(counts, (list, tuple)):  # uncompressed
            return mask_utils.frPyObjects({"size": size, "counts": [int(c) for c in counts]}, height, width)
        return {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
    if isinstance(segmentation, (list, tuple)):
        if segmentation and not isinstance(segmentation[0], (list, tuple, np.ndarray)):
            segmentation = [segmentation]  # one flat polygon
        # pycocotools reads a 4-number list as a box and fails on shorter ones: a polygon needs 3 points.
        polygons = [[float(v) for v in polygon] for polygon in segmentation if len(polygon) >= 6]
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if segmentation is None:
        return None
    raise DataError(f"Unsupported COCO segmentation of type {type(segmentation).__name__}: expected polygons (a list "
                    "of coordinate lists) or an RLE dict with 'size' and 'counts'.")


def decode_rles(rles: Sequence[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """RLEs → bool (N, H, W) masks (pycocotools `decode`)."""
    if not rles:
        return np.zeros((0, height, width), dtype=bool)
    masks = _mask_utils().decode(list(rles))  # (H, W, N) uint8, Fortran order
    return np.ascontiguousarray(np.moveaxis(masks, -1, 0)).astype(bool)


def rle_areas(rles: Sequence[dict[str, Any]]) -> list[int]:
    return [int(a) for a in _mask_utils().area(list(rles))] if rles else []


# ----------------------------------------------------------------------------------------------------------------
# Annotation files → datasets.Dataset
# ----------------------------------------------------------------------------------------------------------------

COCO_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "image_id": datasets.Value("int64"),
        "file_name": datasets.Value("string"),
        "width": datasets.Value("int64"),
        "height": datasets.Value("int64"),
        OBJECTS_COLUMN: datasets.Sequence(
            {
                "id": datasets.Value("int64"),
                "bbox": datasets.Sequence(datasets.Value("float64"), length=4),
                "category_id": datasets.Value("int64"),
                "iscrowd": datasets.Value("int64"),
                "area": datasets.Value("float64"),
                "segmentation": datasets.Value("string"),
            }
        ),
    }
)


def read_annotation_json(path: str | os.PathLike) -> tuple[str, dict] | None:
    """("coco" | "sa1b", the parsed file) when `path` is a COCO annotation file or an SA-1B per-image JSON; None
    for any other JSON (JSON Lines, records), which `datasets`' json builder reads."""
    with open(path, "rb") as handle:
        head = handle.read(1)
        while head.isspace():
            head = handle.read(1)
        if head != b"{":
            return None
        handle.seek(0)
        try:
            data = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # JSON Lines and friends
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        return None
    if isinstance(data.get("images"), list):
        return "coco", data
    if isinstance(data.get("image"), dict):
        return "sa1b", data
    return None


def _image_dirs(annotation_path: Path, image_dir: str | os.PathLike | None) -> list[Path]:
    """Where the images of an annotation file may be: `image_dir` if given; else next to the file, its `images/`,
    and for `annotations/instances_<split>.json` (COCO's own layout) `../<split>/` and `../images/<split>/`."""
    if image_dir is not None:
        return [Path(image_dir).expanduser()]
    here = annotation_path.parent
    dirs = [here, here / "images"]
    split = annotation_path.stem.split("_", 1)[1] if "_" in annotation_path.stem else None
    if split:
        dirs += [here / split, here.parent / split, here.parent / "images" / split]
    dirs += [here.parent / "images", here.parent]
    return dirs


def _resolve_images(file_names: list[str], annotation_path: Path, image_dir) -> list[str]:
    """Absolute image paths: the first candidate folder holding the first image; every image must then exist."""
    if not file_names:
        return []
    dirs = _image_dirs(annotation_path, image_dir)
    base = next((d for d in dirs if (d / file_names[0]).is_file()), None)
    if base is None:
        tried = ", ".join(str(d) for d in dirs)
        raise DataError(
            f"{annotation_path}: its first image {file_names[0]!r} is in none of {tried}; pass --image_dir with the "
            "folder holding the images."
        )
    paths = [str(base / name) for name in file_names]
    missing = [name for name, p in zip(file_names, paths) if not os.path.isfile(p)]
    if missing:
        raise DataError(
            f"{annotation_path}: {len(missing)} of {len(paths)} images are missing from {base} (first: {missing[0]!r}); "
            "restore them or pass --image_dir with the complete folder."
        )
    return paths


def _objects(annotations: list[dict[str, Any]]) -> dict[str, list]:
    objects: dict[str, list] = {"id": [], "bbox": [], "category_id": [], "iscrowd": [], "area": [], "segmentation": []}
    for k, ann in enumerate(annotations):
        if "segmentation" not in ann:
            continue  # a box-only annotation (detection): no mask to learn from
        bbox = ann.get("bbox") or [0.0, 0.0, 0.0, 0.0]
        objects["id"].append(int(ann.get("id", k)))
        objects["bbox"].append([float(v) for v in bbox])
        objects["category_id"].append(int(ann.get("category_id", 0)))
        objects["iscrowd"].append(int(ann.get("iscrowd", 0)))
        objects["area"].append(float(ann.get("area", 0.0)))
        objects["segmentation"].append(json.dumps(ann["segmentation"]))
    return objects


def _rows_from_coco(data: dict, path: Path) -> dict[str, list]:
    """One row per image of a COCO annotation file (pycocotools' index), images without annotations included."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    image_ids = sorted(coco.getImgIds())
    images = coco.loadImgs(image_ids)
    for image in images:
        for key in ("file_name", "width", "height"):
            if key not in image:
                raise DataError(f"{path}: image {image.get('id')} has no {key!r}; a COCO image entry needs "
                                "file_name, width and height.")
    return {
        "image_id": image_ids,
        "file_name": [image["file_name"] for image in images],
        "width": [int(image["width"]) for image in images],
        "height": [int(image["height"]) for image in images],
        OBJECTS_COLUMN: [_objects(coco.imgToAnns.get(i, [])) for i in image_ids],
    }


def _rows_from_sa1b(files: list[tuple[Path, dict]]) -> dict[str, list]:
    rows: dict[str, list] = {"image_id": [], "file_name": [], "width": [], "height": [], OBJECTS_COLUMN: []}
    for path, data in files:
        image = data["image"]
        for key in ("file_name", "width", "height"):
            if key not in image:
                raise DataError(f"{path}: the SA-1B 'image' entry has no {key!r}.")
        rows["image_id"].append(int(image.get("image_id", len(rows["image_id"]))))
        rows["file_name"].append(image["file_name"])
        rows["width"].append(int(image["width"]))
        rows["height"].append(int(image["height"]))
        rows[OBJECTS_COLUMN].append(_objects(data["annotations"]))
    return rows


def load_coco_json(
    path: str | os.PathLike, image_dir: str | os.PathLike | None = None, parsed: tuple[str, dict] | None = None
) -> datasets.Dataset:
    """A COCO annotation file or an SA-1B per-image JSON → a `datasets.Dataset`, one row per image (images without
    annotations included: `SamSegmentationData` counts and skips them). Images are found next to the file (see
    `_image_dirs`) or under `image_dir`."""
    path = Path(path).expanduser()
    parsed = parsed or read_annotation_json(path)
    if parsed is None:
        raise DataError(f"{path} is not a COCO annotation file (a JSON object with 'images' and 'annotations') nor an "
                        "SA-1B per-image JSON ('image' and 'annotations').")
    kind, data = parsed
    rows = _rows_from_coco(data, path) if kind == "coco" else _rows_from_sa1b([(path, data)])
    return _as_dataset(rows, path, image_dir)


def load_sa1b_folder(folder: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """A folder of SA-1B per-image JSONs (`sa_N.json` next to `sa_N.jpg`, as the SA-1B archives unpack)."""
    folder = Path(folder).expanduser()
    files = []
    for path in sorted(folder.glob("*.json")):
        parsed = read_annotation_json(path)
        if parsed is None or parsed[0] != "sa1b":
            raise DataError(f"{path} is not an SA-1B per-image JSON ('image' and 'annotations'); a folder of them "
                            "must hold only those.")
        files.append((path, parsed[1]))
    return _as_dataset(_rows_from_sa1b(files), folder / "annotations.json", image_dir)


def is_sa1b_folder(folder: str | os.PathLike) -> bool:
    """A folder whose first JSON file is an SA-1B per-image JSON."""
    first = next(iter(sorted(Path(folder).expanduser().glob("*.json"))), None)
    if first is None:
        return False
    parsed = read_annotation_json(first)
    return parsed is not None and parsed[0] == "sa1b"


def _as_dataset(rows: dict[str, list], path: Path, image_dir) -> datasets.Dataset:
    rows["image"] = _resolve_images(rows["file_name"], path, image_dir)
    if not rows["image"]:
        raise DataError(f"{path} lists no image.")
    return datasets.Dataset.from_dict({name: rows[name] for name in COCO_FEATURES}, features=COCO_FEATURES)


__all__ = [
    "COCO_FEATURES",
    "CocoStats",
    "OBJECTS_COLUMN",
    "coco_rles",
    "decode_rles",
    "is_coco_objects",
    "is_sa1b_folder",
    "load_coco_json",
    "load_sa1b_folder",
    "read_annotation_json",
    "rle_areas",
]
