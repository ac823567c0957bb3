"""Output folders: the checks before any long work, and whole-folder writes that leave the target exactly as it
was on any failure (`atomic_output_dir`, `atomic_update`; the journaled swap itself is in `swap.py`)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import OutputFolderError
from .jsonfiles import PathLike
from .swap import _commit, _remove_stale_staging, recover_interrupted_swap


class OutputDirError(OSError, OutputFolderError):
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
    recover_interrupted_swap(output)
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


_WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EFBIG: "a file grew past the file-size limit (ulimit -f) or the file system's maximum"}


def write_failure(error: BaseException, path: PathLike, remedy: str = "") -> OutputFolderError | None:
    """The user's error behind a failed write that a library reports in its own type (safetensors' SafetensorError
    "I/O error: No space left on device (os error 28)", torch's "PytorchStreamWriter failed writing file"): a full
    disk, a quota or a file-size limit, as one OutputFolderError naming `path`; None for anything else (a bug)."""
    if isinstance(error, OSError) and not isinstance(error, OutputFolderError):
        code = error.errno
    else:
        found = re.search(r"os error (\d+)", str(error))
        code = int(found.group(1)) if found else None
    if code in _WRITE_ERRNOS:
        reason = _WRITE_ERRNOS[code]
    elif type(error).__name__ == "RuntimeError" and ("PytorchStreamWriter" in str(error)
                                                     or "inline_container" in str(error)):
        reason = _write_limit_reached(Path(path))  # torch's zip writer names no errno: look at the limits
    else:
        reason = None
    if reason is None:
        return None
    return OutputFolderError(f"could not write {path} ({reason}); free space or raise the limit{remedy}.")


def _write_limit_reached(path: Path) -> str | None:
    """Why a write under `path` may have failed: a file-size limit of this process, or a nearly full disk."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return f"a file reached this process's file-size limit of {soft:,} bytes (ulimit -f)"
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    with contextlib.suppress(OSError):
        status = os.statvfs(folder)
        if status.f_bavail * status.f_frsize < 64 * 2**20:
            return "no space left on the device"
    return None


def _unwritable_message(folder: Path, error: OSError) -> str:
    reason = "no space left on the device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    return f"cannot write to {folder} ({reason}); choose a writable output folder (--output_dir) or free space."


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
    manifest whose content is unchanged are removed, never foreign files (a new file whose name is taken by a
    foreign or edited file, or that would be written through a symbolic link, is refused). On any exception, a full
    disk included, `tmp` is removed and `path` is left exactly as it was; a kill mid-swap is finished or rolled
    back on the next start (`recover_interrupted_swap`).
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
    recover_interrupted_swap(target)
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
    except Exception as error:
        failure = write_failure(error, target, "; the partial output was removed and the folder left as it was")
        if failure is not None and not isinstance(error, OSError):
            raise failure from error
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
