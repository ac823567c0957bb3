"""Quality at the floor, on the demo's proxy task: the searched winners at <= 10 % and <= 5 % of the base's MACs (the
default space: depth, MLP width, embedding width and input resolution), box and point mIoU on domain B's test
images, next to the zero-shot base, the base fine-tuned for the same steps and the box-as-mask reference, overall
and by object size (where a smaller input resolution should hurt: objects under one token of its grid).

Each seed is one `supersam demo --prompt_type mixed --size_metric macs --size_reductions 0.9 0.95` run (its own
folder; a run with more budgets, e.g. `0.3 0.5 0.7 0.9 0.95` shared with benchmarks/paper_proxy.py, serves too); the
overall table is read from the runs' `demo_state.json`. The by-size table re-scores each model on the run's test
split with the demo's own evaluation batches, prompts and seed, keeping each object's IoU and visible area (checked:
the mean over all objects equals the recorded mIoU). Masks are scored at the original image size whatever the
subnet's input resolution (`SamProcessor.post_process_masks`), so the rows compare.

    python benchmarks/resolution_proxy.py --seeds 0 1 2             # the default demo sizes (long)
    python benchmarks/resolution_proxy.py --seeds 0 1 2 --image_size_choices 32 48 64 96 128  # down to 1/4 size
    python benchmarks/resolution_proxy.py --quick --seeds 0         # --quick demo sizes
    python benchmarks/resolution_proxy.py --from_runs /tmp/run_s0   # only read finished runs
    python benchmarks/resolution_proxy.py --smoke                   # seconds: one tiny demo run; temporary folder
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, SMOKE_DEMO_SIZES, SMOKE_HELP, smoke_folder, write_result
from supersam_hf import SubnetConfig
from supersam_hf.arguments import EvaluateArguments
from supersam_hf.cli import main as cli_main
from supersam_hf.data import load_segmentation_dataset
from supersam_hf.evaluation import GatheredMetric
from supersam_hf.evaluation.inputs import batches_to_score
from supersam_hf.evaluation.masks import score_batches
from supersam_hf.loading import load_processor, load_sam_model, load_supernet
from supersam_hf.metrics import load_sam_miou

REDUCTIONS = (0.9, 0.95)
PROMPTS = ("box", "point")
# Object sizes by visible area, in tokens of a half-size input's grid (the demo's default space's smallest input: at 64
# of 128 px with patch 8, one token covers 1/64 of the image), whatever input resolutions the runs' space offers.
SIZE_BINS = (("small (< 1 token)", 0, 1), ("medium (1-2 tokens)", 1, 2), ("large (≥ 2 tokens)", 2, float("inf")))
TOKENS_PER_IMAGE = 64
# --smoke: the tiny demo run the other benchmarks are smoke-tested on, with a base trained here (the shipped stand-in
# has its own, larger sizes).
SMOKE = ["--train_base"] + [str(v) for name, value in SMOKE_DEMO_SIZES.items() for v in (f"--{name}", value)]


def run_seed(folder: Path, seed: int, quick: bool, smoke: bool, search_budget: int | None,
             image_size_choices: list[int] | None = None) -> None:
    argv = ["demo", "--output_dir", str(folder), "--seed", str(seed), "--prompt_type", "mixed", "--size_metric", "macs",
            "--size_reductions", *map(str, REDUCTIONS)]
    argv += ["--image_size_choices", *map(str, image_size_choices)] if image_size_choices else []
    argv += ["--quick"] if quick else []
    argv += SMOKE if smoke else []
    argv += ["--search_budget", str(search_budget)] if search_budget and not smoke else []
    if (folder / "demo_state.json").exists():
        argv.append("--resume")
    code = cli_main(argv)
    if code != 0:
        raise SystemExit(f"the demo for seed {seed} failed (exit {code}); see its output above")


def _winners(state: dict) -> dict[str, dict]:
    """The run's winners under REDUCTIONS; a budget the run did not search (below its supernet's smallest subnet,
    which the demo refuses) is left out, and the report's header says which budgets it covers."""
    return {f"winner ≤ {1 - r:.0%} MACs": state[f"search_{int(r * 100)}"] for r in REDUCTIONS
            if f"search_{int(r * 100)}" in state}


def rows_of(folder: Path) -> dict[str, dict]:
    """Per model of one run: MACs fraction, subnet name, box and point mIoU."""
    state = json.loads((folder / "demo_state.json").read_text())
    base_macs = state["summary"]["base_macs"] if "summary" in state else None
    mious = lambda result: {p: result["by_prompt"][p]["miou"] for p in PROMPTS}  # noqa: E731
    rows = {"base, zero-shot": {"macs": 1.0, "name": "-", **mious(state["zero_shot"])},
            "base, fine-tuned": {"macs": 1.0, "name": "-", **mious(state["finetuned"])}}
    for model, stage in _winners(state).items():
        name = json.loads((Path(stage["folder"]) / "subnet.json").read_text())["name"]
        rows[model] = {"macs": stage["macs"] / base_macs if base_macs else float("nan"), "name": name, **mious(stage["test"])}
    reference = state["zero_shot"]["by_prompt"]["box"]["box_reference_miou"]
    rows["the box itself as the mask"] = {"macs": None, "name": "-", "box": reference, "point": None}
    return rows


@torch.no_grad()
def object_scores(model, data, processor, prompt: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, visible area in pixels) per object of `data`, scored as the demo's evaluation scores them (its batches,
    prompts and seed, the model's own mask choice, original size); `model` None: the box itself as the mask."""
    batches, _, _ = batches_to_score(data, processor, prompt, EvaluateArguments().batch_size, None, seed)
    recorder = GatheredMetric(load_sam_miou(keep_in_memory=True, experiment_id="resolution-proxy"))
    if model is not None:
        model.eval()
    score_batches(model, batches, processor, "single", {"model" if model is not None else "box_reference": recorder},
                  show_progress=False)
    stats = np.concatenate(recorder.stats)
    return recorder.module.iou_and_dice(stats)[0], stats[:, 2]


def by_size_of(folder: Path) -> dict[str, dict]:
    """Per model of one run: {prompt: [mIoU per SIZE_BINS entry]}, plus the objects per bin ("objects")."""
    state = json.loads((folder / "demo_state.json").read_text())
    test = load_segmentation_dataset(folder / "data" / "domain_B", split="test")
    base = state["base"]["path"]  # the base's folder (the shipped stand-in: its HF-cache snapshot)
    processor = load_processor(base)
    token = test[0]["image"].size[0] * test[0]["image"].size[1] / TOKENS_PER_IMAGE
    models = {"base, zero-shot": (lambda: load_sam_model(base), processor, state["zero_shot"]),
              "base, fine-tuned": (lambda: load_supernet(folder / "finetuned", device="cpu").extract_subnet(), processor,
                                   state["finetuned"])}
    models.update({name: (lambda f=stage["folder"]: load_sam_model(f), load_processor(stage["folder"]), stage["test"])
                   for name, stage in _winners(state).items()})
    supernet, macs = load_supernet(folder / "supernet", device="cpu"), {}
    for name, stage in _winners(state).items():  # what the input resolution costs: the same subnet at the full one
        subnet = SubnetConfig.from_dict(stage["subnet"])
        if subnet.image_size is not None:
            full = dataclasses.replace(subnet, image_size=None)
            models[f"{name}, its subnet at full resolution"] = (lambda c=full: supernet.extract_subnet(c), processor, None)
            macs[f"{name}, its subnet at full resolution"] = supernet.count_macs(full) / supernet.count_macs()
    masks = lambda area: [(area >= lo * token) & (area < hi * token) for _, lo, hi in SIZE_BINS]  # noqa: E731
    binned = lambda iou, area: [float(iou[m].mean()) if m.any() else None for m in masks(area)]  # noqa: E731
    rows = {}
    for name, (load, model_processor, recorded) in models.items():
        model, rows[name] = load(), {"macs": macs.get(name)}
        for prompt in PROMPTS:
            seed = (recorded or state["zero_shot"])["by_prompt"][prompt]["seed"]
            iou, area = object_scores(model, test, model_processor, prompt, seed)
            if recorded is not None and abs(iou.mean() - recorded["by_prompt"][prompt]["miou"]) > 1e-6:
                raise SystemExit(f"{folder}: re-scoring {name} ({prompt}) gives {iou.mean():.6f}, the run recorded "
                                 f"{recorded['by_prompt'][prompt]['miou']:.6f}: not the demo's evaluation")
            rows[name][prompt] = binned(iou, area) + [float(iou.mean())]
    iou, area = object_scores(None, test, processor, "box", state["zero_shot"]["by_prompt"]["box"]["seed"])
    rows["the box itself as the mask"] = {"box": binned(iou, area) + [float(iou.mean())], "point": [None] * (len(SIZE_BINS) + 1)}
    rows["objects"] = [int(m.sum()) for m in masks(area)]
    return rows


def _stat(numbers: list) -> str:
    numbers = [n for n in numbers if n is not None]
    if not numbers:
        return "-"
    spread = f" ± {statistics.stdev(numbers):.3f}" if len(numbers) > 1 else ""
    return f"{statistics.mean(numbers):.3f}{spread}"


def table(runs: list[Path]) -> str:
    per_run = [rows_of(folder) for folder in runs]
    lines = []
    for model in per_run[0]:
        values = [r[model] for r in per_run]
        macs = "-" if values[0]["macs"] is None else f"{statistics.mean(v['macs'] for v in values):.2%}"
        names = ", ".join(sorted({f"`{v['name']}`" for v in values})) if values[0]["name"] != "-" else "-"
        lines.append(f"| {model} | {macs} | {names} | {_stat([v['box'] for v in values])} | "
                     f"{_stat([v['point'] for v in values])} |")
    return ("| model | MACs of the base | subnet(s) | box mIoU | point mIoU |\n|---|---|---|---|---|\n"
            + "\n".join(lines) + "\n")


def size_table(runs: list[Path]) -> str:
    """mIoU by object size, mean ± std over runs (each run's mIoU over its objects of that size)."""
    per_run = [by_size_of(folder) for folder in runs]
    objects = [sum(r["objects"][k] for r in per_run) for k in range(len(SIZE_BINS))]
    header = " | ".join(f"{p} {label} ({n} objects)" for p in PROMPTS
                        for (label, _, _), n in zip(SIZE_BINS + (("all", 0, 0),), objects + [sum(objects)]))
    lines = [f"| model | {header} |", "|---" * (1 + len(PROMPTS) * (len(SIZE_BINS) + 1)) + "|"]
    for model in per_run[0]:
        if model != "objects" and all(model in r for r in per_run):
            cells = [_stat([r[model][p][k] for r in per_run]) for p in PROMPTS for k in range(len(SIZE_BINS) + 1)]
            cost = [r[model].get("macs") for r in per_run if r[model].get("macs")]
            label = f"{model} ({statistics.mean(cost):.1%} MACs)" if cost else model
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="The demo's --quick sizes.")
    parser.add_argument("--search_budget", type=int, default=24, help="Subnets scored per search (demo default: 10 quick).")
    parser.add_argument("--runs_dir", default=None, help="Where the demo runs go (default: a temporary folder).")
    parser.add_argument("--from_runs", nargs="+", default=None, help="Only read these finished demo runs.")
    parser.add_argument("--image_size_choices", type=int, nargs="+", default=None,
                        help="The demo's --image_size_choices (default: its own, 50 / 75 / 100 %% of the base's).")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    report_folder = smoke_folder("resolution_proxy") if args.smoke else RESULTS
    if args.smoke:
        args.from_runs, args.runs_dir = None, str(report_folder / "runs")
        args.image_size_choices = args.image_size_choices or [16, 32, 64]  # the tiny base's 64 px, patch 16

    if args.from_runs:
        runs = [Path(p) for p in args.from_runs]
    else:
        base = Path(args.runs_dir or tempfile.mkdtemp(prefix="resolution_proxy_"))
        seeds = args.seeds[:1] if args.smoke else args.seeds
        runs = [base / f"seed{seed}" for seed in seeds]
        for seed, folder in zip(seeds, runs):
            run_seed(folder, seed, args.quick, args.smoke, args.search_budget, args.image_size_choices)
    spaces = {tuple(json.loads((run / "supernet" / "config.json").read_text())["image_size_choices"]) for run in runs}
    if len(spaces) != 1:
        raise SystemExit(f"the runs' supernets offer different input resolutions {sorted(spaces)}: not one experiment")
    resolutions = " ".join(map(str, spaces.pop()))
    out = f"""# Quality at the floor (proxy task, {datetime.date.today()})

{len(runs)} run(s) of `supersam demo --prompt_type mixed --size_metric macs --size_reductions ... {' '.join(map(str, REDUCTIONS))}`
(input resolutions of the space: {resolutions} px; {', '.join(str(p) for p in runs)}); mean ± standard deviation over runs; mIoU on domain B's test images, one prompt
per object, the model's own mask choice, scored at the original image size.

{table(runs)}
## By object size

Objects binned by visible area, in tokens of a half-size input's grid (the default space's smallest input; one token =
1/{TOKENS_PER_IMAGE} of the image); each cell is the mIoU over a run's objects of that size, mean ± std over runs. "At full resolution":
the winner's subnet (same layers and widths, same supernet weights) fed the full-size input instead (more MACs, so
outside the budget): what its input resolution costs, by object size (a row appears when every run's winner has a
smaller input).

{size_table(runs)}"""
    print(out)
    print(f"wrote {write_result('resolution_proxy.md', out, folder=report_folder)}")


if __name__ == "__main__":
    main()
