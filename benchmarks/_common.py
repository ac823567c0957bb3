"""Shared helpers of the benchmark scripts: timing by interleaved repeats, result files, model presets."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

from supersam_hf import build_sam_config

RESULTS = Path(__file__).parent / "results"

# Random-weight models (no checkpoint can be downloaded offline); the cost of a forward does not depend on weights.
PRESETS = {
    "tiny": dict(image_size=128, hidden_size=64, num_hidden_layers=6, num_attention_heads=4, window_size=4, output_channels=32),
    "small": dict(image_size=256, hidden_size=256, num_hidden_layers=8, num_attention_heads=8, window_size=8, output_channels=128),
    "vit-b": dict(image_size=1024, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, window_size=14,
                  global_attn_indexes=(2, 5, 8, 11), output_channels=256, decoder_heads=8),
}


def preset_config(name: str):
    return build_sam_config(**PRESETS[name])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(functions: dict, repeats: int, device: torch.device, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, run in turn A, B, A, B, ... so machine noise hits all alike."""
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}"


def write_result(name: str, text: str, append: bool = False) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    with path.open("a" if append else "w") as handle:
        handle.write(text)
    return path
