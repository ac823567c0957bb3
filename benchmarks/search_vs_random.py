"""OpenTuner search vs uniform random sampling at equal budgets: best feasible mIoU under params / MACs budgets.

Both strategies run through `search_subnets` with the same supernet, search images, prompts, constraint, cache and
budget (= number of subnets scored, the largest-subnet reference included); only the proposal strategy differs.
Because a search is deterministic given its seed, the best feasible mIoU after k scored subnets of one run of
budget B is exactly what a run of budget k finds, so one run per (strategy, seed) gives every budget checkpoint.

    python benchmarks/search_vs_random.py --supernet runs/demo/supernet --dataset runs/demo/data/domain_B \
        --split search --test_split test --constraints params:0.5 macs:0.3
    python benchmarks/search_vs_random.py --supernet /work/runs/distill_width/distill_0   # synthetic B search/test images
    python benchmarks/search_vs_random.py            # no trained supernet: an untrained stand-in (see the results file)
    python benchmarks/search_vs_random.py --smoke    # seconds: tiny stand-in, budget 3, 1 seed; temporary folder

The search space is the supernet's: elastic depth, per-layer MLP width and (supernets with `hidden_size_choices`)
the uniform embedding width. `--previous FILE` keeps an earlier results file below the new tables, labelled.

Writes benchmarks/results/search_vs_random.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import PRESETS, RESULTS, SMOKE_HELP, describe_machine, smoke_folder  # noqa: E402

from supersam_hf import SuperSamModel, build_sam_config  # noqa: E402
from supersam_hf.data import load_segmentation_dataset, make_synthetic_shapes  # noqa: E402
from supersam_hf.evaluation import EvaluationData, evaluate_model  # noqa: E402
from supersam_hf.loading import load_supernet  # noqa: E402
from supersam_hf.search import search_subnets  # noqa: E402

# The untrained stand-in supernet's SAM (without --supernet).
STANDIN = dict(image_size=96, hidden_size=64, num_hidden_layers=6, num_attention_heads=4, window_size=4, output_channels=64)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", help="Trained supernet folder (default: build an untrained, prioritized stand-in).")
    parser.add_argument("--dataset", help="Search data (save_to_disk folder, files or Hub name); default: synthetic domain B.")
    parser.add_argument("--split", default=None, help="Split to search on.")
    parser.add_argument("--test_split", default=None, help="Held-out split on which the final best subnets are also scored.")
    parser.add_argument("--test_images", type=int, default=32, help="Held-out synthetic images (without --dataset).")
    parser.add_argument("--constraints", nargs="+", default=["params:0.5"],
                        help="KIND:FRACTION budgets, one table each: params:0.5 = at most 50%% of the largest subnet's "
                        "parameters, macs:0.3 = at most 30%% of its MACs.")
    parser.add_argument("--budget", type=int, default=24, help="Subnets scored per search (largest budget checkpoint).")
    parser.add_argument("--checkpoints", default="6,12,24", help="Budgets at which the best-so-far is reported.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max_images", type=int, default=16, help="Search images.")
    parser.add_argument("--prompt", default="box", choices=["point", "box"])
    parser.add_argument("--untrained", action="store_true", help="Say in the results that --supernet was not trained.")
    parser.add_argument("--note", default="", help="Where --supernet comes from, written into the results file.")
    parser.add_argument("--previous", default=None, help="An earlier results file, kept (labelled) below the new tables.")
    parser.add_argument("--previous_label", default="Previous run", help="Heading of the --previous section.")
    parser.add_argument("--output", default=str(RESULTS / "search_vs_random.md"))
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    args.standin = STANDIN
    if args.smoke:
        args.standin, args.budget, args.checkpoints, args.seeds = PRESETS["smoke"], 3, "2,3", [0]
        args.max_images, args.test_images, args.constraints = 2, 2, ["params:0.5", "macs:0.5"]
        args.output = str(smoke_folder("search_vs_random") / "search_vs_random.md")
    return args


def standin_supernet(dataset, processor, sizes: dict = STANDIN) -> SuperSamModel:
    """A small SAM (random weights) converted and prioritized on the search data: no supernet training."""
    from supersam_hf.prioritization import prioritize

    torch.manual_seed(0)
    from transformers import SamModel

    sam = SamModel(build_sam_config(**sizes))
    supernet = SuperSamModel.from_sam(sam).eval()
    prioritize(supernet, dataset, processor, num_images=16, show_progress=False)
    return supernet


def best_so_far(evaluations: list[dict], budget: int) -> float | None:
    feasible = [e["miou"] for e in evaluations[:budget] if e["feasible"]]
    return max(feasible) if feasible else None


def fmt(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "–"
    spread = f" ± {statistics.stdev(got):.4f}" if len(got) > 1 else ""
    return f"{statistics.mean(got):.4f}{spread}"


def load_inputs(args):
    """(supernet, processor, search dataset, held-out dataset or None, notes) from the arguments."""
    from transformers import SamProcessor

    from supersam_hf.data import build_sam_processor

    notes = {}
    supernet = processor = None
    if args.supernet:
        supernet = load_supernet(args.supernet, device="cpu", require_supernet=True).eval()
        processor = SamProcessor.from_pretrained(args.supernet)
        notes["trained"] = not args.untrained
        notes["supernet"] = (f"`{args.supernet}` ({'trained' if notes['trained'] else 'not trained'}, prioritized: "
                             f"{supernet.config.prioritized}){': ' + args.note if args.note else ''}")
    image_size = supernet.config.vision_config.image_size if supernet is not None else args.standin["image_size"]
    test = None
    if args.dataset:
        dataset = load_segmentation_dataset(args.dataset, split=args.split)
        notes["data"] = f"`{args.dataset}`" + (f" split `{args.split}`" if args.split else "")
        if args.test_split:
            test = load_segmentation_dataset(args.dataset, split=args.test_split)
    else:
        dataset = make_synthetic_shapes(args.max_images, image_size=image_size, seed=2, domain="B")
        notes["data"] = f"synthetic shapes, domain B (seed 2), {image_size} px"
        if supernet is not None:
            test = make_synthetic_shapes(args.test_images, image_size=image_size, seed=3, domain="B")
            notes["data"] += f"; held-out test: {args.test_images} synthetic domain-B images (seed 3)"
    if supernet is None:
        processor = build_sam_processor(image_size)
        supernet = standin_supernet(dataset, processor, args.standin)
        notes["trained"] = False
        notes["supernet"] = (f"an **untrained** stand-in: a random-weight small SAM ({image_size} px, hidden "
                             f"{args.standin['hidden_size']}, {args.standin['num_hidden_layers']} layers) converted "
                             "and prioritized on the search images, never sandwich-trained")
    return supernet, processor, dataset, test, notes


def constraint_kwargs(spec: str, supernet: SuperSamModel) -> tuple[dict, str]:
    """`search_subnets` keyword arguments and a description of one KIND:FRACTION budget."""
    kind, _, fraction = spec.partition(":")
    fraction = float(fraction)
    if kind == "params":
        full = supernet.count_parameters()
        return {"max_params": int(full * fraction)}, f"at most {fraction:.0%} of the largest subnet's parameters " \
            f"(max_params = {int(full * fraction):,} of {full:,})"
    if kind == "macs":
        full = supernet.count_macs()
        return {"max_macs": int(full * fraction)}, f"at most {fraction:.0%} of the largest subnet's MACs " \
            f"(max_macs = {int(full * fraction):,} of {full:,})"
    raise ValueError(f"Unknown constraint kind {kind!r} in {spec!r}; use params:FRACTION or macs:FRACTION.")


def run_searches(args, supernet, processor, data, test_data, budget_kwargs: dict, workdir: Path) -> tuple[dict, dict]:
    """One search per (seed, strategy) under one budget; the runs and the held-out mIoU of each winner."""
    runs, test_scores = {}, {}
    for seed in args.seeds:
        for strategy in ("opentuner", "random"):
            t0 = time.time()
            result = search_subnets(supernet, data, processor, budget=args.budget, strategy=strategy, seed=seed,
                                    prompt=args.prompt, output_dir=workdir / f"{strategy}_{seed}", show_progress=False,
                                    **budget_kwargs)
            runs[(strategy, seed)] = {"result": result, "seconds": time.time() - t0}
            best = result.best
            print(f"{strategy:>9} seed {seed}: best feasible mIoU {best.metrics['miou'] if best else float('nan'):.4f} "
                  f"({best.subnet.name if best else '-'}), {result.num_proposals} proposals, "
                  f"{result.num_rejected} rejected, {time.time() - t0:.0f} s", flush=True)
            if test_data is not None and best is not None:
                test_scores[(strategy, seed)] = evaluate_model(supernet, test_data, processor, subnet=best.subnet,
                                                               prompt=args.prompt, show_progress=False)["miou"]
    return runs, test_scores


def budget_table(args, runs: dict, test_scores: dict, description: str, seconds: float) -> list[str]:
    """The markdown section of one budget: best-so-far per checkpoint, then the winners per seed."""
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if int(c) <= args.budget} | {args.budget})
    reference = runs[("opentuner", args.seeds[0])]["result"].reference
    scored = {e["name"]: e for run in runs.values() for e in run["result"].evaluations if e["feasible"]}
    spread = [e["miou"] for e in scored.values()]
    widths = sorted({e.get("hidden_size") or 0 for e in scored.values()})
    lines = [
        f"## Budget: {description}",
        "",
        f"- largest subnet (reference): mIoU {reference['miou']:.4f}"
        + (f"; the {len(spread)} distinct feasible subnets scored by all runs span mIoU {min(spread):.4f} to "
           f"{max(spread):.4f}, embedding widths {['full' if w == 0 else w for w in widths]}" if spread else "")
        + f"; {seconds:.0f} s for all runs",
        "",
        "| budget | OpenTuner | random | OpenTuner ≥ random (seeds) |",
        "|---:|---:|---:|---:|",
    ]
    for k in checkpoints:
        ot = [best_so_far(runs[("opentuner", s)]["result"].evaluations, k) for s in args.seeds]
        rnd = [best_so_far(runs[("random", s)]["result"].evaluations, k) for s in args.seeds]
        wins = sum(1 for a, b in zip(ot, rnd) if a is not None and (b is None or a >= b))
        lines.append(f"| {k} | {fmt(ot)} | {fmt(rnd)} | {wins}/{len(args.seeds)} |")
    lines += ["", f"Per seed (budget {args.budget}): best subnet, its params and MACs, proposals made / rejected, wall time.",
              "", "| strategy | seed | best mIoU | subnet | params | MACs | proposals / rejected | seconds |"
              + (" test mIoU |" if test_scores else ""), "|---|---:|---:|---|---:|---:|---:|---:|" + ("---:|" if test_scores else "")]
    for (strategy, seed), run in sorted(runs.items()):
        result, best = run["result"], run["result"].best
        row = (f"| {strategy} | {seed} | {best.metrics['miou']:.4f} | {best.subnet.name} (layers "
               f"{','.join(map(str, best.subnet.kept_layers))}) | {best.metrics['params']:,} | {best.metrics['macs']:,} | "
               f"{result.num_proposals} / {result.num_rejected} | {run['seconds']:.0f} |") if best else \
              f"| {strategy} | {seed} | – | – | – | – | {result.num_proposals} / {result.num_rejected} | {run['seconds']:.0f} |"
        if test_scores:
            row += f" {test_scores.get((strategy, seed), float('nan')):.4f} |"
        lines.append(row)
    return lines + [""]


def main(argv=None) -> None:
    args = parse_args(argv)
    supernet, processor, dataset, test, notes = load_inputs(args)
    space = supernet.search_space
    data = EvaluationData.prepare(dataset, processor, prompt=args.prompt, max_images=args.max_images)
    test_data = EvaluationData.prepare(test, processor, prompt=args.prompt) if test is not None else None
    started = time.time()
    lines = [
        "# OpenTuner vs random subnet search at equal budgets",
        "",
        f"Best feasible mIoU (search images) under each budget below, mean ± std over seeds {args.seeds}. Budget = "
        "subnets scored (mIoU evaluations), the largest-subnet reference included; infeasible proposals are rejected "
        "from their cost without scoring, for both strategies. Random = uniform keep flags, MLP widths and embedding "
        "width, repaired to min_layers (rejection sampling of the feasible set).",
        "",
        f"- supernet: {notes['supernet']}; search space: {len(space.elastic_layers)} elastic of {space.num_layers} "
        f"layers, min_layers {space.min_layers}, MLP widths {list(space.mlp_dim_choices[0])}, embedding widths "
        f"{list(space.hidden_size_choices)}",
        f"- data: {notes['data']}; {data.num_images} search images, one {args.prompt} prompt per object, mask "
        "selection `single` (highest predicted IoU), masks at original resolution",
        f"- machine: {describe_machine(torch.device('cpu'))}",
        "",
    ]
    for spec in args.constraints:
        budget_kwargs, description = constraint_kwargs(spec, supernet)
        t0 = time.time()
        with tempfile.TemporaryDirectory() as workdir:
            runs, test_scores = run_searches(args, supernet, processor, data, test_data, budget_kwargs, Path(workdir))
        lines += budget_table(args, runs, test_scores, description, time.time() - t0)
    lines.append(f"Total {time.time() - started:.0f} s.")
    if not notes["trained"]:
        lines += ["", "**Caveat:** this supernet was not sandwich-trained, so its subnets' mIoU differences are small and "
                  "noisy; rerun on a trained supernet for the numbers that matter."]
    text = "\n".join(lines) + "\n"
    if args.previous:
        text += f"\n---\n\n# {args.previous_label}\n\n" + demote_headings(Path(args.previous).read_text())
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


def demote_headings(text: str) -> str:
    """An earlier results file's markdown with every heading one level lower (it sits under a new heading)."""
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines()) + "\n"


if __name__ == "__main__":
    main()
