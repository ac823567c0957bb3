"""Quality at the floor, on the demo's proxy task: the searched winners at <= 10 % and <= 5 % of the base's MACs (the
default space: depth, MLP width, embedding width and input resolution), box and point mIoU on domain B's test
images, next to the zero-shot base, the base fine-tuned for the same steps and the box-as-mask reference.

Each seed is one `supersam demo --size_metric macs --size_reductions 0.9 0.95` run (its own folder); the table is
read from the runs' `demo_state.json`. Masks are scored at the original image size whatever the subnet's input
resolution (`SamProcessor.post_process_masks`), so the rows compare.

    python benchmarks/resolution_proxy.py --seeds 0 1 2             # the default demo sizes (long)
    python benchmarks/resolution_proxy.py --quick --seeds 0         # --quick demo sizes
    python benchmarks/resolution_proxy.py --from_runs /tmp/run_s0   # only read finished runs
    python benchmarks/resolution_proxy.py --smoke                   # seconds: one tiny demo run; temporary folder
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
from pathlib import Path

from _common import RESULTS, SMOKE_DEMO_SIZES, SMOKE_HELP, smoke_folder, write_result
from supersam_hf.cli import main as cli_main

REDUCTIONS = (0.9, 0.95)
# --smoke: the tiny demo run the other benchmarks are smoke-tested on, with a base trained here (the shipped stand-in
# has its own, larger sizes).
SMOKE = ["--train_base"] + [str(v) for name, value in SMOKE_DEMO_SIZES.items() for v in (f"--{name}", value)]


def run_seed(folder: Path, seed: int, quick: bool, smoke: bool, search_budget: int | None) -> None:
    argv = ["demo", "--output_dir", str(folder), "--seed", str(seed), "--size_metric", "macs",
            "--size_reductions", *map(str, REDUCTIONS)]
    argv += ["--quick"] if quick else []
    argv += SMOKE if smoke else []
    argv += ["--search_budget", str(search_budget)] if search_budget and not smoke else []
    if (folder / "demo_state.json").exists():
        argv.append("--resume")
    code = cli_main(argv)
    if code != 0:
        raise SystemExit(f"the demo for seed {seed} failed (exit {code}); see its output above")


def rows_of(folder: Path) -> dict[str, dict]:
    """Per model of one run: MACs fraction, subnet name, box and point mIoU."""
    state = json.loads((folder / "demo_state.json").read_text())
    base_macs = state["summary"]["base_macs"] if "summary" in state else None
    mious = lambda result: {p: result["by_prompt"][p]["miou"] for p in ("box", "point")}  # noqa: E731
    rows = {"base, zero-shot": {"macs": 1.0, "name": "-", **mious(state["zero_shot"])},
            "base, fine-tuned": {"macs": 1.0, "name": "-", **mious(state["finetuned"])}}
    for reduction in REDUCTIONS:
        stage = state[f"search_{int(reduction * 100)}"]
        name = json.loads((Path(stage["folder"]) / "subnet.json").read_text())["name"]
        rows[f"winner ≤ {1 - reduction:.0%} MACs"] = {
            "macs": stage["macs"] / base_macs if base_macs else float("nan"), "name": name, **mious(stage["test"])}
    reference = state["zero_shot"]["by_prompt"]["box"]["box_reference_miou"]
    rows["the box itself as the mask"] = {"macs": None, "name": "-", "box": reference, "point": None}
    return rows


def table(runs: list[Path]) -> str:
    per_run = [rows_of(folder) for folder in runs]
    lines = []
    for model in per_run[0]:
        values = [r[model] for r in per_run]

        def stat(key):
            numbers = [v[key] for v in values if v[key] is not None]
            if not numbers:
                return "-"
            spread = f" ± {statistics.stdev(numbers):.3f}" if len(numbers) > 1 else ""
            return f"{statistics.mean(numbers):.3f}{spread}"

        macs = "-" if values[0]["macs"] is None else f"{statistics.mean(v['macs'] for v in values):.2%}"
        names = ", ".join(sorted({f"`{v['name']}`" for v in values})) if values[0]["name"] != "-" else "-"
        lines.append(f"| {model} | {macs} | {names} | {stat('box')} | {stat('point')} |")
    return ("| model | MACs of the base | subnet(s) | box mIoU | point mIoU |\n|---|---|---|---|---|\n"
            + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="The demo's --quick sizes.")
    parser.add_argument("--search_budget", type=int, default=24, help="Subnets scored per search (demo default: 10 quick).")
    parser.add_argument("--runs_dir", default=None, help="Where the demo runs go (default: a temporary folder).")
    parser.add_argument("--from_runs", nargs="+", default=None, help="Only read these finished demo runs.")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    report_folder = smoke_folder("resolution_proxy") if args.smoke else RESULTS
    if args.smoke:
        args.from_runs, args.runs_dir = None, str(report_folder / "runs")

    if args.from_runs:
        runs = [Path(p) for p in args.from_runs]
    else:
        base = Path(args.runs_dir or tempfile.mkdtemp(prefix="resolution_proxy_"))
        seeds = args.seeds[:1] if args.smoke else args.seeds
        runs = [base / f"seed{seed}" for seed in seeds]
        for seed, folder in zip(seeds, runs):
            run_seed(folder, seed, args.quick, args.smoke, args.search_budget)
    text = table(runs)
    out = f"""# Quality at the floor (proxy task, {datetime.date.today()})

{len(runs)} run(s) of `supersam demo --size_metric macs --size_reductions {' '.join(map(str, REDUCTIONS))}`
({', '.join(str(p) for p in runs)}); mean ± standard deviation over runs; mIoU on domain B's test images, one prompt
per object, the model's own mask choice, scored at the original image size.

{text}"""
    print(out)
    print(f"wrote {write_result('resolution_proxy.md', out, folder=report_folder)}")


if __name__ == "__main__":
    main()
