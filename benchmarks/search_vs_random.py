"""OpenTuner search vs uniform random sampling at equal budgets: best feasible mIoU under a params budget.

Both strategies run through `search_subnets` with the same supernet, search images, prompts, constraint, cache and
budget (= number of subnets scored, the largest-subnet reference included); only the proposal strategy differs.
Because a search is deterministic given its seed, the best feasible mIoU after k scored subnets of one run of
budget B is exactly what a run of budget k finds, so one run per (strategy, seed) gives every budget checkpoint.

    python benchmarks/search_vs_random.py --supernet runs/demo/supernet --dataset runs/demo/data/domain_B \
        --split search --test_split test
    python benchmarks/search_vs_random.py            # no trained supernet: an untrained stand-in (see the results file)

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
from _common import RESULTS, describe_machine  # noqa: E402

from supersam_hf import SuperSamModel, build_sam_config  # noqa: E402
from supersam_hf.data import load_segmentation_dataset, make_synthetic_shapes  # noqa: E402
from supersam_hf.evaluation import EvaluationData, evaluate_model  # noqa: E402
from supersam_hf.loading import load_supernet  # noqa: E402
from supersam_hf.search import search_subnets  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", help="Trained supernet folder (default: build an untrained, prioritized stand-in).")
    parser.add_argument("--dataset", help="Search data (save_to_disk folder, files or Hub name); default: synthetic domain B.")
    parser.add_argument("--split", default=None, help="Split to search on.")
    parser.add_argument("--test_split", default=None, help="Held-out split on which the final best subnets are also scored.")
    parser.add_argument("--reduction", type=float, default=0.5, help="Params budget: this fraction fewer than the largest subnet.")
    parser.add_argument("--budget", type=int, default=24, help="Subnets scored per search (largest budget checkpoint).")
    parser.add_argument("--checkpoints", default="6,12,24", help="Budgets at which the best-so-far is reported.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max_images", type=int, default=16, help="Search images.")
    parser.add_argument("--prompt", default="box", choices=["point", "box"])
    parser.add_argument("--untrained", action="store_true", help="Say in the results that --supernet was not trained.")
    parser.add_argument("--note", default="", help="Where --supernet comes from, written into the results file.")
    parser.add_argument("--output", default=str(RESULTS / "search_vs_random.md"))
    return parser.parse_args(argv)


def standin_supernet(dataset, processor) -> SuperSamModel:
    """A small SAM (random weights) converted and prioritized on the search data: no supernet training."""
    from supersam_hf.prioritization import prioritize

    torch.manual_seed(0)
    from transformers import SamModel

    sam = SamModel(build_sam_config(image_size=96, hidden_size=64, num_hidden_layers=6, num_attention_heads=4,
                                    window_size=4, output_channels=64))
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


def main(argv=None) -> None:
    args = parse_args(argv)
    from supersam_hf.data import build_sam_processor

    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if int(c) <= args.budget} | {args.budget})
    if args.dataset:
        dataset = load_segmentation_dataset(args.dataset, split=args.split)
        dataset_note = f"`{args.dataset}`" + (f" split `{args.split}`" if args.split else "")
    else:
        dataset = make_synthetic_shapes(args.max_images, image_size=96, seed=2, domain="B")
        dataset_note = "synthetic shapes, domain B (seed 2)"
    if args.supernet:
        from transformers import SamProcessor

        supernet = load_supernet(args.supernet, device="cpu", require_supernet=True)
        processor = SamProcessor.from_pretrained(args.supernet)
        trained = not args.untrained
        supernet_note = (f"`{args.supernet}` ({'trained' if trained else 'not trained'}, prioritized: "
                         f"{supernet.config.prioritized}){': ' + args.note if args.note else ''}")
    else:
        processor = build_sam_processor(96)
        supernet = standin_supernet(dataset, processor)
        trained = False
        supernet_note = ("an **untrained** stand-in: a random-weight small SAM (96 px, hidden 64, 6 layers) converted and "
                         "prioritized on the search images, never sandwich-trained")
    space = supernet.search_space
    largest_params = supernet.count_parameters()
    max_params = int(largest_params * (1 - args.reduction))
    data = EvaluationData.prepare(dataset, processor, prompt=args.prompt, max_images=args.max_images)

    runs: dict[tuple[str, int], dict] = {}
    started = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            for strategy in ("opentuner", "random"):
                t0 = time.time()
                result = search_subnets(supernet, data, processor, budget=args.budget, max_params=max_params,
                                        strategy=strategy, seed=seed, prompt=args.prompt,
                                        output_dir=Path(workdir) / f"{strategy}_{seed}", show_progress=False)
                runs[(strategy, seed)] = {"result": result, "seconds": time.time() - t0}
                best = result.best
                print(f"{strategy:>9} seed {seed}: best feasible mIoU {best.metrics['miou'] if best else float('nan'):.4f} "
                      f"({best.subnet.name if best else '-'}), {result.num_proposals} proposals, "
                      f"{result.num_rejected} rejected, {time.time() - t0:.0f} s", flush=True)
        test_scores = {}
        if args.test_split and args.dataset:
            test = load_segmentation_dataset(args.dataset, split=args.test_split)
            test_data = EvaluationData.prepare(test, processor, prompt=args.prompt)
            for key, run in runs.items():
                best = run["result"].best
                if best is not None:
                    test_scores[key] = evaluate_model(supernet, test_data, processor, subnet=best.subnet,
                                                      prompt=args.prompt, show_progress=False)["miou"]

    reference = runs[("opentuner", args.seeds[0])]["result"].reference
    scored = {(tuple(e["kept_layers"]), tuple(e["mlp_dims"])): e
              for run in runs.values() for e in run["result"].evaluations if e["feasible"]}
    spread = [e["miou"] for e in scored.values()]
    lines = [
        "# OpenTuner vs random subnet search at equal budgets",
        "",
        f"Best feasible mIoU (search images) under a params budget of {args.reduction:.0%} fewer parameters than the "
        f"largest subnet (max_params = {max_params:,} of {largest_params:,}), mean ± std over seeds {args.seeds}.",
        "Budget = subnets scored (mIoU evaluations), the largest-subnet reference included; infeasible proposals are "
        "rejected from their parameter count without scoring, for both strategies. Random = uniform keep flags and "
        "widths, repaired to min_layers (rejection sampling of the feasible set).",
        "",
        f"- supernet: {supernet_note}; search space: {len(space.elastic_layers)} elastic of {space.num_layers} layers, "
        f"min_layers {space.min_layers}, widths {list(space.mlp_dim_choices[0])}",
        f"- data: {dataset_note}, {data.num_images} images, one {args.prompt} prompt per object, mask selection "
        "`single` (highest predicted IoU), masks at original resolution",
        f"- largest subnet (reference, over budget): mIoU {reference['miou']:.4f}; the {len(spread)} distinct feasible "
        f"subnets scored by all runs span mIoU {min(spread):.4f} to {max(spread):.4f}" if spread else
        f"- largest subnet (reference, over budget): mIoU {reference['miou']:.4f}",
        f"- machine: {describe_machine(torch.device('cpu'))}; total {time.time() - started:.0f} s",
        "",
        "| budget | OpenTuner | random | OpenTuner ≥ random (seeds) |",
        "|---:|---:|---:|---:|",
    ]
    for k in checkpoints:
        ot = [best_so_far(runs[("opentuner", s)]["result"].evaluations, k) for s in args.seeds]
        rnd = [best_so_far(runs[("random", s)]["result"].evaluations, k) for s in args.seeds]
        wins = sum(1 for a, b in zip(ot, rnd) if a is not None and (b is None or a >= b))
        lines.append(f"| {k} | {fmt(ot)} | {fmt(rnd)} | {wins}/{len(args.seeds)} |")
    lines += ["", "Per seed (budget " + str(args.budget) + "): best subnet, its params, proposals made / rejected, wall time.", "",
              "| strategy | seed | best mIoU | subnet | params | proposals / rejected | seconds |"
              + (" test mIoU |" if test_scores else ""),
              "|---|---:|---:|---|---:|---:|---:|" + ("---:|" if test_scores else "")]
    for (strategy, seed), run in sorted(runs.items()):
        result, best = run["result"], run["result"].best
        row = (f"| {strategy} | {seed} | {best.metrics['miou']:.4f} | {best.subnet.name} (layers "
               f"{','.join(map(str, best.subnet.kept_layers))}) | {best.metrics['params']:,} | "
               f"{result.num_proposals} / {result.num_rejected} | {run['seconds']:.0f} |") if best else \
              f"| {strategy} | {seed} | – | – | – | {result.num_proposals} / {result.num_rejected} | {run['seconds']:.0f} |"
        if test_scores:
            row += f" {test_scores.get((strategy, seed), float('nan')):.4f} |"
        lines.append(row)
    if not trained:
        lines += ["", "**Caveat:** this supernet was not sandwich-trained, so its subnets' mIoU differences are small and "
                  "noisy; rerun on the demo's trained supernet (`--supernet <demo output>/supernet --dataset <demo "
                  "output>/data/domain_B --split search --test_split test`) for the numbers that matter."]
    text = "\n".join(lines) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
