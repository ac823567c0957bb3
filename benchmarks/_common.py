"""Shared helpers of the benchmark scripts: timing by interleaved repeats, result files, model presets."""

from __future__ import annotations

import platform
import statistics
import tempfile
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
    # --smoke: the tiniest model that still has elastic layers, MLP and embedding widths (4x4 tokens).
    "smoke": dict(image_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, window_size=2,
                  output_channels=16),
}


# `--smoke`: the real code path at the tiniest sizes, a check that the script still runs (not a measurement).
SMOKE_HELP = ("Run the real code path at the tiniest sizes in seconds (a check, not a measurement); outputs go to a "
              "new temporary folder, never to benchmarks/results/.")
# A tiny `supersam demo` run (stand-in base, mixed prompts, MACs budgets as the paper proxy): what the scripts that
# measure finished demo runs are smoke-tested on.
SMOKE_DEMO_SIZES = dict(image_size=64, patch_size=16, window_size=2, hidden_size=64, num_layers=4, decoder_channels=16,
                        num_train_images=4, num_eval_images=2, num_calibration_images=2, base_steps=2, train_steps=2,
                        search_budget=2, batch_size=2, gradient_accumulation_steps=1)


def smoke_folder(name: str) -> Path:
    """A new temporary folder for the outputs of a `--smoke` run of benchmark `name` (never results/)."""
    folder = Path(tempfile.mkdtemp(prefix=f"smoke_{name}_"))
    print(f"[{name} --smoke] outputs go to {folder}", flush=True)
    return folder


def smoke_demo_run(folder: Path, seed: int = 0, reductions=(0.3, 0.5, 0.7)) -> Path:
    """A finished tiny `supersam demo` run in `folder` (SMOKE_DEMO_SIZES), as the paper proxy runs it (a base trained
    here, `--train_base`: the shipped stand-in has its own, larger sizes)."""
    from supersam_hf.commands.demo import DemoArguments, run_demo

    run_demo(DemoArguments(output_dir=str(folder), seed=seed, train_base=True, prompt_type="mixed", size_metric="macs",
                           size_reductions=list(reductions), **SMOKE_DEMO_SIZES))
    return folder


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


def write_result(name: str, text: str, append: bool = False, folder: Path = RESULTS) -> Path:
    """Write (or append) `text` to `folder / name`: benchmarks/results/ by default, a smoke run's folder in --smoke."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("a" if append else "w") as handle:
        handle.write(text)
    return path
