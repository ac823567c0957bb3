"""Search a trained supernet for the best subnet under a budget (the same code as `supersam search`).

OpenTuner proposes subnets (a keep flag per elastic encoder layer, an MLP width per layer); each proposal's
parameters / MACs are checked against the budget first, and only feasible subnets are scored (mIoU on the search
images). Writes search_results.json, pareto.json, pareto.png and best_subnet.json into --output_dir.

    python examples/search.py --model_name_or_path runs/supernet --dataset_name <dataset> --eval_split_name validation \
        --min_size_reduction 0.5 --budget 40 --output_dir runs/search
    python examples/search.py ... --resume                 # continue an interrupted search, nothing re-scored
    python examples/search.py ... --strategy random        # uniform random sampling, for comparison
    python examples/search.py args.json                    # or args.yaml: the same fields as the flags

Then export the result, e.g. `supersam export --model_name_or_path runs/supernet --subnet best --search_dir runs/search`.
`python examples/search.py --help` lists every flag.
"""

import sys

from supersam_hf.commands.cli import main as cli_main  # the same parser, loader and one-line errors as `supersam search`


def main(argv: list[str] | None = None) -> int:
    code = cli_main(["search", *(sys.argv[1:] if argv is None else argv)])
    return code


if __name__ == "__main__":
    sys.exit(main())
