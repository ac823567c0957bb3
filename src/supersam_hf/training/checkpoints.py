"""Checkpoints (accelerate `save_state` + training_state.json), the metrics log, and what a previous run left."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from accelerate import Accelerator

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "training_state.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "training_summary.json"


def _checkpoint_step(path: Path) -> int:
    return int(json.loads((path / STATE_FILE).read_text())["global_step"])


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint (one with training_state.json, written last) under output_dir/checkpoints."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if re.fullmatch(r"step_\d+", p.name) and (p / STATE_FILE).is_file()]
    return max(found, key=_checkpoint_step) if found else None


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


def previous_run_files(output_dir: Path) -> list[str]:
    markers = (CHECKPOINTS_DIR, METRICS_FILE, SUMMARY_FILE, "config.json", "model.safetensors")
    return [m for m in markers if (output_dir / m).exists()] if output_dir.is_dir() else []


class MetricsLog:
    """Appends JSON lines to output_dir/metrics.jsonl (main process) and, in multi-process runs, every process's own
    metrics_rank{r}.jsonl (the subnets and local losses it trained, so ranks can be compared)."""

    def __init__(self, accelerator: Accelerator, output_dir: Path) -> None:
        self.accelerator = accelerator
        self.main = output_dir / METRICS_FILE if accelerator.is_main_process else None
        self.rank = output_dir / f"metrics_rank{accelerator.process_index}.jsonl" if accelerator.num_processes > 1 else None

    def truncate_after(self, step: int) -> None:
        """On resume: drop records of steps after the checkpoint (a crashed run may have logged past it)."""
        for path in (self.main, self.rank):
            if path is not None and path.is_file():
                keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
                path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict, rank_record: dict | None = None) -> None:
        for path, rec in ((self.main, record), (self.rank, rank_record)):
            if path is not None and rec is not None:
                with path.open("a") as handle:
                    handle.write(json.dumps(rec) + "\n")


def save_checkpoint(accelerator: Accelerator, args, output_dir: Path, step: int) -> Path:
    """accelerate `save_state` (model, optimizer, scheduler, RNG) + training_state.json, which is written last:
    a folder without it is an interrupted save and is never resumed from."""
    path = output_dir / CHECKPOINTS_DIR / f"step_{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        state = {"global_step": step, "micro_batches_done": step * args.gradient_accumulation_steps,
                 "num_processes": accelerator.num_processes,
                 "args": {k: v for k, v in dataclasses.asdict(args).items() if k != "token"}}  # never write a token
        (path / STATE_FILE).write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    return path


# What accelerate's save_state (model, optimizer, scheduler, sampler, RNG, scaler, custom objects) and
# save_checkpoint write into a checkpoint folder: rotation deletes these and nothing else.
_CHECKPOINT_FILES = re.compile(
    r"(?:model|pytorch_model)(?:_\d+)?(?:-\d+-of-\d+)?\.(?:safetensors|bin)(?:\.index\.json)?"
    r"|(?:optimizer|scheduler|sampler|dl_state_dict)(?:_\d+)?\.bin|random_states_\d+\.pkl|scaler\.pt"
    r"|custom_checkpoint_\d+\.pkl|" + re.escape(STATE_FILE)
)
_CHECKPOINT_DIRS = re.compile(r"(?:pytorch_model_fsdp|optimizer)_\d+")  # FSDP sharded state dicts


def rotate_checkpoints(output_dir: str | os.PathLike, limit: int, keep: Iterable[Path] = ()) -> list[Path]:
    """Keep the `limit` newest checkpoints under output_dir/checkpoints (HF Trainer's `save_total_limit`).

    Only complete checkpoints this tool wrote are candidates (`step_N` folders whose training_state.json records
    step N); of an older one, only the files accelerate / `save_checkpoint` write are deleted (training_state.json
    first, so a half-deleted folder is never resumed from), and the folder only if that empties it. Folders in
    `keep` stay. Returns the checkpoint folders that were removed.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    if limit < 1 or not root.is_dir():
        return []
    ours = []
    for path in root.iterdir():
        match = re.fullmatch(r"step_(\d+)", path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            try:
                if _checkpoint_step(path) == int(match.group(1)):
                    ours.append(path)
            except (ValueError, KeyError, TypeError):  # not a state file this tool wrote
                continue
    keep_resolved = {Path(k).resolve() for k in keep}
    ours.sort(key=_checkpoint_step, reverse=True)
    removed = []
    for path in ours[limit:]:
        if path.resolve() in keep_resolved:
            continue
        (path / STATE_FILE).unlink()
        for entry in path.iterdir():
            if entry.is_file() and _CHECKPOINT_FILES.fullmatch(entry.name):
                entry.unlink()
            elif entry.is_dir() and _CHECKPOINT_DIRS.fullmatch(entry.name):
                shutil.rmtree(entry)
        try:
            path.rmdir()
            removed.append(path)
        except OSError:
            logging.getLogger(__name__).warning(
                "Kept %s: it holds files this tool did not write (%s).", path, sorted(p.name for p in path.iterdir()))
    return removed


class _TiedWeightsFilter(logging.Filter):
    """Drops accelerate's "Removed shared tensor {...} while saving" when every named tensor is a tied weight."""

    def __init__(self, tied_names: set[str]) -> None:
        super().__init__()
        self.tied_names = tied_names

    def filter(self, record: logging.LogRecord) -> bool:
        match = re.search(r"Removed shared tensor (\{.*?\}) while saving", record.getMessage())
        if not match:
            return True
        try:
            names = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            return True
        return not all(any(name == t or name.endswith("." + t) for t in self.tied_names) for name in names)


@contextlib.contextmanager
def tied_weights_saved_once(model) -> Iterator[None]:
    """Silence accelerate's per-save warning about the model's declared tied weights (only those).

    SAM ties `prompt_encoder.shared_embedding.positional_embedding` to `shared_image_embedding.positional_embedding`
    (`SamModel._tied_weights_keys`); safetensors cannot store one storage twice, so accelerate's `save_state` drops
    the alias and warns on every save, and loading re-ties it. Any other shared tensor still warns."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    names = set(tied) | set(tied.values()) if isinstance(tied, dict) else set(tied)
    target = logging.getLogger("accelerate.utils.other")
    log_filter = _TiedWeightsFilter(names)
    target.addFilter(log_filter)
    try:
        yield
    finally:
        target.removeFilter(log_filter)


__all__ = [
    "CHECKPOINTS_DIR",
    "METRICS_FILE",
    "MetricsLog",
    "STATE_FILE",
    "SUMMARY_FILE",
    "find_latest_checkpoint",
    "previous_run_files",
    "resolve_checkpoint",
    "rotate_checkpoints",
    "save_checkpoint",
    "tied_weights_saved_once",
]
