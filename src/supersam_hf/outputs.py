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
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ModelFileError, OutputFolderError

logger = logging.getLogger(__name__)

MANIFEST_NAME = ".supersam-manifest.json"
MANIFEST_VERSION = 2
PathLike = str | os.PathLike


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
# The manifest: what this tool wrote in a folder, and the content it wrote (size + sha256)
# ----------------------------------------------------------------------------------------------------------------


def read_manifest(folder: PathLike) -> list[str]:
    """The files (POSIX paths relative to `folder`) that this tool recorded writing there; [] without a manifest."""
    return list(read_manifest_entries(folder))


def read_manifest_entries(folder: PathLike) -> dict[str, dict | None]:
    """name -> {"size", "sha256"} of what this tool wrote (None for a version-1 manifest, which recorded no content)."""
    manifest = Path(folder) / MANIFEST_NAME
    if not manifest.is_file() or manifest.is_symlink():
        return {}
    remedy = "remove the files this tool wrote there by hand, then delete it"
    data = read_json_file(manifest, what="output manifest", remedy=remedy)
    files = data.get("files") if isinstance(data, dict) else None
    if isinstance(files, list) and all(isinstance(name, str) for name in files):
        return {name: None for name in files}
    if isinstance(files, dict) and all(isinstance(v, dict) and isinstance(v.get("size"), int)
                                       and isinstance(v.get("sha256"), str) for v in files.values()):
        return {name: {"size": v["size"], "sha256": v["sha256"]} for name, v in files.items()}
    raise OutputFolderError(f"output manifest {manifest} has no list of file names under 'files'; {remedy}.")


def _fingerprint(path: Path) -> dict:
    """Size and sha256 of a file's content (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        size = os.fstat(handle.fileno()).st_size
    return {"size": size, "sha256": digest.hexdigest()}


def _write_manifest(folder: Path, entries: dict[str, dict | None], tool: str) -> None:
    """Write the manifest atomically (a temporary file renamed over the old one)."""
    files = {name: entries[name] for name in sorted(entries) if name != MANIFEST_NAME and entries[name] is not None}
    record = {"version": MANIFEST_VERSION, "tool": tool, "id": uuid.uuid4().hex, "files": files}  # id: every write differs
    text = json.dumps(record, indent=1) + "\n"
    temporary = folder / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, folder / MANIFEST_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _relative_name(root: Path, entry: PathLike, folder: PathLike) -> str:
    """`entry` (absolute, or relative to the folder) as a POSIX name inside `root`, compared without following links."""
    path = Path(entry)
    if not path.is_absolute():
        path = root / path
    # the path as given, against the folder resolved and as given; then with its parent's links resolved (a path
    # spelled through a linked ancestor of the folder, e.g. /tmp -> /private/tmp), never its last component's
    spellings = [(Path(os.path.normpath(path)), root), (Path(os.path.normpath(path)), Path(os.path.abspath(folder))),
                 (Path(os.path.realpath(path.parent)) / path.name, root)]
    for candidate, base in spellings:
        try:
            name = candidate.relative_to(base).as_posix()
        except ValueError:
            continue
        if name != ".." and not name.startswith("../"):
            return name
    raise OutputFolderError(f"{path} is not inside the output folder {root}; only files inside it can be recorded.")


def _files_under(root: Path, paths: Iterable[PathLike], folder: PathLike | None = None) -> list[str]:
    """Relative POSIX names of the regular files at or below `paths` (absolute, or relative to `root`), all inside
    `root`; symbolic links are neither recorded nor followed."""
    names = []
    for entry in paths:
        name = _relative_name(root, entry, folder if folder is not None else root)
        target = root / name
        if not os.path.lexists(target):
            raise FileNotFoundError(f"{target} does not exist; record files after writing them.")
        if target.is_symlink():
            continue
        if target.is_file():
            names.append(name)
            continue
        for directory, _, files in os.walk(target):  # os.walk does not descend into linked folders
            for file in files:
                path = Path(directory) / file
                if not path.is_symlink() and path.is_file():
                    names.append(path.relative_to(root).as_posix())
    return names


def record_tool_outputs(folder: PathLike, paths: Iterable[PathLike], tool: str = "supersam") -> None:
    """Add files (or every file below folders) in `paths` to `folder`'s manifest, with their size and sha256, so an
    overwrite may remove them (only while their content is still what was recorded).

    For stages that write into their output folder step by step (training: `checkpoints/step_N`, `metrics.jsonl`);
    call it right after each write. Paths are absolute or relative to `folder` and must lie inside it.
    """
    root = Path(folder).resolve()
    before = read_manifest_entries(root)
    entries = dict(before)
    for name in _files_under(root, paths, folder):
        entries[name] = _fingerprint(root / name)
    if entries != before or not (root / MANIFEST_NAME).is_file():
        _write_manifest(root, entries, tool)


# ----------------------------------------------------------------------------------------------------------------
# The one removal routine
# ----------------------------------------------------------------------------------------------------------------

_REASONS = {
    "changed": "changed since this tool wrote it",
    "behind_link": "behind a symbolic link, which is never followed",
    "outside": "outside the output folder",
    "unverified": "recorded without its content (an older manifest)",
    "not_file": "not a regular file",
}


def _locate(root: Path, name: str) -> tuple[str, Path | None]:
    """Where manifest entry `name` is in `root`, without following any symbolic link: ("ok", path) when its parent
    folders are real folders inside `root`; ("outside" | "behind_link" | "missing", None) otherwise."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or any(part in ("..", ".", "") for part in parts):
        return "outside", None
    current = root
    for part in parts[:-1]:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return "missing", None
        if stat.S_ISLNK(mode):
            return "behind_link", None
        if not stat.S_ISDIR(mode):
            return "missing", None
    path = root / name
    real_root = os.path.realpath(root)  # belt and braces: the resolved parent must still be inside the folder
    if os.path.commonpath([real_root, os.path.realpath(path.parent)]) != real_root:
        return "outside", None
    return "ok", path


def _status(root: Path, name: str, entry: dict | None) -> tuple[str, Path | None]:
    """"ours" (a regular file whose content is what this tool recorded), "link" (a symbolic link: the link itself is
    removable, never its target), "missing", or a reason to keep it (`_REASONS`)."""
    where, path = _locate(root, name)
    if where != "ok":
        return where, None
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing", None
    if stat.S_ISLNK(mode):
        return "link", path
    if not stat.S_ISREG(mode):
        return "not_file", path
    if entry is None:
        return "unverified", path
    if path.stat().st_size != entry["size"] or _fingerprint(path)["sha256"] != entry["sha256"]:
        return "changed", path
    return "ours", path


def _kept_line(root: Path, kept: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{name} ({_REASONS[reason]})" for name, reason in kept[:5])
    more = f" and {len(kept) - 5} more" if len(kept) > 5 else ""
    return f"Kept {len(kept)} file(s) in {root} that this tool will not remove: {shown}{more}."


def remove_tool_outputs(folder: PathLike, within: str | None = None) -> list[Path]:
    """Remove what this tool wrote in `folder` (every stage's overwrite, checkpoint rotation and resume use this).

    Only files the manifest lists *and* whose content (size + sha256) is still what this tool wrote are removed,
    with the folders they leave empty; a symbolic link is never followed (a listed link is removed, never its
    target's files, and nothing behind a linked folder is touched); nothing outside `folder` is removed. Files
    kept (edited by the user, behind a link, ...) are named in one warning and leave the manifest, so a later
    output never replaces them. `within` (a relative folder, e.g. "checkpoints/step_2") limits the removal to the
    entries below it; without it the manifest itself goes. Returns the removed paths.
    """
    root = Path(folder).resolve()
    entries = read_manifest_entries(root)
    removed: list[Path] = []
    kept: list[tuple[str, str]] = []
    handled = []
    for name, entry in entries.items():
        if within is not None and not (name == within or name.startswith(within.rstrip("/") + "/")):
            continue
        handled.append(name)
        status, path = _status(root, name, entry)
        if status in ("ours", "link"):
            path.unlink()
            removed.append(path)
            _remove_empty_parents(path.parent, root)
        elif status != "missing":
            kept.append((name, status))
    if kept:
        logger.warning(_kept_line(root, kept))
    if within is None:
        with contextlib.suppress(FileNotFoundError):
            (root / MANIFEST_NAME).unlink()
    elif handled:
        _write_manifest(root, {n: e for n, e in entries.items() if n not in set(handled)}, _manifest_tool(root))
    return removed


def unverified_files(folder: PathLike, names: Iterable[str]) -> list[str]:
    """Of `names` (relative to `folder`), those present there that this tool may not replace: not in the manifest,
    changed since it was written, or behind a symbolic link; each with the reason ("search_results.json (not
    written by this tool)")."""
    root = Path(folder).resolve()
    entries = read_manifest_entries(root) if root.is_dir() else {}
    problems = []
    for name in names:
        where, path = _locate(root, name)
        if where == "behind_link":
            problems.append(f"{name} ({_REASONS['behind_link']})")
        elif where == "ok" and os.path.lexists(path):
            if name not in entries:
                problems.append(f"{name} (not written by this tool)")
            else:
                status, _ = _status(root, name, entries[name])
                if status not in ("ours", "missing", "link"):
                    problems.append(f"{name} ({_REASONS[status]})")
    return problems


def _manifest_tool(root: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("tool"), str):
            return data["tool"]
    return "supersam"


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()  # only succeeds when empty (and never on a symbolic link)
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


def _remove_stale_staging(target: Path) -> None:
    """Remove temporary siblings this tool left for `target` in processes that no longer run (killed runs), unless
    an interrupted swap's journal still needs them."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not process_alive(int(pid))):
            if not _journal_path(target, int(pid)).exists():
                shutil.rmtree(stale, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (its temporary files are then not leftovers of a killed run)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _commit(staging: Path, target: Path, tool: str, replace_all: bool) -> None:
    """Move the complete `staging` folder into `target` (see `_swap`); on failure `target` keeps its previous files.

    `replace_all`: the earlier files of the manifest all go (a new output replaces the old one); otherwise only
    those the new files replace, and the manifest lists both.
    """
    new_files = {name: _fingerprint(staging / name) for name in _files_under(staging.resolve(), [staging])}
    new_files.pop(MANIFEST_NAME, None)
    if not target.exists() or (target.is_dir() and not target.is_symlink() and not any(target.iterdir())):
        _write_manifest(staging, new_files, tool)
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()
        os.replace(staging, target)  # one rename: the folder appears complete or not at all
        return
    old = read_manifest_entries(target)
    # Whether each earlier file is still this tool's (content unchanged): every one for a replacement, only those
    # the new files replace for an update (hashing a run's checkpoints at each final save would cost minutes).
    checked = old if replace_all else [name for name in old if name in new_files]
    status = {name: _status(target, name, old[name])[0] for name in checked}
    refused = []
    for name in new_files:
        where, path = _locate(target, name)
        if where == "behind_link":
            refused.append(f"{name} ({_REASONS['behind_link']})")
        elif where == "ok" and os.path.lexists(path) and status.get(name) != "ours":
            refused.append(f"{name} ({_REASONS.get(status.get(name, ''), 'not written by this tool')})")
        elif where == "missing" and _blocked_by_file(target, name):
            refused.append(f"{name} (a file of that name holds its folder's place)")
    if refused:
        raise OutputFolderError(
            f"{target} holds files this tool may not replace: {', '.join(refused[:5])}; the new output would "
            "replace or write through them. Move them away or choose another output folder."
        )
    ours = [name for name in status if status[name] in ("ours", "link")]
    replaced = ours if replace_all else [name for name in ours if name in new_files]
    kept = {name: old[name] for name in old if name not in status}  # an update keeps the files it does not replace
    others = [(name, status[name]) for name in status if status[name] not in ("ours", "link", "missing")]
    if others and replace_all:
        logger.warning(_kept_line(target, others))
    elif others:
        kept.update({name: old[name] for name, _ in others})  # still listed: an update replaces nothing of them
    _write_manifest(staging, {**kept, **new_files}, tool)
    _swap(staging, target, replaced, sorted(new_files))


def _blocked_by_file(root: Path, name: str) -> bool:
    current = root
    for part in PurePosixPath(name).parts[:-1]:
        current = current / part
        if os.path.lexists(current) and not current.is_dir():
            return True
    return False


# A swap is journaled so that a kill at any instant is recoverable: `.NAME.swap-PID.json` beside the target lists
# the files set aside (into `.NAME.old-PID`) and the new files (from `.NAME.tmp-PID`). The commit point is one
# rename: the new manifest over the old one (the target always has a manifest). On the next start (or on an
# exception) `recover_interrupted_swap` finishes a committed swap or rolls back one that was not.

def _journal_path(target: Path, pid: int) -> Path:
    return target.parent / f".{target.name}.swap-{pid}.json"


def _swap(staging: Path, target: Path, old_files: list[str], new_files: list[str]) -> None:
    pid = os.getpid()
    journal = _journal_path(target, pid)
    record = {"target": str(target), "staging": str(staging), "backup": str(target.parent / f".{target.name}.old-{pid}"),
              "old": old_files, "new": new_files, "manifest_sha256": _fingerprint(staging / MANIFEST_NAME)["sha256"]}
    _write_durably(journal, json.dumps(record, indent=1))
    backup = Path(record["backup"])
    try:
        for name in old_files:
            _step(target / name, backup / name)
        for name in new_files:
            _step(staging / name, target / name)
        _step(staging / MANIFEST_NAME, target / MANIFEST_NAME)  # the commit point
    except BaseException:
        _recover(journal, record, log=False)
        raise
    _recover(journal, record, log=False)  # committed: the old files and the journal go


def _step(source: Path, destination: Path) -> None:
    """One rename of a swap (a kill between two steps is what `recover_interrupted_swap` repairs)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, destination)


def _write_durably(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def recover_interrupted_swap(target: PathLike) -> str | None:
    """Finish or roll back a replacement of `target` that a killed run left (its journal beside `target`), saying
    which in one log line; returns "finished", "rolled back" or None (nothing to do). Every stage calls this before
    it looks at its output folder. A swap of a process that still runs is refused (OutputFolderError)."""
    target = Path(target).expanduser().resolve()
    outcome = None
    if not target.parent.is_dir():
        return None
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.swap-*.json.tmp"):  # killed writing a journal
        leftover.unlink(missing_ok=True)
    for journal in sorted(target.parent.glob(f".{glob.escape(target.name)}.swap-*.json")):
        pid = journal.name[len(target.name) + 7:-5]
        if pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid)):
            raise OutputFolderError(
                f"{target} is being replaced by another run (process {pid}, journal {journal}); wait for it to end, "
                "or delete the journal if no such run exists."
            )
        record = read_json_file(journal, what="output swap journal", expect=dict,
                                remedy=f"compare {target} with its hidden .{target.name}.old-{pid} sibling by hand")
        outcome = _recover(journal, record, log=True)
    # an interrupted swap of an earlier version of this tool, which kept no journal: named, never deleted
    for orphan in target.parent.glob(f".{glob.escape(target.name)}.old-*"):
        pid = orphan.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)) and not _journal_path(target, int(pid)).exists():
            logger.warning("%s holds files an interrupted overwrite of %s set aside (an earlier version of this tool "
                           "kept no journal); they are the earlier output: move them back by hand, then delete it.",
                           orphan, target)
    return outcome


def _recover(journal: Path, record: dict, log: bool) -> str:
    target, staging, backup = Path(record["target"]), Path(record["staging"]), Path(record["backup"])
    manifest = target / MANIFEST_NAME
    committed = manifest.is_file() and _fingerprint(manifest)["sha256"] == record["manifest_sha256"]
    if committed:  # every new file is in place: the old ones (set aside) go
        shutil.rmtree(backup, ignore_errors=True)
        for name in record["old"]:
            _remove_empty_parents((target / name).parent, target)
        outcome = "finished"
    else:  # put the new files back into the staging folder, the old ones back into the target
        for name in reversed(record["new"]):
            if os.path.lexists(target / name) and not os.path.lexists(staging / name):
                _step(target / name, staging / name)
                _remove_empty_parents((target / name).parent, target)
        for name in record["old"]:
            if os.path.lexists(backup / name) and not os.path.lexists(target / name):
                _step(backup / name, target / name)
        if any(path.is_file() for path in backup.rglob("*")):
            logger.error("Could not restore every earlier output file of %s; the rest are kept in %s.", target, backup)
        else:
            shutil.rmtree(backup, ignore_errors=True)
        outcome = "rolled back"
    if staging.name.rsplit("-", 1)[-1] != str(os.getpid()):
        shutil.rmtree(staging, ignore_errors=True)  # a killed run's staging folder (ours is removed by `_staged`)
    journal.unlink(missing_ok=True)
    if log:
        what = ("finished it (the new output is complete)" if committed
                else "rolled it back (the earlier output is restored)")
        logger.warning("%s: an earlier run was killed while replacing this folder; %s.", target, what)
    return outcome


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


__all__ = [
    "MANIFEST_NAME",
    "OutputDirError",
    "atomic_output_dir",
    "atomic_update",
    "prepare_output_dir",
    "read_json_file",
    "read_manifest",
    "read_manifest_entries",
    "record_tool_outputs",
    "recover_interrupted_swap",
    "remove_tool_outputs",
    "repair_jsonl",
    "unverified_files",
    "write_failure",
]
