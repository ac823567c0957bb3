"""Evaluate a SAM checkpoint or a supernet's subnet: mIoU on a segmentation dataset (the same code as
`supersam evaluate`).

One encoder pass per image, every instance of an image prompted together (one point or its box), masks compared
with the ground truth at the image's original size through the `sam_miou` evaluate metric.

    python examples/evaluate.py --model runs/export/sam-small --dataset <dataset> --split validation
    python examples/evaluate.py --model runs/supernet --subnet best --search_dir runs/search --dataset <dataset>
    python examples/evaluate.py --model runs/supernet --subnet '{"kept_layers": [0, 1, 2, 4], "mlp_dims": [768, 768, 384, 384]}' \
        --dataset <dataset> --mask_selection oracle --output results.json
    python examples/evaluate.py args.json            # or args.yaml: the same fields as the flags

`--mask_selection single` (default) scores the output SAM itself would pick (highest predicted IoU); `oracle`
scores the best of its three outputs against the ground truth, as the SuperSAM paper reports.
`python examples/evaluate.py --help` lists every flag.
"""

import sys

from supersam_hf.cli import parse_stage_arguments  # HfArgumentParser(EvaluateArguments), exactly as `supersam evaluate`
from supersam_hf.evaluation import run_evaluate


def main(argv: list[str] | None = None) -> None:
    run_evaluate(parse_stage_arguments("evaluate", sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
