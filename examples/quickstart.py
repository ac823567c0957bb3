"""Quick start: build a small SAM, save it, convert it to a supernet, extract three subnets, reload each with
vanilla `transformers.SamModel` and print params / MACs / max output difference.

    python examples/quickstart.py [--output runs/quickstart]

Offline: the "checkpoint" is a randomly initialised small SAM written to disk, since no SAM can be downloaded here.
With a real one, replace the first step by a repo id, e.g. SuperSamModel.from_pretrained("facebook/sam-vit-base").
"""

import argparse
from pathlib import Path

import torch
from transformers import SamModel

from supersam_hf import SuperSamModel, build_sam_config


def main(output: str = "runs/quickstart") -> None:
    out = Path(output)
    torch.manual_seed(0)
    base_dir = out / "small-sam"
    SamModel(build_sam_config(image_size=128, hidden_size=96, num_hidden_layers=6)).save_pretrained(base_dir)

    supernet = SuperSamModel.from_pretrained(base_dir).eval()  # a plain SAM checkpoint converts on load
    space = supernet.search_space
    subnets = {
        "largest": space.largest(),
        "half width, layers 1 and 4 dropped": space.uniform(0.5, kept_layers=[0, 2, 3, 5]),
        "smallest": space.smallest(),
    }
    inputs = {"pixel_values": torch.randn(1, 3, 128, 128), "input_points": torch.tensor([[[[40.0, 60.0]], [[90.0, 30.0]]]])}
    base_params, base_macs = supernet.count_parameters(), supernet.count_macs()

    rows = []
    for label, cfg in subnets.items():
        folder = out / cfg.name
        supernet.extract_subnet(cfg).save_pretrained(folder)
        reloaded = SamModel.from_pretrained(folder).eval()  # vanilla transformers, no supersam code
        with torch.no_grad(), supernet.subnet(cfg):
            expected = supernet(**inputs).pred_masks
        with torch.no_grad():
            got = reloaded(**inputs).pred_masks
        params, macs = supernet.count_parameters(cfg), supernet.count_macs(cfg)
        rows.append((label, cfg.name, params, params / base_params, macs, macs / base_macs, (got - expected).abs().max().item()))

    print(f"\n{'subnet':<36} {'name':<18} {'params':>9} {'':>6} {'MACs':>12} {'':>6} {'max |diff|':>10}")
    for label, name, params, p_ratio, macs, m_ratio, diff in rows:
        print(f"{label:<36} {name:<18} {params:>9,} {p_ratio:>6.0%} {macs:>12,} {m_ratio:>6.0%} {diff:>10.1e}")
    print(f"\nsubnet checkpoints written under {out}/ (load each with transformers.SamModel.from_pretrained)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/quickstart")
    main(parser.parse_args().output)
