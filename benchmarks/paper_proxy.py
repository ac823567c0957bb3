"""The paper's claim on a proxy: the demo pipeline on the hard synthetic domains, MACs budgets, box and point (not a test).

SuperSAM's claim: subnets found in a supernet trained on the target domain are much smaller than the base and
segment that domain at least as well as the base zero-shot, and close to (or above) the base fine-tuned on it.
Goals on this proxy (issue 13): every winner at 30 / 50 / 70 % fewer MACs (of the three-dimensional space: depth,
MLP width, embedding width) beats the base zero-shot AND "the box itself as the mask" on domain B, and the
30 %-smaller winner is within 2 mIoU points of (or above) the base fine-tuned on B for the same number of steps;
the same table with one point prompt per object (no box shortcut there).

    python benchmarks/paper_proxy.py [--seeds 0 1 2] [--output runs/paper_proxy] [--resume]
    python benchmarks/paper_proxy.py --smoke      # seconds: one tiny demo run, 1 seed; report in a temporary folder

Seeds run one after the other; the results file is rewritten after each seed, so a run cut short still reports the
seeds it finished. `--resume` continues runs in --output (finished demo stages are skipped).
Writes benchmarks/results/paper_proxy.md and paper_proxy.png (`--preset demo_default`: the default demo's sizes, one
file of its own, paper_proxy_demo_default.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from _common import RESULTS, SMOKE_DEMO_SIZES, SMOKE_HELP, describe_machine, smoke_folder, write_result
from supersam_hf.commands.demo import PRESETS, TRAIN_BASE_FIELDS, DemoArguments, run_demo
from supersam_hf.data import load_segmentation_dataset
from supersam_hf.evaluation import box_reference_miou, evaluate_model
from supersam_hf.loading import load_processor, load_sam_model, load_supernet
from supersam_hf.standin import STANDIN_REPO_ID, shipped_scores

# Sized to run 3 seeds one after the other in ~70 minutes on a 2-core machine shared with other jobs (1 thread):
# the demo's base recipe (patch 8, 4 layers, mixed prompts, lr 1e-3 cosine) with fewer steps than its default.
PROXY_SIZES = dict(image_size=128, patch_size=8, window_size=8, hidden_size=128, num_layers=4, num_train_images=600,
                   num_eval_images=20, base_steps=1000, train_steps=200, search_budget=10)
# MACs budgets, searched in the three-dimensional space (depth, MLP width, embedding width): with 2 of 4 layers
# elastic, depth x MLP width alone bottoms out at 45 % of the base's MACs; the embedding width reaches below 30 %.
REDUCTIONS = (0.3, 0.5, 0.7)


def _scores(model, data, processor, seed: int) -> dict:
    """Box and point mIoU (one prompt per object, the model's own mask choice, original resolution)."""
    return {prompt: evaluate_model(model, data, processor, prompt=prompt, mask_selection="single", seed=seed,
                                   show_progress=False)["miou"] for prompt in ("box", "point")}


def measure_seed(out: Path, seed: int, resume: bool, sizes: dict, shipped_base: bool = False) -> dict:
    """Run the demo pipeline for one seed, then score every model with box and point prompts next to the box reference.
    `shipped_base`: start from the stand-in shipped with supersam_hf (as `supersam demo` does) instead of training
    a base here from `sizes`."""
    started = time.time()
    if shipped_base:  # the shipped stand-in has its own sizes: only the demo's other sizes apply
        sizes = {key: value for key, value in sizes.items() if key not in TRAIN_BASE_FIELDS}
    run_demo(DemoArguments(output_dir=str(out), seed=seed, resume=resume, overwrite_output_dir=not resume and out.exists(),
                           train_base=not shipped_base, prompt_type="mixed", size_metric="macs",
                           size_reductions=list(REDUCTIONS), **sizes))
    state = json.loads((out / "demo_state.json").read_text())
    base_dir = state["base"]["path"] if shipped_base else out / "base"  # the shipped one: its HF cache snapshot
    processor = load_processor(base_dir)
    a_test = load_segmentation_dataset(out / "data" / "domain_A", split="test")
    b_test = load_segmentation_dataset(out / "data" / "domain_B", split="test")
    base = load_sam_model(base_dir)
    base_macs = state["summary"]["base_macs"]
    base_params = state["summary"]["base_params"]
    rows = [{"model": "box itself as the mask (reference)", "macs": None, "params": None,
             "box": box_reference_miou(b_test, processor, seed=seed)["miou"], "point": None},
            {"model": "base zero-shot", "macs": 1.0, "params": 1.0, **_scores(base, b_test, processor, seed)},
            {"model": "base fine-tuned on B (same steps)", "macs": 1.0, "params": 1.0,
             **_scores(load_supernet(out / "finetuned", device="cpu").extract_subnet(), b_test, processor, seed)}]
    for reduction in REDUCTIONS:
        s = state[f"search_{int(reduction * 100)}"]
        rows.append({"model": f"SuperSAM ≥{reduction:.0%} fewer MACs", "macs": s["macs"] / base_macs,
                     "params": s["params"] / base_params, "subnet": s["subnet"],
                     # The export with its own processor saved next to it (a smaller-input subnet takes its
                     # images at its resolution), as a user would run it.
                     **_scores(load_sam_model(s["folder"]), b_test, load_processor(s["folder"]), seed)})
    return {"seed": seed, "rows": rows, "base_on_A": _scores(base, a_test, processor, seed),
            "box_reference_A": box_reference_miou(a_test, processor, seed=seed)["miou"],
            "num_objects_B": evaluate_model(base, b_test, processor, prompt="box", seed=seed, show_progress=False)["num_objects"],
            "seconds": time.time() - started}


def _table(result: dict) -> list[str]:
    seed, ref = result["seed"], result["rows"][0]["box"]
    lines = [f"| {seed} | stand-in base on its own domain A (box reference there {result['box_reference_A']:.3f}) | 100 % | "
             f"100 % | ({result['base_on_A']['box']:.3f} on A) | ({result['base_on_A']['box'] - result['box_reference_A']:+.3f}) "
             f"| ({result['base_on_A']['point']:.3f} on A) |"]
    for row in result["rows"]:
        share = lambda v: "—" if v is None else f"{v:.0%}"  # noqa: E731
        point = "—" if row["point"] is None else f"{row['point']:.3f}"
        lines.append(f"| {seed} | {row['model']} | {share(row['macs'])} | {share(row['params'])} | {row['box']:.3f} | "
                     f"{row['box'] - ref:+.3f} | {point} |")
    return lines


def _verdict(result: dict) -> str:
    ref, zero, tuned = (result["rows"][i] for i in range(3))
    winners = result["rows"][3:]
    beats_zero = all(w["box"] > zero["box"] for w in winners)
    beats_ref = all(w["box"] > ref["box"] for w in winners)
    points_zero = all(w["point"] > zero["point"] for w in winners)
    gaps = [((w["box"] - tuned["box"]) * 100, (w["point"] - tuned["point"]) * 100) for w in winners]
    yes = lambda ok: "**yes**" if ok else "**no**"  # noqa: E731
    within = "; ".join(f"{r:.0%}: box {b:+.1f}, point {p:+.1f}" for r, (b, p) in zip(REDUCTIONS, gaps))
    return (f"- seed {result['seed']}: every winner > base zero-shot (box) {yes(beats_zero)}, > box reference "
            f"{yes(beats_ref)}, > base zero-shot (point) {yes(points_zero)}; winners vs fine-tuned base (mIoU points, by "
            f"fewer MACs) {within} (goal ≥ −2: 30 % winner "
            f"{yes(min(gaps[0]) >= -2)}, every winner {yes(min(min(g) for g in gaps) >= -2)}); "
            f"{result['seconds'] / 60:.0f} min")


def write_report(results: list[dict], previous: str, sizes: dict, name: str, folder: Path = RESULTS,
                 shipped_base: bool = False) -> Path:
    lines = ["| seed | model | MACs | params | box mIoU on B | box − reference | point mIoU on B |",
             "|---|---|---|---|---|---|---|"]
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for result in results:
        lines += _table(result)
        winners = result["rows"][3:]
        axes.plot([w["macs"] for w in winners], [w["box"] for w in winners], "o-", label=f"winners, box, seed {result['seed']}")
        axes.plot([w["macs"] for w in winners], [w["point"] for w in winners], "s--", label=f"winners, point, seed {result['seed']}")
        axes.axhline(result["rows"][0]["box"], color="red", linestyle=":", linewidth=0.8)
        axes.axhline(result["rows"][1]["box"], color="gray", linestyle=":", linewidth=0.8)
        axes.axhline(result["rows"][2]["box"], color="black", linestyle="--", linewidth=0.8)
    axes.set_xlabel("MACs / base")
    axes.set_ylabel("mIoU on domain B (test)")
    axes.set_title("red: box reference, gray: base zero-shot, black: base fine-tuned (box)", fontsize=8)
    axes.legend(fontsize=6)
    figure.tight_layout()
    folder.mkdir(exist_ok=True)
    figure.savefig(folder / name.replace(".md", ".png"), dpi=120)
    objects = ", ".join(f"seed {r['seed']}: {r['num_objects_B']}" for r in results)
    if shipped_base:
        card = shipped_scores()
        sizes = {key: value for key, value in sizes.items() if key not in TRAIN_BASE_FIELDS}
        base = (f"the stand-in SAM shipped with supersam_hf (`{STANDIN_REPO_ID}`, {card['steps']} steps on domain A; "
                f"its card on held-out A: box {card['box_miou']:.3f}, point {card['point_miou']:.3f}, box reference "
                f"{card['box_reference_miou']:.3f}) as the base, the same for every seed")
        recipe = "The base is the same for every seed; the seed sets domain B's data, the supernet's training and the search."
    else:
        base = "a small SAM trained from\nscratch on `make_hard_shapes` domain A as the stand-in base (no pretrained SAM offline)"
        recipe = (f"Base recipe at 2400 steps (benchmarks/results/base_recipe.md): 0.679 box / 0.570 point on A; this run: "
                  f"{sizes['base_steps']} steps.")
    text = f"""# Paper proxy on the hard domains ({datetime.date.today()}, {describe_machine(torch.device("cpu"))}, load average {os.getloadavg()[0]:.1f} at the end)

Pipeline of `supersam demo` (`prompt_type="mixed"`, `size_metric="macs"`) with {sizes}: {base}, then convert + prioritize,
sandwich training, OpenTuner search under {" / ".join(f"{r:.0%}" for r in REDUCTIONS)} fewer MACs (depth x MLP width x
embedding width x input resolution, the demo's default space) and export on domain B. mIoU: B's held-out test split ({objects} objects), one prompt per object, the model's own mask choice,
at the original image size; "box itself as the mask" is `evaluation.box_reference_miou` on the same objects.
{recipe}

""" + "\n".join(lines) + "\n\n" + "\n".join(_verdict(r) for r in results) + f"\n\n![proxy]({name.replace('.md', '.png')})\n"
    return write_result(name, text + previous, folder=folder)


PREVIOUS = """
## Previous (easy domains, `make_synthetic_shapes`, 2026-11-27)

Old proxy (patch 16, 8 layers, base 2000 steps, parameter budgets, box prompts only): base zero-shot on B 0.036 /
0.045, base fine-tuned 0.670 / 0.596, winners at ≥30/50/70 % fewer parameters 0.665/0.663/0.660 (seed 0) and
0.583/0.579/0.575 (seed 1). Filling the box prompt scores 0.618 mIoU on that domain B, so those winners were at or
barely above the trivial reference: the reason for the hard domains above.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="runs/paper_proxy")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--preset", choices=("proxy", "demo_default"), default="proxy",
                        help="proxy: PROXY_SIZES (3 seeds fit ~70 min); demo_default: the default demo's sizes "
                        "(results in paper_proxy_demo_default.md)")
    parser.add_argument("--from_json", nargs="+", default=None, metavar="FILE",
                        help="Only write the report from the proxy_results.json of earlier runs (e.g. seeds run in "
                        "parallel into separate --output folders).")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    sizes = PROXY_SIZES if args.preset == "proxy" else PRESETS["default"]
    shipped_base = args.preset == "demo_default"  # as `supersam demo` does; the proxy preset trains its own base
    name = "paper_proxy.md" if args.preset == "proxy" else "paper_proxy_demo_default.md"
    previous = PREVIOUS if args.preset == "proxy" else ""
    folder = RESULTS
    if args.smoke:
        folder, sizes, args.seeds, previous = smoke_folder("paper_proxy"), SMOKE_DEMO_SIZES, [0], ""
        args.output = str(folder / "runs")
    if args.from_json:
        results = sorted((r for f in args.from_json for r in json.loads(Path(f).read_text())), key=lambda r: r["seed"])
        print(f"written to {write_report(results, previous, sizes, name, folder, shipped_base)}", flush=True)
        return
    results = []
    for seed in args.seeds:
        out = Path(args.output) / f"seed{seed}"
        results.append(measure_seed(out, seed, args.resume and (out / "demo_state.json").exists(), sizes, shipped_base))
        (Path(args.output) / "proxy_results.json").write_text(json.dumps(results, indent=2))
        print(f"written to {write_report(results, previous, sizes, name, folder, shipped_base)}", flush=True)


if __name__ == "__main__":
    main()
