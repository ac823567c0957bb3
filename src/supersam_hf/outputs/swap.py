"""Moving a complete staging folder into place (`_commit`), journaled so that a kill at any instant is finished
or rolled back by the next run (`recover_interrupted_swap`).

A swap writes `.NAME.swap-PID.json` beside the target, listing the files set aside (into `.NAME.old-PID`) and
the new files (from `.NAME.tmp-PID`). The commit point is one rename: the new manifest over the old one (the
target always has a manifest). On the next start (or on an exception) `recover_interrupted_swap` finishes a
committed swap or rolls back one that was not.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
from pathlib import Path, PurePosixPath

from ..errors import OutputFolderError
from .jsonfiles import PathLike, read_json_file
from .manifest import (MANIFEST_NAME, _REASONS, _files_under, _fingerprint, _kept_line, _locate,
                       _remove_empty_parents, _status, _write_manifest, read_manifest_entries)

logger = logging.getLogger(__name__)


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
