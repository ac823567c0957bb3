"""The accelerate training loop of the sandwich rule (+ in-place distillation, resume, LoRA through PEFT).

Every optimizer step trains several subnets of the weight-sharing supernet on the same mini-batch: the largest,
the smallest and `num_random_subnets` sampled ones (the "sandwich rule" of BigNAS, used by SuperSAM). Their
gradients accumulate in the shared weights and one optimizer step follows (`sandwich.sandwich_backward`).

The loop follows accelerate's examples: `Accelerator` handles devices, DDP, mixed precision, trackers and
checkpoints (`save_state` / `load_state`). Everything random that shapes a run is a function of (seed, step): the
data order (a per-epoch seeded permutation), the prompts (seeded per row and epoch), the prompt kind of "mixed", and
the subnets of each sandwich slot. So a resumed run reproduces the straight run (exactly, on CPU).

    accelerate launch examples/train_supernet.py --model_name_or_path sam_or_supernet --dataset_name data \\
        --output_dir out --max_steps 1000
    supersam train --model_name_or_path ... --dataset_name ... --output_dir ...        # same function
"""

from __future__ import annotations

import functools
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import SamProcessor, get_scheduler

from ..checks import load_dataset_rows
from ..data import SamSegmentationData, SamStreamingData, load_segmentation_dataset
from ..errors import DataError, SupersamError, UnsupportedSetupError
from ..hub import push_folder, resolve_token
from ..model_card import write_supernet_card
from ..distributed import check_engine_request, check_launch, engine_info, engine_line
from ..loading import load_processor, load_supernet, recorded_base_model
from ..modeling_supersam import SuperSamModel
from ..results import TrainingResult
from .arguments import LORA_TARGETS, PART_PREFIXES, SupernetTrainingArguments
from ..outputs import atomic_update, prepare_output_dir
from .checkpoints import (
    TOOL,
    MetricsLog,
    adopt_run_files,
    foreign_files,
    load_checkpoint,
    load_data_state,
    previous_run_files,
    read_training_state,
    remove_previous_run,
    resolve_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
    tied_weights_saved_once,
)
from .sandwich import (
    NonFiniteLossError,
    SandwichCollator,
    SeededEpochSampler,
    batch_model_inputs,
    prompt_kind,
    sandwich_backward,
    sandwich_subnets,
    unwrap_supernet,
)

logger = get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------------------------


def _data_options(args: SupernetTrainingArguments) -> dict[str, Any]:
    return {"image_column": args.image_column, "mask_column": args.mask_column,
            "intensity_normalization": args.intensity_normalization, "min_mask_area": args.min_mask_area,
            "category_ids": args.category_ids}


def build_datasets(args: SupernetTrainingArguments, processor: SamProcessor, train_dataset=None, eval_dataset=None):
    """The training `SamSegmentationData` and the validation one (or None). Bad columns, mask kinds and datasets
    without a usable instance raise here, before any training starts. `train_dataset` / `eval_dataset`
    (`datasets.Dataset`, or `datasets.IterableDataset`) replace the splits of `args.dataset_name`.

    With `args.streaming` (or a `datasets.IterableDataset` given) the training data is a `SamStreamingData`: rows
    decoded on the fly, shuffled in blocks of `shuffle_buffer_size`, this process's part of the stream
    (`split_dataset_by_node`). Training keeps at most `max_instances_per_image` instances per image (memory);
    validation scores every instance."""
    if args.streaming or isinstance(train_dataset, datasets.IterableDataset):
        return _build_streaming_datasets(args, processor, train_dataset, eval_dataset)
    raw = train_dataset
    if raw is None:
        raw = load_dataset_rows(functools.partial(load_segmentation_dataset, image_dir=args.image_dir), args.dataset_name,
                                split=args.train_split_name, config_name=args.dataset_config_name,
                                split_flag="--train_split_name")
    validation = eval_dataset
    source = "the given eval_dataset" if eval_dataset is not None else None
    if validation is None and args.eval_split_name:
        validation = load_dataset_rows(functools.partial(load_segmentation_dataset, image_dir=args.image_dir),
                                       args.dataset_name, split=args.eval_split_name,
                                       config_name=args.dataset_config_name, split_flag="--eval_split_name")
        source = f"split {args.eval_split_name!r}"
    elif validation is None and args.validation_fraction > 0:
        parts = raw.train_test_split(test_size=args.validation_fraction, seed=args.seed, shuffle=True)
        raw, validation = parts["train"], parts["test"]
        source = f"{args.validation_fraction:g} of split {args.train_split_name!r} held out"
    elif validation is None and args.eval_steps > 0 and train_dataset is None:
        source, validation = _default_eval_split(args)
    if args.max_train_images is not None:
        raw = raw.select(range(min(len(raw), args.max_train_images)))
    train_data = SamSegmentationData(
        raw, processor, mask_kind=args.mask_kind, max_instances_per_image=args.max_instances_per_image,
        prompt=args.prompt_type, seed=args.seed, **_data_options(args),
    )
    eval_data = None
    if validation is None:
        _info_on_main("No evaluation during training: give eval_split_name or validation_fraction, or a dataset with a "
                      "'validation' or 'test' split.")
    else:
        _info_on_main(f"Evaluation during training on {source} of {args.dataset_name or 'the given data'}.")
        eval_data = SamSegmentationData(
            validation, processor, mask_kind=train_data.mask_kind, max_instances_per_image=None,
            prompt="point" if args.prompt_type == "point" else "box", seed=args.seed, **_data_options(args),
        )
    return train_data, eval_data


def _build_streaming_datasets(args: SupernetTrainingArguments, processor: SamProcessor, train_dataset, eval_dataset):
    """`build_datasets` for a stream: this process's part of the training stream, shuffled; the validation split
    (if any) streamed in order, read again at every evaluation."""
    if args.validation_fraction:
        raise UnsupportedSetupError("--validation_fraction holds out rows of a map-style dataset; with --streaming "
                                    "give --eval_split_name instead.")
    if args.shuffle_buffer_size < 1:
        raise UnsupportedSetupError(f"--shuffle_buffer_size must be >= 1, got {args.shuffle_buffer_size}.")
    def load(split):
        return load_segmentation_dataset(args.dataset_name, split=split, config_name=args.dataset_config_name,
                                         streaming=True, image_dir=args.image_dir)
    raw = train_dataset if train_dataset is not None else load(args.train_split_name)
    if isinstance(raw, datasets.Dataset):
        raw = raw.to_iterable_dataset(num_shards=max(1, min(64, len(raw))))
    state = PartialState()
    train_data = SamStreamingData(
        raw, processor, mask_kind=args.mask_kind, max_instances_per_image=args.max_instances_per_image,
        prompt=args.prompt_type, seed=args.seed, shuffle=True, shuffle_buffer_size=args.shuffle_buffer_size,
        rank=state.process_index, world_size=state.num_processes, max_rows=args.max_train_images,
        **_data_options(args),
    )
    validation = eval_dataset if eval_dataset is not None else (load(args.eval_split_name) if args.eval_split_name else None)
    eval_data = None
    if validation is not None:
        wrapper = SamStreamingData if isinstance(validation, datasets.IterableDataset) else SamSegmentationData
        eval_data = wrapper(validation, processor, mask_kind=train_data.mask_kind, max_instances_per_image=None,
                            prompt="point" if args.prompt_type == "point" else "box", seed=args.seed,
                            return_full_masks=wrapper is SamStreamingData, **_data_options(args))
    return train_data, eval_data


DEFAULT_EVAL_SPLITS = ("validation", "test")


def _info_on_main(message: str) -> None:
    """Log once: on the main process of an accelerate run, or plainly when no accelerate state exists yet."""
    if PartialState._shared_state and not PartialState().is_main_process:
        return
    logging.getLogger(__name__).info(message)


def _default_eval_split(args: SupernetTrainingArguments):
    """(description, dataset) of the dataset's `validation` (else `test`) split, or (None, None) when it has neither
    (a split the data does not have raises `ValueError` in `load_segmentation_dataset`)."""
    for name in DEFAULT_EVAL_SPLITS:
        if name == args.train_split_name:
            continue
        try:
            data = load_segmentation_dataset(args.dataset_name, split=name, config_name=args.dataset_config_name,
                                             image_dir=args.image_dir)
        except ValueError:
            continue
        return f"split {name!r} (the dataset's {name} split; eval_split_name chooses another)", data
    return None, None


def configure_trainable(model: SuperSamModel, args: SupernetTrainingArguments) -> torch.nn.Module:
    """Freeze what does not train; with LoRA wrap the model in PEFT (adapters on the trainable parts' attention).

    Returns the module to train: `model` itself, or a `peft.PeftModel` around it (which freezes every base weight;
    a listed prompt encoder, which has no attention projection, is then trained fully).
    """
    parts = args.trainable_parts()
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(prefix) for part in parts for prefix in PART_PREFIXES[part]))
    if not args.uses_lora():
        return model
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    targets = "|".join(f"(?:{LORA_TARGETS[p]})" for p in parts if p in LORA_TARGETS)
    fields = args.lora_config_fields() or {"r": args.lora_r, "lora_alpha": args.lora_alpha,
                                           "lora_dropout": args.lora_dropout, "bias": "none"}
    try:
        config = LoraConfig(**{"target_modules": f"(?:{targets})", **fields})
        peft_model = get_peft_model(model, config)
    except (TypeError, ValueError) as error:  # a field of the wrong type or value, targets matching nothing
        source = f"--lora_config {args.lora_config}" if args.lora_config else "the LoRA flags"
        raise SupersamError(f"{source}: peft refuses this LoraConfig ({' '.join(str(error).split())[:300]}).") from None
    sliced = [name for name, module in peft_model.named_modules()
              if isinstance(module, BaseTunerLayer) and ".mlp.lin" in name and "vision_encoder" in name]
    if sliced:
        raise SupersamError(f"LoRA targets {sliced[0]}: the encoder MLPs are sliced for elastic width and cannot "
                            "carry adapters; leave lin1/lin2 of vision_encoder out of target_modules.")
    if "prompt_encoder" in parts:
        for name, param in model.named_parameters():
            if name.startswith(PART_PREFIXES["prompt_encoder"]):
                param.requires_grad_(True)
    return peft_model


def _optimizer(model: torch.nn.Module, args: SupernetTrainingArguments) -> torch.optim.Optimizer:
    """AdamW; no weight decay on 1-D parameters (biases, norm scales), as in transformers' Trainer."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise SupersamError(f"Nothing to train: trainable={args.trainable!r} selects no parameter.")
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=args.learning_rate)


def _tracker_config(args: SupernetTrainingArguments) -> dict:
    """The arguments as tracker hyperparameters: scalars only (TensorBoard's hparams refuse lists and None)."""
    return {k: ("None" if v is None else ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
            for k, v in dataclasses.asdict(args).items() if k != "token"}


def _check_output_dir(args: SupernetTrainingArguments) -> tuple[Path, Path | None, list[str]]:
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
            f"({', '.join(foreign[:3])}"
            f"{' …' if len(foreign) > 3 else ''}); training would write over or into them. Move them away or choose "
            "another output_dir."
        )
    return output_dir, resume_dir, previous


def _accelerator(args: SupernetTrainingArguments, output_dir: Path) -> Accelerator:
    # DDP: subnets drop encoder layers, so a slot's graph misses parameters that others use; without
    # find_unused_parameters DDP would wait forever for their gradients (or raise).
    return Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.trackers() or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def set_activation_checkpointing(model: SuperSamModel, enable: bool) -> None:
    """Turn gradient (activation) checkpointing of the encoder layers on or off, non-reentrant
    (`activation_checkpointing_enable` in recent transformers, `gradient_checkpointing_enable` before)."""
    if enable:
        method = getattr(model, "activation_checkpointing_enable", None)
        if method is not None:
            method(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


# ----------------------------------------------------------------------------------------------------------------
# Evaluation during training
# ----------------------------------------------------------------------------------------------------------------


def _evaluate(supernet: SuperSamModel, eval_data, processor, args: SupernetTrainingArguments, step: int, cache: dict,
              state=None) -> dict:
    """mIoU of the largest and the smallest subnet on the validation split, its batches split across the processes
    of `state` (every process gets the same record).

    The validation batches are collated once (`EvaluationData`) and reused by every evaluation of the run."""
    from ..evaluation import EvaluationData, evaluate_model

    if "data" not in cache:
        cache["data"] = EvaluationData.prepare(
            eval_data, processor, prompt=eval_data.prompt, batch_size=args.per_device_eval_batch_size,
            max_images=args.max_eval_images, seed=args.seed,
        )
    space = supernet.search_space
    record: dict[str, Any] = {"type": "eval", "step": step, "miou": {}, "subnets": {}}
    for name, cfg in (("largest", space.largest()), ("smallest", space.smallest())):
        result = evaluate_model(supernet, cache["data"], processor, subnet=cfg, prompt=eval_data.prompt, show_progress=False,
                                state=state)
        record["miou"][name] = float(result["miou"])
        record["subnets"][name] = cfg.name
        record["num_objects"] = int(result["num_objects"])
        record["num_images"] = int(result["num_images"])
        record["prompt"] = result["prompt"]
        record["mask_selection"] = result["mask_selection"]
    return record


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything one training run shares between its steps (prepared by accelerate)."""

    args: SupernetTrainingArguments
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    dataloader: torch.utils.data.DataLoader
    train_data: SamSegmentationData
    eval_data: SamSegmentationData | None
    processor: SamProcessor
    output_dir: Path
    metrics: MetricsLog
    trainable: list[torch.nn.Parameter]
    last_checkpoint: Path | None = None
    eval_cache: dict = field(default_factory=dict)
    data_epoch: int = 0  # streaming: the epoch of the stream in progress
    data_epoch_fresh: bool = True  # streaming: the epoch started from its beginning (not resumed mid-way)

    def evaluate_and_log(self, step: int) -> dict | None:
        # Every process scores its share of the validation batches (the supernet itself, outside the DDP wrapper).
        supernet = unwrap_supernet(self.accelerator.unwrap_model(self.model))
        record = _evaluate(supernet, self.eval_data, self.processor, self.args, step, self.eval_cache, self.accelerator.state)
        if self.accelerator.is_main_process:
            self.metrics.write(record)
            self.accelerator.log({f"eval/miou_{k}": v for k, v in record["miou"].items()}, step=step)
        self.accelerator.wait_for_everyone()
        return record

    def fail(self, message: str) -> NonFiniteLossError:
        _finish_trackers(self.accelerator)
        return NonFiniteLossError(message)


def _micro_batches(run: _Run, start: int):
    """Micro-batches from micro-batch index `start` on: epoch e is the seeded permutation e (data order and
    prompts), so any position can be re-entered exactly; `skip_first_batches` skips without loading. A stream
    continues from where its state (restored by `_resume`) left it."""
    if isinstance(run.train_data, SamStreamingData):
        yield from _streamed_micro_batches(run)
        return
    per_epoch = len(run.dataloader)
    epoch, skip = divmod(start, per_epoch)
    while True:
        run.dataloader.set_epoch(epoch)
        run.train_data.set_epoch(epoch)
        loader = run.accelerator.skip_first_batches(run.dataloader, skip) if skip else run.dataloader
        for batch in loader:
            yield epoch, batch
        epoch, skip = epoch + 1, 0


def _streamed_micro_batches(run: _Run):
    """Micro-batches of a stream, epoch after epoch, moved to this process's device (the loader is not prepared by
    accelerate: `split_dataset_by_node` already gave this rank its part). The epoch in progress is recorded in
    `run.data_epoch` for the checkpoint."""
    from accelerate.utils import send_to_device

    while True:
        run.train_data.set_epoch(run.data_epoch)
        produced = False
        for batch in run.dataloader:
            produced = True
            yield run.data_epoch, send_to_device(batch, run.accelerator.device)
        if not produced and run.data_epoch_fresh:
            raise DataError(f"The training stream of process {run.accelerator.process_index} holds no image with an "
                            "instance (every row was skipped); check --mask_kind, --min_mask_area and the split.")
        run.data_epoch += 1
        run.data_epoch_fresh = True


def _data_state(run: _Run) -> dict | None:
    """This process's position in a training stream (saved with each checkpoint), None for map-style data."""
    if not isinstance(run.train_data, SamStreamingData):
        return None
    return {"epoch": run.data_epoch, "loader": run.dataloader.state_dict()}


def _sandwich_step(run: _Run, step: int, stream) -> dict[str, Any]:
    """One optimizer step: ga micro-batches × the sandwich's slots, mean losses checked finite, clip, step.

    Gradient accumulation by hand rather than `accelerator.accumulate`: `accelerator.backward` divides each loss by
    ga, and every backward but the step's very last runs under `no_sync`."""
    args, accelerator = run.args, run.accelerator
    space = unwrap_supernet(accelerator.unwrap_model(run.model)).search_space
    ga = args.gradient_accumulation_steps
    slots = sandwich_subnets(space, args.seed, step, args.num_random_subnets)
    if args.largest_only:
        slots = slots[:1]  # plain fine-tuning of the full model
    totals = {name: torch.zeros((), device=accelerator.device) for name, _ in slots}
    distills = {name: torch.zeros((), device=accelerator.device) for name, _ in slots[1:]}
    epoch = 0
    for micro in range(ga):
        epoch, batch = next(stream)
        inputs = batch_model_inputs(batch, prompt_kind(args.prompt_type, args.seed, step, micro, args.point_fraction))
        results = sandwich_backward(
            accelerator, run.model, inputs, batch["labels"], batch["instance_mask"], slots,
            loss_type=args.loss_type, distill_weight=args.distill_weight, sync=micro == ga - 1,
            iou_weight=args.iou_loss_weight,
        )
        for name, record in results.items():
            totals[name] += record["loss"] / ga
            if "distill" in record:
                distills[name] += record["distill"] / ga

    # One small all-reduce per step: the mean losses, so every process sees a NaN and stops together.
    local = torch.stack(list(totals.values()))
    values = dict(zip(totals, accelerator.reduce(local.clone(), reduction="mean").tolist()))
    for (name, cfg), value in zip(slots, values.values()):
        if not math.isfinite(value):
            raise run.fail(
                f"Non-finite loss ({value}) at step {step + 1} in subnet '{name}' ({cfg.name}, kept layers "
                f"{list(cfg.kept_layers)}). Training stopped before the optimizer step; the last good checkpoint "
                f"is {str(run.last_checkpoint) if run.last_checkpoint else 'none (no checkpoint saved yet)'}. Lower "
                "learning_rate, keep max_grad_norm > 0, or check the data and the model's weights."
            )
    grad_norm = None
    if args.max_grad_norm > 0:
        grad_norm = float(accelerator.clip_grad_norm_(run.trainable, args.max_grad_norm))
        if not math.isfinite(grad_norm) and args.mixed_precision != "fp16":  # fp16: the scaler skips the step
            raise run.fail(
                f"Non-finite gradient norm at step {step + 1} (sandwich of {[c.name for _, c in slots]}); the last "
                f"good checkpoint is {run.last_checkpoint or 'none'}. Lower learning_rate."
            )
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {"slots": slots, "values": values, "local": local, "distills": distills, "grad_norm": grad_norm, "epoch": epoch}


def _save(run: _Run, step: int) -> Path:
    """A resumable checkpoint of `step`, then only the `save_total_limit` newest ones are kept (main process)."""
    with tied_weights_saved_once(unwrap_supernet(run.accelerator.unwrap_model(run.model))):
        path = save_checkpoint(run.accelerator, run.args, run.output_dir, step, data_state=_data_state(run))
    if run.accelerator.is_main_process and run.args.save_total_limit is not None:
        for removed in rotate_checkpoints(run.output_dir, run.args.save_total_limit, keep=(path,)):
            logger.info(f"Removed old checkpoint {removed} (save_total_limit={run.args.save_total_limit}).",
                        main_process_only=True)
    run.accelerator.wait_for_everyone()
    return path


def _log_step(run: _Run, global_step: int, outcome: dict[str, Any]) -> None:
    args, accelerator = run.args, run.accelerator
    slots, values = outcome["slots"], outcome["values"]
    lr = run.scheduler.get_last_lr()[0]
    record = {"type": "train", "step": global_step, "epoch": outcome["epoch"], "lr": lr, "loss": values,
              "subnets": {name: cfg.name for name, cfg in slots}}
    distills = outcome["distills"]
    if args.distill_weight > 0:
        record["distill"] = dict(zip(distills, accelerator.reduce(torch.stack(list(distills.values())), "mean").tolist()))
    if outcome["grad_norm"] is not None:
        record["grad_norm"] = outcome["grad_norm"]
    rank_record = {"step": global_step, "rank": accelerator.process_index,
                   "loss": dict(zip(values, outcome["local"].tolist())),
                   "subnets": {name: cfg.to_dict() for name, cfg in slots}}
    run.metrics.write(record, rank_record)
    accelerator.log({**{f"train/loss_{k}": v for k, v in values.items()}, "train/lr": lr}, step=global_step)


def _resume(run: _Run, resume_dir: Path) -> int:
    """Load a checkpoint into the prepared objects; the step it was saved at."""
    args = run.args
    state = read_training_state(resume_dir)
    for key in ("seed", "per_device_train_batch_size", "gradient_accumulation_steps", "num_random_subnets", "prompt_type",
                "point_fraction"):
        if state.get("args", {}).get(key, getattr(args, key)) != getattr(args, key):
            logger.warning(f"Resuming with {key}={getattr(args, key)!r} but the checkpoint used "
                           f"{state['args'][key]!r}: the run will not reproduce the original one.", main_process_only=True)
    load_checkpoint(run.accelerator, resume_dir)
    if state.get("streaming") and not isinstance(run.train_data, SamStreamingData):
        raise DataError(f"{resume_dir} was saved by a --streaming run; resume it with --streaming (its position is "
                        "in the stream), or start a new --output_dir.")
    if isinstance(run.train_data, SamStreamingData):
        data_state = load_data_state(resume_dir, run.accelerator.process_index, state)
        run.dataloader.load_state_dict(data_state["loader"])
        run.data_epoch, run.data_epoch_fresh = int(data_state["epoch"]), False
    start_step = int(state["global_step"])
    run.metrics.truncate_after(start_step)
    logger.info(f"Resumed from {resume_dir} at step {start_step}.", main_process_only=True)
    return start_step


def _prepare_run(args, accelerator, supernet, processor, train_data, eval_data, output_dir) -> _Run:
    model = configure_trainable(supernet, args)
    optimizer = _optimizer(model, args)
    streaming = isinstance(train_data, SamStreamingData)
    if streaming:  # torchdata's loader collects the stream's state_dict() from its workers: exact resume
        from torchdata.stateful_dataloader import StatefulDataLoader

        dataloader = StatefulDataLoader(train_data, batch_size=args.per_device_train_batch_size,
                                        collate_fn=SandwichCollator(args.prompt_type),
                                        num_workers=args.dataloader_num_workers)
    else:
        dataloader = torch.utils.data.DataLoader(
            train_data,
            batch_size=args.per_device_train_batch_size,
            sampler=SeededEpochSampler(len(train_data), args.seed),
            collate_fn=SandwichCollator(args.prompt_type),
            num_workers=args.dataloader_num_workers,
        )
    # accelerate steps a prepared scheduler once per process per optimizer step (see AcceleratedScheduler), so the
    # schedule is stretched by num_processes, as in accelerate's and transformers' no_trainer examples.
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer,
        num_warmup_steps=args.warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_steps * accelerator.num_processes,
    )
    if streaming:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    else:
        model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    return _Run(args=args, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
                dataloader=dataloader, train_data=train_data, eval_data=eval_data, processor=processor,
                output_dir=output_dir, metrics=MetricsLog(accelerator, output_dir),
                trainable=[p for p in model.parameters() if p.requires_grad])


def train_supernet(
    args: SupernetTrainingArguments,
    model: SuperSamModel | None = None,
    processor: SamProcessor | None = None,
    train_dataset=None,
    eval_dataset=None,
) -> SuperSamModel:
    """Train a supernet with the sandwich rule; save it (search space included, LoRA merged) and its processor.

    `model`, `processor` and `train_dataset` / `eval_dataset` (a `datasets.Dataset`) are loaded from
    `args.model_name_or_path` / `args.dataset_name` (`supersam_hf.loading`) unless given.

    Writes into `args.output_dir`: the trained supernet (`SuperSamModel.from_pretrained` loads it), the processor,
    `checkpoints/step_N` (accelerate `save_state` + training_state.json) every `save_steps` and at the end,
    `metrics.jsonl` and `training_summary.json` (a `supersam_hf.results.TrainingResult`: read it back with
    `TrainingResult.load(output_dir)`). Returns the trained, unwrapped supernet (eval mode).
    Bad input (arguments, columns, data, checkpoints, an output_dir holding another run) raises before anything is
    written; a NaN/inf loss raises `NonFiniteLossError` naming the step and subnet, leaving earlier checkpoints.
    """
    args.validate()
    # The engine first (an unsupported one is refused before accelerate builds it), then the process group: a
    # launch of N processes that formed a one-process state stops here, before anything is written.
    check_engine_request()
    accelerator = _accelerator(args, Path(args.output_dir))
    check_launch(accelerator.state)
    engine = engine_info(accelerator.state, accelerator.mixed_precision)
    logger.info(engine_line(engine), main_process_only=True)
    output_dir, resume_dir, previous = _check_output_dir(args)
    if args.push_to_hub:  # no token: say so before training, not after it
        resolve_token(args.token, output_dir, args.hub_model_id)
    set_seed(args.seed)

    # Everything that can fail on bad input happens here, before a single file is written.
    if model is None:
        model = load_supernet(args.model_name_or_path, revision=args.revision, token=args.token, device="cpu")
    if processor is None:
        processor = load_processor(args.model_name_or_path, args.processor_name_or_path, recorded_base_model(model),
                                   revision=args.revision, token=args.token)
    train_data, eval_data = build_datasets(args, processor, train_dataset, eval_dataset)
    if args.gradient_checkpointing:
        # Non-reentrant: exact for every subnet (a layer is recomputed under the subnet that ran it: each slot's
        # backward runs before the next slot is activated), and it works with frozen inputs, LoRA and DDP.
        set_activation_checkpointing(model, True)
    model.train()
    run = _prepare_run(args, accelerator, model, processor, train_data, eval_data, output_dir)

    if args.overwrite_output_dir and resume_dir is None and previous and accelerator.is_main_process:
        remove_previous_run(output_dir)
    accelerator.wait_for_everyone()
    output_dir.mkdir(parents=True, exist_ok=True)
    start_step = _resume(run, resume_dir) if resume_dir is not None else 0
    run.last_checkpoint = resume_dir
    if args.trackers():
        # Local files of every tracker go under output_dir (wandb's offline runs would land in the working folder).
        accelerator.init_trackers("supersam_train", config=_tracker_config(args),
                                  init_kwargs={"wandb": {"dir": str(output_dir)}})
        if not accelerator.trackers:  # "all" with none installed
            logger.warning("--report_to all: no tracker is installed (pip install 'supersam_hf[trackers]'); "
                           "losses go to metrics.jsonl only.", main_process_only=True)
    summary = _train_loop(run, start_step)
    summary.engine = engine
    return _finish(run, summary)


def _train_loop(run: _Run, start_step: int) -> TrainingResult:
    """Steps start_step … max_steps, with logging, evaluation and checkpoints; the run's summary so far."""
    args, accelerator = run.args, run.accelerator
    subnets_per_step = 1 if args.largest_only else 2 + args.num_random_subnets
    trainable_params = sum(p.numel() for p in run.trainable)
    logger.info(
        f"Sandwich training: {args.max_steps} steps x ({subnets_per_step} subnets x {args.gradient_accumulation_steps} "
        f"micro-batches of {args.per_device_train_batch_size} images x {accelerator.num_processes} processes); "
        f"{_train_images(run)}; {trainable_params:,} trainable parameters{' (LoRA)' if args.uses_lora() else ''}.",
        main_process_only=True,
    )
    logger.info(f"Training keeps at most max_instances_per_image={args.max_instances_per_image} instances (prompts) "
                "per image, the largest, to bound memory"
                + (f": {run.train_data.num_instances_left_out} of "
                   f"{run.train_data.counts.instances + run.train_data.num_instances_left_out} instances are left out"
                   if not isinstance(run.train_data, SamStreamingData) else " (the stream counts them as it goes)")
                + "; validation scores every instance.", main_process_only=True)
    stream = _micro_batches(run, start_step * args.gradient_accumulation_steps)
    progress = tqdm(range(start_step, args.max_steps), initial=start_step, total=args.max_steps,
                    desc="fine-tune" if args.largest_only else "sandwich", disable=not accelerator.is_local_main_process)
    last_losses: dict[str, float] = {}
    last_eval: dict | None = None
    started = time.perf_counter()
    try:
        for step in range(start_step, args.max_steps):
            outcome = _sandwich_step(run, step, stream)
            global_step, last_losses = step + 1, outcome["values"]
            progress.update(1)
            progress.set_postfix({_short(name): f"{value:.3f}" for name, value in last_losses.items()})
            if args.logging_steps and (global_step % args.logging_steps == 0 or global_step == args.max_steps):
                _log_step(run, global_step, outcome)
            before_end = global_step < args.max_steps
            if run.eval_data is not None and args.eval_steps and global_step % args.eval_steps == 0 and before_end:
                last_eval = run.evaluate_and_log(global_step)
            if args.save_steps and global_step % args.save_steps == 0 and before_end:
                run.last_checkpoint = _save(run, global_step)
    finally:
        progress.close()
    runtime = time.perf_counter() - started
    final_step = max(start_step, args.max_steps)
    if run.eval_data is not None and final_step > start_step:
        last_eval = run.evaluate_and_log(final_step)
    if final_step > start_step or run.last_checkpoint is None:
        run.last_checkpoint = _save(run, final_step)
    return TrainingResult(
        global_step=final_step,
        start_step=start_step,
        train_runtime_s=round(runtime, 3),
        steps_per_second=round((final_step - start_step) / runtime, 4) if runtime > 0 else None,
        num_processes=accelerator.num_processes,
        subnets_per_step=subnets_per_step,
        trainable_parameters=trainable_params,
        lora=args.uses_lora(),
        final_loss=last_losses,
        max_instances_per_image=args.max_instances_per_image,
        instances_left_out=(None if isinstance(run.train_data, SamStreamingData)
                            else run.train_data.num_instances_left_out),
        streaming=isinstance(run.train_data, SamStreamingData),
        final_eval=last_eval,
        last_checkpoint=str(run.last_checkpoint),
    )


def _finish(run: _Run, summary: TrainingResult) -> SuperSamModel:
    """Save the final artefact, a plain supernet (LoRA merged, full model active), its processor and the summary."""
    accelerator = run.accelerator
    trained = accelerator.unwrap_model(run.model)
    if hasattr(trained, "merge_and_unload"):
        trained = trained.merge_and_unload()
    supernet = unwrap_supernet(trained)
    supernet.reset_subnet()
    supernet.eval()
    if run.args.gradient_checkpointing:
        set_activation_checkpointing(supernet, False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # all files at once (a full disk leaves the previous ones), recorded as ours
        with atomic_update(run.output_dir, tool=TOOL) as staging:
            supernet.save_pretrained(staging, save_function=accelerator.save)
            run.processor.save_pretrained(staging)
            summary.save(staging)  # training_summary.json
            if run.args.push_to_hub:
                write_supernet_card(supernet, staging, repo_id=_hub_repo(run.args), summary=summary,
                                    datasets=[run.args.dataset_name])
    logger.info(f"Training done: {json.dumps(summary.to_dict())}", main_process_only=True)
    accelerator.wait_for_everyone()
    _finish_trackers(accelerator)
    if run.args.push_to_hub and accelerator.is_main_process:
        _push_supernet(run, supernet, summary)
    accelerator.wait_for_everyone()
    return supernet


def _hub_repo(args: SupernetTrainingArguments) -> str:
    return args.hub_model_id or Path(args.output_dir).resolve().name


# The run's folder without what is local to the run: resumable checkpoints, wandb's offline files.
HUB_IGNORE = ["checkpoints/**", "wandb/**", "*.tmp-*"]


def _push_supernet(run: _Run, supernet: SuperSamModel, summary: TrainingResult) -> None:
    """Upload the trained supernet (weights, processor, summary, metrics, card) to `hub_model_id`."""
    args = run.args

    def rewrite_card(resolved: str) -> None:  # a name without namespace resolved to the user's
        if resolved != _hub_repo(args):
            write_supernet_card(supernet, run.output_dir, repo_id=resolved, summary=summary, datasets=[args.dataset_name])

    push_folder(run.output_dir, _hub_repo(args), private=args.hub_private_repo or None, token=args.token,
                commit_message=f"Upload SuperSAM supernet (step {summary.global_step})", ignore_patterns=HUB_IGNORE,
                on_repo=rewrite_card)


def _finish_trackers(accelerator: Accelerator) -> None:
    """Close the trackers (what `end_training` does) but keep the process group: the caller may go on using it."""
    for tracker in accelerator.trackers:
        tracker.finish()


def _train_images(run: _Run) -> str:
    data = run.train_data
    if isinstance(data, SamStreamingData):
        return f"streaming {run.args.dataset_name or 'dataset'} (shuffle blocks of {data.shuffle_buffer_size} rows)"
    return f"{len(data)} train images"


def _short(name: str) -> str:
    return {"largest": "L", "smallest": "S"}.get(name, name.replace("random_", "R"))


__all__ = ["build_datasets", "configure_trainable", "set_activation_checkpointing", "train_supernet"]
