"""ONNX Runtime latency of an exported image encoder, and a per-subnet cache of it for the search."""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import SamModel

from ..errors import SupersamError
from ..outputs import record_tool_outputs
from .graphs import export_vision_encoder
from .layout import ENCODER_FILE, _onnx_folder, require_onnx
from .runtime import ort_session

logger = logging.getLogger(__name__)

def _encoder_input_shape(session, image_size: int | None, batch_size: int) -> tuple[int, ...]:
    shape = session.get_inputs()[0].shape  # e.g. ["batch_size", 3, 1024, 1024]
    static = [dim if isinstance(dim, int) else None for dim in shape]
    if image_size is not None:
        static[-2:] = [image_size, image_size]
    if None in static[1:]:
        raise SupersamError(f"The encoder's input shape {shape} is not fixed; pass image_size.")
    return (batch_size, *static[1:])


def ort_latency_ms(model_or_path: SamModel | str | os.PathLike, image_size: int | None = None, *,
                   batch_size: int = 1, warmup: int = 2, repeats: int = 5, threads: int | None = None) -> float:
    """Median ONNX Runtime (CPU) latency of the image encoder in milliseconds, after `warmup` runs.

    `model_or_path`: an encoder `.onnx` file, an export folder, or a `SamModel` (its encoder is exported to a
    temporary file first; cache the result per subnet, e.g. with `OrtLatencyCache`). `image_size` defaults to the
    encoder's input size.
    """
    if repeats < 1 or warmup < 0:
        raise SupersamError(f"Need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    if isinstance(model_or_path, SamModel):
        with tempfile.TemporaryDirectory() as tmp:
            path = export_vision_encoder(model_or_path, Path(tmp) / ENCODER_FILE)
            return ort_latency_ms(path, image_size, batch_size=batch_size, warmup=warmup, repeats=repeats, threads=threads)
    path = Path(model_or_path)
    if path.is_dir():
        path = _onnx_folder(path) / ENCODER_FILE
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    pixels = torch.randn(_encoder_input_shape(session, image_size, batch_size), generator=torch.Generator().manual_seed(0))
    feeds = {name: pixels.numpy()}
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


class OrtLatencyCache:
    """ORT encoder latencies (ms) keyed by a caller's string (e.g. a subnet's name), persisted as JSON.

    The file records the ONNX Runtime version, the machine and the thread count; a file written under different
    ones is not reused (its timings would not describe this runtime), and is overwritten on the next save.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, threads: int | None = None,
                 warmup: int = 2, repeats: int = 5):
        _, ort = require_onnx()
        self.path = Path(path) if path is not None else None
        self.threads, self.warmup, self.repeats = threads, warmup, repeats
        self.runtime = {"onnxruntime": ort.__version__, "machine": platform.machine(), "processor": platform.processor(),
                        "cpu_count": os.cpu_count(), "threads": threads}
        self.entries: dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            data = json.loads(self.path.read_text())
            if data.get("runtime") == self.runtime:
                self.entries = {str(k): float(v) for k, v in data.get("latency_ms", {}).items()}
            else:
                logger.warning("Ignoring ORT latencies in %s: measured under %s, now %s.", self.path,
                               data.get("runtime"), self.runtime)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def measure(self, key: str, model: SamModel, image_size: int | None = None) -> float:
        """The cached latency of `key`, or time `model`'s encoder in ORT now, store and save it."""
        if key not in self.entries:
            self.entries[key] = ort_latency_ms(model, image_size, warmup=self.warmup, repeats=self.repeats,
                                               threads=self.threads)
            self.save()
        return self.entries[key]

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"runtime": self.runtime, "latency_ms": self.entries}
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
        tmp.replace(self.path)
        record_tool_outputs(self.path.parent, [self.path.absolute()], tool="supersam search")
