"""In-place distillation on vs off for narrow embedding widths: same supernet, data, seed and step budget.

A small SAM (random init, no pretrained SAM offline) is converted into a supernet with the three-dimensional space
(depth, MLP width, embedding width at 50 / 75 / 100 % of the heads) and sandwich-trained on synthetic shapes twice,
with `distill_weight` 0 and > 0 (the largest subnet's masks as soft targets for the smallest and the sampled
subnets). Both supernets are then scored on held-out images (box and point prompts, `evaluate_model`) at the
narrowest and a middle embedding width (full depth and MLP), the sandwich's smallest subnet, and the largest.

    # the two trainings can run side by side (one core each), then the report collects them
    OMP_NUM_THREADS=1 python benchmarks/distill_width.py train --distill_weight 0 &
    OMP_NUM_THREADS=1 python benchmarks/distill_width.py train --distill_weight 1 &
    wait; python benchmarks/distill_width.py report

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
from _common import RESULTS, describe_machine  # noqa: E402

from supersam_hf import SuperSamModel, build_sam_config  # noqa: E402
from supersam_hf.data import build_sam_processor, make_synthetic_shapes  # noqa: E402
from supersam_hf.evaluation import EvaluationData, evaluate_model  # noqa: E402
from supersam_hf.training import SupernetTrainingArguments, train_supernet  # noqa: E402

SIZES = dict(image_size=128, hidden_size=128, num_hidden_layers=6, num_attention_heads=4, window_size=4, output_channels=64)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["train", "report"])
    parser.add_argument("--distill_weight", type=float, default=0.0, help="train: the run's distillation weight.")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0], help="report: the runs to compare.")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--train_images", type=int, default=256)
    parser.add_argument("--eval_images", type=int, default=32)
    parser.add_argument("--domain", default="B")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="/work/runs/distill_width")
    parser.add_argument("--results", default=str(RESULTS / "distill_width.md"))
    return parser.parse_args(argv)


def run_dir(args, weight: float) -> Path:
    return Path(args.output) / f"distill_{weight:g}"


def initial_supernet(seed: int) -> SuperSamModel:
    """The same random-init supernet for every run (seeded), default search space incl. embedding widths."""
    from transformers import SamModel

    torch.manual_seed(seed)
    return SuperSamModel.from_sam(SamModel(build_sam_config(**SIZES)))


def train(args) -> None:
    out = run_dir(args, args.distill_weight)
    processor = build_sam_processor(SIZES["image_size"])
    data = make_synthetic_shapes(args.train_images, image_size=SIZES["image_size"], seed=100 + args.seed, domain=args.domain)
    training_args = SupernetTrainingArguments(
        model_name_or_path="(random-init small SAM, in memory)", dataset_name=f"synthetic shapes {args.domain}",
        output_dir=str(out), overwrite_output_dir=True, max_steps=args.steps, per_device_train_batch_size=2,
        learning_rate=5e-4, warmup_steps=max(1, args.steps // 20), num_random_subnets=2,
        distill_weight=args.distill_weight, prompt_type="mixed",
        # dice + BCE: training from scratch, where SAM's 20:1 focal weighting stalls at empty masks (as the demo).
        loss_type="dice_bce", save_steps=args.steps, eval_steps=0, logging_steps=25, seed=args.seed,
    )
    started = time.time()
    train_supernet(training_args, model=initial_supernet(args.seed), processor=processor, train_dataset=data)
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


def report(args) -> None:
    from supersam_hf.loading import load_supernet

    processor = build_sam_processor(SIZES["image_size"])
    test = make_synthetic_shapes(args.eval_images, image_size=SIZES["image_size"], seed=900 + args.seed, domain=args.domain)
    data = {p: EvaluationData.prepare(test, processor, prompt=p) for p in ("box", "point")}
    table: dict[str, dict[float, dict[str, float]]] = {}
    seconds = {}
    for weight in args.weights:
        folder = run_dir(args, weight)
        supernet = load_supernet(folder, device="cpu").eval()
        seconds[weight] = json.loads((folder / "bench_train.json").read_text())["seconds"]
        for name, cfg in probe_subnets(supernet).items():
            scores = {p: evaluate_model(supernet, d, processor, subnet=cfg, prompt=p, show_progress=False)["miou"]
                      for p, d in data.items()}
            table.setdefault(name, {})[weight] = scores
            print(f"distill {weight:g} | {name}: box {scores['box']:.4f} point {scores['point']:.4f}", flush=True)
    write_report(args, table, seconds)


def write_report(args, table: dict, seconds: dict) -> None:
    off, on = args.weights[0], args.weights[-1]
    header = " | ".join(f"distill {w:g}: box / point" for w in args.weights)
    lines = [
        "# In-place distillation on vs off, narrow embedding widths",
        "",
        f"A random-init SAM ({SIZES}) converted to a supernet (default space: 5 of 6 layers elastic, MLP widths 25–100 %, "
        f"embedding widths {{50, 75, 100}} % of the heads), sandwich-trained from scratch for {args.steps} steps "
        f"(largest + smallest + 2 sampled subnets per step, batch 2, lr 5e-4, dice+BCE, mixed prompts, seed {args.seed}) "
        f"on {args.train_images} synthetic domain-{args.domain} images, once per distillation weight; everything else "
        "identical. mIoU on "
        f"{args.eval_images} held-out images (one prompt per object, the model's mask choice, original resolution).",
        f"Machine: {describe_machine(torch.device('cpu'))}, shared; training wall time "
        + ", ".join(f"distill {w:g}: {seconds[w]:.0f} s" for w in args.weights) + ".",
        "",
        f"| subnet | {header} | Δ (on − off), box / point |",
        "|---|" + "---:|" * (len(args.weights) + 1),
    ]
    gains = []
    for name, by_weight in table.items():
        cells = " | ".join(f"{by_weight[w]['box']:.4f} / {by_weight[w]['point']:.4f}" for w in args.weights)
        delta = {p: by_weight[on][p] - by_weight[off][p] for p in ("box", "point")}
        if not name.startswith("largest"):
            gains += list(delta.values())
        lines.append(f"| {name} | {cells} | {delta['box']:+.4f} / {delta['point']:+.4f} |")
    mean_gain = sum(gains) / len(gains)
    lines += ["", f"Mean Δ over the non-largest subnets and both prompts: {mean_gain:+.4f} mIoU "
              f"({sum(g > 0 for g in gains)}/{len(gains)} cells improved by distillation)."]
    text = "\n".join(lines) + "\n"
    Path(args.results).write_text(text)
    print(text)


def main(argv=None) -> None:
    args = parse_args(argv)
    train(args) if args.phase == "train" else report(args)


if __name__ == "__main__":
    main()
