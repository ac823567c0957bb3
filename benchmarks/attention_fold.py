"""Is SAM's relative-position bias cheaper folded into the attention product or added as written? One attention
block at a time in ONNX Runtime (ratios within one run; not a test).

The exported image encoder (`supersam_hf.onnx_export.attention`) folds the bias into the query · key product on the
layers whose token grid adds at most `FOLD_MAX_EXTRA_DIMS` dimensions (h + w), and adds it to the logits on the
others. Whole-encoder A/Bs of that threshold came out both ways within the machine's noise (benchmarks/results/
floor.md, session 10). This script times one block alone, exported to ONNX and run in ONNX Runtime, in three forms:
*transformers* (the block's own forward, SDPA attention, as a plain SamModel exports), *written out* (the export's
attention adding the bias by broadcasting) and *folded* (the export's attention with the bias in the product).
Shapes are those SAM ViT-B's subnets run: the global attention (qkv, attention, proj) at 1024 / 768 / 512 px (64 /
48 / 32 tokens a side) with 12 heads (full width) and 6 (half width), and a whole windowed layer (14 x 14 windows)
at 1024 / 768 px. Interleaved (every form in turn), median of `--repeats`.

    python benchmarks/attention_fold.py                # CPU, 2 threads, ViT-B shapes (about two minutes)
    python benchmarks/attention_fold.py --smoke        # seconds, tiny shapes, report in a temporary folder
Writes benchmarks/results/attention_fold.md (one section per run, appended).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import tempfile
import types
import warnings
from pathlib import Path

import torch
from transformers.models.sam.configuration_sam import SamVisionConfig
from transformers.models.sam.modeling_sam import SamVisionLayer

from _common import RESULTS, SMOKE_HELP, interleaved_medians, smoke_folder, write_result
from supersam_hf.onnx_export import ort_session
from supersam_hf.onnx_export.attention import (FOLD_MAX_EXTRA_DIMS, _global_attention_forward, _windowed_layer_forward,
                                                folds_bias)

HEAD_DIM = 64  # SAM ViT-B / L / H
PATCH = 16
FORMS = ("transformers", "written out", "folded")
# (label, tokens a side of the image's grid, heads, window size: 0 = global attention)
CASES = [
    ("global attention, 1024 px, full width", 64, 12, 0),
    ("global attention, 1024 px, half width", 64, 6, 0),
    ("global attention, 768 px, full width", 48, 12, 0),
    ("global attention, 768 px, half width", 48, 6, 0),
    ("global attention, 512 px, full width", 32, 12, 0),
    ("global attention, 512 px, half width", 32, 6, 0),
    ("windowed layer, 1024 px, half width", 64, 6, 14),
    ("windowed layer, 768 px, half width", 48, 6, 14),
]
SMOKE_CASES = [("global attention, tiny", 6, 2, 0), ("windowed layer, tiny", 8, 2, 3)]


def _block(grid: int, heads: int, window: int, form: str) -> torch.nn.Module:
    """The block timed: a global layer's attention module, or a whole windowed layer, with random relative-position
    tables (transformers initialises them to zero, which would make the bias vanish) and its forward in `form`. The
    same seed gives every form the same weights."""
    torch.manual_seed(0)
    config = SamVisionConfig(hidden_size=heads * HEAD_DIM, num_attention_heads=heads, image_size=grid * PATCH,
                             patch_size=PATCH, use_rel_pos=True, mlp_dim=heads * HEAD_DIM * 4)
    config._attn_implementation = "sdpa"
    layer = SamVisionLayer(config, window_size=window).eval()
    with torch.no_grad():
        layer.attn.rel_pos_h.normal_(0, 0.5)
        layer.attn.rel_pos_w.normal_(0, 0.5)
    if form != "transformers":
        fold = form == "folded"
        if window:
            layer.forward = types.MethodType(functools.partial(_windowed_layer_forward, fold=fold), layer)
        else:
            layer.attn.forward = types.MethodType(functools.partial(_global_attention_forward, fold=fold), layer.attn)
    return _Root(layer if window else layer.attn)


class _Root(torch.nn.Module):
    """The traced root: `block(hidden_states)`, its first output. (The exporter passes a root forward's keyword
    defaults as positional arguments, which a patched forward's bound `fold` cannot take.)"""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, hidden_states):
        output = self.block(hidden_states)
        return output[0] if isinstance(output, tuple) else output


def _export(module: torch.nn.Module, hidden: torch.Tensor, path: Path) -> Path:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, (hidden,), str(path), input_names=["hidden_states"], output_names=["output"],
                          opset_version=17, do_constant_folding=True, dynamo=False)
    return path


def time_case(grid: int, heads: int, window: int, threads: int, repeats: int, folder: Path) -> dict[str, float]:
    """Median seconds of each form in ONNX Runtime, after checking that all give transformers' output (≤ 1e-4
    relative: float rounding)."""
    import numpy as np

    hidden = torch.randn(1, grid, grid, heads * HEAD_DIM, generator=torch.Generator().manual_seed(1))
    feed = {"hidden_states": hidden.numpy()}
    runs, outputs = {}, {}
    for form in FORMS:
        path = _export(_block(grid, heads, window, form), hidden, folder / f"block_{grid}_{heads}_{window}_{form}.onnx")
        session = ort_session(path, threads=threads)
        outputs[form] = session.run(None, feed)[0]
        runs[form] = lambda session=session: session.run(None, feed)
    scale = max(1.0, float(np.abs(outputs["transformers"]).max()))
    for form in FORMS[1:]:
        gap = float(np.abs(outputs[form] - outputs["transformers"]).max())
        if gap > 1e-4 * scale:
            raise RuntimeError(f"{form} differs from transformers' block by {gap} (grid {grid}, {heads} heads)")
    return interleaved_medians(runs, repeats, torch.device("cpu"), warmup=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    cases, repeats = (SMOKE_CASES, 2) if args.smoke else (CASES, args.repeats)
    out_folder = smoke_folder("attention_fold") if args.smoke else None
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="attention_fold_") as tmp:
        for label, grid, heads, window in cases:
            print(f"[attention_fold] {label}: {grid} x {grid} tokens, {heads} heads", flush=True)
            med = time_case(grid, heads, window, args.threads, repeats, Path(tmp))
            extra = 2 * (window or grid)
            shipped = "folded" if folds_bias(window or grid) else "written out"
            best = min(med, key=med.get)
            rows.append(f"| {label} | {grid} × {grid} | {heads} | {HEAD_DIM} + {extra} | "
                        + " | ".join(f"{1000 * med[form]:.1f} ms" for form in FORMS)
                        + f" | **{med['folded'] / med['written out']:.2f}** | {shipped} | {best} |")
    load_end = os.getloadavg()[0]
    text = f"""
## {datetime.date.today()}: ONNX Runtime, {args.threads} thread(s), median of {repeats} interleaved repeats{", --smoke" if args.smoke else ""}

Load average (1 min) at the start / end: {load_start:.1f} / {load_end:.1f} on {os.cpu_count()} cores. One block (head dim
{HEAD_DIM}, relative-position tables at random values), exported alone. *transformers*: its own forward (SDPA, the bias
materialised as the mask); *written out*: the export's attention, the bias added to the logits by broadcasting;
*folded*: the bias as h + w more dimensions of the query · key product. *Shipped rule*: the form the export uses
(`FOLD_MAX_EXTRA_DIMS` = {FOLD_MAX_EXTRA_DIMS}).

| block | grid | heads | product dims (folded) | transformers | written out | folded | folded ÷ written out | shipped rule | fastest |
|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
    path = write_result("attention_fold.md", text, append=True, folder=out_folder or RESULTS)
    print(text)
    print(f"[attention_fold] wrote {path}")


if __name__ == "__main__":
    main()
