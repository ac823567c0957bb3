"""In-place distillation on vs off for narrow embedding widths: same supernet, data, seed and step budget.

No pretrained SAM is reachable offline, so a small stand-in base is trained first (the full model only, from random
init, as the demo does), then converted into a supernet with the three-dimensional space (depth, MLP width,
embedding width at 50 / 75 / 100 % of the heads) and prioritized (MLP neurons, embedding channels and heads
reordered, layer importance). That supernet is sandwich-trained twice for the same steps, with `distill_weight` 0
and > 0 (the largest subnet's masks as soft targets for the smallest and the sampled subnets). Both are scored on
held-out images (box and point prompts, `evaluate_model`) at the narrowest and a middle embedding width (full depth
and MLP), the sandwich's smallest subnet, and the largest.

    OMP_NUM_THREADS=2 python benchmarks/distill_width.py base
    # the two trainings can run side by side (one core each), then the report collects them
    OMP_NUM_THREADS=1 python benchmarks/distill_width.py train --distill_weight 0 &
    OMP_NUM_THREADS=1 python benchmarks/distill_width.py train --distill_weight 1 &
    wait; python benchmarks/distill_width.py report
    python benchmarks/distill_width.py --smoke     # seconds: every phase, tiny model, 2 steps; temporary folder

Writes benchmarks/results/distill_width.md; the trained supernets stay in --output (reused by search_vs_random.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import PRESETS, RESULTS, SMOKE_HELP, describe_machine, smoke_folder  # noqa: E402

from supersam_hf import SuperSamModel, build_sam_config  # noqa: E402
from supersam_hf.data import build_sam_processor, make_synthetic_shapes  # noqa: E402
from supersam_hf.evaluation import EvaluationData, evaluate_model  # noqa: E402
from supersam_hf.training import SupernetTrainingArguments, train_supernet  # noqa: E402

SIZES = dict(image_size=128, hidden_size=128, num_hidden_layers=6, num_attention_heads=4, window_size=4, output_channels=64)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["base", "train", "report"], nargs="?", help="Required unless --smoke.")
    parser.add_argument("--distill_weight", type=float, default=0.0, help="train: the run's distillation weight.")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0], help="report: the runs to compare.")
    parser.add_argument("--base_steps", type=int, default=1000, help="Steps of the stand-in base (full model only).")
    parser.add_argument("--steps", type=int, default=250, help="Sandwich steps of each supernet training.")
    parser.add_argument("--train_images", type=int, default=256)
    parser.add_argument("--eval_images", type=int, default=32)
    parser.add_argument("--domain", default="B")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="/work/runs/distill_width")
    parser.add_argument("--results", default=str(RESULTS / "distill_width.md"))
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP + " Runs every phase.")
    args = parser.parse_args(argv)
    args.sizes = SIZES
    if args.smoke:
        folder = smoke_folder("distill_width")
        args.sizes, args.base_steps, args.steps, args.train_images, args.eval_images = PRESETS["smoke"], 2, 2, 4, 2
        args.output, args.results = str(folder / "runs"), str(folder / "distill_width.md")
    elif args.phase is None:
        parser.error("give the phase: base, train or report (or --smoke)")
    return args


def run_dir(args, weight: float) -> Path:
    return Path(args.output) / f"distill_{weight:g}"


def initial_supernet(seed: int, sizes: dict = SIZES) -> SuperSamModel:
    """The same random-init supernet for every run (seeded), default search space incl. embedding widths."""
    from transformers import SamModel

    torch.manual_seed(seed)
    return SuperSamModel.from_sam(SamModel(build_sam_config(**sizes)))


def base_dir(args) -> Path:
    return Path(args.output) / "base"


def training_arguments(args, out: Path, **overrides) -> SupernetTrainingArguments:
    values = dict(
        model_name_or_path="(in memory)", dataset_name=f"synthetic shapes {args.domain}", output_dir=str(out),
        overwrite_output_dir=True, per_device_train_batch_size=2, prompt_type="mixed",
        # dice + BCE: the base learns from scratch, where SAM's 20:1 focal weighting stalls at empty masks (as the demo).
        loss_type="dice_bce", eval_steps=0, logging_steps=25, seed=args.seed,
    )
    values.update(overrides)
    return SupernetTrainingArguments(**values)


def train_data(args):
    return make_synthetic_shapes(args.train_images, image_size=args.sizes["image_size"], seed=100 + args.seed, domain=args.domain)


def train_base(args) -> None:
    """The stand-in base (full model only, from random init), then converted + prioritized: base/prioritized."""
    from supersam_hf.prioritization import prioritize

    out, processor, data = base_dir(args), build_sam_processor(args.sizes["image_size"]), train_data(args)
    started = time.time()
    supernet = train_supernet(
        training_arguments(args, out / "training", max_steps=args.base_steps, largest_only=True, learning_rate=5e-4,
                           warmup_steps=max(1, args.base_steps // 20), save_steps=args.base_steps),
        model=initial_supernet(args.seed, args.sizes), processor=processor, train_dataset=data,
    )
    prioritize(supernet, data, processor, num_images=32, seed=args.seed, show_progress=False,
               num_elastic_layers=args.sizes["num_hidden_layers"] - 2)  # all but two layers elastic, as the demo
    supernet.save_pretrained(out / "prioritized")
    processor.save_pretrained(out / "prioritized")
    (out / "bench_base.json").write_text(json.dumps({"seconds": time.time() - started, "steps": args.base_steps}))
    print(f"base trained and prioritized in {time.time() - started:.0f} s -> {out / 'prioritized'}", flush=True)


def train(args) -> None:
    """Sandwich-train the prioritized base with this run's distillation weight."""
    from supersam_hf.loading import load_supernet

    out = run_dir(args, args.distill_weight)
    processor = build_sam_processor(args.sizes["image_size"])
    started = time.time()
    train_supernet(
        training_arguments(args, out, max_steps=args.steps, learning_rate=2e-4, warmup_steps=max(1, args.steps // 20),
                           num_random_subnets=2, distill_weight=args.distill_weight, save_steps=args.steps),
        model=load_supernet(base_dir(args) / "prioritized", device="cpu"), processor=processor,
        train_dataset=train_data(args),
    )
    (out / "bench_train.json").write_text(json.dumps({"seconds": time.time() - started, "steps": args.steps,
                                                      "distill_weight": args.distill_weight}))
    print(f"trained distill_weight={args.distill_weight:g} in {time.time() - started:.0f} s -> {out}", flush=True)


def probe_subnets(supernet: SuperSamModel) -> dict:
    """Named subnets scored for every run: the embedding widths at full depth / MLP, the smallest, the largest."""
    space = supernet.search_space
    widths = space.hidden_size_choices
    return {
        f"narrowest width (H{widths[0]}, full depth/MLP)": space.uniform(1.0, hidden_size=widths[0]),
        f"mid width (H{widths[len(widths) // 2]}, full depth/MLP)": space.uniform(1.0, hidden_size=widths[len(widths) // 2]),
        f"smallest ({space.smallest().name})": space.smallest(),
        f"largest ({space.largest().name})": space.largest(),
    }


def score(supernet: SuperSamModel, data: dict, processor) -> dict[str, dict[str, float]]:
    """Box and point mIoU of every probe subnet."""
    table = {}
    for name, cfg in probe_subnets(supernet).items():
        table[name] = {p: evaluate_model(supernet, d, processor, subnet=cfg, prompt=p, show_progress=False)["miou"]
                       for p, d in data.items()}
        print(f"{name}: box {table[name]['box']:.4f} point {table[name]['point']:.4f}", flush=True)
    return table


def report(args) -> None:
    from supersam_hf.loading import load_supernet

    processor = build_sam_processor(args.sizes["image_size"])
    test = make_synthetic_shapes(args.eval_images, image_size=args.sizes["image_size"], seed=900 + args.seed, domain=args.domain)
    data = {p: EvaluationData.prepare(test, processor, prompt=p) for p in ("box", "point")}
    columns = {"before sandwich (prioritized base)": score(load_supernet(base_dir(args) / "prioritized", device="cpu").eval(),
                                                         data, processor)}
    seconds = {}
    for weight in args.weights:
        folder = run_dir(args, weight)
        seconds[weight] = json.loads((folder / "bench_train.json").read_text())["seconds"]
        columns[f"distill {weight:g}"] = score(load_supernet(folder, device="cpu").eval(), data, processor)
    write_report(args, columns, seconds)


def write_report(args, columns: dict[str, dict[str, dict[str, float]]], seconds: dict) -> None:
    off, on = f"distill {args.weights[0]:g}", f"distill {args.weights[-1]:g}"
    lines = [
        "# In-place distillation on vs off, narrow embedding widths",
        "",
        f"A small SAM ({args.sizes}) trained from random init for {args.base_steps} steps (full model only, the stand-in "
        f"base: no pretrained SAM offline), converted to a supernet (embedding widths {{50, 75, 100}} % of the heads, "
        "MLP widths 25–100 %) and prioritized (neurons, channels, heads reordered; 4 of 6 layers elastic), then "
        f"sandwich-trained for {args.steps} steps (largest + smallest + 2 sampled subnets per step, batch 2, lr 2e-4, "
        f"dice+BCE, mixed prompts, seed {args.seed}) on {args.train_images} synthetic domain-{args.domain} images, once "
        "per distillation weight; everything else identical. mIoU on "
        f"{args.eval_images} held-out images (one prompt per object, the model's mask choice, original resolution).",
        f"Machine: {describe_machine(torch.device('cpu'))}, shared; sandwich wall time "
        + ", ".join(f"distill {w:g}: {seconds[w]:.0f} s" for w in args.weights) + ".",
        "",
        "| subnet | " + " | ".join(f"{c}: box / point" for c in columns) + " | Δ (on − off), box / point |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    gains = []
    for name in columns[off]:
        cells = " | ".join(f"{col[name]['box']:.4f} / {col[name]['point']:.4f}" for col in columns.values())
        delta = {p: columns[on][name][p] - columns[off][name][p] for p in ("box", "point")}
        if not name.startswith("largest"):
            gains += list(delta.values())
        lines.append(f"| {name} | {cells} | {delta['box']:+.4f} / {delta['point']:+.4f} |")
    lines += ["", f"Mean Δ over the non-largest subnets and both prompts: {sum(gains) / len(gains):+.4f} mIoU "
              f"({sum(g > 0 for g in gains)}/{len(gains)} cells improved by distillation)."]
    text = "\n".join(lines) + "\n"
    Path(args.results).write_text(text)
    print(text)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.smoke:
        train_base(args)
        for weight in args.weights:
            args.distill_weight = weight
            train(args)
        report(args)
        return
    {"base": train_base, "train": train, "report": report}[args.phase](args)


if __name__ == "__main__":
    main()
