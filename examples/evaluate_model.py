"""Evaluate a SAM checkpoint or a supernet's subnet: mIoU on a segmentation dataset (the same code as
`supersam evaluate`).

One encoder pass per image, every instance of an image prompted together (one point or its box), masks compared
with the ground truth at the image's original size through the `sam_miou` evaluate metric.

    python examples/evaluate_model.py --model_name_or_path runs/export/sam-small --dataset_name <dataset> --eval_split_name validation
    python examples/evaluate_model.py --model_name_or_path runs/supernet --subnet best --search_dir runs/search --dataset_name <dataset>
    python examples/evaluate_model.py --model_name_or_path runs/supernet --subnet '{"kept_layers": [0, 1, 2, 4], "mlp_dims": [768, 768, 384, 384]}' \
        --dataset_name <dataset> --mask_selection oracle --output_dir runs/eval
    python examples/evaluate_model.py args.json            # or args.yaml: the same fields as the flags

`--mask_selection single` (default) scores the output SAM itself would pick (highest predicted IoU); `oracle`
scores the best of its three outputs against the ground truth, as the SuperSAM paper reports.
`python examples/evaluate_model.py --help` lists every flag.
"""

import sys

from supersam_hf.commands.cli import main as cli_main  # the same parser, loader and one-line errors as `supersam evaluate`


def main(argv: list[str] | None = None) -> int:
    code = cli_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    return code


if __name__ == "__main__":
    sys.exit(main())
