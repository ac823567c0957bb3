"""Winners of the three-dimensional search space (depth, MLP width, embedding width) vs the two-dimensional one
(depth, MLP width), same base, same data, same training budget (issue 11; not a test).

Takes a finished `supersam demo` run (e.g. one seed of `benchmarks/paper_proxy.py`): its prioritized supernet
(`supernet_init/`), its domain-B data and its sizes. The demo's own supernet is the three-dimensional one; this
script makes the two-dimensional one from the same prioritized weights (`hidden_size_choices` = the full width only),
sandwich-trains it with exactly the demo's training arguments and steps, searches it under the same MACs budgets with
the same search budget and seed, and scores every winner on B's test split with box and point prompts. Both spaces
also hold the input resolution when the demo's supernet does: the comparison is about the embedding width alone.

    python benchmarks/space_2d_vs_3d.py --run runs/paper_proxy/seed0 [...] --seeds 0 [...]
    python benchmarks/space_2d_vs_3d.py --smoke    # seconds: on a tiny demo run of its own; temporary folder

Writes benchmarks/results/space_2d_vs_3d.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch

from _common import RESULTS, SMOKE_HELP, describe_machine, smoke_demo_run, smoke_folder, write_result
from supersam_hf.data import load_segmentation_dataset
from supersam_hf.elastic import RESOLUTION
from supersam_hf.evaluation import evaluate_model
from supersam_hf.loading import load_processor, load_supernet
from supersam_hf.search import search_subnets
from supersam_hf.commands.demo import stage_training_arguments
from supersam_hf.training import train_supernet


def _scores(model, data, processor, seed: int) -> dict:
    return {prompt: evaluate_model(model, data, processor, prompt=prompt, mask_selection="single", seed=seed,
                                   show_progress=False)["miou"] for prompt in ("box", "point")}


def train_two_dimensional(run: Path, state: dict, seed: int, learning_rate: float) -> Path:
    """The demo's prioritized supernet with the embedding width fixed at full, trained like the demo's supernet."""
    init_2d, trained_2d = run / "supernet_init_2d", run / "supernet_2d"
    if (trained_2d / "config.json").is_file():
        return trained_2d
    supernet = load_supernet(run / "supernet_init", device="cpu")
    supernet.config.hidden_size_choices = [supernet.config.vision_config.hidden_size]
    supernet.save_pretrained(init_2d)
    load_processor(run / "supernet_init").save_pretrained(init_2d)
    sizes = state["plan"]["sizes"]
    # Exactly the demo's sandwich stage (mixed prompts, as the paper proxy runs it).
    train_supernet(stage_training_arguments(trained_2d, init_2d, run / "data" / "domain_B", sizes["train_steps"], sizes,
                                            largest_only=False, learning_rate=learning_rate, prompt_type="mixed",
                                            seed=seed))
    return trained_2d


def measure_run(run: Path, seed: int, learning_rate: float) -> dict:
    """`run`: a finished demo run with `--seed seed --prompt_type mixed` (the paper proxy's); its supernet was trained
    at `learning_rate`."""
    started = time.time()
    stages = json.loads((run / "demo_state.json").read_text())
    sizes = stages["plan"]["sizes"]
    processor = load_processor(run / "supernet_init")
    b_search = load_segmentation_dataset(run / "data" / "domain_B", split="search")
    b_test = load_segmentation_dataset(run / "data" / "domain_B", split="test")
    supernet_3d = load_supernet(run / "supernet", device="cpu")
    base_macs = supernet_3d.count_macs()
    supernet_2d = load_supernet(train_two_dimensional(run, stages, seed, learning_rate), device="cpu")
    rows = []
    reductions = sorted(int(key.split("_")[1]) for key in stages if key.startswith("search_"))
    for pct in reductions:
        three = stages[f"search_{pct}"]
        row = {"reduction": pct, "3d": {"macs": three["macs"] / base_macs, "subnet": three["subnet"],
                                        "box": three["test"]["by_prompt"]["box"]["miou"],
                                        "point": three["test"]["by_prompt"]["point"]["miou"]}}
        limit = int(base_macs * (1 - pct / 100))
        if supernet_2d.count_macs(supernet_2d.search_space.smallest()) > limit:
            row["2d"] = None  # the two-dimensional space has no subnet this small
        else:
            result = search_subnets(supernet_2d, b_search, processor, budget=sizes["search_budget"], max_macs=limit,
                                    strategy="opentuner", seed=seed, output_dir=run / "search_2d" / f"search_{pct}",
                                    prompt="box", show_progress=False)
            best = result.best
            row["2d"] = None if best is None else {
                "macs": supernet_2d.count_macs(best.subnet) / base_macs, "subnet": best.subnet.to_dict(),
                # With the processor its export would carry (a smaller-input subnet takes its images at its size).
                **_scores(supernet_2d.extract_subnet(best.subnet), b_test,
                          RESOLUTION.export_processor(processor, supernet_2d.search_space.layer_plan(best.subnet)), seed)}
        rows.append(row)
    floors = {name: net.count_macs(net.search_space.smallest()) / base_macs
              for name, net in (("3d", supernet_3d), ("2d", supernet_2d))}
    return {"run": str(run), "seed": seed, "train_steps": sizes["train_steps"], "search_budget": sizes["search_budget"],
            "floors": floors, "rows": rows, "seconds": time.time() - started}


def _cell(entry: dict | None, key: str) -> str:
    return "— (below the space's fewest MACs)" if entry is None else f"{entry[key]:.3f}"


def write_report(results: list[dict], folder: Path = RESULTS) -> Path:
    lines = ["| seed | MACs budget | 3-D winner MACs | 2-D winner MACs | box 3-D | box 2-D | box 3-D − 2-D | "
             "point 3-D | point 2-D | point 3-D − 2-D |", "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for row in result["rows"]:
            three, two = row["3d"], row["2d"]
            diff = (lambda k: "—" if two is None else f"{three[k] - two[k]:+.3f}")  # noqa: E731
            lines.append(f"| {result['seed']} | ≤ {100 - row['reduction']} % | {three['macs']:.0%} | "
                         f"{'—' if two is None else format(two['macs'], '.0%')} | {three['box']:.3f} | {_cell(two, 'box')} | "
                         f"{diff('box')} | {three['point']:.3f} | {_cell(two, 'point')} | {diff('point')} |")
    floors = "; ".join(f"seed {r['seed']}: 3-D {r['floors']['3d']:.0%}, 2-D {r['floors']['2d']:.0%}" for r in results)
    text = f"""# Three-dimensional vs two-dimensional search space, same training budget ({datetime.date.today()})

{describe_machine(torch.device("cpu"))}, load average {os.getloadavg()[0]:.1f} at the end. `benchmarks/space_2d_vs_3d.py` on
finished `supersam demo` runs (stand-in base on hard-shapes domain A, supernet prioritized and trained on domain B).
3-D: the demo's supernet (depth x MLP width x embedding width, and the input resolution when its space has one); 2-D:
the same prioritized weights with the embedding width fixed at full (the rest of the space as in 3-D), sandwich-trained with the same arguments and steps ({", ".join(str(r['train_steps']) for r in results)}),
searched by OpenTuner under the same MACs budgets, search budget ({", ".join(str(r['search_budget']) for r in results)}
subnets) and seed. mIoU on B's held-out test split, one prompt per object, the model's own mask choice.
Fewest MACs each space can reach (share of the base's): {floors}.

""" + "\n".join(lines) + "\n"
    return write_result("space_2d_vs_3d.md", text, folder=folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="+", default=[], help="Finished `supersam demo` output folders.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[], help="The --seed of each run, in order.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="The demo's supernet learning rate.")
    parser.add_argument("--from_json", nargs="+", default=None, metavar="FILE",
                        help="Only write the report from the space_2d_vs_3d.json of earlier runs.")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    if args.smoke:
        folder = smoke_folder("space_2d_vs_3d")
        results = [measure_run(smoke_demo_run(folder / "run", seed=0, reductions=(0.5,)), 0, args.learning_rate)]
        print(f"written to {write_report(results, folder)}", flush=True)
        return
    if args.from_json:
        results = sorted((r for f in args.from_json for r in json.loads(Path(f).read_text())), key=lambda r: r["seed"])
        print(f"written to {write_report(results)}", flush=True)
        return
    if not args.run:
        parser.error("give --run (finished demo folders) or --from_json")
    if len(args.seeds) != len(args.run):
        parser.error("give one --seeds entry per --run folder")
    results = []
    for run, seed in zip(args.run, args.seeds):
        results.append(measure_run(Path(run), seed, args.learning_rate))
        print(f"written to {write_report(results)}", flush=True)
    Path(args.run[0]).parent.joinpath("space_2d_vs_3d.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
