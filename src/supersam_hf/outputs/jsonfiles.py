"""State files: a JSON file that is missing or corrupt is an error naming it; a torn JSON-lines file is repaired."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ModelFileError, OutputFolderError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


def read_json_file(
    path: PathLike,
    what: str = "JSON file",
    remedy: str = "delete it or resume from the previous checkpoint",
    expect: type | tuple[type, ...] | None = None,
) -> Any:
    """Load a JSON file; a missing, unreadable or corrupt file raises an error naming it, what it is and the way out.

    `expect` (e.g. `dict`) also refuses a file whose top-level value has another type (a garbage but valid JSON).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{what} {path} does not exist; {remedy}.") from error
    except UnicodeDecodeError as error:
        raise ModelFileError(f"{what} {path} is corrupt (not UTF-8 text: {error.reason}); {remedy}.") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{what} {path} is corrupt ({error}); {remedy}.") from error
    if expect is not None and not isinstance(data, expect):
        expected = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise ModelFileError(f"{what} {path} is corrupt (holds a {type(data).__name__}, expected a {expected}); {remedy}.")
    return data


def repair_jsonl(path: PathLike) -> int:
    """Cut a torn last line of a JSON-lines file (a kill or full disk mid-append) back to the last complete record.

    Returns the number of lines dropped (0 or 1) and logs a warning when it drops one. A complete last record
    without its newline gets the newline back. A corrupt line before the last one is not a torn append: ValueError
    naming the file and the line. A missing file is left alone (returns 0).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    ends_with_newline = lines[-1] == b""
    if ends_with_newline:
        lines.pop()
    dropped = 0
    if lines and not _is_json_line(lines[-1]):
        keep = len(data) - len(lines[-1]) - (1 if ends_with_newline else 0)
        logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted write.", path, len(data) - keep)
        os.truncate(path, keep)
        lines.pop()
        dropped = 1
    elif lines and not ends_with_newline:
        with path.open("ab") as handle:
            handle.write(b"\n")
    for number, line in enumerate(lines, start=1):
        if line.strip() and not _is_json_line(line):
            raise OutputFolderError(
                f"{path} line {number} is corrupt (not a JSON record) and is not the last line; delete the line or "
                "the file (it is a log: resuming does not need it)."
            )
    return dropped


def _is_json_line(line: bytes) -> bool:
    if not line.strip():
        return True
    try:
        json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True
