"""Export a subnet of a trained supernet as a standard SAM checkpoint (the same code as `supersam export`).

Picks the subnet from the search output (`best`, `pareto:N`) or a JSON file, writes a folder that plain
`transformers` loads (`SamModel.from_pretrained`, `pipeline("mask-generation")`): config.json (model_type "sam"),
model.safetensors, the processor, subnet.json and a model card (README.md) with the subnet's size, MACs and the
search's mIoU. `--push_to_hub --hub_model_id user/name` uploads it (token from HF_TOKEN, `hf auth login` or --token).

    python examples/export.py --model_name_or_path runs/supernet --subnet pareto:0 --search_dir runs/search --output_dir runs/export
    python examples/export.py args.json            # or args.yaml: the same fields as the flags

`python examples/export.py --help` lists every flag.
"""

import sys

from supersam_hf.commands.cli import main as cli_main  # the same parser, loader and one-line errors as `supersam export`


def main(argv: list[str] | None = None) -> int:
    code = cli_main(["export", *(sys.argv[1:] if argv is None else argv)])
    return code


if __name__ == "__main__":
    sys.exit(main())
