"""The manifest (`.supersam-manifest.json`): what this tool wrote in a folder and the content it wrote (size +
sha256), and the one removal routine, which removes only files whose content is still what was recorded."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ..errors import OutputFolderError
from .jsonfiles import PathLike, read_json_file

logger = logging.getLogger(__name__)

MANIFEST_NAME = ".supersam-manifest.json"
MANIFEST_VERSION = 2


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
