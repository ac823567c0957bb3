"""`supersam` command line: one subcommand per pipeline stage.

Each stage module defines an arguments dataclass and a `run_*` function; this file only wires them to
`HfArgumentParser`, so `supersam <stage>` and `accelerate launch examples/<stage>.py` run the same code with the
same flags (and both accept a single .json/.yaml file of arguments instead of flags).
"""

from __future__ import annotations

import importlib
import sys

from transformers import HfArgumentParser

# subcommand -> (module, arguments dataclass, run function, one-line help)
STAGES = {
    "convert": ("supersam_hf.prioritization", "ConvertArguments", "run_convert", "SAM checkpoint + data → prioritized supernet"),
    "train": ("supersam_hf.training", "SupernetTrainingArguments", "train_supernet", "sandwich-rule supernet training"),
    "search": ("supersam_hf.search", "SearchArguments", "run_search", "OpenTuner subnet search under budgets"),
    "evaluate": ("supersam_hf.evaluation", "EvaluateArguments", "run_evaluate", "mIoU of a model or subnet"),
    "export": ("supersam_hf.export", "ExportArguments", "run_export", "export a subnet as a standard SAM checkpoint"),
    "demo": ("supersam_hf.demo", "DemoArguments", "run_demo", "the whole pipeline end to end, offline"),
}


def parse_stage_arguments(stage: str, argv: list[str]):
    """Parse `argv` into the stage's dataclass: flags, or a single .json / .yaml file."""
    module_name, args_name, _, _ = STAGES[stage]
    args_cls = getattr(importlib.import_module(module_name), args_name)
    parser = HfArgumentParser(args_cls, prog=f"supersam {stage}", description=STAGES[stage][3])
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])[0]
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])[0]
    return parser.parse_args_into_dataclasses(args=argv)[0]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        lines = [f"  {name:<9} {spec[3]}" for name, spec in STAGES.items()]
        print("usage: supersam <stage> [--help] [flags | args.json | args.yaml]\n\nstages:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown stage {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    stage, rest = argv[0], argv[1:]
    module_name, _, run_name, _ = STAGES[stage]
    args = parse_stage_arguments(stage, rest)
    run = getattr(importlib.import_module(module_name), run_name)
    try:
        run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        # Bad input: say what is wrong and what to do, without a traceback from deep inside a library.
        print(f"supersam {stage}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
