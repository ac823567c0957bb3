"""What embedding-channel and head reordering buys narrow embedding widths (a measurement, not a test).

For a small SAM, the relative error of the image embeddings of subnets at 50 / 75 % of the heads (all layers, full
MLPs) against the full model, on held-out images, with the channels and heads in their original order and after
`reorder_embedding` (what `prioritize` runs) ordered them; ablations apply only the channel order or only the head
orders. 16 calibration + 16 held-out synthetic images, 3 seeds.

No pretrained SAM can be downloaded offline, so the weights are random (at useful scales, see `reorder_gain.py`):
* "heterogeneous" (the headline): each residual channel's LayerNorm weight/bias scaled by its own log-normal factor
  (the same in every layer) and each head's value rows by another, in random order, as trained ViTs have outlier
  channels and dominant heads;
* "plain": i.i.d. random weights, where channels and heads differ only by chance.

    python benchmarks/width_reorder_gain.py            # writes benchmarks/results/width_reorder_gain.md
    python benchmarks/width_reorder_gain.py --smoke    # seconds: tiny model, 4 images, 2 seeds; temporary folder
"""

from __future__ import annotations

import argparse
import datetime
import statistics

import torch
from transformers import SamImageProcessor, SamProcessor

from _common import SMOKE_HELP, describe_machine, smoke_folder, write_result
from reorder_gain import CONFIG, SMOKE_CONFIG, random_sam
from supersam_hf import SubnetConfig, SuperSamModel
from supersam_hf.data import make_synthetic_shapes
from supersam_hf.prioritization import permute_attention_heads, permute_embedding_channels, reorder_embedding

HEAD_FRACTIONS = (0.5, 0.75)
ORDERS = ("original order (no reordering)", "channels only", "heads only", "channels + heads (prioritize)")


def plant_importance(model: SuperSamModel, seed: int, sigma: float) -> None:
    """Log-normal importance per residual channel (LayerNorm weight/bias, same factor in every layer) and per head
    (its value rows), in random order."""
    g = torch.Generator().manual_seed(20_000 + seed)
    hidden = model.config.vision_config.hidden_size
    head_dim = hidden // model.config.vision_config.num_attention_heads
    channel = torch.exp(sigma * torch.randn(hidden, generator=g))
    with torch.no_grad():
        for layer in model.vision_encoder.layers:
            for norm in (layer.layer_norm1, layer.layer_norm2):
                norm.weight.mul_(channel)
                norm.bias.mul_(channel)
            heads = torch.exp(sigma * torch.randn(hidden // head_dim, generator=g)).repeat_interleave(head_dim)
            layer.attn.qkv.weight[2 * hidden :].mul_(heads[:, None])
            layer.attn.qkv.bias[2 * hidden :].mul_(heads)


def embedding_error(model: SuperSamModel, pixels: torch.Tensor, hidden_size: int) -> float:
    space = model.search_space
    cfg = space.canonical(SubnetConfig(tuple(range(space.num_layers)), space.largest().mlp_dims, hidden_size))
    with torch.no_grad():
        full = model.get_image_embeddings(pixels)
        with model.subnet(cfg):
            narrow = model.get_image_embeddings(pixels)
    return statistics.mean(((n - f).norm() / f.norm()).item() for n, f in zip(narrow, full))


def errors_by_order(seed: int, sigma: float, calibration: torch.Tensor, held_out: torch.Tensor, widths,
                    config: dict = CONFIG) -> dict:
    """Embedding error per order and width for one random model."""
    results = {}
    for order_name in ORDERS:
        model = random_sam(seed, 0.0, config)
        plant_importance(model, seed, sigma)
        if order_name != ORDERS[0]:
            order = reorder_embedding(model, calibration.split(4), apply=False)
            if order_name != "channels only":
                for layer, heads in zip(model.vision_encoder.layers, order.head_orders):
                    permute_attention_heads(layer.attn, torch.tensor(heads))
            if order_name != "heads only":
                permute_embedding_channels(model.vision_encoder, torch.tensor(order.channel_order))
        results[order_name] = {h: embedding_error(model, held_out, h) for h in widths}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    config, num_images, seeds = (SMOKE_CONFIG, 4, 2) if args.smoke else (CONFIG, 16, 3)
    processor = SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": config["image_size"]}, pad_size={"height": config["image_size"], "width": config["image_size"]}))
    pixels = lambda seed: processor(images=list(make_synthetic_shapes(num_images, image_size=config["image_size"], seed=seed)["image"]),
                                    return_tensors="pt")["pixel_values"]
    calibration, held_out = pixels(0), pixels(1)
    heads, head_dim = config["num_attention_heads"], config["hidden_size"] // config["num_attention_heads"]
    widths = [round(f * heads) * head_dim for f in HEAD_FRACTIONS]
    sections = []
    for label, sigma in (("heterogeneous channel and head scales (sigma = 1)", 1.0), ("plain random init (sigma = 0)", 0.0)):
        runs = [errors_by_order(seed, sigma, calibration, held_out, widths, config) for seed in range(seeds)]
        rows = []
        for order_name in ORDERS:
            cells = [f"{statistics.mean(r[order_name][h] for r in runs):.3f} ± {statistics.stdev(r[order_name][h] for r in runs):.3f}"
                     for h in widths]
            rows.append(f"| {order_name} | " + " | ".join(cells) + " |")
        ratio = [statistics.mean(r[ORDERS[-1]][h] for r in runs) / statistics.mean(r[ORDERS[0]][h] for r in runs) for h in widths]
        rows.append("| **error ratio prioritize / no reordering** | " + " | ".join(f"**{x:.2f}**" for x in ratio) + " |")
        header = "| order | " + " | ".join(f"hidden {h} ({h // head_dim} of {heads} heads)" for h in widths) + " |"
        sections.append(f"## {label}\n\n{header}\n|---|" + "---|" * len(widths) + "\n" + "\n".join(rows) + "\n")

    text = f"""# Embedding-channel and head reordering: embedding error of narrow widths ({datetime.date.today()})

Generated by `python benchmarks/width_reorder_gain.py` on {describe_machine(torch.device('cpu'))}.

Model: small SAM, {config['num_hidden_layers']} encoder layers, hidden {config['hidden_size']} ({heads} heads of {head_dim}), image
{config['image_size']} px, **random weights** at useful scales. Data: synthetic shapes, 16 calibration images (seed 0), 16
different held-out images (seed 1). Metric: mean over held-out images of `||E_h - E||_2 / ||E||_2`, `E` the full
model's image embeddings and `E_h` those of the subnet at embedding width `h` (all layers, full MLPs). Mean ± std
over 3 seeds. Lower is better.

""" + "\n".join(sections) + """
Reading: reordering is exact at full width (tested); it moves the channels and heads that carry the most signal
into the prefix a narrower embedding keeps. On random weights these numbers show the mechanism, not SAM's real gain.
"""
    print(text)
    print(f"wrote {write_result('width_reorder_gain.md', text, **({'folder': smoke_folder('width_reorder_gain')} if args.smoke else {}))}")


if __name__ == "__main__":
    main()
