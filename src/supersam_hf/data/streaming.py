"""A streaming `datasets.IterableDataset` → SAM examples decoded on the fly, shuffled, split across ranks, and
resumable exactly.

`SamStreamingData` is the streaming twin of `SamSegmentationData`: the same per-row work (instances, masks,
prompts, targets), so a stream read in order yields exactly the map-style examples of the same rows.

* **Ranks**: `datasets.distributed.split_dataset_by_node` gives each rank its own shards (or every n-th row when
  the shards do not divide evenly); DataLoader workers then split a rank's shards (datasets does this).
* **Shuffling** (`shuffle=True`): `datasets` shuffles the shard order per epoch, and rows are shuffled in blocks
  of `shuffle_buffer_size` consecutive rows, each block in a seeded order of (seed, epoch, stream, block).
  `datasets`' own rolling shuffle buffer is not saved in its `state_dict()` (a resumed stream refills it and
  changes the order); a block is, as the IterableDataset's state at the block's start plus the position in it.
* **Resume**: `state_dict()` / `load_state_dict()` hold, per worker, the IterableDataset's own `state_dict()` at
  the current block's start, the block number, the position in the block and the epoch. A resumed stream re-reads
  at most one block (without yielding it) and then yields exactly the examples the uninterrupted stream would
  have. `torchdata`'s `StatefulDataLoader` collects these states from its workers.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from ..errors import DataError
from .examples import _ExampleBuilder, _refuse_dataset_dict
from .options import ExampleOptions

logger = logging.getLogger(__name__)

DEFAULT_SHUFFLE_BUFFER_SIZE = 1000


def _stable_seed(*parts: Any) -> int:
    import zlib

    return zlib.crc32(repr(parts).encode())


class SamStreamingData(_ExampleBuilder, torch.utils.data.IterableDataset):
    r"""A streaming `datasets.IterableDataset` with an image and a mask column → SAM examples on the fly.

    `processor` and the `ExampleOptions` (`options`, or its fields by keyword) as `SamSegmentationData`; and:
        shuffle: shuffle shards per epoch and rows in blocks of `shuffle_buffer_size` (training); False reads the
            stream in order (evaluation: the map-style rows, in the same order, with the same prompts).
        shuffle_buffer_size: rows per shuffled block (memory: that many undecoded rows per worker).
        rank / world_size: this process's slice of the stream (`split_dataset_by_node`); default one process.
        max_rows: read at most this many rows of the (rank's) stream per epoch.

    Prompts are drawn from `default_rng((seed, ordinal, epoch))`, `ordinal` being the row's position in the
    unshuffled stream of its worker (plus the rank and worker when there are several), so a single in-order
    stream reproduces `SamSegmentationData`'s prompts row for row. Rows without an instance are skipped and
    counted (`counts`); there is no `len()`.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        processor: Any,
        options: ExampleOptions | None = None,
        *,
        shuffle: bool = False,
        shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER_SIZE,
        rank: int = 0,
        world_size: int = 1,
        max_rows: int | None = None,
        **overrides: Any,
    ) -> None:
        if isinstance(dataset, datasets.Dataset):
            dataset = dataset.to_iterable_dataset(num_shards=max(1, min(64, len(dataset))))
        _refuse_dataset_dict(dataset)
        options = ExampleOptions.build(options, **overrides)
        if not isinstance(dataset, datasets.IterableDataset):
            raise DataError(f"SamStreamingData reads a datasets.IterableDataset, got {type(dataset).__name__}.")
        if shuffle_buffer_size < 1:
            raise DataError(f"--shuffle_buffer_size must be >= 1, got {shuffle_buffer_size}.")
        if max_rows is not None and max_rows < 1:
            raise DataError(f"max_rows must be >= 1 (or None for the whole stream), got {max_rows}.")
        self._setup(processor, options)
        first = next(iter(dataset), None)
        if first is None:
            raise DataError("The streaming dataset is empty (0 rows); check --dataset_name and the split.")
        dataset = self._find_columns(dataset, first)
        self.rank, self.world_size = int(rank), int(world_size)
        if self.world_size > 1:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, rank=self.rank, world_size=self.world_size)
        self._unshuffled = dataset
        if shuffle:  # shard order per epoch (datasets); a buffer of 1 keeps the rows as they come
            dataset = dataset.shuffle(seed=self.seed, buffer_size=1)
        self.dataset = dataset
        self.shuffle = bool(shuffle)
        self.shuffle_buffer_size = int(shuffle_buffer_size)
        self.max_rows = max_rows
        self._resume: dict | None = None
        self._state: dict | None = None

    # -- iteration ------------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        stream = (self.rank, worker.id if worker is not None else 0)
        single = stream == (0, 0) and self.world_size == 1 and (worker is None or worker.num_workers == 1)
        block_size = self.shuffle_buffer_size if self.shuffle else 1
        resume, self._resume = self._resume, None
        dataset = self._stream()
        if resume is not None and resume["epoch"] == self.epoch and resume["block_start"] is not None:
            dataset.load_state_dict(resume["block_start"])  # the epoch (shard order) is set: a state does not hold it
            start, block, skip, ordinal = resume["block_start"], resume["block"], resume["offset"], resume["ordinal"]
        else:  # from the epoch's start (a state saved at the start of the epoch's first block resumes here too)
            start, block, ordinal = None, 0, 0
            skip = resume["offset"] if resume is not None and resume["epoch"] == self.epoch else 0
        rows = iter(dataset)
        while True:
            limit = block_size if self.max_rows is None else min(block_size, self.max_rows - ordinal)
            chunk = list(itertools.islice(rows, max(limit, 0)))
            if not chunk:
                break
            order = range(len(chunk))
            if self.shuffle:
                rng = np.random.default_rng(_stable_seed(self.seed, "block", self.epoch, stream, block))
                order = rng.permutation(len(chunk)).tolist()
            for position in range(skip, len(chunk)):
                self._state = {"block_start": start, "block": block, "offset": position + 1, "ordinal": ordinal,
                               "epoch": self.epoch}
                k = order[position]
                example = self._row_example(chunk[k], ordinal + k, stream, single)
                if example is not None:
                    yield example
            skip, block, ordinal = 0, block + 1, ordinal + len(chunk)
            start = copy.deepcopy(dataset.state_dict())  # the stream's own position after this block
            self._state = {"block_start": start, "block": block, "offset": 0, "ordinal": ordinal, "epoch": self.epoch}

    def _stream(self) -> datasets.IterableDataset:
        """This iteration's `datasets.IterableDataset`, at `self.epoch` (the shard order) when shuffled.

        A shuffled stream is a new `.shuffle()` of the (rank's) rows, made here, so its epoch is its own: datasets
        keeps an IterableDataset's epoch in a torch tensor in shared memory (for persistent workers), which forked
        DataLoader workers share with the main process and with each other, and its `set_epoch` is a
        read-modify-write (`epoch += new - epoch`): two workers setting the epoch of one shared object at once
        could add it twice (epoch 1 read as 2), so a worker read another epoch's shard order (runs that differ,
        a resume that is not exact). The same seed gives the same shard shuffle as `self.dataset`. An unshuffled
        stream is read in order: its epoch is never set."""
        if not self.shuffle:
            return self.dataset
        dataset = self._unshuffled.shuffle(seed=self.seed, buffer_size=1)
        dataset.set_epoch(self.epoch)
        return dataset

    def _row_example(self, row: dict, ordinal: int, stream: tuple[int, int], single: bool) -> dict | None:
        raw = row[self.mask_column]
        image = row[self.image_column]
        keys, left_out = self._select_instances(raw, lambda: _row_size(row, image))
        if not keys:
            return None
        key = (self.seed, ordinal, self.epoch) if single else (self.seed, ordinal, self.epoch, *stream)
        example = self._example(image, raw, keys, key, f"Streamed row {ordinal}")
        example["row"] = ordinal
        example["instances_left_out"] = left_out
        return example

    # -- state ----------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Where this (worker's) stream is: the IterableDataset's `state_dict()` at the current block's start, the
        block, the position in it and the epoch. JSON-serialisable."""
        if self._state is None:
            return {"epoch": self.epoch, "fresh": True}
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s position at the next iteration (exactly the examples that would have
        followed)."""
        self.epoch = int(state["epoch"])
        self._resume = None if state.get("fresh") else copy.deepcopy(state)


def _row_size(row: dict, image: Any) -> tuple[int, int]:
    if row.get("height") is not None and row.get("width") is not None:
        return int(row["height"]), int(row["width"])
    if hasattr(image, "size") and not isinstance(image, np.ndarray):
        return int(image.size[1]), int(image.size[0])
    array = np.asarray(image)
    return int(array.shape[0]), int(array.shape[1])


class _NoRefillWarning(logging.Filter):
    """datasets warns that a shuffle buffer is refilled when a shuffled stream resumes; the streams of this module
    shuffle with a buffer of one row (rows are shuffled here, in blocks that resume exactly), so it would be false."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "shuffle buffer" not in record.getMessage()


logging.getLogger("datasets.iterable_dataset").addFilter(_NoRefillWarning())


def streamed_rows(dataset: datasets.IterableDataset, count: int, columns: Sequence[str] | None = None) -> datasets.Dataset:
    """The first `count` rows of a stream as a small map-style `datasets.Dataset` (only these rows are read), e.g.
    the calibration images of `supersam convert --streaming`."""
    if columns is not None:
        dataset = dataset.select_columns(list(columns))
    rows = list(itertools.islice(iter(dataset), int(count)))
    if not rows:
        raise DataError("The streaming dataset is empty (0 rows); check --dataset_name and the split.")
    features = dataset.features
    return datasets.Dataset.from_list(rows, features=features) if features is not None else datasets.Dataset.from_list(rows)


__all__ = ["DEFAULT_SHUFFLE_BUFFER_SIZE", "SamStreamingData", "streamed_rows"]
