"""Evaluation inputs: the subnet to score, and the collated batches of a dataset (prepared once, or one pass).

One example is one image with all of its instances (see `supersam_hf.data`): the instances are the image's prompt
batch, so the image encoder runs once per image and the mask decoder decodes every instance of it together.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch

from ..arguments import DEFAULT_PROMPT_TYPE
from ..data import SamCollator, SamSegmentationData, SamStreamingData
from ..errors import SupersamError
from ..search_space import SubnetConfig
from ..types import EvaluationPromptType, MaskSelection

PROMPTS = EvaluationPromptType.values()
MASK_SELECTIONS = MaskSelection.values()


def parse_subnet(spec: str | os.PathLike | dict | SubnetConfig) -> SubnetConfig:
    """A subnet from a `SubnetConfig`, a dict, a path to a JSON file, or inline JSON.

    The JSON is an object with `kept_layers` and `mlp_dims` at the top level (extra keys, e.g. the metrics in
    `best_subnet.json` or `pareto.json` entries, are ignored) or nested under `"subnet"` / `"config"`.
    """
    if isinstance(spec, SubnetConfig):
        return spec
    if isinstance(spec, dict):
        data = spec
    else:
        text = os.fspath(spec).strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise SupersamError(f"The subnet is not valid inline JSON ({error}): {text[:80]!r}") from None
        else:
            path = Path(text).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"No subnet JSON file at {text!r} (give a .json file or inline JSON).")
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise SupersamError(f"{text!r} is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise SupersamError(f"A subnet JSON must be an object with 'kept_layers' and 'mlp_dims', got {type(data).__name__}.")
    for key in ("subnet", "config"):
        if "kept_layers" not in data and isinstance(data.get(key), dict):
            data = data[key]
    return SubnetConfig.from_dict(data)



def resolve_subnet(spec, search_dir: str | os.PathLike | None = None) -> SubnetConfig | None:
    """The subnet an `EvaluateArguments.subnet` names: None, a `SubnetConfig`, a dict, a JSON file or inline JSON
    (`parse_subnet`), or 'best' / 'pareto:N' of the `supersam search` folder `search_dir`."""
    if spec is None:
        return None
    if isinstance(spec, str) and (spec.strip() == "best" or spec.strip().startswith("pareto:")):
        if search_dir is None:
            raise SupersamError(f"--subnet {spec.strip()} needs --search_dir (the output folder of `supersam search`).")
        from ..search.results import select_subnet  # search imports this module

        return select_subnet(spec.strip(), search_dir)
    return parse_subnet(spec)


class PreparedBatches(Sequence):
    """The collated batches of an `EvaluationData`, built on demand: batch i is collated from its rows when asked for.

    The first batches are kept after their first use while their tensors fit in `cache_bytes`; the rest are
    collated again on every pass (decode + resize + normalise per batch), so memory stays bounded at 1024 px
    (~15 MB per image) however many images are scored. Prompts are seeded per row, so every pass is identical.
    """

    def __init__(self, data: SamSegmentationData, prompt: str, batch_size: int, count: int, cache_bytes: int) -> None:
        self.data, self.prompt, self.batch_size, self.count = data, prompt, int(batch_size), int(count)
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[int, dict[str, Any]] = {}
        self._cached_bytes = 0
        self._cache_full = False

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)} batches)")
        index %= len(self)
        if index in self._cache:
            return self._cache[index]
        indices = range(index * self.batch_size, min((index + 1) * self.batch_size, self.count))
        batch = SamCollator(prompt=self.prompt, seed=self.data.seed)([self.data[i] for i in indices])
        batch["image_ids"] = [str(self.data.row_indices[i]) for i in indices]
        size = _batch_bytes(batch)
        if not self._cache_full and self._cached_bytes + size <= self.cache_bytes:
            self._cache[index] = batch
            self._cached_bytes += size
        else:
            self._cache_full = True  # keep a prefix only: later batches stream on every pass
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))

    @property
    def cached_batches(self) -> int:
        return len(self._cache)

    @property
    def num_instances_left_out(self) -> int:
        """Instances of the scored images that `max_instances_per_image` left out."""
        return int(sum(self.data.instances_left_out[: self.count]))


class StreamedBatches:
    """The collated batches of a `SamStreamingData`, read in order from the stream on every pass (no `len`).

    The images of a pass (at most `max_images`) and the instances the cap left out are counted as they come
    (`num_images`, `num_instances_left_out`, after a pass); `image_ids` are the rows' positions in the stream, so
    an in-order stream scores exactly the map-style rows with the same ids and prompts."""

    def __init__(self, data: SamStreamingData, prompt: str, batch_size: int, max_images: int | None) -> None:
        self.data, self.prompt, self.batch_size, self.max_images = data, prompt, int(batch_size), max_images
        self.num_images = 0
        self.num_instances_left_out = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.num_images = self.num_instances_left_out = 0
        collator = SamCollator(prompt=self.prompt, seed=self.data.seed)
        examples = iter(self.data)
        if self.max_images is not None:
            examples = itertools.islice(examples, int(self.max_images))
        while True:
            chunk = list(itertools.islice(examples, self.batch_size))
            if not chunk:
                return
            batch = collator(chunk)
            batch["image_ids"] = [str(example["row"]) for example in chunk]
            self.num_images += len(chunk)
            self.num_instances_left_out += sum(int(example["instances_left_out"]) for example in chunk)
            yield batch


def _batch_bytes(batch: dict[str, Any]) -> int:
    tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)] + list(batch.get("full_masks", []))
    return sum(t.numel() * t.element_size() for t in tensors)


# Collated evaluation batches kept in memory between passes (the search scores many subnets on the same images).
DEFAULT_CACHE_MB = 256



@dataclass
class EvaluationData:
    """Evaluation batches prepared once and reusable (the search scores many subnets on the same images).

    `batches` is a `PreparedBatches`: a sequence of `SamCollator` batches (with `full_masks` and `image_ids`, the
    dataset row of each image) collated on demand from the rows; only the first batches, up to `cache_mb` of
    tensors, stay in memory, so a search over many 1024-px images streams them instead of holding them all.
    A stream (`datasets.IterableDataset`) gives `StreamedBatches`, read again on every pass.
    """

    batches: PreparedBatches | StreamedBatches
    prompt: str
    seed: int
    num_images: int | None  # None for a stream (known after a pass: batches.num_images)
    num_skipped_images: int = 0
    max_instances_per_image: int | None = None

    @classmethod
    def prepare(
        cls,
        dataset,
        processor=None,
        prompt: str = DEFAULT_PROMPT_TYPE,
        batch_size: int = 4,
        max_images: int | None = None,
        seed: int = 0,
        image_column: str | None = None,
        mask_column: str | None = None,
        mask_kind: str | None = None,
        cache_mb: float = DEFAULT_CACHE_MB,
        max_instances_per_image: int | None = None,
    ) -> "EvaluationData":
        if isinstance(dataset, EvaluationData):
            return dataset
        if cache_mb < 0:
            raise SupersamError(f"cache_mb must be >= 0, got {cache_mb}.")
        data = as_evaluation_dataset(dataset, processor, prompt, seed, image_column, mask_column, mask_kind,
                                     max_instances_per_image)
        batches = _make_batches(data, prompt, batch_size, max_images, int(cache_mb * 2**20))
        if isinstance(batches, StreamedBatches):
            return cls(batches=batches, prompt=prompt, seed=data.seed, num_images=None,
                       max_instances_per_image=data.max_instances_per_image)
        return cls(batches=batches, prompt=prompt, seed=data.seed, num_images=batches.count,
                   num_skipped_images=data.num_skipped_images, max_instances_per_image=data.max_instances_per_image)


def as_evaluation_dataset(
    dataset,
    processor,
    prompt: str = DEFAULT_PROMPT_TYPE,
    seed: int = 0,
    image_column: str | None = None,
    mask_column: str | None = None,
    mask_kind: str | None = None,
    max_instances_per_image: int | None = None,
) -> SamSegmentationData | SamStreamingData:
    """An HF `datasets.Dataset` (or a ready `SamSegmentationData`) → `SamSegmentationData` with `full_masks`; a
    streaming `datasets.IterableDataset` (or a ready `SamStreamingData`) → `SamStreamingData` read in order.
    Every instance is scored unless `max_instances_per_image` caps them (largest first)."""
    if prompt not in PROMPTS:
        raise SupersamError(f"Unknown prompt {prompt!r}; evaluation prompts are {PROMPTS}.")
    if isinstance(dataset, SamStreamingData):
        if not dataset.return_full_masks or dataset.shuffle:
            raise SupersamError("Evaluate a SamStreamingData built with return_full_masks=True and shuffle=False, or "
                                "pass the datasets.IterableDataset itself.")
        return dataset
    if isinstance(dataset, SamSegmentationData):
        if not dataset.return_full_masks:
            dataset = copy.copy(dataset)  # shallow: same rows and prompts, plus the full-resolution masks
            dataset.return_full_masks = True
        return dataset
    kinds = {datasets.IterableDataset: SamStreamingData, datasets.Dataset: SamSegmentationData,
             datasets.DatasetDict: SamSegmentationData}
    wrapper = next((kinds[kind] for kind in kinds if isinstance(dataset, kind)), None)
    if wrapper is None:
        raise SupersamError(f"Cannot evaluate on a {type(dataset).__name__}; pass a datasets.Dataset, a "
                            "SamSegmentationData or an EvaluationData.")
    if processor is None:
        kind = "IterableDataset" if wrapper is SamStreamingData else "Dataset"
        raise SupersamError(f"Pass the model's SamProcessor to evaluate on a datasets.{kind}.")
    return wrapper(dataset, processor, image_column=image_column, mask_column=mask_column, mask_kind=mask_kind,
                   prompt=prompt, seed=seed, return_full_masks=True, max_instances_per_image=max_instances_per_image)


def _make_batches(data, prompt: str, batch_size: int, max_images: int | None,
                  cache_bytes: int) -> PreparedBatches | StreamedBatches:
    """The batches of `data` (a stream is read again on every pass; rows keep a prefix of `cache_bytes`)."""
    if batch_size < 1:
        raise SupersamError(f"batch_size must be >= 1, got {batch_size}.")
    if max_images is not None and max_images < 1:
        raise SupersamError(f"max_images must be >= 1 (or None for all images), got {max_images}.")
    if isinstance(data, SamStreamingData):
        return StreamedBatches(data, prompt, batch_size, max_images)
    count = len(data) if max_images is None else min(len(data), int(max_images))
    return PreparedBatches(data, prompt, batch_size, count, cache_bytes)


def batches_to_score(dataset, processor, prompt: str, batch_size: int, max_images: int | None, seed: int,
                     image_column=None, mask_column=None, mask_kind=None, max_instances_per_image=None):
    """The batches to score (an `EvaluationData`'s, or one pass over a dataset collated one batch at a time, nothing
    kept), their prompt seed and the instance cap they were built with (None: every instance)."""
    if isinstance(dataset, EvaluationData):
        if dataset.prompt != prompt:
            raise SupersamError(f"The EvaluationData was prepared with prompt={dataset.prompt!r}, not {prompt!r}.")
        return dataset.batches, dataset.seed, dataset.max_instances_per_image
    data = as_evaluation_dataset(dataset, processor, prompt, seed, image_column, mask_column, mask_kind,
                                 max_instances_per_image)
    return _make_batches(data, prompt, batch_size, max_images, 0), data.seed, data.max_instances_per_image
