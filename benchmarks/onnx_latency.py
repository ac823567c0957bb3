"""ONNX Runtime CPU latency of SAM's image encoder: a ViT-B-shaped model and subnets at ~75 / 50 / 30 % of its MACs.

Each model is exported with `supersam_hf.onnx_export` (fp32) and quantized to INT8 (`quantize_int8`), then timed in
ONNX Runtime on this machine's CPU: one warm-up, then interleaved repeats (A, B, C, D, A, B, ...) so machine noise
hits every model alike; the median is reported. Goals: >= 3x faster at the 30 % point, time fraction <= 1.10 x
MACs fraction. Weights are random (the cost of a forward does not depend on them), re-drawn at sane scales so no
activation becomes denormal.

The subnet shapes are standard `SamConfig`s, what `extract_subnet` writes for an embedding-width and MLP-width
subnet with every layer kept (uniform widths export compactly):

    python benchmarks/onnx_latency.py                   # 1024 px, 2 threads -> results/onnx_latency.md
    python benchmarks/onnx_latency.py --smoke          # tiny shapes at 64 px, 1 repeat -> a temporary folder
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import SamConfig, SamModel

sys.path.insert(0, str(Path(__file__).parent))
from _common import SMOKE_HELP, smoke_folder  # noqa: E402

from supersam_hf.costs import encoder_macs  # noqa: E402
from supersam_hf.onnx_export import ENCODER_FILE, export_vision_encoder, ort_session, quantize_int8

RESULTS = Path(__file__).parent / "results"

# name: (hidden size, attention heads, layers, MLP width); head size stays 64, global layers 2, 5, 8, 11.
SHAPES = {
    "full (ViT-B)": (768, 12, 12, 3072),
    "~75 %: MLP 1536": (768, 12, 12, 1536),
    "~50 %: width 576, MLP 1536": (576, 9, 12, 1536),
    "~30 %: width 384, MLP 1536": (384, 6, 12, 1536),
}
SMOKE_SHAPES = {"full (tiny)": (64, 4, 2, 256), "width 32, MLP 128": (32, 2, 2, 128)}


def shape_config(hidden: int, heads: int, layers: int, mlp: int, image_size: int) -> SamConfig:
    """SamConfig() defaults (ViT-B) with this encoder shape."""
    config = SamConfig()
    vision = config.vision_config.to_dict()
    vision.update(hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=layers, mlp_dim=mlp,
                  image_size=image_size, global_attn_indexes=[i for i in range(layers) if i % 3 == 2])
    return SamConfig(vision_config=vision, prompt_encoder_config={"image_size": image_size,
                                                                  "image_embedding_size": image_size // 16})


def random_model(config: SamConfig, seed: int = 0) -> SamModel:
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    with torch.no_grad():
        for name, param in model.vision_encoder.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5)
    return model


def export_all(shapes: dict, image_size: int, folder: Path) -> dict[str, dict]:
    """Export (fp32) and quantize (INT8) every shape; return name → {macs, fp32, int8 paths}."""
    models = {}
    for index, (name, shape) in enumerate(shapes.items()):
        config = shape_config(*shape, image_size)
        vision = config.vision_config
        out = folder / f"model{index}" / "onnx"
        start = time.perf_counter()
        export_vision_encoder(random_model(config), out / ENCODER_FILE)
        int8 = quantize_int8(out)
        print(f"{name}: exported + quantized in {time.perf_counter() - start:.0f} s", flush=True)
        models[name] = {"shape": shape, "macs": encoder_macs(vision, [vision.mlp_dim] * vision.num_hidden_layers),
                        "fp32": out / ENCODER_FILE, "int8": int8}
    return models


def interleaved_ms(paths: dict[str, Path], image_size: int, threads: int, warmup: int, repeats: int) -> dict[str, float]:
    """Median ms per model, timed in turn so load changes hit all models alike."""
    sessions = {name: ort_session(path, threads) for name, path in paths.items()}
    feeds = {"pixel_values": torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).numpy()}
    for _ in range(warmup):
        for session in sessions.values():
            session.run(None, feeds)
    times = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def table(models: dict, fp32: dict, int8: dict) -> str:
    full = next(iter(models))
    macs0, fp0, q0 = models[full]["macs"], fp32[full], int8[full]
    lines = ["| model | hidden / heads / layers / MLP | GMACs | MACs % | fp32 ms | speed-up | time ÷ MACs | "
             "INT8 ms | speed-up (vs full INT8) | time ÷ MACs | INT8 vs fp32 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, info in models.items():
        frac = info["macs"] / macs0
        lines.append(
            f"| {name} | {' / '.join(map(str, info['shape']))} | {info['macs'] / 1e9:.1f} | {100 * frac:.1f} | "
            f"{fp32[name]:.0f} | {fp0 / fp32[name]:.2f}x | {fp32[name] / fp0 / frac:.2f} | {int8[name]:.0f} | "
            f"{q0 / int8[name]:.2f}x | {int8[name] / q0 / frac:.2f} | {fp32[name] / int8[name]:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image_size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "onnx_latency.md")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    shapes = SHAPES
    if args.smoke:
        shapes, args.image_size, args.warmup, args.repeats = SMOKE_SHAPES, 64, 0, 1
        args.output = smoke_folder("onnx_latency") / "onnx_latency.md"
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        models = export_all(shapes, args.image_size, Path(tmp))
        # One precision at a time: fewer sessions (and global-attention buffers) resident at once.
        fp32 = interleaved_ms({n: m["fp32"] for n, m in models.items()}, args.image_size, args.threads, args.warmup, args.repeats)
        print("fp32 ms:", fp32, flush=True)
        int8 = interleaved_ms({n: m["int8"] for n, m in models.items()}, args.image_size, args.threads, args.warmup, args.repeats)
        print("int8 ms:", int8, flush=True)
    load = os.getloadavg()
    text = (
        f"# ONNX Runtime CPU encoder latency ({args.image_size} px)\n\n"
        f"{datetime.date.today()}, `python benchmarks/onnx_latency.py --image_size {args.image_size} --threads "
        f"{args.threads} --repeats {args.repeats}`. ONNX Runtime {onnxruntime.__version__} (CPU provider, "
        f"{args.threads} intra-op threads), torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores. Batch 1, median of {args.repeats} interleaved runs after {args.warmup} warm-up. "
        "Encoder only (`vision_encoder.onnx`); INT8 = dynamic quantization of MatMul/Gemm weights "
        "(`quantize_int8`). Speed-up is against the full model in the same precision; time ÷ MACs is (time "
        "fraction) / (MACs fraction), goal <= 1.10; goal at the 30 % point: >= 3x.\n\n"
        f"{table(models, fp32, int8)}\n\n"
        f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min). The machine's "
        "cores were shared with other jobs during the run, so absolute times are inflated and noisy; the "
        "interleaved order keeps the ratios comparable.\n"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
