"""Every user error is one line: `supersam <stage>: error: <what, which file or flag, what to do>`, exit code 2.

`run_stage` wraps a stage's entry point for the command line. Errors a user can fix (bad input, missing or corrupt
files, an unusable output folder, a full disk, an offline Hub) become one line on stderr and exit code 2; anything
else is a bug and also gets one line (exit code 1) that says how to see the traceback. The traceback is shown only
with the debug switch: `SUPERSAM_DEBUG=1` in the environment, or `debug=True` (a `--debug` flag).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
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


# Errors by type: what a user can fix. The SupersamError family (raised by this library with what to do), missing
# or unwritable files, a full disk or a file-size limit, a network that cannot be reached, a missing optional
# dependency, and the known user-facing errors of the libraries this tool drives (the Hub, datasets, PIL). Anything
# else (a bare ValueError, TypeError, RuntimeError, ...) is a bug of this tool: an internal error with the debug hint.
USER_ERROR_TYPES: tuple[type[BaseException], ...] = (
    SupersamError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
    ConnectionError, TimeoutError, ImportError,
)
USER_ERRNOS = frozenset({errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                         errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENAMETOOLONG, errno.ELOOP})
LIBRARY_USER_ERRORS = frozenset({
    # huggingface_hub: offline, not found, gated, bad repo id, HTTP errors
    "HfHubHTTPError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "HFValidationError", "RepositoryNotFoundError",
    "RevisionNotFoundError", "EntryNotFoundError", "GatedRepoError",
    # datasets: no such dataset / files, an empty or unreadable one
    "DatasetNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError", "DefunctDatasetError",
    # PIL: an image above the decompression-bomb limit, an unreadable image
    "DecompressionBombError", "UnidentifiedImageError",
})
STAGE_RESUME_HINTS = {
    "train": "rerun with --resume_from_checkpoint latest to continue from the last saved checkpoint",
    "search": "rerun with --resume to continue from the subnets already scored",
    "demo": "rerun with --resume to continue from the last finished stage",
}
DEFAULT_RESUME_HINT = "the output folder was left as it was; rerun the command to start again"


def debug_enabled(debug: bool | None = None) -> bool:
    """The debug switch: an explicit flag, else `SUPERSAM_DEBUG` set to anything but "", "0", "false", "no"."""
    if debug is not None:
        return debug
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is a user's problem to fix (input, files, disk, network) rather than a bug in this tool:
    by type (`USER_ERROR_TYPES`, `LIBRARY_USER_ERRORS`) or, for another OSError, by errno (`USER_ERRNOS`)."""
    if isinstance(error, USER_ERROR_TYPES):
        return True
    if isinstance(error, OSError) and error.errno in USER_ERRNOS:
        return True
    if {cls.__name__ for cls in type(error).__mro__} & LIBRARY_USER_ERRORS:
        return True
    return False


def user_error_message(error: BaseException) -> str:
    """One line for the user: the exception's own message, with an OSError's errno noise turned into words."""
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        text = f"{error.strerror}{where}"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            text += "; free space or write to another folder (the partial output was removed)"
        elif error.errno == errno.EFBIG:
            text += ("; a file-size limit (ulimit -f) or the file system's maximum file size stops the write: raise the "
                     "limit or write to another folder (the partial output was removed)")
        elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            text += "; choose a folder you can write to"
    else:
        text = str(error) or type(error).__name__
    if type(error).__name__ == "DecompressionBombError":  # PIL's message says what, not which or what to do
        text = (f"an image of the dataset is above PIL's decompression-bomb limit ({text.rstrip('.')}); downscale or "
                "tile it, or, if you trust the file, raise the limit (PIL.Image.MAX_IMAGE_PIXELS) in a script")
    return re.sub(r"\s*\n\s*", " ", text).strip()


def format_error_line(stage: str, error: BaseException) -> str:
    """`supersam <stage>: error: …` for a user error; for a bug, the type and how to get the traceback."""
    if is_user_error(error):
        return f"supersam {stage}: error: {user_error_message(error)}"
    return (
        f"supersam {stage}: internal error ({type(error).__name__}: {user_error_message(error)}); rerun with "
        f"{DEBUG_ENV}=1 for the traceback and report it."
    )


def _print_line(stream: TextIO, line: str) -> None:
    """`line` and its newline in one write (`print` writes them apart): the processes of a multi-process launch
    share one stderr and often fail at the same instant, and two writes let their lines interleave."""
    stream.write(line + "\n")
    stream.flush()


def run_stage(
    stage: str, entry: Callable[..., Any], *args: Any, debug: bool | None = None, stderr: TextIO | None = None
) -> int:
    """Call `entry(*args)` and return the process exit code: 0, 2 (user error), 1 (bug) or 130 (Ctrl-C).

    With the debug switch on, the traceback is printed first (same exit code). This is the one place the command
    line turns failures into exit codes: `supersam_hf.commands.cli.main` runs every stage (argument parsing
    included) through it.
    """
    stream = stderr if stderr is not None else sys.stderr
    interrupted = f"supersam {stage}: interrupted; {STAGE_RESUME_HINTS.get(stage, DEFAULT_RESUME_HINT)}"
    try:
        with interrupt_checkpoints() as interrupts:
            entry(*args)
            swallowed = interrupts.pending or interrupts.raised  # a Ctrl-C some library caught and dropped still ends it
    except KeyboardInterrupt:
        if debug_enabled(debug):
            traceback.print_exc(file=stream)
        _print_line(stream, interrupted)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the one place that turns every failure into one line
        if debug_enabled(debug):
            traceback.print_exc(file=stream)
        _print_line(stream, format_error_line(stage, error))
        return EXIT_USER_ERROR if is_user_error(error) else EXIT_INTERNAL_ERROR
    if swallowed:
        _print_line(stream, interrupted)
        return EXIT_INTERRUPTED
    return 0


class _Interrupts:
    """Ctrl-C (SIGINT) while a stage runs: noted always, raised at once except inside `interrupts_deferred()`
    (OpenTuner's database calls, where a KeyboardInterrupt can be swallowed or leave a session half-done), where it
    is raised when the block ends; `check()` raises one that was noted but swallowed."""

    def __init__(self) -> None:
        self.pending = False  # a Ctrl-C came and has not been raised by `check()` yet
        self.raised = False  # `check()` raised one (which might have been swallowed in turn)
        self.deferring = 0
        self.active = False

    def handle(self, signum: int, frame: Any) -> None:
        self.pending = True
        if not self.deferring:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if a Ctrl-C came (and was swallowed by whatever code it reached)."""
        if self.active and self.pending:
            self.pending, self.raised = False, True
            raise KeyboardInterrupt


_INTERRUPTS = _Interrupts()


@contextlib.contextmanager
def interrupt_checkpoints() -> Iterator[_Interrupts]:
    """Handle SIGINT as `_Interrupts` says while the block runs (main thread only; re-entrant). Yields the state:
    `.check()` at safe points, `.pending` afterwards."""
    state = _INTERRUPTS
    if state.active or threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = signal.signal(signal.SIGINT, state.handle)
    state.active, state.pending, state.raised, state.deferring = True, False, False, 0
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
        state.active = False


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A Ctrl-C inside the block is raised when it ends (for calls into code that may swallow or half-finish on a
    KeyboardInterrupt, such as OpenTuner's database layer); without `interrupt_checkpoints` active, a no-op."""
    state = _INTERRUPTS
    state.deferring += 1
    try:
        yield
    finally:
        state.deferring -= 1
        if not state.deferring:
            state.check()


__all__ = [
    "DEBUG_ENV",
    "DataError",
    "ModelFileError",
    "OutputFolderError",
    "SupersamError",
    "UnsupportedSetupError",
    "debug_enabled",
    "interrupt_checkpoints",
    "interrupts_deferred",
    "format_error_line",
    "is_user_error",
    "run_stage",
    "user_error_message",
]
