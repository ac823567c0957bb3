"""Convert a SAM checkpoint into a prioritized SuperSAM supernet (the same code as `supersam convert`).

Calibrates on a few images of a Hugging Face dataset: orders every encoder MLP's neurons most important first
(Wanda-style, exact) and measures each encoder layer's importance to choose the elastic layers and their drop
probabilities. Writes the supernet (config with the search space + safetensors), the processor and
`prioritization_report.json` / `layer_importance.png` into --output.

    python examples/convert.py --model facebook/sam-vit-base --dataset <dataset> --output runs/supernet
    python examples/convert.py args.json            # or args.yaml: the same fields as the flags

`<dataset>`: a `save_to_disk` folder, local data files / an imagefolder, or a Hub dataset name (`--split`,
`--image_column` to choose). `python examples/convert.py --help` lists every flag.
"""

import sys

from supersam_hf.cli import parse_stage_arguments  # HfArgumentParser(ConvertArguments), exactly as `supersam convert`
from supersam_hf.prioritization import run_convert


def main(argv: list[str] | None = None) -> None:
    run_convert(parse_stage_arguments("convert", sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
