"""Overhead of the supernet and speed of extracted subnets (ratios within one run; not a test).

1. fwd+bwd time of SuperSamModel at its largest subnet vs vanilla SamModel with the same weights and inputs,
   interleaved repeats, median ratio. Goal ≤ 1.02.
2. Image-encoder latency of extracted subnets at ~75 / 50 / 30 % of the full model's MACs vs the full model.
   Goal: time ratio ≤ 1.10 × MACs ratio.

    python benchmarks/overhead.py --preset small            # CPU
    python benchmarks/overhead.py --preset vit-b --device cuda --dtype bfloat16
    python benchmarks/overhead.py --smoke                   # seconds, tiny model, report in a temporary folder
Appends a section to benchmarks/results/overhead.md.
"""

from __future__ import annotations

import argparse
import datetime
import itertools

import torch
from transformers import SamModel

from _common import SMOKE_HELP, describe_machine, interleaved_medians, preset_config, smoke_folder, write_result
from supersam_hf import SubnetConfig, SuperSamModel
from supersam_hf.costs import encoder_macs


def subnets_near(supernet: SuperSamModel, targets: list[float]) -> dict[float, SubnetConfig]:
    """For each MACs fraction, the uniform-width subnet (dropping elastic layers from the end) closest to it."""
    space = supernet.search_space
    vision = supernet.config.vision_config
    full = encoder_macs(vision, [vision.mlp_dim] * vision.num_hidden_layers)
    candidates = []
    elastic_from_end = sorted(space.elastic_layers, reverse=True)
    for n_drop, width in itertools.product(range(space.num_layers - space.min_layers + 1), sorted(set(space.mlp_dim_choices[0]))):
        dropped = set(elastic_from_end[:n_drop])
        kept = [i for i in range(space.num_layers) if i not in dropped]
        cfg = SubnetConfig(kept, [width] * len(kept))
        macs = encoder_macs(vision, [width if i in kept else None for i in range(space.num_layers)])
        candidates.append((macs / full, cfg))
    return {t: min(candidates, key=lambda c: abs(c[0] - t)) for t in targets}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "vit-b", "smoke"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.batch, args.repeats = "smoke", 1, 1
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    torch.manual_seed(0)
    config = preset_config(args.preset)
    vanilla = SamModel(config).to(device, dtype).train()
    supernet = SuperSamModel.from_sam(vanilla).train()
    size = config.vision_config.image_size
    pixels = torch.randn(args.batch, 3, size, size, device=device, dtype=dtype)
    points = torch.rand(args.batch, 4, 1, 2, device=device, dtype=dtype) * size

    def fwd_bwd(model):
        def step():
            model.zero_grad(set_to_none=True)
            model(pixel_values=pixels, input_points=points).pred_masks.float().square().mean().backward()
        return step

    supernet.set_subnet(supernet.search_space.largest())
    t = interleaved_medians({"vanilla": fwd_bwd(vanilla), "supernet": fwd_bwd(supernet)}, args.repeats, device)
    overhead = t["supernet"] / t["vanilla"]

    # Encoder latency of extracted subnets (inference).
    full_macs = supernet.count_macs()
    encoders = {"full": supernet.extract_subnet().eval().vision_encoder}
    picked = subnets_near(supernet, [0.75, 0.5, 0.3])
    for target, (_, cfg) in picked.items():
        encoders[target] = supernet.extract_subnet(cfg).eval().vision_encoder

    def encode(encoder):
        def run():
            with torch.no_grad():
                encoder(pixels)
        return run

    lat = interleaved_medians({k: encode(e) for k, e in encoders.items()}, args.repeats, device)
    vision = config.vision_config
    rows = []
    for target, (macs_fraction, cfg) in picked.items():
        time_ratio = lat[target] / lat["full"]
        rows.append(f"| ~{target:.0%} | `{cfg.name}` | {macs_fraction:.3f} | {time_ratio:.3f} | {time_ratio / macs_fraction:.3f} | "
                    f"{'yes' if time_ratio <= 1.10 * macs_fraction else 'no'} |")

    text = f"""
## {args.preset} preset, {args.dtype}, batch {args.batch} — {describe_machine(device)} ({datetime.date.today()})

Model: {vision.num_hidden_layers} layers, hidden {vision.hidden_size}, mlp {vision.mlp_dim}, image {vision.image_size} px,
{supernet.count_parameters():,} params, {full_macs / 1e9:.2f} GMACs/image (1 prompt). Median of {args.repeats} interleaved repeats.

**fwd+bwd, SuperSamModel at the largest subnet vs vanilla SamModel:** {t['supernet'] * 1e3:.1f} ms vs {t['vanilla'] * 1e3:.1f} ms
→ ratio **{overhead:.3f}** (goal ≤ 1.02: {'met' if overhead <= 1.02 else 'not met'}).

**Image-encoder latency of extracted subnets vs the full encoder** (full: {lat['full'] * 1e3:.1f} ms; encoder MACs ratio from
`supersam_hf.costs.encoder_macs`):

| target | subnet | encoder MACs ratio | time ratio | time / MACs | ≤ 1.10 × MACs |
|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
    print(text)
    path = write_result("overhead.md", text, append=True, **({"folder": smoke_folder("overhead")} if args.smoke else {}))
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
