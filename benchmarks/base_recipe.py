"""Which recipe trains a stand-in SAM base, from scratch on 2 CPU cores, that really segments?

The demo has no pretrained SAM offline, so it trains a small SAM on synthetic domain A and uses it as the
"pretrained" base. A base that scores below the "box itself as the mask" reference (see
`supersam_hf.evaluation.box_reference_miou`) only copies its prompt, and every comparison built on it says little
about segmentation. This script trains one base per recipe with the project's own APIs (`build_sam_config`,
`build_sam_processor`, `train_supernet` with `largest_only=True`, exactly what the demo calls), evaluates it with
`evaluate_model` for box and point prompts on held-out domain-A images, and prints the box reference alongside.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/base_recipe.py --recipe demo_default
    PYTHONPATH=src python benchmarks/base_recipe.py --recipe patch8 --steps 1500 --threads 2
    PYTHONPATH=src python benchmarks/base_recipe.py --smoke   # seconds: tiny model, 2 steps; temporary folder

Each run appends one JSON line to benchmarks/results/base_recipe.jsonl (the ablation log); base_recipe.md is the
table written from it (`--table`).

Goal (issue 13): box mIoU >= box reference + 0.15 and point mIoU >= 0.6 on A, base training <= ~5-6 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch
from transformers import SamModel

sys.path.insert(0, str(Path(__file__).parent))
from _common import SMOKE_HELP, smoke_folder  # noqa: E402

from supersam_hf.configuration_supersam import build_sam_config  # noqa: E402
from supersam_hf.data import build_sam_processor, make_hard_shapes  # noqa: E402
from supersam_hf.evaluation import box_reference_miou, evaluate_model  # noqa: E402
from supersam_hf.modeling_supersam import SuperSamModel  # noqa: E402
from supersam_hf.training import SupernetTrainingArguments, train_supernet  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LOG = RESULTS / "base_recipe.jsonl"

# The demo's current base (PRESETS["default"] and `_train` in demo.py): patch 16 at 128 px = an 8x8 token grid and
# 32x32 masks, box prompts only, dice + BCE, lr 5e-4, cosine with 5 % warm-up, batch 4, 1500 steps.
DEMO_MODEL = dict(image_size=128, patch_size=16, hidden_size=128, num_hidden_layers=8, num_attention_heads=4,
                  window_size=4, output_channels=64)
DEMO_TRAIN = dict(max_steps=1500, per_device_train_batch_size=4, learning_rate=5e-4, lr_scheduler_type="cosine",
                  warmup_fraction=0.05, prompt_type="box", loss_type="dice_bce", max_instances_per_image=16)

# --smoke: every recipe's code path on a tiny model for 2 steps of batch 2.
SMOKE_OVERRIDES = dict(model=dict(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  window_size=2, output_channels=16),
                       train=dict(max_steps=2, per_device_train_batch_size=2, max_instances_per_image=4))

RECIPES: dict[str, dict] = {
    "demo_default": dict(model={}, train={}),
    "mixed": dict(model={}, train=dict(prompt_type="mixed")),
    "patch8": dict(model=dict(patch_size=8), train=dict(prompt_type="mixed")),
    "patch8_l4": dict(model=dict(patch_size=8, num_hidden_layers=4, window_size=8), train=dict(prompt_type="mixed")),
    "patch8_l4_lr1e3": dict(model=dict(patch_size=8, num_hidden_layers=4, window_size=8),
                            train=dict(prompt_type="mixed", learning_rate=1e-3)),
    "patch8_l4_focal": dict(model=dict(patch_size=8, num_hidden_layers=4, window_size=8),
                            train=dict(prompt_type="mixed", loss_type="focal_dice")),
    "patch8_l4_h96": dict(model=dict(patch_size=8, num_hidden_layers=4, hidden_size=96, window_size=8),
                          train=dict(prompt_type="mixed")),
}


def build_data(root: Path, num_train: int, num_eval: int, image_size: int, seed: int) -> tuple[Path, datasets.Dataset]:
    """Domain-A train split (saved, for train_supernet) and a held-out test split (seeds as the demo's A splits)."""
    data_dir = root / "domain_A"
    train = make_hard_shapes(num_train, image_size, seed=seed + 4, domain="A")
    test = make_hard_shapes(num_eval, image_size, seed=seed + 5, domain="A")
    # The test split doubles as train_supernet's validation split: its periodic eval gives the learning curve.
    datasets.DatasetDict({"train": train, "validation": test}).save_to_disk(data_dir)
    return data_dir, test


def train_base(root: Path, data_dir: Path, model_kwargs: dict, train_kwargs: dict, seed: int, eval_every: int):
    """Train a from-scratch SAM on domain A exactly as the demo does (largest_only train_supernet).

    Returns the base, the training seconds (periodic evaluations included) and the learning curve: (step, mIoU)
    of train_supernet's own evaluation every `eval_every` steps (box prompts for box training, else points)."""
    config = build_sam_config(**model_kwargs)
    processor = build_sam_processor(model_kwargs["image_size"], model_kwargs["patch_size"])
    init_dir = root / "base_init"
    torch.manual_seed(seed)
    SamModel(config).save_pretrained(init_dir)
    processor.save_pretrained(init_dir)
    train_kwargs = dict(train_kwargs)
    steps = train_kwargs["max_steps"]
    warmup = max(1, round(steps * train_kwargs.pop("warmup_fraction")))
    args = SupernetTrainingArguments(
        model_name_or_path=str(init_dir), dataset_name=str(data_dir), train_split_name="train",
        output_dir=str(root / "base_training"), overwrite_output_dir=True, warmup_steps=warmup, largest_only=True,
        num_random_subnets=0, save_steps=steps, eval_steps=eval_every, eval_split_name="validation",
        max_eval_images=None, logging_steps=50, seed=seed, **train_kwargs,
    )
    started = time.perf_counter()
    train_supernet(args)
    seconds = time.perf_counter() - started
    base = SuperSamModel.from_pretrained(root / "base_training").extract_subnet()
    records = [json.loads(line) for line in (root / "base_training" / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], round(r["miou"]["largest"], 3)) for r in records if r.get("type") == "eval"]
    return base.eval(), seconds, curve


def run(recipe: str, overrides: dict, num_train: int, num_eval: int, seed: int, eval_every: int) -> dict:
    spec = RECIPES[recipe]
    model_kwargs = {**DEMO_MODEL, **spec["model"], **overrides.get("model", {})}
    train_kwargs = {**DEMO_TRAIN, **spec["train"], **overrides.get("train", {})}
    with tempfile.TemporaryDirectory(prefix="base_recipe_") as tmp:
        root = Path(tmp)
        data_dir, test = build_data(root, num_train, num_eval, model_kwargs["image_size"], seed)
        base, seconds, curve = train_base(root, data_dir, model_kwargs, train_kwargs, seed, eval_every)
        processor = build_sam_processor(model_kwargs["image_size"], model_kwargs["patch_size"])
        scores = {}
        for prompt in ("box", "point"):
            result = evaluate_model(base, test, processor, prompt=prompt, mask_selection="single", seed=seed,
                                    show_progress=False)
            scores[prompt] = result["miou"]
    reference = box_reference_miou(test, seed=seed)
    return {
        "recipe": recipe, "model": model_kwargs, "train": train_kwargs, "seed": seed, "num_train_images": num_train,
        "num_eval_images": num_eval, "num_objects": reference["num_objects"], "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(), "box_miou": round(scores["box"], 4), "point_miou": round(scores["point"], 4),
        "box_reference": round(reference["miou"], 4), "curve": curve, "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def time_steps(recipes: list[str], steps: int, threads: int, seed: int = 0, overrides: dict | None = None) -> dict[str, float]:
    """Median seconds of one training step (forward + backward + AdamW) of each recipe's model, interleaved.

    Interleaving (A, B, A, B, ...) lets machine noise hit every recipe alike, so the ratios hold on a shared machine
    even when the absolute times do not."""
    import statistics

    from supersam_hf.data import SamCollator, SamSegmentationData, model_inputs
    from supersam_hf.losses import sam_loss

    torch.set_num_threads(threads)
    data = make_hard_shapes(8, 128, seed=seed + 4, domain="A")
    setups = {}
    for name in recipes:
        model_kwargs = {**DEMO_MODEL, **RECIPES[name]["model"], **(overrides or {}).get("model", {})}
        train_kwargs = {**DEMO_TRAIN, **RECIPES[name]["train"], **(overrides or {}).get("train", {})}
        processor = build_sam_processor(model_kwargs["image_size"], model_kwargs["patch_size"])
        examples = SamSegmentationData(data, processor, prompt="box", seed=seed)
        batch = SamCollator(prompt="box")([examples[i] for i in range(train_kwargs["per_device_train_batch_size"])])
        model = SamModel(build_sam_config(**model_kwargs)).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        setups[name] = (model, optimizer, batch)

    def step(name: str) -> float:
        model, optimizer, batch = setups[name]
        started = time.perf_counter()
        out = model(**model_inputs(batch), multimask_output=True)
        sam_loss(out.pred_masks, out.iou_scores, batch["labels"], batch["instance_mask"], loss_type="dice_bce")["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - started

    times: dict[str, list[float]] = {name: [] for name in recipes}
    for repeat in range(steps + 2):
        for name in recipes:
            elapsed = step(name)
            if repeat >= 2:  # warm-up
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def write_table(log: Path = LOG, path: Path = RESULTS / "base_recipe.md") -> Path:
    """benchmarks/results/base_recipe.md from the JSON lines of every run so far."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    lines = ["| recipe | what differs from the demo's base | steps | train s (threads) | box mIoU | box ref | "
             "box − ref | point mIoU | curve (step: mIoU) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        diff = {k: v for k, v in row["model"].items() if DEMO_MODEL.get(k) != v}
        diff.update({k: v for k, v in row["train"].items() if DEMO_TRAIN.get(k) != v and k != "max_steps"})
        if row["num_train_images"] != 600:
            diff["num_train_images"] = row["num_train_images"]
        if row.get("seed", 0) != 0:  # other data (seed + 4 / + 5) and another initialisation
            diff["seed"] = row["seed"]
        curve = ", ".join(f"{step}: {miou:.2f}" for step, miou in row.get("curve", []))
        lines.append(
            f"| {row['recipe']} | {', '.join(f'{k}={v}' for k, v in diff.items()) or '—'} | {row['train']['max_steps']} | "
            f"{row['train_seconds']:.0f} ({row['threads']}) | {row['box_miou']:.3f} | {row['box_reference']:.3f} | "
            f"{row['box_miou'] - row['box_reference']:+.3f} | {row['point_miou']:.3f} | {curve or '—'} |"
        )
    text = path.read_text() if path.exists() else "# Stand-in base recipe\n\n"
    header = text.split("<!-- table -->")[0]
    reading = text[text.index("\n## "):] if "\n## " in text else ""  # the hand-written readings below the table stay
    path.write_text(header + "<!-- table -->\n" + "\n".join(lines) + "\n" + reading)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="demo_default")
    parser.add_argument("--steps", type=int, default=None, help="Override max_steps.")
    parser.add_argument("--override", default="{}", help='JSON {"model": {...}, "train": {...}} on top of the recipe.')
    parser.add_argument("--num_train_images", type=int, default=600)
    parser.add_argument("--num_eval_images", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval_every", type=int, default=500, help="Learning-curve evaluation every N steps (0: off).")
    parser.add_argument("--table", action="store_true", help="Only rewrite base_recipe.md from the log.")
    parser.add_argument("--time", nargs="*", default=None, metavar="RECIPE",
                        help="Only time one training step of these recipes' models (interleaved medians).")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    if args.smoke:
        return smoke(args)
    if args.table:
        print(write_table().read_text())
        return
    if args.time is not None:
        medians = time_steps(args.time or sorted(RECIPES), steps=args.steps or 20, threads=args.threads, seed=args.seed)
        reference = medians.get("demo_default", next(iter(medians.values())))
        for name, seconds in medians.items():
            print(f"{name}: {seconds * 1000:.0f} ms/step ({seconds / reference:.2f}x), {args.threads} threads")
        return
    torch.set_num_threads(args.threads)
    overrides = json.loads(args.override)
    if args.steps is not None:
        overrides.setdefault("train", {})["max_steps"] = args.steps
    row = run(args.recipe, overrides, args.num_train_images, args.num_eval_images, args.seed, args.eval_every)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    write_table()


def smoke(args) -> None:
    """The training + evaluation path, the log and its table (in a temporary folder), and the step timing, tiny."""
    torch.set_num_threads(args.threads)
    folder = smoke_folder("base_recipe")
    row = run(args.recipe, SMOKE_OVERRIDES, num_train=4, num_eval=2, seed=args.seed, eval_every=1)
    (folder / "base_recipe.jsonl").write_text(json.dumps(row) + "\n")
    print(write_table(folder / "base_recipe.jsonl", folder / "base_recipe.md").read_text())
    medians = time_steps(["demo_default", "mixed"], steps=1, threads=args.threads, seed=args.seed, overrides=SMOKE_OVERRIDES)
    print({name: f"{seconds * 1000:.0f} ms/step" for name, seconds in medians.items()})


if __name__ == "__main__":
    sys.exit(main())
