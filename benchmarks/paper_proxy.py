"""The paper's claim on a proxy: the demo pipeline on the hard synthetic domains, MACs budgets, box and point (not a test).

SuperSAM's claim: subnets found in a supernet trained on the target domain are much smaller than the base and
segment that domain at least as well as the base zero-shot, and close to (or above) the base fine-tuned on it.
Goals on this proxy (issues 13, 21): every winner at 30 / 50 / 70 % fewer MACs (of the demo's space: depth, MLP
width, embedding width, input resolution) beats the base zero-shot AND "the box itself as the mask" on domain B, and
is within 2 mIoU points of (or above) the base fine-tuned on B for the same number of steps, with box prompts and
with one point prompt per object (no box shortcut there). Every figure is the demo's own evaluation, read from its
demo_state.json.

    python benchmarks/paper_proxy.py [--seeds 0 1 2] [--output runs/paper_proxy] [--resume]
    python benchmarks/paper_proxy.py --preset demo_default             # the shipped stand-in, default demo sizes
    python benchmarks/paper_proxy.py --preset demo_default --from_runs RUN_S0 RUN_S1 RUN_S2   # only read demo runs
    python benchmarks/paper_proxy.py --smoke      # seconds: one tiny demo run, 1 seed; report in a temporary folder

Seeds run one after the other; the results file is rewritten after each seed, so a run cut short still reports the
seeds it finished. `--resume` continues runs in --output (finished demo stages are skipped).
Writes benchmarks/results/paper_proxy.md and paper_proxy.png (`--preset demo_default`: the default demo's sizes, one
file of its own, paper_proxy_demo_default.md).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from _common import RESULTS, SMOKE_DEMO_SIZES, SMOKE_HELP, describe_machine, smoke_folder, write_result
from supersam_hf import SubnetConfig
from supersam_hf.commands.demo import DemoArguments, run_demo

# Sized to run 3 seeds one after the other in ~70 minutes on a 2-core machine shared with other jobs (1 thread):
# the demo's base recipe (patch 8, 4 layers, mixed prompts, lr 1e-3 cosine) with fewer steps than its default.
PROXY_SIZES = dict(image_size=128, patch_size=8, window_size=8, hidden_size=128, num_layers=4, num_train_images=600,
                   num_eval_images=20, base_steps=1000, train_steps=200, search_budget=10)
# MACs budgets, searched in the three-dimensional space (depth, MLP width, embedding width): with 2 of 4 layers
# elastic, depth x MLP width alone bottoms out at 45 % of the base's MACs; the embedding width reaches below 30 %.
REDUCTIONS = (0.3, 0.5, 0.7)


def _mious(result: dict) -> dict:
    return {prompt: result["by_prompt"][prompt]["miou"] for prompt in ("box", "point")}


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def result_of_run(out: Path, seconds: float | None = None) -> dict:
    """One finished demo run (mixed prompts, MACs budgets including REDUCTIONS) as one seed's result: the demo scored
    every model with box and point prompts (one prompt per object, the model's own mask choice, original size) and
    the box reference on the same objects; its demo_state.json holds them."""
    state = json.loads((out / "demo_state.json").read_text())
    base, zero = state["base"], state["zero_shot"]
    base_macs, base_params = state["summary"]["base_macs"], state["summary"]["base_params"]
    rows = [{"model": "box itself as the mask (reference)", "macs": None, "params": None,
             "box": zero["by_prompt"]["box"]["box_reference_miou"], "point": None},
            {"model": "base zero-shot", "macs": 1.0, "params": 1.0, **_mious(zero)},
            {"model": "base fine-tuned on B (same steps)", "macs": 1.0, "params": 1.0, **_mious(state["finetuned"])}]
    for reduction in REDUCTIONS:
        s = state[f"search_{int(reduction * 100)}"]
        rows.append({"model": f"SuperSAM ≥{reduction:.0%} fewer MACs", "macs": s["macs"] / base_macs,
                     "params": s["params"] / base_params, "subnet": SubnetConfig.from_dict(s["subnet"]).name,
                     **_mious(s["test"])})  # the export scored with its own processor, as a user runs it
    return {"seed": zero["by_prompt"]["box"]["seed"], "rows": rows, "base_on_A": _mious({"by_prompt": base["domain_A"]}),
            "box_reference_A": base["box_reference_domain_A"], "num_objects_B": zero["num_objects"],
            "base": base.get("repo_id") or "trained here", "sizes": state["plan"]["sizes"],
            "base_sha256": _sha256(Path(base["path"]) / "model.safetensors"), "seconds": seconds}


def measure_seed(out: Path, seed: int, resume: bool, sizes: dict | None) -> dict:
    """Run the demo pipeline for one seed (`sizes` None: the shipped stand-in base at the default demo's sizes; else a
    base trained here at those sizes), then read every model's box and point scores next to the box reference."""
    started = time.time()
    run_demo(DemoArguments(output_dir=str(out), seed=seed, resume=resume, overwrite_output_dir=not resume and out.exists(),
                           train_base=sizes is not None, prompt_type="mixed", size_metric="macs",
                           size_reductions=list(REDUCTIONS), **(sizes or {})))
    return result_of_run(out, time.time() - started)


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


def _checks(result: dict) -> dict[str, bool]:
    """Issue 21's claim on one seed, every winner: box above the box reference, box and point above the base
    zero-shot, box and point within 2 mIoU points of (or above) the base fine-tuned for the same steps."""
    ref, zero, tuned = (result["rows"][i] for i in range(3))
    winners = result["rows"][3:]
    return {"> box reference (box)": all(w["box"] > ref["box"] for w in winners),
            "> base zero-shot (box)": all(w["box"] > zero["box"] for w in winners),
            "> base zero-shot (point)": all(w["point"] > zero["point"] for w in winners),
            "≥ fine-tuned − 2 points (box)": all(w["box"] >= tuned["box"] - 0.02 for w in winners),
            "≥ fine-tuned − 2 points (point)": all(w["point"] >= tuned["point"] - 0.02 for w in winners)}


def _verdict(result: dict) -> str:
    tuned, winners = result["rows"][2], result["rows"][3:]
    yes = lambda ok: "**yes**" if ok else "**no**"  # noqa: E731
    gaps = ", ".join(f"{w['macs']:.0%} MACs: box {(w['box'] - tuned['box']) * 100:+.1f} / point "
                     f"{(w['point'] - tuned['point']) * 100:+.1f}" for w in winners)
    minutes = f"; {result['seconds'] / 60:.0f} min" if result.get("seconds") else ""
    return (f"- seed {result['seed']}: every winner " + ", ".join(f"{k} {yes(ok)}" for k, ok in _checks(result).items())
            + f"; winners − fine-tuned base, mIoU points: {gaps}{minutes}")


def _summary(results: list[dict]) -> list[str]:
    """Mean ± std over seeds of every row (and of each winner's gap to the fine-tuned base)."""
    def stat(values, sign=""):
        values = [v for v in values if v is not None]
        if not values:
            return "—"
        return f"{statistics.mean(values):{sign}.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")

    lines = ["| model | MACs | box mIoU on B | point mIoU on B | box − fine-tuned | point − fine-tuned | subnets |",
             "|---|---|---|---|---|---|---|"]
    for k, row in enumerate(results[0]["rows"]):
        rows = [r["rows"][k] for r in results]
        tuned = [r["rows"][2] for r in results]
        gap = lambda key: stat([(x[key] - t[key]) if x[key] is not None else None for x, t in zip(rows, tuned)], "+")  # noqa: E731
        macs = "—" if row["macs"] is None else f"{statistics.mean(x['macs'] for x in rows):.0%}"
        names = ", ".join(f"`{x['subnet']}`" for x in rows if x.get("subnet")) or "—"
        lines.append(f"| {row['model']} | {macs} | {stat([x['box'] for x in rows])} | {stat([x['point'] for x in rows])} "
                     f"| {gap('box') if k >= 3 else '—'} | {gap('point') if k >= 3 else '—'} | {names} |")
    held = {k: sum(_checks(r)[k] for r in results) for k in _checks(results[0])}
    return lines + ["", "Seeds where the claim holds for every winner: "
                    + ", ".join(f"{k}: {n} of {len(results)}" for k, n in held.items()) + "."]


def write_report(results: list[dict], previous: str, name: str, folder: Path = RESULTS) -> Path:
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
    bases = sorted({f"`{r['base']}` (model.safetensors sha256 {r['base_sha256']})" if r.get("base_sha256")
                    else f"`{r['base']}`" for r in results})
    sizes = results[0]["sizes"]
    trained = ('("trained here": a small SAM trained from scratch on `make_hard_shapes` domain A, `--train_base`), '
               if any(r["base"] == "trained here" for r in results) else "")
    text = f"""# Paper proxy on the hard domains ({datetime.date.today()}, {describe_machine(torch.device("cpu"))}, load average {os.getloadavg()[0]:.1f} at the end)

Pipeline of `supersam demo` (`prompt_type="mixed"`, `size_metric="macs"`) with {sizes}; base: {", ".join(bases)}
{trained}then convert + prioritize, sandwich training, OpenTuner search under {" / ".join(f"{r:.0%}" for r in REDUCTIONS)} fewer MACs (depth x
MLP width x embedding width x input resolution, the demo's default space) and export on domain B. mIoU: B's held-out
test split ({objects} objects), one prompt per object, the model's own mask choice, at the original image size;
"box itself as the mask" is the box reference on the same objects (`evaluate_model(..., box_reference=True)`).

## Mean ± std over {len(results)} seed(s)

""" + "\n".join(_summary(results)) + """

## Per seed

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
    parser.add_argument("--from_runs", nargs="+", default=None, metavar="FOLDER",
                        help="Only write the report from finished demo runs (mixed prompts, MACs budgets including "
                        "0.3 0.5 0.7), e.g. the runs benchmarks/resolution_proxy.py reads too.")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    sizes = PROXY_SIZES if args.preset == "proxy" else None  # None: the shipped stand-in at the default demo's sizes
    name = "paper_proxy.md" if args.preset == "proxy" else "paper_proxy_demo_default.md"
    previous = PREVIOUS if args.preset == "proxy" else ""
    folder = RESULTS
    if args.smoke:
        folder, sizes, args.seeds, previous = smoke_folder("paper_proxy"), SMOKE_DEMO_SIZES, [0], ""
        args.output = str(folder / "runs")
    if args.from_runs or args.from_json:
        results = [result_of_run(Path(run)) for run in args.from_runs or []]
        results += [r for f in args.from_json or [] for r in json.loads(Path(f).read_text())]
        results.sort(key=lambda r: r["seed"])
        print(f"written to {write_report(results, previous, name, folder)}", flush=True)
        return
    results = []
    for seed in args.seeds:
        out = Path(args.output) / f"seed{seed}"
        results.append(measure_seed(out, seed, args.resume and (out / "demo_state.json").exists(), sizes))
        (Path(args.output) / "proxy_results.json").write_text(json.dumps(results, indent=2))
        print(f"written to {write_report(results, previous, name, folder)}", flush=True)


if __name__ == "__main__":
    main()
