"""A multi-process evaluation: each process scores a contiguous share of the batches, and the per-object
statistics are gathered so every process gets the one-process result."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UnsupportedSetupError


class _Share(Sequence):
    """Batches `indices` of a batch sequence (built on demand, like the sequence itself)."""

    def __init__(self, batches: Sequence, indices: list[int]) -> None:
        self.batches, self.indices = batches, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.batches[self.indices[index]]


def process_share(batches: Sequence, state) -> _Share:
    """This process's contiguous share of the batches (`split_between_processes`: process 0 the first ones), so the
    gathered objects are in the one-process order. Whole batches are shared, never re-batched: each image is
    scored in the very batch (and padding) of a one-process run. A stream (no length) is refused."""
    if not isinstance(batches, Sequence):
        raise UnsupportedSetupError("evaluating a streamed dataset is not split across processes; run evaluate "
                                    "--streaming without `accelerate launch`, or without --streaming.")
    with state.split_between_processes(list(range(len(batches)))) as indices:
        return _Share(batches, indices)


class GatheredMetric:
    """One process's part of a `sam_miou` evaluation split across processes.

    `add_batch` keeps, per object, the metric's own `mask_statistics` (intersection and sizes: three integers, not
    the masks) and its image id; `compute` gathers every process's objects in process order
    (`accelerate.utils.gather_object`) and scores them with the metric's `scores_from_statistics`, the code its
    `compute` runs, so every process gets the one-process result.
    """

    def __init__(self, metric) -> None:
        self.module = sys.modules[type(metric).__module__]  # the loaded metric script: its maths, not a copy
        self.stats: list = []
        self.image_ids: list[str] = []

    def add_batch(self, *, predictions, references, image_ids) -> None:
        self.stats.append(self.module.mask_statistics(predictions, references))
        self.image_ids.extend(str(i) for i in image_ids)

    def compute(self) -> dict[str, Any]:
        from accelerate.utils import gather_object

        local = np.concatenate(self.stats) if self.stats else np.zeros((0, 3), dtype=np.int64)
        parts = gather_object([(local, self.image_ids)])  # one (stats, ids) per process, process 0 first
        stats = np.concatenate([part[0] for part in parts])
        image_ids = [image_id for part in parts for image_id in part[1]]
        return self.module.scores_from_statistics(stats, image_ids)
