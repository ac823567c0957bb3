"""Cost of one sandwich-rule step (ratios within one run; not a test).

One step of `supersam_hf.training.sandwich_backward` with 4 subnets (largest, smallest, 2 sampled; the same
mini-batch, gradients accumulated, each slot's graph freed by its own backward) against
1. the sum of the four subnets' separate forward+backward passes — goal: time ≤ 1.10 × the sum;
2. the largest subnet's forward+backward alone — goal: peak memory ≤ 1.15 × it (time is reported too).

Time: median of interleaved repeats (A, B, C, ... so machine noise hits all alike).
Peak memory: on CUDA, `torch.cuda.max_memory_allocated` above what is allocated before the step (model, inputs);
on CPU, every mode runs in a fresh subprocess and reports its peak RSS (`ru_maxrss`) above the RSS right before the
step (model and inputs already built) — the memory the step itself needs: gradients + activations.

    python benchmarks/sandwich_step.py                       # CPU
    python benchmarks/sandwich_step.py --device cuda --preset small --batch 4
    python benchmarks/sandwich_step.py --smoke               # seconds, tiny model, report in a temporary folder
Writes benchmarks/results/sandwich_step.md (appends a section per run).
"""

from __future__ import annotations

import argparse
import datetime
import os
import gc
import json
import resource
import subprocess
import sys

import torch
from accelerate import Accelerator

from _common import PRESETS, SMOKE_HELP, describe_machine, interleaved_medians, smoke_folder, write_result
from supersam_hf import SuperSamModel, build_sam_config
from supersam_hf.elastic import RESOLUTION
from supersam_hf.losses import sam_loss
from supersam_hf.training import sandwich_backward, sandwich_subnets

CONFIGS = {"bench": dict(image_size=128, hidden_size=128, num_hidden_layers=8, num_attention_heads=4, window_size=4),
           **PRESETS}
MODES = ("sandwich", "largest", "smallest", "random_1", "random_2")


def setup(args):
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=args.device == "cpu")
    device = accelerator.device
    config = build_sam_config(**CONFIGS[args.preset])
    model = SuperSamModel(config).to(device).train()
    size = config.vision_config.image_size
    low = size // 4
    g = torch.Generator().manual_seed(0)
    inputs = {
        "pixel_values": torch.randn(args.batch, 3, size, size, generator=g).to(device),
        "input_points": (torch.rand(args.batch, args.prompts, 1, 2, generator=g) * size).to(device),
        "input_labels": torch.ones(args.batch, args.prompts, 1, dtype=torch.long).to(device),
    }
    labels = (torch.rand(args.batch, args.prompts, low, low, generator=g) > 0.5).float().to(device)
    instance_mask = torch.ones(args.batch, args.prompts, dtype=torch.bool, device=device)
    slots = sandwich_subnets(model.search_space, seed=0, step=0, num_random=2)

    def run(mode: str):
        def step():
            model.zero_grad(set_to_none=True)
            if mode == "sandwich":
                sandwich_backward(accelerator, model, inputs, labels, instance_mask, slots)
                return
            with model.subnet(dict(slots)[mode]):
                out = model(**inputs, multimask_output=True)
                # As sandwich_backward: a smaller-input subnet's masks upsampled to the targets' size.
                pred_masks = RESOLUTION.masks_like(out.pred_masks, labels)
                sam_loss(pred_masks, out.iou_scores, labels, instance_mask)["loss"].backward()

        return step

    return model, slots, run, device


def rss_kib() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() // 1024


def measure_memory_here(args, mode: str) -> dict:
    """Peak memory of one step of `mode` above the memory held just before it (this process only)."""
    model, _, run, device = setup(args)
    step = run(mode)
    gc.collect()
    if device.type == "cuda":
        step()  # warm-up: cuBLAS workspaces and the like would otherwise count for whichever mode runs first
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return {"peak_mib": (torch.cuda.max_memory_allocated() - before) / 2**20}
    before = rss_kib()
    baseline_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    step()  # twice: the second run reuses the allocator's memory; the peak is the same unless something grows
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (max(peak, baseline_peak) - before) / 1024, "setup_peak_above_before_mib": (baseline_peak - before) / 1024}


def measure_memory(args, mode: str) -> float:
    """Fresh subprocess per mode on CPU (RSS high-water marks never go down); in-process on CUDA and in --smoke
    (one Python start less per mode; a smoke run's memory figures mean nothing)."""
    if args.device != "cpu" or args.smoke:
        return measure_memory_here(args, mode)["peak_mib"]
    command = [sys.executable, __file__, "--_memory_mode", mode, "--device", args.device, "--preset", args.preset,
               "--batch", str(args.batch), "--prompts", str(args.prompts), "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    if data.get("setup_peak_above_before_mib", 0) >= data["peak_mib"]:  # equal: the step never raised the peak
        raise RuntimeError(f"Setup peaked above the step in {mode}; the RSS measurement is not meaningful: {data}")
    return data["peak_mib"]

START_LOAD = os.getloadavg()[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="bench", choices=sorted(CONFIGS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=4, help="instances (prompts) per image")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    parser.add_argument("--_memory_mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.batch, args.prompts, args.repeats = "smoke", 1, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory_mode:
        print(json.dumps(measure_memory_here(args, args._memory_mode)))
        return

    model, slots, run, device = setup(args)
    times = interleaved_medians({mode: run(mode) for mode in MODES}, args.repeats, device)
    separate = sum(times[m] for m in MODES[1:])
    del model, run
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    memory = {mode: measure_memory(args, mode) for mode in ("sandwich", "largest")}

    time_vs_sum = times["sandwich"] / separate
    time_vs_largest = times["sandwich"] / times["largest"]
    mem_ratio = memory["sandwich"] / memory["largest"]
    config = build_sam_config(**CONFIGS[args.preset]).vision_config
    memory_how = ("torch.cuda.max_memory_allocated above the allocation before the step" if device.type == "cuda"
                  else "peak RSS (ru_maxrss) above the RSS before the step, each mode in a fresh subprocess")
    rows = "\n".join(f"| {name} | `{cfg.name}` | {times[name] * 1e3:.1f} |" for name, cfg in slots)
    load_note = (f" Load average when started: {START_LOAD:.1f} on {os.cpu_count()} cores (shared machine)."
                 if device.type == "cpu" else "")
    text = f"""
## {args.preset} model, batch {args.batch} × {args.prompts} prompts — {describe_machine(device)} ({datetime.date.today()})

Model: {config.num_hidden_layers} layers, hidden {config.hidden_size}, mlp {config.mlp_dim}, image {config.image_size} px;
fp32, training mode. Median of {args.repeats} interleaved repeats.{load_note}

| slot | subnet | separate fwd+bwd (ms) |
|---|---|---|
{rows}
| **sum of the four** | | **{separate * 1e3:.1f}** |
| **one sandwich step** (`sandwich_backward`, 4 slots) | | **{times['sandwich'] * 1e3:.1f}** |

**Time:** sandwich / sum of separate = **{time_vs_sum:.3f}** (goal ≤ 1.10: {'met' if time_vs_sum <= 1.10 else 'not met'});
sandwich / largest alone = {time_vs_largest:.2f}.

**Peak memory** ({memory_how}): sandwich {memory['sandwich']:.1f} MiB vs largest alone {memory['largest']:.1f} MiB
→ ratio **{mem_ratio:.3f}** (goal ≤ 1.15: {'met' if mem_ratio <= 1.15 else 'not met'}).
"""
    print(text)
    folder = {"folder": smoke_folder("sandwich_step")} if args.smoke else {}
    print(f"appended to {write_result('sandwich_step.md', text, append=True, **folder)}")


if __name__ == "__main__":
    main()
