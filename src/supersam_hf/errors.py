"""Every user error is one line: `supersam <stage>: error: <what, which file or flag, what to do>`, exit code 2.

`run_stage` wraps a stage's entry point for the command line. Errors a user can fix (bad input, missing or corrupt
files, an unusable output folder, a full disk, an offline Hub) become one line on stderr and exit code 2; anything
else is a bug and also gets one line (exit code 1) that says how to see the traceback. The traceback is shown only
with the debug switch: `SUPERSAM_DEBUG=1` in the environment, or `debug=True` (a `--debug` flag).
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

DEBUG_ENV = "SUPERSAM_DEBUG"
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130

class SupersamError(ValueError):
    """A problem the user can fix; the message names the file or flag and says what to do.

    Subclasses say which kind. (A `ValueError` subclass, so callers that catch `ValueError` keep working.)
    """


class DataError(SupersamError):
    """The dataset, its columns, images or annotations cannot be used as given."""


class OutputFolderError(SupersamError):
    """The output folder cannot be written safely (foreign files, a symlink, an interrupted swap, no space)."""


class ModelFileError(SupersamError):
    """A model, checkpoint, config or ONNX file is missing, corrupt or of the wrong kind."""


class UnsupportedSetupError(SupersamError):
    """A launcher / engine / hardware setup this tool refuses (with what to use instead)."""


# Exceptions whose message is written for the user (the library raises these with what to do).
USER_ERROR_TYPES: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)


def debug_enabled(debug: bool | None = None) -> bool:
    """The debug switch: an explicit flag, else `SUPERSAM_DEBUG` set to anything but "", "0", "false", "no"."""
    if debug is not None:
        return debug
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is a user's problem to fix (input, files, disk, network) rather than a bug in this tool."""
    if isinstance(error, OSError):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"HfHubHTTPError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "HFValidationError"}:
        return True
    return isinstance(error, USER_ERROR_TYPES)


def user_error_message(error: BaseException) -> str:
    """One line for the user: the exception's own message, with an OSError's errno noise turned into words."""
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        text = f"{error.strerror}{where}"
        if error.errno == errno.ENOSPC:
            text += "; free space or write to another folder (the partial output was removed)"
        elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            text += "; choose a folder you can write to"
    else:
        text = str(error) or type(error).__name__
    return re.sub(r"\s*\n\s*", " ", text).strip()


def format_error_line(stage: str, error: BaseException) -> str:
    """`supersam <stage>: error: …` for a user error; for a bug, the type and how to get the traceback."""
    if is_user_error(error):
        return f"supersam {stage}: error: {user_error_message(error)}"
    return (
        f"supersam {stage}: internal error ({type(error).__name__}: {user_error_message(error)}); rerun with "
        f"{DEBUG_ENV}=1 for the traceback and report it."
    )


def run_stage(
    stage: str, entry: Callable[..., Any], *args: Any, debug: bool | None = None, stderr: TextIO | None = None
) -> int:
    """Call `entry(*args)` and return the process exit code: 0, 2 (user error), 1 (bug) or 130 (Ctrl-C).

    With the debug switch on, the traceback is printed first (same exit code). This is the one place the command
    line turns failures into exit codes: `supersam_hf.commands.cli.main` runs every stage (argument parsing
    included) through it.
    """
    stream = stderr if stderr is not None else sys.stderr
    try:
        entry(*args)
    except KeyboardInterrupt:
        if debug_enabled(debug):
            traceback.print_exc(file=stream)
        print(f"supersam {stage}: interrupted", file=stream)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the one place that turns every failure into one line
        if debug_enabled(debug):
            traceback.print_exc(file=stream)
        print(format_error_line(stage, error), file=stream)
        return EXIT_USER_ERROR if is_user_error(error) else EXIT_INTERNAL_ERROR
    return 0


__all__ = [
    "DEBUG_ENV",
    "DataError",
    "ModelFileError",
    "OutputFolderError",
    "SupersamError",
    "UnsupportedSetupError",
    "debug_enabled",
    "format_error_line",
    "is_user_error",
    "run_stage",
    "user_error_message",
]
