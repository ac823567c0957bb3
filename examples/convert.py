"""Convert a SAM checkpoint into a prioritized SuperSAM supernet (the same code as `supersam convert`).

Calibrates on a few images of a Hugging Face dataset: orders every encoder MLP's neurons most important first
(Wanda-style, exact) and measures each encoder layer's importance to choose the elastic layers and their drop
probabilities. Writes the supernet (config with the search space + safetensors), the processor and
`prioritization_report.json` / `layer_importance.png` into --output.

    python examples/convert.py --model_name_or_path facebook/sam-vit-base --dataset_name <dataset> --output_dir runs/supernet
    python examples/convert.py args.json            # or args.yaml: the same fields as the flags

`<dataset>`: a `save_to_disk` folder, local data files / an imagefolder, or a Hub dataset name (`--split`,
`--image_column` to choose). `python examples/convert.py --help` lists every flag.
"""

import sys

from supersam_hf.commands.cli import main as cli_main  # the same parser, loader and one-line errors as `supersam convert`


def main(argv: list[str] | None = None) -> int:
    code = cli_main(["convert", *(sys.argv[1:] if argv is None else argv)])
    return code


if __name__ == "__main__":
    sys.exit(main())
