"""`supersam` command line: `supersam <stage> [flags | args.json | args.yaml]`.

Every stage parses `HfArgumentParser((ModelArguments, DataArguments, OutputArguments, StageArguments, RunArguments))`
(the shared vocabulary of `supersam_hf.arguments`), so `supersam <stage>` and `examples/<stage>.py` run the same code
with the same flags. User errors (a mistyped flag, a missing file, a bad value) are answered in one line,
`supersam <stage>: error: ...`, exit status 2; the traceback only with `--debug` or `SUPERSAM_DEBUG=1`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from typing import Any

from transformers import HfArgumentParser

from ..arguments import RunArguments

# subcommand -> one-line help
STAGES = {
    "convert": "SAM checkpoint + data → prioritized supernet",
    "train": "sandwich-rule supernet training",
    "search": "OpenTuner subnet search under budgets",
    "evaluate": "mIoU of a model or a subnet",
    "export": "export a subnet as a standard SAM checkpoint",
    "demo": "the whole pipeline end to end, offline",
}
# What a user can cause: bad values, missing / unreadable / existing files, malformed JSON (a ValueError).
USER_ERRORS = (ValueError, OSError)


class UsageError(Exception):
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


def parse_stage_arguments(stage: str, argv: list[str]) -> tuple[Any, ...]:
    """Parse `argv` (flags, or one .json / .yaml file) into the stage's dataclasses, `RunArguments` last."""
    parser = build_parser(stage)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        try:
            if argv[0].endswith(".json"):
                return tuple(parser.parse_json_file(argv[0], allow_extra_keys=False))
            return tuple(parser.parse_yaml_file(argv[0], allow_extra_keys=False))
        except (OSError, ValueError, TypeError) as error:  # unreadable file, bad JSON/YAML, unknown or missing keys
            raise UsageError(f"cannot read the arguments file {argv[0]}: {error}") from None
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"supersam: error: unknown stage {stage!r}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    debug = os.environ.get("SUPERSAM_DEBUG", "") not in ("", "0") or "--debug" in rest
    try:
        parsed = parse_stage_arguments(stage, rest)
    except SystemExit as done:  # --help printed
        return int(done.code or 0)
    except UsageError as error:
        print(f"supersam {stage}: error: {error}", file=sys.stderr)
        return 2
    *stage_arguments, run_arguments = parsed
    configure_logging(run_arguments.log_level)
    try:
        stage_module(stage).run(*stage_arguments)
    except USER_ERRORS as error:
        if debug:
            traceback.print_exc()
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"supersam {stage}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
