"""One training run's state between its steps, and what a step does with it: read micro-batches, check and clip
gradients, log, evaluate, save a checkpoint, resume from one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import send_to_device
from transformers import SamProcessor

from ..data import SamSegmentationData, SamStreamingData
from ..errors import DataError
from ..modeling_supersam import SuperSamModel
from ..search_space import SubnetConfig
from .arguments import SupernetTrainingArguments
from .checkpoints import (
    MetricsLog,
    load_checkpoint,
    load_data_state,
    read_training_state,
    rotate_checkpoints,
    save_checkpoint,
)
from .sandwich import NonFiniteLossError, unwrap_supernet

logger = get_logger(__name__)


@dataclass
class StepDone:
    """What one sandwich step trained and measured."""

    slots: list[tuple[str, SubnetConfig]]
    losses: dict[str, float]  # per slot, the mean over micro-batches and processes
    local: torch.Tensor  # this process's losses (its own log)
    distills: dict[str, torch.Tensor]  # with distillation: each student slot's distillation loss on this process
    grad_norm: float | None
    epoch: int


@dataclass
class TrainingRun:
    """Everything one training run shares between its steps (prepared by accelerate), and what a step may do:
    check and clip, log, evaluate, save, resume."""

    args: SupernetTrainingArguments
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    dataloader: torch.utils.data.DataLoader
    train_data: SamSegmentationData | SamStreamingData
    eval_data: SamSegmentationData | SamStreamingData | None
    processor: SamProcessor
    output_dir: Path
    metrics: MetricsLog
    trainable: list[torch.nn.Parameter]
    last_checkpoint: Path | None = None
    eval_batches: Any = None  # the validation batches, collated once for every evaluation of the run
    data_epoch: int = 0  # streaming: the epoch of the stream in progress
    data_epoch_fresh: bool = True  # streaming: the epoch started from its beginning (not resumed mid-way)

    @property
    def supernet(self) -> SuperSamModel:
        """The supernet itself, outside the DDP / PEFT wrappers (subnets are switched on it)."""
        return unwrap_supernet(self.accelerator.unwrap_model(self.model))

    @property
    def streaming(self) -> bool:
        return isinstance(self.train_data, SamStreamingData)

    def micro_batches(self, start: int):
        """(epoch, batch) from micro-batch index `start` on: epoch e is the seeded permutation e (data order and
        prompts), so any position can be re-entered exactly; `skip_first_batches` skips without loading. A stream
        continues from where its state (restored by `resume`) left it."""
        if self.streaming:
            yield from self._streamed_micro_batches()
            return
        epoch, skip = divmod(start, len(self.dataloader))
        while True:
            self.dataloader.set_epoch(epoch)
            self.train_data.set_epoch(epoch)
            loader = self.accelerator.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
            for batch in loader:
                yield epoch, batch
            epoch, skip = epoch + 1, 0

    def _streamed_micro_batches(self):
        """Micro-batches of a stream, epoch after epoch, moved to this process's device (the loader is not prepared
        by accelerate). The epoch in progress is recorded in `data_epoch` for the checkpoint."""
        while True:
            self.train_data.set_epoch(self.data_epoch)
            produced = False
            for batch in self.dataloader:
                produced = True
                yield self.data_epoch, send_to_device(batch, self.accelerator.device)
            if not produced and self.data_epoch_fresh:
                raise DataError(f"The training stream of process {self.accelerator.process_index} holds no image with "
                                "an instance (every row was skipped); check --mask_kind, --min_mask_area and the split.")
            self.data_epoch += 1
            self.data_epoch_fresh = True

    def check_and_clip(self, step: int, slots: list[tuple[str, SubnetConfig]], losses: dict[str, float]) -> float | None:
        """Stop on a non-finite loss or gradient norm before the optimizer step; clip; the gradient norm (or None)."""
        last_good = str(self.last_checkpoint) if self.last_checkpoint else "none (no checkpoint saved yet)"
        for (name, cfg), value in zip(slots, losses.values()):
            if not math.isfinite(value):
                raise self.fail(
                    f"Non-finite loss ({value}) at step {step + 1} in subnet '{name}' ({cfg.name}, kept layers "
                    f"{list(cfg.kept_layers)}). Training stopped before the optimizer step; the last good checkpoint "
                    f"is {last_good}. Lower learning_rate, keep max_grad_norm > 0, or check the data and the model's "
                    "weights."
                )
        if self.args.max_grad_norm <= 0:
            return None
        grad_norm = float(self.accelerator.clip_grad_norm_(self.trainable, self.args.max_grad_norm))
        if not math.isfinite(grad_norm) and self.args.mixed_precision != "fp16":  # fp16: the scaler skips the step
            raise self.fail(
                f"Non-finite gradient norm at step {step + 1} (sandwich of {[c.name for _, c in slots]}); the last "
                f"good checkpoint is {self.last_checkpoint or 'none'}. Lower learning_rate."
            )
        return grad_norm

    def fail(self, message: str) -> NonFiniteLossError:
        self.finish_trackers()
        return NonFiniteLossError(message)

    def finish_trackers(self) -> None:
        """Close the trackers (what `end_training` does) but keep the process group: the caller may go on using it."""
        for tracker in self.accelerator.trackers:
            tracker.finish()

    def log(self, step: int, done: StepDone) -> None:
        """metrics.jsonl (and each process's metrics_rank{r}.jsonl), and the trackers."""
        accelerator = self.accelerator
        lr = self.scheduler.get_last_lr()[0]
        record = {"type": "train", "step": step, "epoch": done.epoch, "lr": lr, "loss": done.losses,
                  "subnets": {name: cfg.name for name, cfg in done.slots}}
        if self.args.distill_weight > 0:
            mean = accelerator.reduce(torch.stack(list(done.distills.values())), "mean").tolist()
            record["distill"] = dict(zip(done.distills, mean))
        if done.grad_norm is not None:
            record["grad_norm"] = done.grad_norm
        rank_record = {"step": step, "rank": accelerator.process_index,
                       "loss": dict(zip(done.losses, done.local.tolist())),
                       "subnets": {name: cfg.to_dict() for name, cfg in done.slots}}
        self.metrics.write(record, rank_record)
        accelerator.log({**{f"train/loss_{k}": v for k, v in done.losses.items()}, "train/lr": lr}, step=step)

    def evaluate(self, step: int) -> dict:
        """mIoU of the largest and the smallest subnet on the validation split, its batches split across the
        processes (every process gets the same record); logged by the main process."""
        from ..evaluation import EvaluationData, evaluate_model

        args, prompt = self.args, self.eval_data.prompt
        if self.eval_batches is None:
            self.eval_batches = EvaluationData.prepare(self.eval_data, self.processor, prompt=prompt, seed=args.seed,
                                                       batch_size=args.per_device_eval_batch_size,
                                                       max_images=args.max_eval_images)
        supernet, space = self.supernet, self.supernet.search_space
        record: dict[str, Any] = {"type": "eval", "step": step, "miou": {}, "subnets": {}}
        for name, cfg in (("largest", space.largest()), ("smallest", space.smallest())):
            result = evaluate_model(supernet, self.eval_batches, self.processor, subnet=cfg, prompt=prompt,
                                    show_progress=False, state=self.accelerator.state)
            record["miou"][name] = float(result.miou)
            record["subnets"][name] = cfg.name
            record.update(num_objects=int(result.num_objects), num_images=int(result.num_images), prompt=result.prompt,
                          mask_selection=result.mask_selection)
        if self.accelerator.is_main_process:
            self.metrics.write(record)
            self.accelerator.log({f"eval/miou_{k}": v for k, v in record["miou"].items()}, step=step)
        self.accelerator.wait_for_everyone()
        return record

    def save(self, step: int) -> None:
        """A resumable checkpoint of `step`; then only the `save_total_limit` newest ones are kept (main process)."""
        data_state = {"epoch": self.data_epoch, "loader": self.dataloader.state_dict()} if self.streaming else None
        path = save_checkpoint(self.accelerator, self.args, self.output_dir, step, data_state=data_state)
        limit = self.args.save_total_limit
        if self.accelerator.is_main_process and limit is not None:
            for removed in rotate_checkpoints(self.output_dir, limit, keep=(path,)):
                logger.info(f"Removed old checkpoint {removed} (save_total_limit={limit}).", main_process_only=True)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = path

    def resume(self, checkpoint: Path) -> int:
        """Load a checkpoint into the prepared objects; the step it was saved at."""
        state = read_training_state(checkpoint)
        for key in ("seed", "per_device_train_batch_size", "gradient_accumulation_steps", "num_random_subnets",
                    "prompt_type", "point_fraction"):
            if state.get("args", {}).get(key, getattr(self.args, key)) != getattr(self.args, key):
                logger.warning(f"Resuming with {key}={getattr(self.args, key)!r} but the checkpoint used "
                               f"{state['args'][key]!r}: the run will not reproduce the original one.",
                               main_process_only=True)
        data_state = load_data_state(checkpoint, self.accelerator.process_index, state, self.streaming)
        load_checkpoint(self.accelerator, checkpoint)
        if data_state is not None:
            self.dataloader.load_state_dict(data_state["loader"])
            self.data_epoch, self.data_epoch_fresh = int(data_state["epoch"]), False
        start_step = int(state["global_step"])
        self.metrics.truncate_after(start_step)
        self.last_checkpoint = checkpoint
        logger.info(f"Resumed from {checkpoint} at step {start_step}.", main_process_only=True)
        return start_step


__all__ = ["StepDone", "TrainingRun"]
