"""Do width subnets run as fast as their MACs say? (ratios within one run; not a test)

1. Image-encoder latency of extracted subnets at ~75 / 50 / 30 % of the full encoder's MACs, three kinds side by
   side: depth/MLP-only subnets (full embedding width, as before the width dimension), width-based ones (fewer
   heads of the same head size, plus whatever depth/MLP cut gets closest to the target) and width+depth ones
   (MLPs kept at full width). Uniform subnets, elastic layers dropped from the end. Reported as time ratio ÷ MACs
   ratio against the full encoder. Goal: ≤ 1.10 at every point.
2. The smallest reachable MACs of a ViT-B-shaped space (`SamConfig()` defaults: 12 layers, hidden 768, 1024 px,
   default search space), with and without the width dimension; analytic, instant. Goal ≤ 25 %.

    OMP_NUM_THREADS=1 python benchmarks/width_latency.py                      # CPU, hidden 256, 8 layers, 512 px
    python benchmarks/width_latency.py --preset vit-b --device cuda --dtype bfloat16
    python benchmarks/width_latency.py --smoke                # seconds, tiny model, report in a temporary folder
Writes benchmarks/results/width_latency.md (one section per run, appended).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import statistics
import time

import torch
from transformers import SamConfig

from _common import PRESETS, SMOKE_HELP, describe_machine, interleaved_medians, smoke_folder, write_result
from supersam_hf import SubnetConfig, SuperSamConfig, SuperSamModel, build_sam_config
from supersam_hf.costs import count_sam_macs, encoder_macs
from supersam_hf.modeling_supersam import export_sam_config


def candidates(supernet: SuperSamModel) -> list[tuple[float, SubnetConfig]]:
    """(encoder MACs fraction, subnet) of every uniform subnet: elastic layers dropped from the end, one MLP width,
    one embedding width of the space."""
    space = supernet.search_space
    vision = supernet.config.vision_config
    full = encoder_macs(vision, [vision.mlp_dim] * vision.num_hidden_layers)
    elastic_from_end = sorted(space.elastic_layers, reverse=True)
    found = []
    drops, mlps = range(space.num_layers - space.min_layers + 1), sorted(set(space.mlp_dim_choices[0]))
    for n_drop, mlp, hidden in itertools.product(drops, mlps, space.hidden_size_choices):
        dropped = set(elastic_from_end[:n_drop])
        kept = [i for i in range(space.num_layers) if i not in dropped]
        cfg = space.canonical(SubnetConfig(kept, [mlp] * len(kept), hidden_size=hidden))
        widths = [mlp if i in kept else None for i in range(space.num_layers)]
        found.append((encoder_macs(vision, widths, hidden_size=hidden) / full, cfg))
    return found


KINDS = {
    # full embedding width: what the space offered before the width dimension
    "depth/MLP": lambda cfg, mlp_dim: cfg.hidden_size is None,
    # narrower embedding, any depth / MLP width
    "width": lambda cfg, mlp_dim: cfg.hidden_size is not None,
    # narrower embedding and fewer layers, MLPs at full width
    "width+depth": lambda cfg, mlp_dim: cfg.hidden_size is not None and set(cfg.mlp_dims) == {mlp_dim},
}


def pick(found, targets: list[float], kind: str, mlp_dim: int) -> dict[float, tuple[float, SubnetConfig]]:
    """Per target, the subnet of one kind whose MACs fraction is closest to it."""
    pool = [c for c in found if KINDS[kind](c[1], mlp_dim)]
    return {t: min(pool, key=lambda c: abs(c[0] - t)) for t in targets}


def interleaved_cpu_medians(functions: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Like `_common.interleaved_medians`, but in CPU seconds of this process (`time.process_time`): on a CPU shared
    with other jobs, wall-clock time mostly measures the neighbours, the process's own CPU time much less so."""
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def macs_floor() -> list[str]:
    """Rows: smallest subnet of the default ViT-B-shaped space, with and without the width dimension."""
    with torch.device("meta"):
        supernet = SuperSamModel(SuperSamConfig.from_sam_config(SamConfig()))
    space = supernet.search_space
    full = count_sam_macs(supernet.export_config(), per_part=True)
    rows = []
    smallest = space.smallest()
    for label, cfg in (("depth + MLP only", SubnetConfig(smallest.kept_layers, smallest.mlp_dims)), ("+ embedding width", smallest)):
        parts = count_sam_macs(export_sam_config(supernet.config, space.layer_plan(cfg)), per_part=True)
        rows.append(f"| {label} | `{cfg.name}` | {parts['image_encoder'] / full['image_encoder']:.3f} | "
                    f"{parts['total'] / full['total']:.3f} | {'yes' if parts['total'] <= 0.25 * full['total'] else 'no'} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--image_size", type=int, default=512, help="Overrides the preset's image size (CPU default 512).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--clock", default=None, choices=["cpu", "wall"],
                        help="cpu: CPU time of the process (default on CPU; robust on a shared machine); wall: "
                        "wall-clock time (what a user waits for; use it on an idle machine).")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.image_size, args.batch, args.repeats = "smoke", PRESETS["smoke"]["image_size"], 1, 1
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    torch.manual_seed(0)
    config = build_sam_config(**{**PRESETS[args.preset], "image_size": args.image_size})
    supernet = SuperSamModel(SuperSamConfig.from_sam_config(config)).to(device, dtype).eval()
    found = candidates(supernet)
    targets = [0.75, 0.5, 0.3]
    picked = {kind: pick(found, targets, kind, config.vision_config.mlp_dim) for kind in KINDS}
    encoders = {"full": supernet.extract_subnet().eval().vision_encoder}
    for chosen in picked.values():
        for _, cfg in chosen.values():  # a subnet picked for two kinds is timed once
            encoders.setdefault(cfg.name, supernet.extract_subnet(cfg).eval().vision_encoder)
    pixels = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device, dtype=dtype)

    def encode(encoder):
        def run():
            with torch.no_grad():
                encoder(pixels)
        return run

    runs = {k: encode(e) for k, e in encoders.items()}
    if device.type == "cpu" and args.clock != "wall":
        lat, clock = interleaved_cpu_medians(runs, args.repeats), "CPU time of the process (`time.process_time`)"
    else:
        lat, clock = interleaved_medians(runs, args.repeats, device), "wall-clock time, synchronised"
    rows = []
    for target, kind in itertools.product(targets, picked):
        fraction, cfg = picked[kind][target]
        ratio = lat[cfg.name] / lat["full"]
        rows.append(f"| ~{target:.0%} | {kind} | `{cfg.name}` | {fraction:.3f} | {ratio:.3f} | **{ratio / fraction:.3f}** | "
                    f"{'yes' if ratio <= 1.10 * fraction else 'no'} |")
    vision = config.vision_config
    text = f"""
## {args.preset} preset at {args.image_size} px, {args.dtype}, batch {args.batch} — {describe_machine(device)} ({datetime.date.today()})

Encoder: {vision.num_hidden_layers} layers, hidden {vision.hidden_size} ({vision.num_attention_heads} heads of \
{vision.hidden_size // vision.num_attention_heads}), mlp {vision.mlp_dim}, window {vision.window_size}, global layers \
{list(vision.global_attn_indexes)}; embedding widths {list(supernet.config.hidden_size_choices)}. Full encoder \
{lat['full'] * 1e3:.1f} ms, {encoder_macs(vision, [vision.mlp_dim] * vision.num_hidden_layers) / 1e9:.2f} GMACs. \
Median {clock} of {args.repeats} interleaved repeats; MACs from `supersam_hf.costs.encoder_macs` (exact vs FlopCounterMode).

| target | kind | subnet | encoder MACs ratio | time ratio | time ÷ MACs | ≤ 1.10 |
|---|---|---|---|---|---|---|
""" + "\n".join(rows) + """

**Smallest reachable MACs of a ViT-B-shaped space** (`SamConfig()` defaults, default search space; one image, one
point prompt; analytic):

| space | smallest subnet | encoder MACs ratio | whole-model MACs ratio | ≤ 25 % |
|---|---|---|---|---|
""" + "\n".join(macs_floor()) + "\n"
    print(text)
    path = write_result("width_latency.md", text, append=True, **({"folder": smoke_folder("width_latency")} if args.smoke else {}))
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
