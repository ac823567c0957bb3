"""`supersam` command line: `supersam <stage> [flags | args.json | args.yaml]`.

Every stage parses `HfArgumentParser((ModelArguments, DataArguments, OutputArguments, StageArguments, RunArguments))`
(the shared vocabulary of `supersam_hf.arguments`), so `supersam <stage>` and `examples/<stage>.py` run the same code
with the same flags; an argument file is typed strictly (unknown keys and values of the wrong type are refused, named).
Every stage, argument parsing included, runs through `supersam_hf.errors.run_stage`, the one place failures become
exit codes: a user's error (a mistyped flag, a missing or corrupt file, a bad value, a full disk) is one line
`supersam <stage>: error: ...`, exit status 2; a bug is one line pointing to the debug switch, exit status 1; the
traceback only with `--debug` or `SUPERSAM_DEBUG=1`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import sys
from typing import Any

from transformers import HfArgumentParser

from ..arguments import RunArguments
from ..checks import read_args_file, strict_dataclass_from_dict
from ..errors import SupersamError, run_stage

# subcommand -> one-line help
STAGES = {
    "convert": "SAM checkpoint + data → prioritized supernet",
    "train": "sandwich-rule supernet training",
    "search": "OpenTuner subnet search under budgets",
    "evaluate": "mIoU of a model or a subnet",
    "export": "export a subnet as a standard SAM checkpoint",
    "demo": "the whole pipeline end to end, offline",
}

# Stages that run in one process (the others split their images across the processes of `accelerate launch`).
SINGLE_PROCESS_STAGES = ("export", "demo")


class UsageError(SupersamError):
    """A command line that cannot be parsed: unknown flag, missing required flag, bad value, bad argument file."""


class StageParser(HfArgumentParser):
    """`HfArgumentParser` whose errors are raised (answered in one line by `main`) instead of printed with usage."""

    def error(self, message: str):  # argparse's hook for every parsing error
        raise UsageError(message)


def stage_module(stage: str):
    return importlib.import_module(f"supersam_hf.commands.{stage}")


def build_parser(stage: str) -> StageParser:
    module = stage_module(stage)
    return StageParser(
        (*module.ARGUMENTS, RunArguments), prog=f"supersam {stage}", description=STAGES[stage], allow_abbrev=False
    )


def stage_flags(parser: StageParser) -> list[str]:
    """The long flags of a stage (what the one-line error lists)."""
    return [a.option_strings[0] for a in parser._actions if a.option_strings and a.option_strings[0].startswith("--")
            and a.option_strings[0] != "--help"]


def _unknown_flag(parser: StageParser, argv: list[str]) -> str | None:
    known = set(parser._option_string_actions)
    for token in argv:
        if token.startswith("--") and token.split("=", 1)[0] not in known:
            return token.split("=", 1)[0]
    return None


def parse_args_file(parser: StageParser, path: str) -> tuple[Any, ...]:
    """The stage's dataclasses from one .json / .yaml file, strictly typed: an unknown key, a value of the wrong type
    (`"max_steps": "ten"`, `"kept_layers": null`) or a missing required argument is one error naming the file."""
    data = read_args_file(path)
    fields = {cls: {f.name for f in dataclasses.fields(cls) if f.init} for cls in parser.dataclass_types}
    known = set().union(*fields.values())
    unknown = [key for key in data if key not in known]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"{path}: unknown argument {unknown[0]!r}{hint}; remove it or fix its name "
                         f"(this stage's arguments: {', '.join(sorted(known))}).")
    parsed = []
    for cls, names in fields.items():
        subset = {key: value for key, value in data.items() if key in names}
        try:
            parsed.append(strict_dataclass_from_dict(cls, subset, source=path))
        except TypeError as error:  # a required argument is missing
            missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in subset
                       and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
            raise UsageError(f"{path}: missing required argument(s) {', '.join(missing) or error}; add them to the "
                             "file.") from None
    return tuple(parsed)


def parse_stage_arguments(stage: str, argv: list[str]) -> tuple[Any, ...]:
    """Parse `argv` (flags, or one .json / .yaml file) into the stage's dataclasses, `RunArguments` last."""
    parser = build_parser(stage)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        return parse_args_file(parser, argv[0])
    unknown = _unknown_flag(parser, argv)
    if unknown is None:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if not remaining:
            return tuple(parsed)
        unknown = remaining[0]
    kind = "argument" if unknown.startswith("-") else "value"
    raise UsageError(f"unrecognized {kind} {unknown}; this stage's flags: {' '.join(stage_flags(parser))}")


def configure_logging(level: str) -> None:
    """supersam_hf's messages at `level` on stderr; transformers / hub / datasets only for errors, without bars."""
    import datasets
    import huggingface_hub
    import transformers

    package = logging.getLogger("supersam_hf")
    package.setLevel(level.upper())
    # A handler of our own only where nothing else handles records (a host application or pytest may have).
    if not logging.getLogger().handlers and not any(getattr(h, "_supersam", False) for h in package.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(levelname)s|%(name)s] %(message)s"))
        handler._supersam = True
        package.addHandler(handler)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    huggingface_hub.utils.logging.set_verbosity_error()
    datasets.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()


def _usage() -> str:
    lines = [f"  {name:<9} {text}" for name, text in STAGES.items()]
    return ("usage: supersam <stage> [--help] [flags | args.json | args.yaml]\n\nstages:\n" + "\n".join(lines)
            + "\n\nEvery stage: --model_name_or_path, --dataset_name, --output_dir, --overwrite_output_dir, "
            "--prompt_type, --log_level (see `supersam <stage> --help`).")


def _run(stage: str, argv: list[str]) -> None:
    """Parse the stage's arguments, set up logging and run the stage (errors are answered by `run_stage`)."""
    *stage_arguments, run_arguments = parse_stage_arguments(stage, argv)
    configure_logging(run_arguments.log_level)
    # Before any work: the engine `accelerate launch` asked for is one this tool runs, and a launch of N processes
    # formed an N-process group (else each process would run alone and write the same output).
    from ..distributed import process_state, refuse_multi_process

    state = process_state(stage)
    if stage in SINGLE_PROCESS_STAGES:
        refuse_multi_process(stage, state)
    stage_module(stage).run(*stage_arguments)


def main(argv: list[str] | None = None) -> int:
    """`supersam <stage> ...`; returns the exit status: 0, 2 (a user error, one line), 1 (a bug), 130 (Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"supersam: error: unknown stage {stage!r}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    try:
        return run_stage(stage, _run, stage, rest, debug=True if "--debug" in rest else None)
    except SystemExit as done:  # --help printed
        return int(done.code or 0)


if __name__ == "__main__":
    sys.exit(main())
