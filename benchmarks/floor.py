"""How small can a subnet get? The smallest reachable MACs and parameters of ViT-B- and ViT-H-shaped supernets, per
search space, from the elastic rules' analytic costs (`SuperSamModel.count_macs` / `count_parameters`, exact vs
FlopCounterMode and the exported checkpoint); instant, no weights (meta device). Optionally (`--timing`), the
time ÷ MACs of ViT-B subnets near 30 / 10 / 5 % of the encoder's MACs (random weights): the extracted `SamModel`
(eager: transformers' code as it is, and under `use_fast_sam_rel_pos`), the supernet's own forward, ONNX Runtime fp32 and INT8 (CPU), or PyTorch in several dtypes on a GPU;
interleaved.

Spaces, each adding to the previous one:
  0.2     depth + MLP width down to 25 %
  0.3     + embedding width down to 50 % of the heads
  narrow  embedding width down to 25 % of the heads, MLP width down to 12.5 % (the new defaults)
  +res    + input resolution down to 50 % (1024 / 768 / 512 px for ViT-B; the new default space)
each with the default depth space (`min_layers` = half the layers) and with `prioritize`'s default (all layers
but 2 elastic, as `supersam convert` makes them).

    python benchmarks/floor.py            # writes benchmarks/results/floor.md
    python benchmarks/floor.py --smoke    # tiny shape + its timing table (seconds); report in a temporary folder
    OMP_NUM_THREADS=2 python benchmarks/floor.py --timing --threads 2   # + the CPU timing table (idle machine: ~25 min)
    python benchmarks/floor.py --timing --device cuda --dtypes float32 bfloat16   # GPU rows, appended
"""

from __future__ import annotations

import argparse
import json
import copy
import datetime
import gc
import os
import sys
import tempfile
from pathlib import Path

import torch
from transformers import SamConfig

from _common import RESULTS, SMOKE_HELP, describe_machine, interleaved_medians, smoke_folder, write_result
from supersam_hf import SuperSamConfig, SuperSamModel, build_sam_config, use_fast_sam_rel_pos
from supersam_hf.configuration_supersam import DEFAULT_RESOLUTION_RATIOS
from supersam_hf.search import cheapest_subnet
from supersam_hf.search_space import default_hidden_size_choices, default_image_size_choices

# Reference points quoted in issue 22 (not measured here): SlimSAM-77 and EdgeSAM.
REFERENCES = "SlimSAM-77 ≈ 9 M parameters, ≈ 23 GMACs (≈ 4.7 % of ViT-B); EdgeSAM ≈ 22 GFLOPs."

SHAPES = {
    "ViT-B": lambda: SamConfig(),  # facebook/sam-vit-base: 12 layers, hidden 768, 1024 px
    "ViT-H": lambda: SamConfig(vision_config=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                                                  mlp_dim=5120, global_attn_indexes=[7, 15, 23, 31])),
}
# --smoke --timing: 4 layers (global 1 and 3), 8 x 8 tokens in windows of 3 (padded to 9 x 9), so every pick differs.
SMOKE_TIMING = dict(image_size=128, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, window_size=3,
                    global_attn_indexes=(1, 3), output_channels=32)
SMOKE_SHAPES = {
    "tiny": lambda: build_sam_config(image_size=128, hidden_size=64, num_hidden_layers=6, num_attention_heads=4),
}


def spaces(sam: SamConfig) -> dict[str, dict]:
    """Search-space fields of each space, for `SuperSamConfig.from_sam_config`."""
    vision = sam.vision_config
    mlp = lambda ratios: [sorted({max(1, round(r * vision.mlp_dim)) for r in ratios})] * vision.num_hidden_layers  # noqa: E731
    heads = lambda ratios: default_hidden_size_choices(vision.hidden_size, vision.num_attention_heads, ratios)  # noqa: E731
    full_res = [vision.image_size]
    return {
        "0.2 (depth + MLP ≥ 25 %)": dict(mlp_dim_choices=mlp((0.25, 0.5, 0.75, 1.0)), hidden_size_choices=[vision.hidden_size],
                                         image_size_choices=full_res),
        "0.3 (+ embedding ≥ 50 %)": dict(mlp_dim_choices=mlp((0.25, 0.5, 0.75, 1.0)), hidden_size_choices=heads((0.5, 0.75, 1.0)),
                                         image_size_choices=full_res),
        "narrow (embedding ≥ 25 %, MLP ≥ 12.5 %)": dict(image_size_choices=full_res),  # the default widths
        "narrow + resolution ≥ 50 % (default space)": dict(
            image_size_choices=default_image_size_choices(vision.image_size, vision.patch_size, DEFAULT_RESOLUTION_RATIOS)),
    }


def depth_spaces(num_layers: int) -> dict[str, dict]:
    return {
        f"min_layers {num_layers // 2} (config default)": {},
        "min_layers 2 (`prioritize` default)": dict(elastic_layers=list(range(1, num_layers)),
                                                    layer_drop_probs=[0.25] * (num_layers - 1), min_layers=2),
    }


def floor_rows(shape: str, sam: SamConfig) -> tuple[list[str], dict]:
    rows, smallest = [], {}
    with torch.device("meta"):
        base = SuperSamModel(SuperSamConfig.from_sam_config(sam))
    full_macs, full_params = base.count_macs(), base.count_parameters()
    for depth_label, depth in depth_spaces(sam.vision_config.num_hidden_layers).items():
        for space_label, fields in spaces(sam).items():
            with torch.device("meta"):
                model = SuperSamModel(SuperSamConfig.from_sam_config(sam, **depth, **fields))
            space = model.search_space
            by_macs, macs = cheapest_subnet(space, model.count_macs)
            by_params, params = cheapest_subnet(space, model.count_parameters)
            rows.append(
                f"| {shape} | {depth_label} | {space_label} | `{by_macs.name}` | {macs / 1e9:.2f} | "
                f"**{macs / full_macs:.2%}** | `{by_params.name}` | {params / 1e6:.2f} | {params / full_params:.1%} |"
            )
            smallest[(depth_label, space_label)] = (by_macs, macs / full_macs)
    header = f"{shape}: full model {full_macs / 1e9:.1f} GMACs, {full_params / 1e6:.1f} M parameters."
    return [header] + rows, smallest


def floor_section(shapes: dict) -> tuple[str, dict]:
    headers, rows, found = [], [], {}
    for shape, make in shapes.items():
        lines, smallest = floor_rows(shape, make())
        headers.append(lines[0])
        rows.extend(lines[1:])
        found[shape] = smallest
    table = "\n".join(rows)
    text = "\n".join(f"- {h}" for h in headers) + f"""

| shape | depth space | search space | smallest by MACs | GMACs | of full | smallest by params | M params | of full |
|---|---|---|---|---|---|---|---|---|
{table}
"""
    return text, found


# -- timing ------------------------------------------------------------------------------------------------------------
PICK_RULES = {
    "closest": "the uniform subnet whose encoder MACs are closest to the target (the rule of the first table)",
    "fewest layers": "among uniform subnets within ±10 % of the target's MACs, the fewest layers, then the widest "
                     "embedding, then the closest MACs (fewer, wider layers)",
}


def uniform_pool(supernet: SuperSamModel) -> list[tuple[float, object]]:
    """(encoder MACs ÷ the full encoder's, subnet) of the uniform subnets: elastic layers dropped from the end (two at
    a time), one MLP width, one embedding width, one resolution."""
    from supersam_hf.costs import encoder_macs

    space = supernet.search_space

    def encoder(cfg) -> int:
        vision = supernet.export_config(cfg).vision_config
        return encoder_macs(vision, [vision.mlp_dim] * vision.num_hidden_layers)

    full, pool = encoder(space.largest()), []
    elastic = sorted(space.elastic_layers, reverse=True)
    for n_drop in range(0, space.num_layers - space.min_layers + 1, 2):
        kept = tuple(i for i in range(space.num_layers) if i not in set(elastic[:n_drop]))
        for mlp in space.mlp_dim_choices[0]:
            for hidden in space.hidden_size_choices:
                for image in space.image_size_choices:
                    cfg = space.canonical(type(space.largest())(kept, (mlp,) * len(kept), hidden, image))
                    pool.append((encoder(cfg) / full, cfg))
    return pool


def pick(pool, target: float, rule: str):
    if rule == "closest":
        return min(pool, key=lambda c: abs(c[0] - target))
    near = [c for c in pool if abs(c[0] - target) <= 0.1 * target] or [min(pool, key=lambda c: abs(c[0] - target))]
    return min(near, key=lambda c: (len(c[1].kept_layers), -(c[1].hidden_size or 10**9), abs(c[0] - target)))


def timed_functions(supernet, models: dict, device, dtypes, threads: int, folder: Path | None) -> tuple[dict, dict]:
    """Per (model, column): a function running one image through the encoder. Columns: `eager <dtype>` (the
    extracted `SamModel`), `eager, fast rel-pos <dtype>` (the same under `use_fast_sam_rel_pos`), `supernet <dtype>` (the supernet's forward under the subnet) and, on CPU with
    `folder`, `ORT fp32` / `ORT INT8` (ONNX Runtime: the second dict, (model file, feed) for `ort_medians`)."""
    torch_runs, ort_runs = {}, {}
    nets = {dtype: supernet if dtype == torch.float32 else copy.deepcopy(supernet).to(dtype) for dtype in dtypes}
    for name, (_, cfg) in models.items():
        sam_model = supernet.extract_subnet(cfg).eval()
        size = sam_model.config.vision_config.image_size
        pixels = torch.randn(1, 3, size, size, device=device)
        for dtype, net in nets.items():
            label = str(dtype).removeprefix("torch.")
            encoder, x = copy.deepcopy(sam_model.vision_encoder).to(dtype), pixels.to(dtype)

            def eager(encoder=encoder, x=x):
                with torch.no_grad():
                    encoder(x)

            def eager_fast(encoder=encoder, x=x):
                with torch.no_grad(), use_fast_sam_rel_pos():
                    encoder(x)

            def elastic(net=net, cfg=cfg, x=x):
                with torch.no_grad(), net.subnet(cfg):
                    net.vision_encoder(x)

            torch_runs[(name, f"eager {label}")] = eager
            torch_runs[(name, f"eager, fast rel-pos {label}")] = eager_fast
            torch_runs[(name, f"supernet {label}")] = elastic
        if folder is not None:
            from supersam_hf.onnx_export import ENCODER_FILE, export_vision_encoder, quantize_int8

            out = folder / name.replace(" ", "_").replace("%", "pct")
            fp32 = export_vision_encoder(sam_model, out / ENCODER_FILE)
            feed = {"pixel_values": pixels.numpy()}
            for column, path in (("ORT fp32", fp32), ("ORT INT8", quantize_int8(out))):
                ort_runs[(name, column)] = (path, feed)
        del sam_model
    return torch_runs, ort_runs


def ort_medians(ort_runs: dict, threads: int, repeats: int, warmup: int) -> dict:
    """Interleaved medians of ONNX Runtime, one precision at a time, each pass in a fresh Python process that runs
    only ONNX Runtime and that pass's sessions (and their memory arenas, GBs at the full model's global attention).
    Run in this process, after the PyTorch pass, ORT was up to ~25 % slower than the same files in a process of their
    own (full ViT-B fp32, 2 threads, idle machine: 5.33 s against 4.04 s standalone, minutes apart), which measures
    the benchmark's own process (a GB-sized torch heap, two thread pools), not ONNX Runtime; a deployment runs
    ORT without the PyTorch models beside it."""
    import subprocess

    import numpy as np

    med = {}
    for precision in dict.fromkeys(column for _, column in ort_runs):
        keys = [key for key in ort_runs if key[1] == precision]
        with tempfile.TemporaryDirectory(prefix="floor_ort_") as tmp:
            spec = []
            for i, key in enumerate(keys):
                path, feed = ort_runs[key]
                np.save(Path(tmp) / f"pixels_{i}.npy", feed["pixel_values"])
                spec.append({"model": str(path), "pixels": str(Path(tmp) / f"pixels_{i}.npy")})
            (Path(tmp) / "spec.json").write_text(json.dumps(spec))
            done = subprocess.run([sys.executable, __file__, "--ort_pass", str(Path(tmp) / "spec.json"),
                                   "--threads", str(threads), "--repeats", str(repeats), "--warmup", str(warmup)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"the ONNX Runtime pass ({precision}) failed:\n{done.stderr[-2000:]}")
            medians = json.loads(done.stdout.strip().splitlines()[-1])
        med |= dict(zip(keys, medians))
    return med


def ort_pass(spec_file: str, threads: int, repeats: int, warmup: int) -> list[float]:
    """The ORT pass's own process (`--ort_pass`): interleaved medians of the models in `spec_file`, in its order."""
    import numpy as np

    from supersam_hf.onnx_export import ort_session

    runs = {}
    for i, item in enumerate(json.loads(Path(spec_file).read_text())):
        session, feed = ort_session(item["model"], threads=threads), {"pixel_values": np.load(item["pixels"])}
        runs[i] = lambda session=session, feed=feed: session.run(None, feed)
    med = interleaved_medians(runs, repeats, torch.device("cpu"), warmup=warmup)
    return [med[i] for i in range(len(runs))]


def timing_section(sam: SamConfig, threads: int, repeats: int = 3, device: str = "cpu", dtypes=("float32",),
                   targets=(0.30, 0.10, 0.05), warmup: int = 1) -> str:
    """Encoder time ÷ encoder MACs (both relative to the full encoder) of subnets near each target, picked by each
    rule of `PICK_RULES`: extracted `SamModel` eager, the supernet's own forward, ONNX Runtime fp32 and INT8 (CPU);
    interleaved medians of wall-clock time."""
    torch.set_num_threads(threads)
    load_start = os.getloadavg()[0]
    device, dtypes = torch.device(device), [getattr(torch, d) for d in dtypes]
    sam._attn_implementation = "sdpa"
    layers = sam.vision_config.num_hidden_layers
    supernet = SuperSamModel(SuperSamConfig.from_sam_config(sam, elastic_layers=list(range(1, layers)),
                                                            layer_drop_probs=[0.25] * (layers - 1), min_layers=2))
    supernet = supernet.to(device).eval()
    pool = uniform_pool(supernet)
    models = {"full": (1.0, supernet.search_space.largest())}
    for rule in PICK_RULES:
        for target in targets:
            chosen = pick(pool, target, rule)
            if all(chosen[1] != cfg for _, cfg in models.values()):
                models[f"{target:.0%} ({rule})"] = chosen
    # the ONNX files of the timed subnets (over 1 GB for ViT-B): this run's own temporary folder, removed after it
    with tempfile.TemporaryDirectory(prefix="floor_onnx_") as tmp:
        folder = Path(tmp) if device.type == "cpu" else None
        torch_runs, ort_runs = timed_functions(supernet, models, device, dtypes, threads, folder)
        del supernet  # the runs hold what they need; each pass's models are freed before the next pass
        med = interleaved_medians(torch_runs, repeats, device, warmup=warmup)
        del torch_runs
        gc.collect()
        med |= ort_medians(ort_runs, threads, repeats, warmup)
    columns = list(dict.fromkeys(column for _, column in med))
    rows = []
    for name, (fraction, cfg) in models.items():
        cells = [f"{med[(name, c)]:.3f} s, **{med[(name, c)] / med[('full', c)] / fraction:.2f}**" for c in columns]
        ort = f"{med[(name, 'ORT fp32')] / med[(name, 'eager float32')]:.2f}" if (name, "ORT fp32") in med else "–"
        rows.append(f"| {name} | `{cfg.name}` | {fraction:.3f} | " + " | ".join(cells) + f" | {ort} |")
    rules = "; ".join(f"*{rule}*: {text}" for rule, text in PICK_RULES.items())
    load_end = os.getloadavg()[0]
    shared = (f"well above this run's own {threads} thread(s): the machine was shared with other jobs and the times "
              "and ratios carry their noise; judge the goals (time ÷ MACs ≤ 1.10, ORT ≤ eager) on an idle machine."
              if max(load_start, load_end) > threads + 0.5 else
              f"at most this run's own {threads} thread(s): the machine was otherwise idle.")
    return f"""
### Time ÷ MACs (image encoder, {describe_machine(device)}, {datetime.date.today()})

Median wall-clock seconds of {repeats} interleaved repeats after {warmup} warm-up (every model and column in turn;
ONNX Runtime in a pass per precision, each in a Python process of its own), then **time ÷ MACs** = (time ÷ the full encoder's time in the same column) ÷
(encoder MACs ÷ the full encoder's). Columns: *eager* is the extracted `SamModel` (transformers' code as it is), *eager,
fast rel-pos* the same model under `supersam_hf.use_fast_sam_rel_pos()` (bitwise the same outputs), *supernet* the supernet's own
forward under the subnet, *ORT* ONNX Runtime of the exported encoder (INT8: dynamic quantization of the MatMul/Gemm
weights). Above 1 a subnet is slower than its MACs promise; below 1 the full model carries work its MACs do not
count (its global layers' relative-position bias over 4096 × 4096 tokens, a memory-bound sum larger than what the
subnets carry). Subnets are uniform (layers dropped from the end, one MLP width, one embedding width, one
resolution), picked per target by two rules: {rules}. Command: `{" ".join(sys.argv) or "floor.py"}`.
Load average (1 min) at the start / end: **{load_start:.1f} / {load_end:.1f}** on {os.cpu_count()} cores; {shared}

| model | subnet | encoder MACs ratio | {" | ".join(columns)} | ORT ÷ eager |
|---|---|---|{"---|" * len(columns)}---|
""" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP + " Includes the timing table (a tiny shape, one target).")
    parser.add_argument("--timing", action="store_true", help="Also time subnets near 30 / 10 / 5 %% of the MACs (slow).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (eager, supernet, ONNX Runtime fp32 + INT8) or cuda.")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"],
                        help="PyTorch dtypes timed (ONNX Runtime: fp32 and INT8, on CPU only).")
    parser.add_argument("--ort_pass", default=None, help=argparse.SUPPRESS)  # ort_medians' own process
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ort_pass:
        print(json.dumps(ort_pass(args.ort_pass, args.threads, args.repeats, args.warmup)))
        return

    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    text, found = floor_section(shapes)
    shape = next(iter(shapes))  # the summary's shape: ViT-B (the smoke run's tiny one)
    num_layers = shapes[shape]().vision_config.num_hidden_layers
    first = found[shape]
    best = min(first.values(), key=lambda c: c[1])
    default = first[(f"min_layers {num_layers // 2} (config default)", "narrow + resolution ≥ 50 % (default space)")]
    narrow = first[(f"min_layers {num_layers // 2} (config default)", "narrow (embedding ≥ 25 %, MLP ≥ 12.5 %)")]
    out = f"""# The floor: smallest reachable subnets ({datetime.date.today()}{", --smoke: tiny shape" if args.smoke else ""})

Analytic, from the elastic rules (`count_macs`: one image, one point prompt, whole model; `count_parameters`: the
exported checkpoint), each the cheapest subnet of its space (`supersam_hf.search.cheapest_subnet`, exact for these
uniform spaces). Reference points (issue 22, not measured here): {REFERENCES}

{text}
**{shape}**: the default space (with resolution) reaches **{default[1]:.2%}** of the MACs (`{default[0].name}`) with its
default depth space and **{best[1]:.2%}** (`{best[0].name}`) with `prioritize`'s; the goal was ≤ 5 % (≤ 23 GMACs) and
≤ 2.5 % as the stretch point. Narrower widths alone reach {narrow[1]:.2%} (`{narrow[0].name}`); the resolution
dimension divides the token count (and the global layers' quadratic attention) by up to 4.
Parameters stop near the prompt encoder + mask decoder (≈ 4 M, untouched by any elastic kind).
"""
    folder = smoke_folder("floor") if args.smoke else RESULTS
    if args.timing or args.smoke:  # --smoke runs the timing code path on a tiny shape
        sam = build_sam_config(**SMOKE_TIMING) if args.smoke else SamConfig()
        smoke = dict(targets=(0.3,), warmup=0, repeats=1) if args.smoke else dict(repeats=args.repeats)
        timing = timing_section(sam, args.threads, device=args.device, dtypes=args.dtypes, **smoke)
        if args.device != "cpu":  # the GPU rows go below the CPU table already there
            print(timing)
            print(f"appended to {write_result('floor.md', timing, append=True, folder=folder)}")
            return
        out += timing
    else:
        out += "\nThe time ÷ MACs table (`--timing`) was not run for this file.\n"
    print(out)
    print(f"wrote {write_result('floor.md', out, folder=folder)}")


if __name__ == "__main__":
    main()
