"""Every stage of the pipeline at SAM ViT-B size (1024 px), through the CLI with the Hub id, minimal budgets:
wall time and peak memory (RSS) per stage → benchmarks/results/vit_b_pipeline.md.

A random-weight ViT-B (`SamConfig()` defaults, the vision encoder re-initialised at sane scales, as the tests'
tiny models are) and a default `SamProcessor` are laid out in a temporary HF cache as `facebook/sam-vit-base`
(HF_HOME, HF_HUB_OFFLINE=1: what a download leaves), next to a 4-image HF dataset at 512x384 (save_to_disk). Each
stage runs as its own `python -m supersam_hf.cli` process, in a fresh measuring process, so its peak RSS
(`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`) is its own.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/vit_b_pipeline.py [--workdir DIR] [--keep]

With `--workdir`, measured stages are recorded there (progress.json) and a rerun continues after the last one.
`--smoke`: the tiny preset, every stage in one child process (no per-stage memory), the report in a temporary folder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).parent))

from _common import RESULTS, SMOKE_HELP, smoke_folder, write_result  # noqa: E402

HUB_ID = "facebook/sam-vit-base"
REVISION = "0123456789abcdef" * 2 + "01234567"
# Runs `argv` (a JSON list) as a child and prints the child's wall time and peak RSS (KiB on Linux) as JSON.
MEASURE = """
import json, resource, subprocess, sys, time
argv = json.loads(sys.argv[1])
started = time.perf_counter()
done = subprocess.run(argv, stdout=open(sys.argv[2], "w"), stderr=subprocess.STDOUT)
print(json.dumps({"returncode": done.returncode, "wall_s": time.perf_counter() - started,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""
# --smoke: every stage (JSON list of CLI argv) in this one child, one Python start; RSS is the process's peak so far.
ALL_IN_ONE = """
import contextlib, json, resource, sys, time
from supersam_hf.cli import main
results = []
with open(sys.argv[2], "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
    for argv in json.loads(sys.argv[1]):
        started = time.perf_counter()
        results.append({"returncode": main(argv), "wall_s": time.perf_counter() - started,
                        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
print(json.dumps(results))
"""


def lay_out_model(hf_home: Path, preset: str = "vit-b") -> int:
    """A random ViT-B SAM + processor in the HF cache as `facebook/sam-vit-base`; returns its parameter count.
    (`preset="tiny"`: a 128-px model, only to check this script quickly.)"""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    from _common import preset_config
    from supersam_hf.data import build_sam_processor

    torch.manual_seed(0)
    model = SamModel(SamConfig() if preset == "vit-b" else preset_config(preset)).eval()
    with torch.no_grad():  # SAM's vision config initialises the encoder at std 1e-10 (checkpoints overwrite it)
        for name, param in model.named_parameters():
            if not name.startswith("vision_encoder."):
                continue
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(0.0, 0.02)
            elif param.dim() >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.02)
    snapshot = hf_home / "hub" / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / REVISION
    model.save_pretrained(snapshot)
    processor = SamProcessor(image_processor=SamImageProcessor()) if preset == "vit-b" else build_sam_processor(128)
    processor.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir(parents=True, exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text(REVISION)
    return sum(p.numel() for p in model.parameters())


def lay_out_data(folder: Path, num_images: int = 4) -> None:
    """`num_images` synthetic 512x384 images with instance maps, saved with save_to_disk."""
    import datasets
    from PIL import Image

    from supersam_hf.data import make_synthetic_shapes

    square = make_synthetic_shapes(num_images, 512, seed=0, min_shapes=3, max_shapes=6)
    images = [Image.fromarray(np.asarray(row["image"])[:384]) for row in square]
    labels = [np.asarray(row["label"], dtype=np.int32)[:384] for row in square]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Array2D(shape=(384, 512), dtype="int32")})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(folder))


def stages(data: str) -> list[tuple[str, str, list[str]]]:
    """(name, what it runs, CLI arguments) of every stage, minimal budgets, the Hub id and the one vocabulary."""
    common = ["--dataset_name", data, "--log_level", "warning"]
    return [
        ("convert", "1 calibration image", ["convert", "--model_name_or_path", HUB_ID, *common, "--output_dir", "converted",
                                            "--num_calibration_images", "1", "--calibration_batch_size", "1"]),
        # One micro-batch of 1 image (the default batch) through the largest and the smallest subnet: the peak
        # memory of any step (each subnet's graph is freed by its own backward), at a quarter of a default step's time.
        ("train", "1 step: batch 1, 1 micro-batch, largest + smallest subnet", [
            "train", "--model_name_or_path", "converted", *common, "--output_dir", "trained", "--max_steps", "1",
            "--gradient_accumulation_steps", "1", "--num_random_subnets", "0", "--max_instances_per_image", "4",
            "--eval_steps", "0"]),
        ("train --gradient_checkpointing", "the same step with gradient checkpointing", [
            "train", "--model_name_or_path", "converted", *common, "--output_dir", "trained_gc", "--max_steps", "1",
            "--gradient_accumulation_steps", "1", "--num_random_subnets", "0", "--gradient_checkpointing",
            "--max_instances_per_image", "4", "--eval_steps", "0"]),
        ("search", "budget 2 on 1 image (box prompts)", [
            "search", "--model_name_or_path", "trained", *common, "--output_dir", "search", "--budget", "2",
            "--max_eval_images", "1", "--strategy", "random", "--min_size_reduction", "0.3", "--device", "cpu"]),
        ("export", "best subnet of the search", ["export", "--model_name_or_path", "trained", "--subnet", "best",
                                                 "--search_dir", "search", "--output_dir", "exported", "--log_level",
                                                 "warning"]),
        ("evaluate", "the export on 1 image (box prompts + box reference)", [
            "evaluate", "--model_name_or_path", "exported", *common, "--output_dir", "eval", "--max_eval_images", "1",
            "--device", "cpu"]),
    ]


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def run_stage(workdir: Path, env: dict, name: str, argv: list[str]) -> dict:
    log = workdir / f"{name.split()[0]}{'_gc' if 'checkpointing' in name else ''}.log"
    command = [sys.executable, "-m", "supersam_hf.cli", *argv]
    done = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(command), str(log)], cwd=workdir, env=env,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["returncode"] != 0:
        raise RuntimeError(f"stage {name} failed ({result['returncode']}); see {log}:\n{log.read_text()[-3000:]}")
    return result


def run_all_stages(workdir: Path, env: dict, stage_list: list) -> dict[str, dict]:
    """--smoke: every stage in one child process (see ALL_IN_ONE); name -> result as `run_stage` returns it."""
    log = workdir / "all_stages.log"
    done = subprocess.run([sys.executable, "-c", ALL_IN_ONE, json.dumps([argv for _, _, argv in stage_list]), str(log)],
                          cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the stages' process failed ({done.returncode}); see {log}:\n{done.stderr[-3000:]}")
    results = dict(zip((name for name, _, _ in stage_list), json.loads(done.stdout.strip().splitlines()[-1])))
    for name, result in results.items():
        if result["returncode"] != 0:
            raise RuntimeError(f"stage {name} failed ({result['returncode']}); see {log}:\n{log.read_text()[-3000:]}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="Working folder (default: a temporary one, removed after).")
    parser.add_argument("--keep", action="store_true", help="Keep the working folder.")
    parser.add_argument("--preset", choices=("vit-b", "tiny"), default="vit-b",
                        help="tiny: a 128-px model, to check the script in a minute (writes no result file).")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.workdir = "tiny", str(smoke_folder("vit_b_pipeline") / "work")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vit_b_pipeline_"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HOME": str(workdir / "hf_home"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_ENDPOINT"):
        env.pop(name, None)

    progress = workdir / "progress.json"  # measured stages so far: a rerun on the same --workdir continues
    done = json.loads(progress.read_text()) if progress.is_file() else {}
    if "setup" not in done:
        started = time.perf_counter()
        params = lay_out_model(workdir / "hf_home", args.preset)
        lay_out_data(workdir / "data")
        done["setup"] = {"params": params, "setup_s": time.perf_counter() - started}
        progress.write_text(json.dumps(done, indent=1))
    rows = []
    stage_list = stages(str(workdir / "data"))
    smoke = run_all_stages(workdir, env, stage_list) if args.smoke else {}
    for name, what, argv in stage_list:
        if name not in done:
            print(f"[vit_b_pipeline] {name}: {what} ...", flush=True)
            result = smoke[name] if args.smoke else run_stage(workdir, env, name, argv)
            output = workdir / argv[argv.index("--output_dir") + 1]
            done[name] = {"stage": name, "what": what, "wall_s": result["wall_s"],
                          "peak_rss_gib": result["maxrss_kib"] / 2**20, "output_gib": folder_size(output) / 2**30}
            progress.write_text(json.dumps(done, indent=1))
        rows.append(done[name])
        print(f"[vit_b_pipeline]   {name}: {rows[-1]['wall_s']:.0f} s, peak RSS {rows[-1]['peak_rss_gib']:.2f} GiB",
              flush=True)
    params, setup_s = done["setup"]["params"], done["setup"]["setup_s"]
    if args.preset == "vit-b" or args.smoke:
        write_report(rows, params, setup_s, workdir, workdir.parent if args.smoke else RESULTS)
    else:
        print(json.dumps(rows, indent=1))
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


def write_report(rows: list[dict], params: int, setup_s: float, workdir: Path, folder: Path = RESULTS) -> None:
    evaluation = json.loads((workdir / "eval" / "eval_results.json").read_text())
    table = ["| stage | what | wall time | peak RSS | output folder |", "|---|---|---|---|---|"]
    for row in rows:
        table.append(f"| `{row['stage']}` | {row['what']} | {row['wall_s']:.0f} s | {row['peak_rss_gib']:.2f} GiB | "
                     f"{row['output_gib']:.2f} GiB |")
    train = {row["stage"]: row for row in rows}
    ratio = train["train --gradient_checkpointing"]["peak_rss_gib"] / train["train"]["peak_rss_gib"]
    text = f"""# SAM ViT-B pipeline, every stage through the CLI ({datetime.date.today()})

`benchmarks/vit_b_pipeline.py`: a random-weight ViT-B SAM ({params / 1e6:.1f} M parameters, 1024 px, `SamConfig()`
defaults, vision encoder re-initialised at sane scales) laid out in a temporary HF cache as `{HUB_ID}` with
`HF_HUB_OFFLINE=1`, and a 4-image HF dataset at 512x384 (`save_to_disk`). Every stage runs as its own
`python -m supersam_hf.cli <stage>` process with the Hub id and the one vocabulary, minimal budgets; wall time
includes loading; peak RSS is that process's maximum resident memory. Set-up (model + data): {setup_s:.0f} s.

Machine: {platform.processor() or platform.machine()}, `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}`,
CPU only; **the 2 cores were shared with other work during the run**, so times are upper bounds (memory is not
affected).

{chr(10).join(table)}

- Gradient checkpointing: peak RSS of a training step {ratio:.2f}x of the plain one (both batch 1).
- The export's evaluation on 1 image: box-prompt mIoU {evaluation['miou']:.3f}, the box itself as the mask
  {evaluation.get('box_reference_miou', float('nan')):.3f} (random weights: the model number says nothing about quality).
- A checkpoint of the trained supernet (accelerate `save_state`: weights + AdamW state) is the bulk of the `train`
  output; `--save_total_limit` (default 2) bounds how many are kept.
- A default training step (batch 1 x accumulation 2, 4 subnets) runs 8 subnet forward + backward passes where the
  `train` rows run 2 (the largest and the smallest): several times their compute, at the same peak memory (each
  subnet's graph is freed by its own backward). The issue's measurement before this change: 11 GB RSS at batch 1,
  18 GB at the old default batch 2.
- Every wall time includes starting Python and loading the model (~15-20 s here).
"""
    print(text)
    print(f"written to {write_result('vit_b_pipeline.md', text, folder=folder)}")


if __name__ == "__main__":
    main()
