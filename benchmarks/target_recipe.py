"""The target-domain (B) stage's recipe, by measurement: learning rate x steps of fine-tuning the stand-in base on B
(issue 13; not a test).

The demo fine-tunes the base on B as its baseline and sandwich-trains the supernet with the same learning rate and
steps. Both start from a base that scores ~0 zero-shot on B, so B's stage is close to learning from scratch and its
learning rate matters. This script takes a finished `supersam demo` run (its `base/` and `data/`), fine-tunes the
base on B's training split with the demo's batch and loss for each (learning rate, steps), and scores it on B's test
split with box and point prompts next to the box reference.

    python benchmarks/target_recipe.py --run runs/paper_proxy/seed0 --seed 0 --learning_rates 2e-4 5e-4 1e-3 --steps 400
    python benchmarks/target_recipe.py --smoke    # seconds: on a tiny demo run of its own, 2 steps; temporary folder

Appends to benchmarks/results/target_recipe.jsonl and rewrites target_recipe.md from it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from _common import RESULTS, SMOKE_HELP, describe_machine, smoke_demo_run, smoke_folder, write_result
from supersam_hf.data import load_segmentation_dataset
from supersam_hf.evaluation import evaluate_model
from supersam_hf.loading import load_processor, load_supernet
from supersam_hf.commands.demo import stage_training_arguments
from supersam_hf.training import train_supernet

LOG = RESULTS / "target_recipe.jsonl"


def fine_tune(run: Path, out: Path, learning_rate: float, steps: int, seed: int) -> float:
    """The demo's fine-tuning baseline (commands/demo.py, _train with largest_only=True) at another learning rate."""
    sizes = json.loads((run / "demo_state.json").read_text())["plan"]["sizes"]
    started = time.time()
    train_supernet(stage_training_arguments(out, run / "base", run / "data" / "domain_B", steps, sizes, largest_only=True,
                                            learning_rate=learning_rate, prompt_type="mixed", seed=seed))
    return time.time() - started


def measure(run: Path, learning_rate: float, steps: int, seed: int, scratch: Path) -> dict:
    out = scratch / f"lr{learning_rate:g}_steps{steps}"
    seconds = fine_tune(run, out, learning_rate, steps, seed)
    processor = load_processor(run / "base")
    test = load_segmentation_dataset(run / "data" / "domain_B", split="test")
    model = load_supernet(out, device="cpu").extract_subnet()
    box = evaluate_model(model, test, processor, prompt="box", mask_selection="single", seed=seed,
                         show_progress=False, box_reference=True)
    point = evaluate_model(model, test, processor, prompt="point", mask_selection="single", seed=seed,
                           show_progress=False)
    return {"run": str(run), "seed": seed, "learning_rate": learning_rate, "steps": steps, "train_s": round(seconds),
            "threads": torch.get_num_threads(), "box": box["miou"], "box_reference": box["box_reference_miou"],
            "point": point["miou"], "num_objects": box["num_objects"], "date": str(datetime.date.today())}


READING = """
## Reading (2026-11-30, seed 0 of the demo's default sizes: base 2000 steps on A, 400 steps on B, 171 test objects)

- The base scores 0.070 box / 0.062 point on B zero-shot (box reference 0.378): B is nearly learned from scratch,
  so the learning rate of B's stage matters. 1e-3 beats 2e-4 by +0.044 box and +0.032 point at the same 400
  steps; 5e-4 lies between. The demo now uses 1e-3 on B with the stand-in base, for the fine-tuned baseline and the
  supernet alike (`--learning_rate`; 2e-4 stays the default with a given pretrained checkpoint, which already
  segments and should be moved gently).
- Train seconds are not comparable between rows (the machine ran 3-4 jobs at once).
- Reproducible: the 2e-4 row equals the demo's own fine-tuned baseline of the same run (0.5129 box) to 4 decimals.
"""


def write_table(log: Path = LOG, folder: Path = RESULTS) -> Path:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    lines = ["| run | seed | learning rate | steps | train s | box mIoU | box ref | box − ref | point mIoU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['run']).name} | {r['seed']} | {r['learning_rate']:g} | {r['steps']} | {r['train_s']} | "
                     f"{r['box']:.3f} | {r['box_reference']:.3f} | {r['box'] - r['box_reference']:+.3f} | {r['point']:.3f} |")
    text = f"""# Target-domain stage recipe: fine-tuning the stand-in base on domain B

`benchmarks/target_recipe.py` on finished `supersam demo` runs: the demo's base (trained on hard-shapes domain A)
fine-tuned on B's training split with the demo's batch, dice + BCE loss and mixed prompts, at several learning
rates and steps; mIoU on B's held-out test split (one prompt per object, the model's own mask choice), next to the
box itself as the mask. {describe_machine(torch.device("cpu"))}.

""" + "\n".join(lines) + "\n" + READING
    return write_result("target_recipe.md", text, folder=folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="A finished `supersam demo` output folder (required unless --smoke).")
    parser.add_argument("--seed", type=int, default=0, help="The run's --seed.")
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[2e-4, 5e-4, 1e-3])
    parser.add_argument("--steps", type=int, nargs="+", default=[400])
    parser.add_argument("--scratch", default="runs/target_recipe", help="Where the fine-tuned models go.")
    parser.add_argument("--table", action="store_true", help="Only rewrite target_recipe.md from the log.")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    if args.smoke:
        folder = smoke_folder("target_recipe")
        result = measure(smoke_demo_run(folder / "run", seed=0, reductions=(0.5,)), 1e-3, 2, 0, folder / "scratch")
        (folder / "target_recipe.jsonl").write_text(json.dumps(result) + "\n")
        print(f"written to {write_table(folder / 'target_recipe.jsonl', folder)}", flush=True)
        return
    if args.run is None and not args.table:
        parser.error("give --run (a finished demo folder), --table or --smoke")
    if not args.table:
        for steps in args.steps:
            for learning_rate in args.learning_rates:
                result = measure(Path(args.run), learning_rate, steps, args.seed, Path(args.scratch))
                RESULTS.mkdir(exist_ok=True)
                with LOG.open("a") as handle:
                    handle.write(json.dumps(result) + "\n")
                print(json.dumps(result), flush=True)
    print(f"written to {write_table()}", flush=True)


if __name__ == "__main__":
    main()
