"""What prompt batching buys evaluation (ratios within one run; not a test).

Images with 16 instances each, inference (eval mode, no_grad):
* batched — how `SamCollator` / `evaluate_model` / training run: one image-encoder pass per image, the image's 16
  prompts decoded together as its prompt batch (`input_points` of shape (B, 16, 1, 2));
* per instance — the naive loop: one forward (so one encoder pass) per instance.
Goal: batched ≥ 8× faster. The masks of both must agree (SAM decodes every prompt independently).

    python benchmarks/prompt_batching.py                     # CPU
    python benchmarks/prompt_batching.py --device cuda --preset small
    python benchmarks/prompt_batching.py --smoke            # seconds, tiny model, report in a temporary folder
Writes benchmarks/results/prompt_batching.md (appends a section per run).
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch

from _common import PRESETS, SMOKE_HELP, describe_machine, interleaved_medians, smoke_folder, write_result
from supersam_hf import SuperSamModel, build_sam_config

CONFIGS = {"bench": dict(image_size=128, hidden_size=128, num_hidden_layers=8, num_attention_heads=4, window_size=4),
           **PRESETS}

START_LOAD = os.getloadavg()[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="bench", choices=sorted(CONFIGS))
    parser.add_argument("--batch", type=int, default=2, help="images per forward")
    parser.add_argument("--instances", type=int, default=16, help="instances (prompts) per image")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.batch, args.instances, args.repeats = "smoke", 1, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    config = build_sam_config(**CONFIGS[args.preset])
    model = SuperSamModel(config).to(device).eval()
    size = config.vision_config.image_size
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.batch, 3, size, size, generator=g).to(device)
    points = (torch.rand(args.batch, args.instances, 1, 2, generator=g) * size).to(device)
    labels = torch.ones(args.batch, args.instances, 1, dtype=torch.long, device=device)

    @torch.no_grad()
    def batched():
        return model(pixel_values=pixels, input_points=points, input_labels=labels).pred_masks

    @torch.no_grad()
    def per_instance():
        masks = [model(pixel_values=pixels, input_points=points[:, i : i + 1], input_labels=labels[:, i : i + 1]).pred_masks
                 for i in range(args.instances)]
        return torch.cat(masks, dim=1)

    max_diff = (batched() - per_instance()).abs().max().item()
    times = interleaved_medians({"batched": batched, "per_instance": per_instance}, args.repeats, device)
    speedup = times["per_instance"] / times["batched"]
    vision = config.vision_config
    images = args.batch
    load_note = (f" Load average when started: {START_LOAD:.1f} on {os.cpu_count()} cores (shared machine)."
                 if device.type == "cpu" else "")
    text = f"""
## {args.preset} model, {images} images × {args.instances} instances — {describe_machine(device)} ({datetime.date.today()})

Model: {vision.num_hidden_layers} layers, hidden {vision.hidden_size}, image {vision.image_size} px; fp32, eval, no_grad.
Median of {args.repeats} interleaved repeats.{load_note}

| mode | encoder passes per image | time per image (ms) |
|---|---|---|
| batched: all {args.instances} prompts in the image's prompt batch | 1 | {times['batched'] / images * 1e3:.1f} |
| per instance: one forward per prompt | {args.instances} | {times['per_instance'] / images * 1e3:.1f} |

**Speed-up of prompt batching: {speedup:.1f}×** (goal ≥ 8×: {'met' if speedup >= 8 else 'not met'}).
Largest |difference| between the two modes' mask logits: {max_diff:.2e}.
"""
    print(text)
    folder = {"folder": smoke_folder("prompt_batching")} if args.smoke else {}
    print(f"appended to {write_result('prompt_batching.md', text, append=True, **folder)}")


if __name__ == "__main__":
    main()
