"""What MLP neuron reordering buys narrow subnets (a measurement, not a test).

For a small SAM, the relative error of the image embeddings of uniform-width subnets (25 / 50 / 75 % of every
encoder MLP) against the full model, on held-out images, before and after `prioritize` reordered the neurons
(16 calibration + 16 held-out synthetic images, 3 seeds). Also shown: ordering by weight magnitude alone
(`||W1[j]||_1 * ||W2[:, j]||_1`, no data), to separate what the calibration data add, and an ablation of the
score's two sides (input-side / output-side Wanda score alone vs. their normalised mean, the default).

No pretrained SAM can be downloaded offline, so the weights are random. Two initialisations:
* "heterogeneous" (the headline): every hidden neuron's `lin1` row/bias and `lin2` column scaled by its own
  log-normal factor (sigma 1) in random order, so neurons differ in importance and the important ones are scattered,
  as in trained networks;
* "plain": i.i.d. random weights, where neurons differ only by chance (a hard case for any ordering).

    python benchmarks/reorder_gain.py            # writes benchmarks/results/reorder_gain.md
    python benchmarks/reorder_gain.py --smoke    # seconds: tiny model, 4 images, 1 seed; report in a temporary folder
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import statistics
import time

import torch
from transformers import SamImageProcessor, SamModel, SamProcessor

from _common import PRESETS, SMOKE_HELP, describe_machine, smoke_folder, write_result
from supersam_hf import SuperSamModel, build_sam_config
from supersam_hf.data import make_synthetic_shapes
from supersam_hf.prioritization import scores as prioritization_scores
from supersam_hf.prioritization import permute_mlp_neurons, prioritize

WIDTHS = (0.25, 0.5, 0.75)
CONFIG = dict(image_size=128, hidden_size=128, num_hidden_layers=8, num_attention_heads=4, window_size=4)
SMOKE_CONFIG = PRESETS["smoke"]


def random_sam(seed: int, sigma: float, config: dict = CONFIG) -> SuperSamModel:
    """A random small SAM at useful weight scales (SAM's own init gives the encoder std 1e-10, and zero position
    tables), converted to a supernet; `sigma` > 0 plants log-normal per-neuron importance in every encoder MLP."""
    torch.manual_seed(seed)
    sam = SamModel(build_sam_config(**config)).eval()
    with torch.no_grad():
        for name, param in sam.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(0.0, 0.5)
            elif param.dim() >= 2 and "positional_embedding" not in name:
                param.normal_(0.0, param[0].numel() ** -0.5)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.02)
        g = torch.Generator().manual_seed(10_000 + seed)
        for layer in sam.vision_encoder.layers:
            scale = torch.exp(sigma * torch.randn(layer.mlp.lin1.out_features, generator=g))
            layer.mlp.lin1.weight.mul_(scale[:, None])
            layer.mlp.lin1.bias.mul_(scale)
            layer.mlp.lin2.weight.mul_(scale[None, :])
    return SuperSamModel.from_sam(sam).eval()


def relative_errors(model: SuperSamModel, pixel_values: torch.Tensor) -> dict[float, float]:
    """Mean over images of ||E_subnet - E_full|| / ||E_full|| (image embeddings, flattened per image)."""
    with torch.no_grad():
        full = model.get_image_embeddings(pixel_values).flatten(1)
        errors = {}
        for width in WIDTHS:
            with model.subnet(model.search_space.uniform(width)):
                narrow = model.get_image_embeddings(pixel_values).flatten(1)
            errors[width] = ((narrow - full).norm(dim=1) / full.norm(dim=1)).mean().item()
    return errors


def magnitude_reorder(model: SuperSamModel) -> None:
    for layer in model.vision_encoder.layers:
        mlp = layer.mlp
        score = mlp.lin1.weight.abs().sum(dim=1) * mlp.lin2.weight.abs().sum(dim=0)
        permute_mlp_neurons(mlp, torch.sort(score, descending=True, stable=True).indices)


@contextlib.contextmanager
def score_side(input_weight: float):
    """Ablation: make `prioritize` score neurons with one side of the Wanda score only (0 = output, 1 = input)."""
    original = prioritization_scores.neuron_scores
    prioritization_scores.neuron_scores = functools.partial(original, input_weight=input_weight)
    try:
        yield
    finally:
        prioritization_scores.neuron_scores = original


def run(sigma: float, seeds: int, calibration, held_out: torch.Tensor, processor, config: dict = CONFIG) -> tuple[dict, dict]:
    results = {"random order (no reordering)": [], "weight magnitude (no data)": [], "prioritize (Wanda, data)": []}
    extra = {"importance": None, "elastic": None, "probs": None}
    for seed in range(seeds):
        model = random_sam(seed, sigma, config)
        results["random order (no reordering)"].append(relative_errors(model, held_out))
        by_magnitude = random_sam(seed, sigma, config)
        magnitude_reorder(by_magnitude)
        results["weight magnitude (no data)"].append(relative_errors(by_magnitude, held_out))
        report = prioritize(model, calibration, processor, num_images=16, batch_size=4, show_progress=False)
        results["prioritize (Wanda, data)"].append(relative_errors(model, held_out))
        for name, side in (("ablation: input side only", 1.0), ("ablation: output side only", 0.0)):
            ablated = random_sam(seed, sigma, config)
            with score_side(side):
                prioritize(ablated, calibration, processor, num_images=16, measure_layers=False, show_progress=False)
            results.setdefault(name, []).append(relative_errors(ablated, held_out))
        if seed == 0:
            extra.update(importance=report.layer_importance, elastic=report.elastic_layers, probs=report.layer_drop_probs,
                         top_half=[s["top_half_fraction"] for s in report.neuron_scores])
    return results, extra


def table(results: dict) -> str:
    lines = ["| neuron order | " + " | ".join(f"{int(w * 100)} % width" for w in WIDTHS) + " |",
             "|---|" + "---|" * len(WIDTHS)]
    for name, runs in results.items():
        cells = []
        for w in WIDTHS:
            values = [r[w] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    base, ours = results["random order (no reordering)"], results["prioritize (Wanda, data)"]
    ratios = [statistics.mean(o[w] for o in ours) / statistics.mean(b[w] for b in base) for w in WIDTHS]
    lines.append("| **error ratio prioritize / no reordering** | " + " | ".join(f"**{r:.2f}**" for r in ratios) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    config, num_images = (SMOKE_CONFIG, 4) if args.smoke else (CONFIG, 16)
    if args.smoke:
        args.seeds = 1

    size = config["image_size"]
    processor = SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": size}, pad_size={"height": size, "width": size},
        mask_size={"longest_edge": size // 4}, mask_pad_size={"height": size // 4, "width": size // 4},
    ))
    calibration = make_synthetic_shapes(num_images, image_size=size, seed=0)
    held_out_images = make_synthetic_shapes(num_images, image_size=size, seed=1)
    held_out = processor(images=list(held_out_images["image"]), return_tensors="pt")["pixel_values"]

    sections = {}
    for label, sigma in (("heterogeneous neuron scales (sigma = 1)", 1.0), ("plain random init (sigma = 0)", 0.0)):
        sections[label] = run(sigma, args.seeds, calibration, held_out, processor, config)
        print(f"{label}\n{table(sections[label][0])}\n")

    model = random_sam(0, 1.0, config)
    vision = model.config.vision_config
    head_extra = sections["heterogeneous neuron scales (sigma = 1)"][1]
    text = [
        f"# MLP neuron reordering: embedding error of narrow subnets ({datetime.date.today()})",
        "",
        f"Generated by `python benchmarks/reorder_gain.py` on {describe_machine(torch.device('cpu'))}, "
        f"{time.perf_counter() - started:.0f} s in all.",
        "",
        f"Model: small SAM, {vision.num_hidden_layers} encoder layers, hidden {vision.hidden_size}, MLP "
        f"{vision.mlp_dim}, image {vision.image_size} px ({model.count_parameters():,} params). **Random weights** "
        "(no pretrained SAM is available offline), at useful scales. Data: synthetic shapes (`make_synthetic_shapes`, "
        "domain A), 16 calibration images (seed 0) and 16 different held-out images (seed 1).",
        "",
        "Metric: mean over held-out images of `||E_w - E||_2 / ||E||_2`, `E` the full model's image embeddings "
        "(neck output) and `E_w` those with every encoder MLP sliced to its first `w` % neurons (all layers kept). "
        f"Mean ± std over {args.seeds} seeds (a new random model per seed). Lower is better.",
        "",
    ]
    for label, (results, extra) in sections.items():
        text += [f"## {label}", "", table(results), ""]
    text += [
        "## What `prioritize` chose (heterogeneous, seed 0)",
        "",
        "| layer | " + " | ".join(str(i) for i in range(vision.num_hidden_layers)) + " |",
        "|---|" + "---|" * vision.num_hidden_layers,
        "| removal cost (1 − cos) | " + " | ".join(f"{v:.3f}" for v in head_extra["importance"]) + " |",
        "| drop probability | " + " | ".join(
            f"{dict(zip(head_extra['elastic'], head_extra['probs']))[i]:.2f}" if i in head_extra["elastic"] else "fixed"
            for i in range(vision.num_hidden_layers)) + " |",
        "| score share of top 50 % neurons | " + " | ".join(f"{v:.2f}" for v in head_extra["top_half"]) + " |",
        "",
        "Reading: reordering is exact at full width (tested) and moves the most important neurons into the prefix "
        "that narrow subnets keep. Data-driven scores beat weight magnitude alone, clearly so when the weights carry "
        "no planted importance (plain init). In the ablation the output-side score alone is as good as the default "
        "equal mixture (within noise) and the input-side score alone is clearly weaker on plain init: the input "
        "side measures how hard a neuron is driven, the output side what it writes into the residual stream. On "
        "random weights these numbers show the mechanism, not SAM's real gain; rerun with a pretrained checkpoint "
        "(replace `random_sam`) for that.",
        "",
    ]
    path = write_result("reorder_gain.md", "\n".join(text), **({"folder": smoke_folder("reorder_gain")} if args.smoke else {}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
