"""A folder of `images/` + `masks/` (the layout users make themselves) → a `datasets.Dataset`.

Masks share their image's stem, in one of two layouts (one per folder):

* `masks/<stem>.png`: an instance-id map (0 background, one value per instance) → column `label`, read as
  `mask_kind="instance"`;
* `masks/<stem>_<anything>.png`: one binary mask per instance → column `masks` (a list of images), read as
  `mask_kind="masks"`; an image with no mask file has no instance (counted and skipped).
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")


def is_images_masks_folder(folder: str | os.PathLike) -> bool:
    folder = Path(folder).expanduser()
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def _files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def load_images_masks_folder(folder: str | os.PathLike) -> datasets.Dataset:
    """`folder/images/*` + `folder/masks/*` → a Dataset with `image` and `label` (id maps) or `masks` (per-instance
    lists). Every mask file must belong to an image, and the layout must be one of the two for the whole folder."""
    folder = Path(folder).expanduser()
    images = _files(folder / "images", IMAGE_EXTENSIONS)
    masks = _files(folder / "masks", MASK_EXTENSIONS)
    if not images:
        raise DataError(f"{folder / 'images'} holds no image ({', '.join(IMAGE_EXTENSIONS)}).")
    stems = {}
    for image in images:
        if image.stem in stems:
            raise DataError(f"{folder / 'images'}: {stems[image.stem].name} and {image.name} share the stem "
                            f"{image.stem!r}; masks are matched by stem, so rename one.")
        stems[image.stem] = image
    by_stem = {m.stem: m for m in masks}
    exact = [stem for stem in stems if stem in by_stem]
    if exact:  # instance-id maps, one per image
        missing = [stems[s].name for s in stems if s not in by_stem]
        if missing:
            raise DataError(f"{folder / 'masks'}: no mask for {len(missing)} image(s) (first: {missing[0]}; expected "
                            f"masks/{Path(missing[0]).stem}.png with one id per instance).")
        extra = [m.name for m in masks if m.stem not in stems]
        if extra:
            raise DataError(f"{folder / 'masks'}: {extra[0]} matches no image of images/ (instance-id layout: "
                            "masks/<image stem>.png); remove it or give it its image.")
        return datasets.Dataset.from_dict(
            {"image": [str(stems[s]) for s in stems], "label": [str(by_stem[s]) for s in stems]},
            features=datasets.Features({"image": datasets.Image(), "label": datasets.Image()}),
        )
    per_image: dict[str, list[str]] = {stem: [] for stem in stems}
    for mask in masks:
        owner = _owner(mask.stem, stems)
        if owner is None:
            raise DataError(f"{folder / 'masks'}: {mask.name} matches no image of images/ (expected masks/<image "
                            "stem>.png, an id map, or masks/<image stem>_<n>.png, one per instance).")
        per_image[owner].append(str(mask))
    return datasets.Dataset.from_dict(
        {"image": [str(stems[s]) for s in stems], "masks": [per_image[s] for s in stems]},
        features=datasets.Features({"image": datasets.Image(), "masks": datasets.Sequence(datasets.Image())}),
    )


def _owner(mask_stem: str, stems: dict) -> str | None:
    """The image a per-instance mask `<stem>_<n>` belongs to: the longest image stem it extends."""
    candidates = [s for s in stems if mask_stem.startswith(s + "_")]
    return max(candidates, key=len) if candidates else None


__all__ = ["IMAGE_EXTENSIONS", "MASK_EXTENSIONS", "is_images_masks_folder", "load_images_masks_folder"]
