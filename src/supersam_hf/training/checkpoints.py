"""Checkpoints of a training run, its metrics log, and what a previous run left in its output_dir.

A checkpoint is `output_dir/checkpoints/step_N`: accelerate's `save_state` (model, optimizer, scheduler, RNG states)
plus `training_state.json`, written last (a folder without it is no checkpoint), staged in `step_N.tmp` and renamed
when complete. accelerate's `ProjectConfiguration` places the trackers' logs; its `automatic_checkpoint_naming` /
`total_limit` do not serve here: that `save_state` removes with `shutil.rmtree` every folder under
`project_dir/checkpoints` beyond the limit (a user's folder too), names folders by save count (`checkpoint_<i>`,
not the step a resume needs), and `load_state()` takes the highest number whether or not that save completed.
Rotation here removes only complete checkpoints of this tool, and of those only the files the output folder's
manifest lists unchanged (`outputs.remove_tool_outputs`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import constants as saved_by_accelerate

from ..checks import named_load_errors
from ..errors import DataError, ModelFileError
from ..outputs import (
    prepare_output_dir,
    read_json_file,
    read_manifest,
    record_tool_outputs,
    remove_tool_outputs,
    repair_jsonl,
    unverified_files,
    write_failure,
)
from ..results import TRAINING_FILE

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "training_state.json"
DATA_STATE_FILE = "data_state_{rank}.json"  # streaming: one process's position in its stream
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = TRAINING_FILE  # what TrainingResult.save writes
TOOL = "supersam train"
# What the end of a run writes next to checkpoints/ (a foreign file of these names would be replaced: refused early).
FINAL_FILES = ("config.json", "model.safetensors", "processor_config.json", "preprocessor_config.json", SUMMARY_FILE)
RESTART_HINT = ("resume from an earlier checkpoint (--resume_from_checkpoint <output_dir>/checkpoints/step_N), or "
                "start afresh (--overwrite_output_dir)")


def read_training_state(checkpoint: Path) -> dict:
    """A checkpoint's training_state.json; a corrupt one is an error naming it and the way out."""
    state = read_json_file(checkpoint / STATE_FILE, what="training state", remedy=RESTART_HINT, expect=dict)
    if not isinstance(state.get("global_step"), int) or isinstance(state.get("global_step"), bool):
        raise ModelFileError(f"training state {checkpoint / STATE_FILE} is corrupt (no integer 'global_step'); "
                         f"{RESTART_HINT}.")
    return state


def _step_of(path: Path) -> int | None:
    """N of a folder named `step_N` (this tool's checkpoint names), else None."""
    digits = path.name.removeprefix("step_")
    return int(digits) if digits != path.name and digits.isascii() and digits.isdecimal() else None


def _complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `step_N` folders with a training_state.json under output_dir/checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    found = [p for p in root.iterdir() if _step_of(p) is not None and (p / STATE_FILE).is_file()] if root.is_dir() else []
    return sorted(found, key=_step_of)


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint (one with training_state.json, written last) under output_dir/checkpoints."""
    found = _complete_checkpoints(output_dir)
    if found:
        read_training_state(found[-1])  # a corrupt state file is named here, with the way out
    return found[-1] if found else None


def resolve_checkpoint(args) -> Path | None:
    """The checkpoint folder to resume from, or None; FileNotFoundError when asked for one that does not exist."""
    value = args.resume_from_checkpoint
    if value is None or value == "":
        return None
    if value == "latest":
        found = find_latest_checkpoint(args.output_dir)
        if found is None:
            raise FileNotFoundError(
                f"resume_from_checkpoint='latest' but {Path(args.output_dir) / CHECKPOINTS_DIR} holds no checkpoint "
                f"(folders step_N with {STATE_FILE}). Start without resume_from_checkpoint, or give a checkpoint folder."
            )
        return found
    path = Path(value).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    if path.is_dir() and find_latest_checkpoint(path) is not None:  # a run's output_dir: its newest checkpoint
        return find_latest_checkpoint(path)
    raise FileNotFoundError(
        f"resume_from_checkpoint={value!r} is not a checkpoint written by train_supernet (no {STATE_FILE} there, and "
        f"no {CHECKPOINTS_DIR}/step_N inside)."
    )


def check_output_dir(args) -> tuple[Path, Path | None, list[str]]:
    """(output_dir, the checkpoint to resume from or None, files of a previous run found there); checked writable,
    apart from the inputs and free of another tool's files before any work."""
    output_dir = Path(args.output_dir)
    prepare_output_dir(output_dir, overwrite=True, inputs=[args.model_name_or_path, args.dataset_name])
    resume_dir = resolve_checkpoint(args)
    previous = previous_run_files(output_dir)
    if previous and resume_dir is None and not args.overwrite_output_dir:
        raise FileExistsError(
            f"output_dir {str(output_dir)!r} holds a previous run ({', '.join(previous)}). Pass "
            "resume_from_checkpoint='latest' to continue it, overwrite_output_dir=True to replace it, or another output_dir."
        )
    if resume_dir is not None and output_dir.resolve() in resume_dir.resolve().parents:
        adopt_run_files(output_dir)  # continuing the run of this folder: its files are this tool's
    foreign = foreign_files(output_dir, final_only=resume_dir is not None)
    if foreign:
        raise FileExistsError(
            f"output_dir {str(output_dir)!r} holds files this tool did not write or that changed since it wrote them "
            f"({', '.join(foreign[:3])}{' …' if len(foreign) > 3 else ''}); training would write over or into them. "
            "Move them away or choose another output_dir."
        )
    return output_dir, resume_dir, previous


def previous_run_files(output_dir: Path) -> list[str]:
    markers = (CHECKPOINTS_DIR, METRICS_FILE, SUMMARY_FILE, "config.json", "model.safetensors")
    return [m for m in markers if (output_dir / m).exists()] if output_dir.is_dir() else []


def foreign_files(output_dir: Path, final_only: bool = False) -> list[str]:
    """Files a run would write over or into but that this tool may not replace: not recorded in the manifest (another
    tool's `checkpoints/`, a user's config.json), changed since it wrote them, or behind a symbolic link; each with
    the reason. Training refuses to start rather than replace or mix with them. `final_only`: only the files the
    end of a run writes (a resume, whose checkpoints and metrics log are its own)."""
    if not output_dir.is_dir():
        return []
    names = [name for name in (*FINAL_FILES, *(() if final_only else (METRICS_FILE,))) if (output_dir / name).is_file()]
    root = output_dir / CHECKPOINTS_DIR
    if root.is_dir() and not final_only:  # step_N.tmp: this tool's interrupted saves, removed on overwrite
        staged = _interrupted_saves(output_dir)
        names += [p.relative_to(output_dir).as_posix() for p in root.rglob("*")
                  if p.is_file() and not any(folder in p.parents for folder in staged)]
    return unverified_files(output_dir, names)


def adopt_run_files(output_dir: Path) -> None:
    """On resume in output_dir: record the run's final files, metrics log and checkpoints as this tool's (what the
    end of the resumed run replaces and an overwrite may remove), for runs written before manifests existed."""
    names = [name for name in (*FINAL_FILES, METRICS_FILE) if (output_dir / name).is_file()]
    names += [p.relative_to(output_dir).as_posix() for p in _complete_checkpoints(output_dir)]
    recorded = set(read_manifest(output_dir))
    files = [p.relative_to(output_dir).as_posix() for name in names
             for p in ([output_dir / name] if (output_dir / name).is_file() else (output_dir / name).rglob("*"))
             if p.is_file() and not p.is_symlink()]
    missing = [name for name in files if name not in recorded]  # a recorded file keeps its recorded content
    if missing:
        record_tool_outputs(output_dir, missing, tool=TOOL)


def remove_previous_run(output_dir: Path) -> None:
    """--overwrite_output_dir: remove what an earlier run of this tool wrote in output_dir (its manifest), only that,
    and the step_N.tmp folders of its interrupted saves."""
    remove_tool_outputs(output_dir)
    for staged in _interrupted_saves(output_dir):
        clear_checkpoint_folder(staged)
    with contextlib.suppress(OSError):
        (output_dir / CHECKPOINTS_DIR).rmdir()  # only when empty


def _interrupted_saves(output_dir: Path) -> list[Path]:
    """The `step_N.tmp` folders under output_dir/checkpoints: saves of this tool that did not complete."""
    root = output_dir / CHECKPOINTS_DIR
    return [p for p in root.iterdir() if p.suffix == ".tmp" and _step_of(p.with_suffix("")) is not None] if root.is_dir() else []


class MetricsLog:
    """Appends JSON lines to output_dir/metrics.jsonl (main process) and, in multi-process runs, every process's own
    metrics_rank{r}.jsonl (the subnets and local losses it trained, so ranks can be compared)."""

    def __init__(self, accelerator: Accelerator, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.main = output_dir / METRICS_FILE if accelerator.is_main_process else None
        self.rank = output_dir / f"metrics_rank{accelerator.process_index}.jsonl" if accelerator.num_processes > 1 else None

    def truncate_after(self, step: int) -> None:
        """On resume: drop records of steps after the checkpoint (a crashed run may have logged past it); a torn last
        line (a kill or a full disk mid-append) is cut back first."""
        for path in (self.main, self.rank):
            if path is not None and path.is_file():
                repair_jsonl(path)
                keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
                path.write_text("".join(line + "\n" for line in keep))
                if path == self.main:
                    record_tool_outputs(self.output_dir, [path.absolute()], tool=TOOL)

    def write(self, record: dict, rank_record: dict | None = None) -> None:
        for path, rec in ((self.main, record), (self.rank, rank_record)):
            if path is not None and rec is not None:
                with path.open("a") as handle:
                    handle.write(json.dumps(rec) + "\n")
                if path == self.main:  # ours, as it now reads: an overwrite may remove it (one writer of the manifest)
                    record_tool_outputs(self.output_dir, [path.absolute()], tool=TOOL)


def save_checkpoint(accelerator: Accelerator, args, output_dir: Path, step: int, data_state: dict | None = None) -> Path:
    """accelerate `save_state` (model, optimizer, scheduler, RNG) + training_state.json, written into
    `checkpoints/step_N.tmp` and renamed to `step_N` when complete: a failed save (a full disk) leaves no partial
    checkpoint and the previous ones intact. The checkpoint joins output_dir's manifest (what overwrite removes).
    `data_state` (streaming: this process's position in its stream) is written by every process as
    `data_state_<rank>.json`."""
    path = output_dir / CHECKPOINTS_DIR / f"step_{step}"
    staging = path.with_name(path.name + ".tmp")
    if accelerator.is_main_process and not clear_checkpoint_folder(staging):  # an interrupted save of this step
        raise FileExistsError(f"{staging} holds files this tool did not write; move them away and rerun.")
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(staging))
        if data_state is not None:
            (staging / DATA_STATE_FILE.format(rank=accelerator.process_index)).write_text(json.dumps(data_state))
        accelerator.wait_for_everyone()  # every process's files (RNG states) are in before the rename
        if accelerator.is_main_process:
            state = {"global_step": step, "micro_batches_done": step * args.gradient_accumulation_steps,
                     "num_processes": accelerator.num_processes, "streaming": data_state is not None,
                     "args": {k: v for k, v in dataclasses.asdict(args).items() if k != "token"}}  # never a token
            (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
            if not clear_checkpoint_folder(path):  # the same step saved again (a resumed run)
                raise FileExistsError(f"{path} holds files this tool did not write; move them away and rerun.")
            os.replace(staging, path)
            rank_logs = sorted(output_dir.glob("metrics_rank*.jsonl"))  # created by other processes
            record_tool_outputs(output_dir, [p.absolute() for p in (path, *rank_logs)], tool=TOOL)
    except BaseException as error:
        if accelerator.is_main_process:
            with contextlib.suppress(OSError):
                clear_checkpoint_folder(staging)
        failure = write_failure(error, path, "; the partial checkpoint was removed; then resume from the last complete "
                                "one (--resume_from_checkpoint latest)")
        if failure is not None and not isinstance(error, OSError):
            raise failure from error
        raise
    accelerator.wait_for_everyone()
    return path


def load_data_state(checkpoint: Path, rank: int, state: dict, streaming: bool) -> dict | None:
    """This process's stream position saved with a checkpoint (`data_state_<rank>.json`; None for map-style data);
    one line when the checkpoint was not written by a run of the same kind with as many processes."""
    path = checkpoint / DATA_STATE_FILE.format(rank=rank)
    if state.get("streaming") and not streaming:
        raise DataError(f"{checkpoint} was saved by a --streaming run; resume it with --streaming (its position is in "
                        "the stream), or start a new --output_dir.")
    if streaming and not state.get("streaming"):
        raise DataError(f"{checkpoint} was saved by a run without --streaming; resume it without --streaming "
                        "(or start a new --output_dir).")
    if streaming and not path.is_file():
        raise DataError(f"{checkpoint} has no stream position for process {rank} ({path.name}): it was saved with "
                        f"{state.get('num_processes', '?')} processes; resume with as many.")
    try:
        return json.loads(path.read_text()) if streaming else None
    except (ValueError, OSError) as error:
        raise DataError(f"{path} cannot be read ({error}); resume from another checkpoint.") from None


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> None:
    """accelerate `load_state`; a corrupt file (optimizer.bin, model.safetensors) or a checkpoint of another model
    size is one error naming the checkpoint and the way out."""
    with named_load_errors(checkpoint, "training checkpoint", RESTART_HINT):
        accelerator.load_state(str(checkpoint))


def rotate_checkpoints(output_dir: str | os.PathLike, limit: int, keep: Iterable[Path] = ()) -> list[Path]:
    """Keep the `limit` newest checkpoints under output_dir/checkpoints (HF Trainer's `save_total_limit`).

    Only complete checkpoints this tool wrote are candidates (`step_N` folders whose training_state.json records
    step N); of an older one, only this tool's files are deleted (`clear_checkpoint_folder`), and the folder only if
    that empties it. Folders in `keep` stay. Returns the checkpoint folders that were removed.
    """
    if limit < 1:
        return []
    keep_resolved = {Path(k).resolve() for k in keep}
    ours = [path for path in _complete_checkpoints(output_dir) if _records_its_step(path)]
    return [path for path in ours[::-1][limit:] if path.resolve() not in keep_resolved and clear_checkpoint_folder(path)]


def _records_its_step(checkpoint: Path) -> bool:
    """Whether the folder's training_state.json is one this tool wrote for that folder (its step is the folder's)."""
    try:
        return json.loads((checkpoint / STATE_FILE).read_text())["global_step"] == _step_of(checkpoint)
    except (ValueError, KeyError, TypeError, OSError):
        return False


# The names accelerate's `save_state` gives what this tool asks it to save (one model, optimizer and scheduler, a
# prepared loader's sampler, every process's RNG states, fp16's scaler; FSDP's sharded folders), from accelerate's
# own constants, and what `save_checkpoint` adds: all an interrupted save (`step_N.tmp`) can hold of this tool's.
_SAVED_STEMS = {saved_by_accelerate.SAFE_MODEL_NAME, saved_by_accelerate.MODEL_NAME, saved_by_accelerate.OPTIMIZER_NAME,
                saved_by_accelerate.SCHEDULER_NAME, saved_by_accelerate.SAMPLER_NAME,
                saved_by_accelerate.RNG_STATE_NAME, DATA_STATE_FILE.split("_{")[0]}
_SAVED_SUFFIXES = {"safetensors", "bin", "pkl", "json", "safetensors.index.json", "bin.index.json"}
_SAVED_FOLDERS = {saved_by_accelerate.FSDP_MODEL_NAME, saved_by_accelerate.OPTIMIZER_NAME}


def _saved_by_this_tool(entry: os.DirEntry) -> bool:
    """Whether a file or folder in a `step_N.tmp` folder has a name `save_checkpoint` writes (`model.safetensors`,
    `model-00001-of-00002.safetensors`, `optimizer_1.bin`, `random_states_0.pkl`, `pytorch_model_fsdp_0/`, …)."""
    stem, _, suffix = entry.name.partition(".")
    stem = stem.split("-")[0]  # model-00001-of-00002: a shard
    base, _, number = stem.rpartition("_")
    stem = base if base and number.isdecimal() else stem  # optimizer_1, random_states_0: an object or process
    if entry.is_dir(follow_symlinks=False):
        return not suffix and stem in _SAVED_FOLDERS
    return entry.is_file(follow_symlinks=False) and (
        entry.name in (saved_by_accelerate.SCALER_NAME, STATE_FILE) or (stem in _SAVED_STEMS and suffix in _SAVED_SUFFIXES))


def clear_checkpoint_folder(path: Path) -> bool:
    """Delete this tool's files in a checkpoint folder `output_dir/checkpoints/step_N[.tmp]` (training_state.json
    first, so a half-deleted folder is never resumed from), and the folder if that empties it; True when it is gone.

    A complete checkpoint goes through `outputs.remove_tool_outputs`: only the files the output folder's manifest
    lists with unchanged content are removed. A `step_N.tmp` folder (a save in progress, never recorded: this tool
    creates it just before accelerate writes into it) loses only what `save_checkpoint` writes there. No symbolic
    link is followed; anything else stays (named in a warning)."""
    if path.is_symlink() or not path.is_dir():
        return not os.path.lexists(path)
    output_dir = path.parent.parent
    if path.suffix == ".tmp":
        for entry in [entry for entry in os.scandir(path) if _saved_by_this_tool(entry)]:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)  # never follows links inside
            else:
                os.unlink(entry.path)
    else:
        name = path.relative_to(output_dir).as_posix()
        remove_tool_outputs(output_dir, within=f"{name}/{STATE_FILE}")
        remove_tool_outputs(output_dir, within=name)  # an emptied folder goes with its last file
        if not os.path.lexists(path):
            return True
    try:
        path.rmdir()
        return True
    except OSError:
        logging.getLogger(__name__).warning(
            "Kept %s: it holds files this tool did not write or that changed since (%s).", path,
            sorted(p.name for p in path.iterdir()))
        return False


def save_tied_weights_once(model: torch.nn.Module):
    """A `register_save_state_pre_hook` that leaves the aliases of `model`'s declared tied weights out of the saved
    state dicts, keeping one name per shared storage.

    SAM ties `prompt_encoder.shared_embedding.positional_embedding` to `shared_image_embedding.positional_embedding`
    (`SamModel._tied_weights_keys`); safetensors cannot store one storage twice, so accelerate would drop the alias
    itself, with a warning on every save; loading re-ties it (safetensors' `load_model`). Any other shared tensor
    is left to accelerate, and still warns."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    names = set(tied) | set(tied.values()) if isinstance(tied, dict) else set(tied)

    def hook(models, weights: list[dict], output_dir) -> None:
        for state in weights:
            shared = collections.defaultdict(list)
            for key, tensor in state.items():
                if isinstance(tensor, torch.Tensor) and any(key == t or key.endswith("." + t) for t in names):
                    shared[(tensor.device, tensor.untyped_storage().data_ptr())].append(key)
            for keys in shared.values():
                for key in keys[1:]:
                    del state[key]

    return hook


__all__ = [
    "CHECKPOINTS_DIR",
    "METRICS_FILE",
    "MetricsLog",
    "STATE_FILE",
    "SUMMARY_FILE",
    "check_output_dir",
    "find_latest_checkpoint",
    "load_checkpoint",
    "read_training_state",
    "remove_previous_run",
    "resolve_checkpoint",
    "rotate_checkpoints",
    "save_checkpoint",
    "save_tied_weights_once",
]
