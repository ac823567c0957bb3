"""Output folders that never lose a user's file, and state files that say which file is broken.

Every stage writes its results through this module:

* `prepare_output_dir` checks, before any long work, that the output is not one of the inputs (or inside / around
  one), that it can be written, and that an existing non-empty folder is only reused with `--overwrite_output_dir`.
* `atomic_output_dir` lets a stage write a whole folder into a temporary sibling (`.<name>.tmp-<pid>`) and moves it
  into place only when it is complete, so a crash or a full disk leaves the target exactly as it was.
* A manifest (`.supersam-manifest.json`) in each output folder lists the files this tool wrote there. Overwriting
  removes only those files (`remove_tool_outputs`); a user's own files in the folder are never deleted or replaced.
  Stages that write incrementally (training checkpoints) add what they write with `record_tool_outputs`.
* `repair_jsonl` and `read_json_file` turn torn or corrupt state files into a repair or an error naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_NAME = ".supersam-manifest.json"
MANIFEST_VERSION = 1
PathLike = str | os.PathLike


class OutputDirError(OSError):
    """The output folder cannot be used: not writable, no space left, or an input folder. The message says why."""


# ----------------------------------------------------------------------------------------------------------------
# Checks before the work starts
# ----------------------------------------------------------------------------------------------------------------


def prepare_output_dir(path: PathLike, *, overwrite: bool, inputs: Sequence[PathLike | None] = ()) -> Path:
    """Check `path` as an output folder before any long work; returns it resolved (not yet created).

    Raises `OutputDirError` when the output equals, lies inside or contains one of `inputs` (local paths; Hub ids
    and `None` are skipped) or cannot be written (its parent is created and a probe file written and removed there,
    and inside `path` when it exists), `NotADirectoryError` when it is a file, and `FileExistsError` when it is a
    non-empty folder and `overwrite` is False.
    """
    output = Path(path).expanduser().resolve()
    _refuse_input_overlap(output, inputs)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"the output {output} is a file, not a folder; choose a folder path.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"the output folder {output} is not empty; pass --overwrite_output_dir to replace what this tool "
            "wrote there (other files are kept), or choose another folder."
        )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputDirError(_unwritable_message(output.parent, error)) from error
    _probe_writable(output.parent)
    if output.is_dir():
        _probe_writable(output)
    return output


def _refuse_input_overlap(output: Path, inputs: Sequence[PathLike | None]) -> None:
    """Refuse an output equal to an input, inside an input folder, or containing an input (file or folder)."""
    for candidate in inputs:
        if candidate is None or not Path(candidate).expanduser().exists():
            continue  # a Hub id, or a path that does not exist, cannot be overwritten
        source = Path(candidate).expanduser().resolve()
        relation = None
        if output == source:
            relation = "is the input"
        elif output in source.parents:
            relation = "contains the input"
        elif source.is_dir() and source in output.parents:
            relation = "is inside the input folder"
        if relation:
            raise OutputDirError(
                f"the output {output} {relation} {source}; writing there could replace the input. Choose an "
                "output folder outside every input."
            )


def _probe_writable(folder: Path) -> None:
    """Write and remove a small file in `folder`, so a read-only or full location is found before the work."""
    probe = folder / f".supersam-write-probe-{os.getpid()}"
    try:
        descriptor = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.write(descriptor, b"supersam write probe\n" * 16)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise OutputDirError(_unwritable_message(folder, error)) from error
    probe.unlink()


def _unwritable_message(folder: Path, error: OSError) -> str:
    reason = "no space left on the device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    return f"cannot write to {folder} ({reason}); choose a writable output folder (--output_dir) or free space."


# ----------------------------------------------------------------------------------------------------------------
# The manifest: what this tool wrote in a folder
# ----------------------------------------------------------------------------------------------------------------


def read_manifest(folder: PathLike) -> list[str]:
    """The files (POSIX paths relative to `folder`) that this tool recorded writing there; [] without a manifest."""
    manifest = Path(folder) / MANIFEST_NAME
    if not manifest.is_file():
        return []
    data = read_json_file(
        manifest, what="output manifest", remedy="remove the files this tool wrote there by hand, then delete it"
    )
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        raise ValueError(
            f"output manifest {manifest} has no list of file names under 'files'; remove the files this tool wrote "
            "there by hand, then delete it."
        )
    return files


def _write_manifest(folder: Path, files: Iterable[str], tool: str) -> None:
    """Write the manifest atomically (a temporary file renamed over the old one)."""
    names = sorted({name for name in files if name != MANIFEST_NAME})
    text = json.dumps({"version": MANIFEST_VERSION, "tool": tool, "files": names}, indent=1) + "\n"
    temporary = folder / f"{MANIFEST_NAME}.tmp-{os.getpid()}"
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, folder / MANIFEST_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _files_under(root: Path, paths: Iterable[PathLike]) -> list[str]:
    """Relative POSIX names of the files at or below `paths` (absolute, or relative to `root`), all inside `root`."""
    names = []
    for entry in paths:
        target = Path(entry) if Path(entry).is_absolute() else root / entry
        target = target.resolve()
        if not target.exists():
            raise FileNotFoundError(f"{target} does not exist; record files after writing them.")
        if target != root and root not in target.parents:
            raise ValueError(f"{target} is not inside the output folder {root}; only files inside it can be recorded.")
        candidates = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        names += [candidate.relative_to(root).as_posix() for candidate in candidates]
    return names


def record_tool_outputs(folder: PathLike, paths: Iterable[PathLike], tool: str = "supersam") -> None:
    """Add files (or every file below folders) in `paths` to `folder`'s manifest, so an overwrite may remove them.

    For stages that write into their output folder step by step (training: `checkpoints/step_N`, `metrics.jsonl`);
    call it right after each write. Paths are absolute or relative to `folder` and must lie inside it.
    """
    root = Path(folder).resolve()
    _write_manifest(root, read_manifest(root) + _files_under(root, paths), tool)


def remove_tool_outputs(folder: PathLike) -> list[Path]:
    """Remove the files this tool recorded in `folder`'s manifest (and folders they leave empty), then the manifest.

    Files not in the manifest (the user's, another tool's) are never touched; entries pointing outside `folder` are
    ignored. Returns the removed files.
    """
    root = Path(folder).resolve()
    removed = []
    for name in read_manifest(root):
        target = (root / name).resolve()
        if root not in target.parents or not (target.is_file() or target.is_symlink()):
            continue
        target.unlink()
        removed.append(target)
        _remove_empty_parents(target.parent, root)
    with contextlib.suppress(FileNotFoundError):
        (root / MANIFEST_NAME).unlink()
    return removed


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            return
        folder = folder.parent


# ----------------------------------------------------------------------------------------------------------------
# Atomic folder writes
# ----------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output_dir(
    path: PathLike, *, overwrite: bool, inputs: Sequence[PathLike | None] = (), tool: str = "supersam"
) -> Iterator[Path]:
    """Write a whole output folder at once: `with atomic_output_dir(out, overwrite=...) as tmp:` write into `tmp`.

    `prepare_output_dir` runs first. On success the files written to `tmp` (subfolders included) move into `path`
    and its manifest lists them; if `path` held an earlier output and `overwrite` is set, only the files of the old
    manifest are removed, never foreign files (a new file whose name is taken by a foreign file is refused). On any
    exception, a full disk included, `tmp` is removed and `path` is left exactly as it was.
    """
    target = prepare_output_dir(path, overwrite=overwrite, inputs=inputs)
    with _staged(target, tool, replace_all=True) as staging:
        yield staging


@contextlib.contextmanager
def atomic_update(path: PathLike, *, tool: str = "supersam") -> Iterator[Path]:
    """Add files to an output folder at once: `with atomic_update(out) as tmp:` write into `tmp`.

    For a folder a stage already prepared and writes step by step (training's final model next to its
    `checkpoints/`, a search's results next to its trials): on success the files in `tmp` move into `path`,
    replacing earlier files of the same name that this tool wrote, and join the manifest; the folder's other files
    stay. A new file whose name is taken by a foreign file is refused; on any exception `path` is left as it was.
    """
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _staged(target, tool, replace_all=False) as staging:
        yield staging


@contextlib.contextmanager
def _staged(target: Path, tool: str, replace_all: bool) -> Iterator[Path]:
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    _remove_stale_staging(target)
    staging.mkdir()
    try:
        yield staging
        _commit(staging, target, tool, replace_all)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(target: Path) -> None:
    """Remove temporary siblings this tool left for `target` in processes that no longer run (killed runs)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _process_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _commit(staging: Path, target: Path, tool: str, replace_all: bool) -> None:
    """Move the complete `staging` folder into `target`; on failure `target` is restored to its previous files.

    `replace_all`: the earlier files of the manifest all go (a new output replaces the old one); otherwise only
    those the new files replace, and the manifest lists both.
    """
    new_files = _files_under(staging.resolve(), [staging])
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        _write_manifest(staging, new_files, tool)
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()
        os.replace(staging, target)  # one rename: the folder appears complete or not at all
        return
    old_files = [name for name in read_manifest(target) if (target / name).is_file()]
    taken = sorted(n for n in new_files if (target / n).exists() and n not in old_files)
    if taken:
        raise FileExistsError(
            f"{target} holds files this tool did not write: {', '.join(taken[:5])}; the new output would replace "
            "them. Move them away or choose another output folder."
        )
    replaced = old_files if replace_all else [name for name in old_files if name in set(new_files)]
    kept = [name for name in old_files if name not in set(replaced)]
    _write_manifest(staging, new_files + kept, tool)
    if (target / MANIFEST_NAME).exists():
        replaced.append(MANIFEST_NAME)
    _swap_files(staging, target, replaced, new_files + [MANIFEST_NAME])


def _swap_files(staging: Path, target: Path, old_files: list[str], new_files: list[str]) -> None:
    """Set `old_files` of `target` aside (renames), move `new_files` in; undo it all if any move fails."""
    backup = target.parent / f".{target.name}.old-{os.getpid()}"
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in old_files:
            _move(target / name, backup / name)
            moved_old.append(name)
        for name in new_files:
            _move(staging / name, target / name)
            moved_new.append(name)
    except BaseException:
        for name in reversed(moved_new):  # best effort, file by file: one failed move must not stop the rest
            with contextlib.suppress(OSError):
                _move(target / name, staging / name)
                _remove_empty_parents((target / name).parent, target)
        for name in moved_old:
            with contextlib.suppress(OSError):
                _move(backup / name, target / name)
        if any(path.is_file() for path in backup.rglob("*")):
            logger.error("Could not restore every earlier output file of %s; the rest are kept in %s.", target, backup)
        else:
            shutil.rmtree(backup, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    for name in moved_old:
        _remove_empty_parents((target / name).parent, target)


def _move(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, destination)


# ----------------------------------------------------------------------------------------------------------------
# State files
# ----------------------------------------------------------------------------------------------------------------


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
        raise ValueError(f"{what} {path} is corrupt (not UTF-8 text: {error.reason}); {remedy}.") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is corrupt ({error}); {remedy}.") from error
    if expect is not None and not isinstance(data, expect):
        expected = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise ValueError(f"{what} {path} is corrupt (holds a {type(data).__name__}, expected a {expected}); {remedy}.")
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
            raise ValueError(
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


__all__ = [
    "MANIFEST_NAME",
    "OutputDirError",
    "atomic_output_dir",
    "atomic_update",
    "prepare_output_dir",
    "read_json_file",
    "read_manifest",
    "record_tool_outputs",
    "remove_tool_outputs",
    "repair_jsonl",
]
