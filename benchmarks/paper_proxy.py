"""The paper's claim on a proxy: the demo pipeline at larger budgets, 2 seeds (not a test).

SuperSAM's claim: subnets found in a supernet trained on the target domain are much smaller than the base and
segment that domain at least as well as the base zero-shot, and close to (or above) the base fine-tuned on it.
Goals on this proxy: every winner at least 30 % smaller has mIoU ≥ the base zero-shot, and the 30 %-smaller
winner is within 2 mIoU points of (or above) the base fine-tuned on B for the same number of steps.

    python benchmarks/paper_proxy.py [--seeds 0 1] [--output runs/paper_proxy] [--resume]
(seeds can run as separate processes, e.g. `--seeds 0` and `--seeds 1` side by side with OMP_NUM_THREADS=1, then
`--seeds 0 1 --resume` only collects their results.)
Writes benchmarks/results/paper_proxy.md and paper_proxy.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from matplotlib.figure import Figure

from _common import RESULTS, write_result
from supersam_hf.commands.demo import SIZE_REDUCTIONS, DemoArguments, run_demo

# Larger budgets than the demo's default (base 1500 / train 400 steps, search 24, 32 eval images).
PROXY_SIZES = dict(image_size=128, hidden_size=128, num_layers=8, num_train_images=600, num_eval_images=48,
                   base_steps=2000, train_steps=600, search_budget=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--output", default="runs/paper_proxy")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    runs = {}
    for seed in args.seeds:
        out = Path(args.output) / f"seed{seed}"
        resume = args.resume and (out / "demo_state.json").exists()
        run_demo(DemoArguments(output_dir=str(out), seed=seed, resume=resume, overwrite_output_dir=not resume and out.exists(),
                               **PROXY_SIZES))
        runs[seed] = json.loads((out / "demo_state.json").read_text())

    lines = ["| seed | model | params | mIoU on B |", "|---|---|---|---|"]
    verdicts, figure = [], Figure(figsize=(6, 4))
    axes = figure.subplots()
    for seed, state in runs.items():
        zero, tuned = state["zero_shot"]["miou"], state["finetuned"]["miou"]
        lines.append(f"| {seed} | (stand-in base on its own domain A) | 100 % | ({state['base']['miou_domain_A']:.3f} on A) |")
        lines.append(f"| {seed} | base zero-shot | 100 % | {zero:.3f} |")
        lines.append(f"| {seed} | base fine-tuned on B | 100 % | {tuned:.3f} |")
        xs, ys = [], []
        for reduction in SIZE_REDUCTIONS:
            s = state[f"search_{int(reduction * 100)}"]
            share = s["params"] / state["summary"]["base_params"]
            lines.append(f"| {seed} | SuperSAM ≥{reduction:.0%} smaller (`{Path(s['folder']).name}`) | {share:.0%} | {s['test']['miou']:.3f} |")
            xs.append(share)
            ys.append(s["test"]["miou"])
        winners_ok = all(state[f"search_{int(r * 100)}"]["test"]["miou"] >= zero for r in SIZE_REDUCTIONS)
        gap = (tuned - state["search_30"]["test"]["miou"]) * 100
        verdicts.append(f"- seed {seed}: every winner ≥ base zero-shot: **{'yes' if winners_ok else 'no'}**; "
                        f"30 %-smaller winner vs fine-tuned base: {-gap:+.1f} mIoU points "
                        f"(goal ≥ −2: **{'met' if gap <= 2 else 'not met'}**)")
        axes.plot(xs, ys, "o-", label=f"SuperSAM winners, seed {seed}")
        axes.axhline(zero, color="gray", linestyle=":", label=f"base zero-shot, seed {seed}")
        axes.axhline(tuned, color="black", linestyle="--", label=f"base fine-tuned, seed {seed}")
    axes.set_xlabel("parameters / base")
    axes.set_ylabel("mIoU on domain B (test)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    figure.savefig(RESULTS / "paper_proxy.png", dpi=120)

    text = f"""# Paper proxy ({datetime.date.today()}, CPU, 2 cores)

Pipeline of `supersam demo` with {PROXY_SIZES}: a small SAM trained from scratch on synthetic domain A as the
stand-in base (no pretrained SAM offline), then convert + prioritize, sandwich training, OpenTuner search under
30 / 50 / 70 % parameter reductions and export on synthetic domain B. mIoU: B's held-out test split, one box prompt
per object, the model's own mask choice, at the original image size.

""" + "\n".join(lines) + "\n\n" + "\n".join(verdicts) + "\n\n![proxy](paper_proxy.png)\n"
    print(text)
    print(f"written to {write_result('paper_proxy.md', text)}")


if __name__ == "__main__":
    main()
