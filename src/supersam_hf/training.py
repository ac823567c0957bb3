"""Sandwich-rule supernet training on accelerate (+ in-place distillation, resume, LoRA through PEFT).

Every optimizer step trains several subnets of the weight-sharing supernet on the same mini-batch: the largest,
the smallest and `num_random_subnets` sampled ones (the "sandwich rule" of BigNAS, used by SuperSAM). Their
gradients accumulate in the shared weights and one optimizer step follows. Optionally the smaller subnets also fit
the largest subnet's (detached) masks: in-place knowledge distillation.

The loop follows accelerate's examples: `Accelerator` handles devices, DDP, mixed precision, trackers and
checkpoints (`save_state` / `load_state`). Everything random that shapes a run is a function of
(seed, step): the data order (a per-epoch seeded permutation), the prompts (seeded by data.py per row and epoch),
the prompt kind of "mixed", and the subnets of each sandwich slot. So every process of a multi-process run trains
the same subnets, and a resumed run reproduces the straight run (exactly, on CPU).

    accelerate launch examples/train_supernet.py --model_name_or_path sam_or_supernet --dataset_name data \
        --output_dir out --max_steps 1000
    supersam train --model_name_or_path ... --dataset_name ... --output_dir ...        # same function
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import SamProcessor, get_scheduler

from .data import MASK_KINDS, PROMPT_TYPES, SamCollator, SamSegmentationData, load_segmentation_dataset, model_inputs
from .losses import LOSS_TYPES, mask_distillation_loss, sam_loss
from .modeling_supersam import SuperSamModel
from .search_space import SearchSpace, SubnetConfig

logger = get_logger(__name__)

TRAINABLE_PARTS = ("encoder", "decoder", "prompt_encoder")
# Module prefixes of each trainable part. SAM's random Fourier positional table (`shared_image_embedding`, a fixed
# buffer in the original SAM) belongs to the prompt side and stays frozen unless the prompt encoder trains.
PART_PREFIXES = {
    "encoder": ("vision_encoder.",),
    "decoder": ("mask_decoder.",),
    "prompt_encoder": ("prompt_encoder.", "shared_image_embedding."),
}
# LoRA targets (regular expressions, fully matched against module names by PEFT): the image encoder's attention
# projections and every attention projection of the mask decoder's two-way transformer. The encoder MLPs
# (lin1/lin2) are never targeted: the supernet slices them for elastic width.
LORA_TARGETS = {
    "encoder": r"vision_encoder\.layers\.\d+\.attn\.(?:qkv|proj)",
    "decoder": r"mask_decoder\.transformer\.(?:layers\.\d+\.(?:self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
    r"|final_attn_token_to_image)\.(?:q_proj|k_proj|v_proj|out_proj)",
}
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("none", "tensorboard")
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "training_state.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "training_summary.json"


class NonFiniteLossError(ValueError):
    """Training produced a NaN/inf loss or gradient; raised before the optimizer step, so no weight is touched."""


@dataclass
class SupernetTrainingArguments:
    """Arguments of `train_supernet` (flags of `supersam train` and `examples/train_supernet.py`, or a JSON/YAML file)."""

    model_name_or_path: str = field(
        metadata={"help": "A SAM checkpoint (converted to a supernet on load) or a saved supernet: folder or Hub id. "
                  "The SamProcessor is loaded from the same place."}
    )
    dataset_name: str = field(
        metadata={"help": "A `save_to_disk` folder, a local data file/folder, or a Hub dataset name "
                  "(see supersam_hf.data.load_segmentation_dataset)."}
    )
    output_dir: str = field(
        metadata={"help": "Where the trained supernet + processor, checkpoints/step_N and metrics.jsonl are written."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow an output_dir that holds a previous run (its checkpoints and metrics are removed)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    validation_split: Optional[str] = field(
        default=None, metadata={"help": "Split for periodic mIoU evaluation (None: no evaluation unless validation_fraction)."}
    )
    validation_fraction: float = field(
        default=0.0, metadata={"help": "Hold out this fraction of the train split (seeded, deterministic) for evaluation."}
    )
    image_column: Optional[str] = field(default=None, metadata={"help": "Image column (None: auto-detect)."})
    mask_column: Optional[str] = field(default=None, metadata={"help": "Mask column (None: auto-detect)."})
    mask_kind: Optional[str] = field(
        default=None, metadata={"help": f"How masks are stored: one of {MASK_KINDS} (None: auto-detect)."}
    )
    max_instances_per_image: int = field(default=16, metadata={"help": "Instances (prompts) per image, largest first."})
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps to train (each one a full sandwich)."})
    per_device_train_batch_size: int = field(default=2, metadata={"help": "Images per device per micro-batch."})
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "Images per batch during evaluation."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not applied to biases and norms)."})
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = field(
        default="cosine", metadata={"help": "Learning-rate schedule (transformers.get_scheduler)."}
    )
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the sandwich's summed gradient to this norm (0: off)."})
    num_random_subnets: int = field(
        default=2, metadata={"help": "Sampled subnets per step, besides the largest and the smallest (sandwich rule)."}
    )
    largest_only: bool = field(
        default=False,
        metadata={"help": "Train only the largest subnet: plain fine-tuning of the full model, the baseline that the "
                  "sandwich rule is compared with (num_random_subnets and distill_weight are then ignored)."},
    )
    distill_weight: float = field(
        default=0.0, metadata={"help": "In-place distillation: weight of the smaller subnets' fit to the largest's masks (0: off)."}
    )
    loss_type: Literal["focal_dice", "dice", "dice_bce"] = field(
        default="focal_dice", metadata={"help": "Mask loss (SAM's focal+dice by default) plus the IoU-head MSE."}
    )
    prompt_type: Literal["point", "box", "mixed"] = field(
        default="point", metadata={"help": "Training prompts; 'mixed' picks point or box per micro-batch (seeded)."}
    )
    trainable: str = field(
        default="encoder,decoder",
        metadata={"help": f"Comma-separated parts that train, among {TRAINABLE_PARTS}; the rest is frozen."},
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (0: full fine-tuning of the trainable parts)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path."})
    logging_steps: int = field(default=10, metadata={"help": "Append losses to metrics.jsonl every N steps (0: off)."})
    save_steps: int = field(default=500, metadata={"help": "Save a resumable checkpoint every N steps (0: only at the end)."})
    eval_steps: int = field(default=500, metadata={"help": "mIoU of the largest and smallest subnet every N steps (0: only at the end)."})
    eval_max_images: Optional[int] = field(default=64, metadata={"help": "Validation images per evaluation (None: all)."})
    seed: int = field(default=42, metadata={"help": "Seed of everything random: data order, prompts, subnets, init."})
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "'latest' (newest under output_dir/checkpoints) or a checkpoint folder."}
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata={"help": "accelerate mixed precision."})
    report_to: Literal["none", "tensorboard"] = field(
        default="none", metadata={"help": "Also log to TensorBoard (output_dir/runs) through accelerate's trackers."}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})

    def trainable_parts(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.trainable.split(",") if p.strip())

    def validate(self) -> None:
        """Raise `ValueError` naming the first bad argument (called by `train_supernet` before anything runs)."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}.")
        need(self.per_device_train_batch_size >= 1, "per_device_train_batch_size must be >= 1.")
        need(self.per_device_eval_batch_size >= 1, "per_device_eval_batch_size must be >= 1.")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1.")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}.")
        need(self.weight_decay >= 0 and self.warmup_steps >= 0 and self.max_grad_norm >= 0,
             "weight_decay, warmup_steps and max_grad_norm must be >= 0.")
        need(self.num_random_subnets >= 0,
             f"num_random_subnets must be >= 0 (sampled subnets besides the largest and smallest), got {self.num_random_subnets}.")
        need(self.distill_weight >= 0, f"distill_weight must be >= 0, got {self.distill_weight}.")
        need(self.loss_type in LOSS_TYPES, f"Unknown loss_type {self.loss_type!r}; valid types are {LOSS_TYPES}.")
        need(self.prompt_type in PROMPT_TYPES, f"Unknown prompt_type {self.prompt_type!r}; valid types are {PROMPT_TYPES}.")
        need(self.mask_kind is None or self.mask_kind in MASK_KINDS,
             f"Unknown mask_kind {self.mask_kind!r}; valid kinds are {MASK_KINDS} (or None to auto-detect).")
        need(self.lr_scheduler_type in SCHEDULERS, f"Unknown lr_scheduler_type {self.lr_scheduler_type!r}; choose one of {SCHEDULERS}.")
        need(self.mixed_precision in MIXED_PRECISION, f"Unknown mixed_precision {self.mixed_precision!r}; choose one of {MIXED_PRECISION}.")
        need(self.report_to in REPORT_TO, f"Unknown report_to {self.report_to!r}; choose one of {REPORT_TO}.")
        parts = self.trainable_parts()
        unknown = [p for p in parts if p not in TRAINABLE_PARTS]
        need(bool(parts) and not unknown, f"trainable={self.trainable!r}: give a comma-separated subset of {TRAINABLE_PARTS}.")
        if self.lora_r:
            need(self.lora_r > 0 and self.lora_alpha > 0, "lora_r and lora_alpha must be > 0 (lora_r=0 turns LoRA off).")
            need(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
            need(any(p in LORA_TARGETS for p in parts), "LoRA adapts attention of the encoder/decoder: put one of them in trainable.")
        need(0 <= self.validation_fraction < 1, f"validation_fraction must be in [0, 1), got {self.validation_fraction}.")
        need(not (self.validation_split and self.validation_fraction),
             "Give validation_split or validation_fraction, not both.")
        need(self.max_instances_per_image >= 1, "max_instances_per_image must be >= 1.")
        need(self.eval_max_images is None or self.eval_max_images >= 1, "eval_max_images must be >= 1 (or None for all).")
        need(min(self.logging_steps, self.save_steps, self.eval_steps, self.dataloader_num_workers) >= 0,
             "logging_steps, save_steps, eval_steps and dataloader_num_workers must be >= 0.")


# ----------------------------------------------------------------------------------------------------------------
# Determinism helpers: everything random is a function of (seed, step, ...)
# ----------------------------------------------------------------------------------------------------------------


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from a tuple of values, identical in every process and Python session (unlike `hash`)."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sandwich_subnets(space: SearchSpace, seed: int, step: int, num_random: int) -> list[tuple[str, SubnetConfig]]:
    """The (slot name, subnet) pairs of one sandwich step: largest, smallest, then `num_random` sampled subnets.

    Slot k's subnet comes from `torch.Generator().manual_seed(stable_seed(seed, step, k))`, never from a process's
    global RNG, so all processes of a distributed run (and a resumed run) train the same subnets at each step.
    """
    slots = [("largest", space.largest()), ("smallest", space.smallest())]
    for k in range(1, num_random + 1):
        generator = torch.Generator().manual_seed(stable_seed(seed, "subnet", step, k))
        slots.append((f"random_{k}", space.sample(generator=generator)))
    return slots


class SeededEpochSampler(torch.utils.data.Sampler):
    """Random order that depends only on (seed, epoch): the same on every process, re-drawn exactly on resume."""

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(stable_seed(self.seed, "data", self.epoch))
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


class SandwichCollator:
    """`SamCollator` batches carrying the prompt kinds the run may use (points and/or boxes).

    For "mixed" both are collated and the training loop picks one per micro-batch from (seed, step, micro-batch),
    instead of relying on the collator's call counter, which restarts on resume and differs between workers.
    """

    def __init__(self, prompt_type: str) -> None:
        self.points = SamCollator(prompt="point") if prompt_type in ("point", "mixed") else None
        self.boxes = SamCollator(prompt="box") if prompt_type in ("box", "mixed") else None

    def __call__(self, examples):
        batch = (self.points or self.boxes)(examples)
        if self.points is not None and self.boxes is not None:
            batch["input_boxes"] = self.boxes(examples)["input_boxes"]
        return batch


def prompt_kind(prompt_type: str, seed: int, step: int, micro: int) -> str:
    """The prompt kind of one micro-batch: fixed, or for "mixed" a seeded coin flip (same on every process)."""
    if prompt_type != "mixed":
        return prompt_type
    return "point" if np.random.default_rng((seed, step, micro)).random() < 0.5 else "box"


def batch_model_inputs(batch: dict, kind: str) -> dict[str, torch.Tensor]:
    """`SamModel.forward` inputs of a collated batch, with only the prompts of `kind`."""
    inputs = model_inputs(batch)
    drop = ("input_boxes",) if kind == "point" else ("input_points", "input_labels")
    return {k: v for k, v in inputs.items() if k not in drop}


# ----------------------------------------------------------------------------------------------------------------
# The sandwich step
# ----------------------------------------------------------------------------------------------------------------


def unwrap_supernet(module: torch.nn.Module) -> SuperSamModel:
    """The `SuperSamModel` inside a (DDP-unwrapped) model, also through a PEFT wrapper."""
    if hasattr(module, "get_base_model"):
        module = module.get_base_model()
    if not isinstance(module, SuperSamModel):
        raise TypeError(f"Expected a SuperSamModel (optionally PEFT-wrapped), got {type(module).__name__}.")
    return module


def sandwich_backward(
    accelerator: Accelerator,
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    instance_mask: torch.Tensor,
    slots: Sequence[tuple[str, SubnetConfig]],
    loss_type: str = "focal_dice",
    distill_weight: float = 0.0,
    sync: bool = True,
) -> dict[str, dict[str, torch.Tensor]]:
    """Forward + backward of every slot's subnet on one micro-batch; gradients accumulate in the shared weights.

    `model` is what `accelerator.prepare` returned (maybe DDP-wrapped); subnets are switched on the unwrapped
    supernet, whose modules the wrapper calls. Each slot's graph is freed by its own backward, so peak memory is
    that of the largest subnet alone. With DDP every backward except the last one (when `sync`) runs under
    `accelerator.no_sync`: gradients are all-reduced once per optimizer step. DDP's reducer (with
    `find_unused_parameters=True`) still averages a parameter that only an earlier, unsynchronised slot used: it
    marks parameters used anywhere within the no_sync window, so every process ends with identical gradients.

    With `distill_weight > 0` the first slot (the largest) is the teacher: every later slot adds
    `distill_weight · mask_distillation_loss` towards the teacher's detached logits of the mask that SAM's loss
    selected for the teacher. Returns per slot the detached "loss" (total) and, with distillation, "distill".
    """
    supernet = unwrap_supernet(accelerator.unwrap_model(model))
    if distill_weight > 0 and slots[0][0] != "largest":
        raise ValueError("In-place distillation needs the largest subnet in the first slot (the teacher).")
    results: dict[str, dict[str, torch.Tensor]] = {}
    teacher = None
    try:
        for index, (name, cfg) in enumerate(slots):
            last = sync and index == len(slots) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                supernet.set_subnet(cfg)
                outputs = model(**inputs, multimask_output=True)
                terms = sam_loss(
                    outputs.pred_masks, outputs.iou_scores, labels, instance_mask,
                    loss_type=loss_type, return_mask_index=distill_weight > 0 and teacher is None,
                )
                loss = terms["loss"]
                record = {}
                if distill_weight > 0:
                    if teacher is None:
                        teacher = (outputs.pred_masks.detach(), terms["mask_index"])
                    else:
                        distill = mask_distillation_loss(outputs.pred_masks, teacher[0], instance_mask, teacher[1])
                        loss = loss + distill_weight * distill
                        record["distill"] = distill.detach()
                accelerator.backward(loss)
                record["loss"] = loss.detach()
                results[name] = record
                del outputs, terms, loss
    finally:
        supernet.reset_subnet()
    return results


# ----------------------------------------------------------------------------------------------------------------
# Setup helpers
# ----------------------------------------------------------------------------------------------------------------


def _checkpoint_step(path: Path) -> int:
    return int(json.loads((path / STATE_FILE).read_text())["global_step"])


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint (one with training_state.json, written last) under output_dir/checkpoints."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if re.fullmatch(r"step_\d+", p.name) and (p / STATE_FILE).is_file()]
    return max(found, key=_checkpoint_step) if found else None


def resolve_checkpoint(args: SupernetTrainingArguments) -> Path | None:
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


def _previous_run_files(output_dir: Path) -> list[str]:
    markers = (CHECKPOINTS_DIR, METRICS_FILE, SUMMARY_FILE, "config.json", "model.safetensors")
    return [m for m in markers if (output_dir / m).exists()] if output_dir.is_dir() else []


def _load_processor(name_or_path: str) -> SamProcessor:
    try:
        return SamProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Could not load a SamProcessor from {name_or_path!r} ({error}). Save the model's processor next to it "
            "(processor.save_pretrained(folder)); train_supernet reads images and prompts through it."
        ) from error


def build_datasets(args: SupernetTrainingArguments, processor: SamProcessor):
    """The training `SamSegmentationData` and the raw validation split (or None). Bad columns, mask kinds and
    datasets without a usable instance raise here, before any training starts."""
    raw = load_segmentation_dataset(args.dataset_name, split=args.train_split)
    validation = None
    if args.validation_split:
        validation = load_segmentation_dataset(args.dataset_name, split=args.validation_split)
    elif args.validation_fraction > 0:
        parts = raw.train_test_split(test_size=args.validation_fraction, seed=args.seed, shuffle=True)
        raw, validation = parts["train"], parts["test"]
    train_data = SamSegmentationData(
        raw, processor, image_column=args.image_column, mask_column=args.mask_column, mask_kind=args.mask_kind,
        max_instances_per_image=args.max_instances_per_image, prompt=args.prompt_type, seed=args.seed,
    )
    eval_data = None
    if validation is not None:
        eval_data = SamSegmentationData(
            validation, processor, image_column=args.image_column, mask_column=args.mask_column,
            mask_kind=train_data.mask_kind, max_instances_per_image=args.max_instances_per_image,
            prompt="box" if args.prompt_type == "box" else "point", seed=args.seed,
        )
    return train_data, eval_data


def configure_trainable(model: SuperSamModel, args: SupernetTrainingArguments) -> torch.nn.Module:
    """Freeze what does not train; with LoRA wrap the model in PEFT (adapters on the trainable parts' attention).

    Returns the module to train: `model` itself, or a `peft.PeftModel` around it (which freezes every base weight;
    a listed prompt encoder, which has no attention projection, is then trained fully).
    """
    parts = args.trainable_parts()
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(prefix) for part in parts for prefix in PART_PREFIXES[part]))
    if not args.lora_r:
        return model
    from peft import LoraConfig, get_peft_model

    targets = "|".join(f"(?:{LORA_TARGETS[p]})" for p in parts if p in LORA_TARGETS)
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=f"(?:{targets})", bias="none")
    peft_model = get_peft_model(model, config)
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
        raise ValueError(f"Nothing to train: trainable={args.trainable!r} selects no parameter.")
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=args.learning_rate)


def _tracker_config(args: SupernetTrainingArguments) -> dict:
    return {k: ("None" if v is None else v) for k, v in dataclasses.asdict(args).items()}


class _MetricsLog:
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


def _evaluate(supernet: SuperSamModel, eval_data, processor, args: SupernetTrainingArguments, step: int, cache: dict) -> dict:
    """mIoU of the largest and the smallest subnet on the validation split (run on the main process).

    The validation batches are collated once (`EvaluationData`) and reused by every evaluation of the run."""
    from .evaluation import EvaluationData, evaluate_model

    if "data" not in cache:
        cache["data"] = EvaluationData.prepare(
            eval_data, processor, prompt=eval_data.prompt, batch_size=args.per_device_eval_batch_size,
            max_images=args.eval_max_images, seed=args.seed,
        )
    space = supernet.search_space
    record: dict[str, Any] = {"type": "eval", "step": step, "miou": {}, "subnets": {}}
    for name, cfg in (("largest", space.largest()), ("smallest", space.smallest())):
        result = evaluate_model(supernet, cache["data"], processor, subnet=cfg, prompt=eval_data.prompt, show_progress=False)
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


def train_supernet(args: SupernetTrainingArguments) -> SuperSamModel:
    """Train a supernet with the sandwich rule; save it (search space included, LoRA merged) and its processor.

    Writes into `args.output_dir`: the trained supernet (`SuperSamModel.from_pretrained` loads it), the processor,
    `checkpoints/step_N` (accelerate `save_state` + training_state.json) every `save_steps` and at the end,
    `metrics.jsonl` and `training_summary.json`. Returns the trained, unwrapped supernet (eval mode).
    Bad input (arguments, columns, data, checkpoints, an output_dir holding another run) raises before anything is
    written; a NaN/inf loss raises `NonFiniteLossError` naming the step and subnet, leaving earlier checkpoints.
    """
    args.validate()
    output_dir = Path(args.output_dir)
    resume_dir = resolve_checkpoint(args)
    previous = _previous_run_files(output_dir)
    if previous and resume_dir is None and not args.overwrite_output_dir:
        raise FileExistsError(
            f"output_dir {str(output_dir)!r} holds a previous run ({', '.join(previous)}). Pass "
            "resume_from_checkpoint='latest' to continue it, overwrite_output_dir=True to replace it, or another output_dir."
        )

    # DDP: subnets drop encoder layers, so a slot's graph misses parameters that others use; without
    # find_unused_parameters DDP would wait forever for their gradients (or raise).
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(args.seed)

    # Everything that can fail on bad input happens here, before a single file is written.
    processor = _load_processor(args.model_name_or_path)
    train_data, eval_data = build_datasets(args, processor)
    supernet = SuperSamModel.from_pretrained(args.model_name_or_path)
    supernet.train()
    model = configure_trainable(supernet, args)
    optimizer = _optimizer(model, args)
    trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    if args.overwrite_output_dir and resume_dir is None and previous and accelerator.is_main_process:
        shutil.rmtree(output_dir / CHECKPOINTS_DIR, ignore_errors=True)
        for path in [output_dir / METRICS_FILE, output_dir / SUMMARY_FILE, *output_dir.glob("metrics_rank*.jsonl")]:
            path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    output_dir.mkdir(parents=True, exist_ok=True)

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
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)

    metrics = _MetricsLog(accelerator, output_dir)
    start_step = 0
    if resume_dir is not None:
        state = json.loads((resume_dir / STATE_FILE).read_text())
        for key in ("seed", "per_device_train_batch_size", "gradient_accumulation_steps", "num_random_subnets", "prompt_type"):
            if state.get("args", {}).get(key, getattr(args, key)) != getattr(args, key):
                logger.warning(f"Resuming with {key}={getattr(args, key)!r} but the checkpoint used "
                               f"{state['args'][key]!r}: the run will not reproduce the original one.", main_process_only=True)
        accelerator.load_state(str(resume_dir))
        start_step = int(state["global_step"])
        metrics.truncate_after(start_step)
        logger.info(f"Resumed from {resume_dir} at step {start_step}.", main_process_only=True)
    if args.report_to != "none":
        accelerator.init_trackers("supersam_train", config=_tracker_config(args))

    space = unwrap_supernet(accelerator.unwrap_model(model)).search_space
    ga = args.gradient_accumulation_steps
    trainable = [p for p in model.parameters() if p.requires_grad]

    def micro_batches(start: int):
        """Micro-batches from micro-batch index `start` on: epoch e is the seeded permutation e (data order and
        prompts), so any position can be re-entered exactly; `skip_first_batches` skips without loading."""
        per_epoch = len(dataloader)
        epoch, skip = divmod(start, per_epoch)
        while True:
            dataloader.set_epoch(epoch)
            train_data.set_epoch(epoch)
            loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
            for batch in loader:
                yield epoch, batch
            epoch, skip = epoch + 1, 0

    subnets_per_step = 1 if args.largest_only else 2 + args.num_random_subnets
    logger.info(
        f"Sandwich training: {args.max_steps} steps x ({subnets_per_step} subnets x {ga} micro-batches of "
        f"{args.per_device_train_batch_size} images x {accelerator.num_processes} processes); {len(train_data)} train "
        f"images; {trainable_params:,} trainable parameters{' (LoRA)' if args.lora_r else ''}.",
        main_process_only=True,
    )
    stream = micro_batches(start_step * ga)
    progress = tqdm(range(start_step, args.max_steps), initial=start_step, total=args.max_steps, desc="fine-tune" if args.largest_only else "sandwich",
                    disable=not accelerator.is_local_main_process)
    last_checkpoint = resume_dir
    last_losses: dict[str, float] = {}
    last_eval: dict | None = None
    eval_cache: dict = {}
    started = time.perf_counter()
    epoch = 0

    # Gradient accumulation by hand rather than `accelerator.accumulate`: one optimizer step is ga micro-batches x
    # the sandwich's slots backward passes; `accelerator.backward` divides each loss by ga, and every backward but
    # the step's very last runs under `no_sync` (accumulate() decides syncing per call and at dataloader ends).
    for step in range(start_step, args.max_steps):
        slots = sandwich_subnets(space, args.seed, step, args.num_random_subnets)
        if args.largest_only:
            slots = slots[:1]  # plain fine-tuning of the full model
        totals = {name: torch.zeros((), device=accelerator.device) for name, _ in slots}
        distills = {name: torch.zeros((), device=accelerator.device) for name, _ in slots[1:]}
        for micro in range(ga):
            epoch, batch = next(stream)
            inputs = batch_model_inputs(batch, prompt_kind(args.prompt_type, args.seed, step, micro))
            results = sandwich_backward(
                accelerator, model, inputs, batch["labels"], batch["instance_mask"], slots,
                loss_type=args.loss_type, distill_weight=args.distill_weight, sync=micro == ga - 1,
            )
            for name, record in results.items():
                totals[name] += record["loss"] / ga
                if "distill" in record:
                    distills[name] += record["distill"] / ga

        # One small all-reduce per step: the mean losses, so every process sees a NaN and stops together.
        local = torch.stack(list(totals.values()))
        mean = accelerator.reduce(local.clone(), reduction="mean")
        values = dict(zip(totals, mean.tolist()))
        for (name, cfg), value in zip(slots, values.values()):
            if not math.isfinite(value):
                progress.close()
                _finish_trackers(accelerator)
                raise NonFiniteLossError(
                    f"Non-finite loss ({value}) at step {step + 1} in subnet '{name}' ({cfg.name}, kept layers "
                    f"{list(cfg.kept_layers)}). Training stopped before the optimizer step; the last good checkpoint "
                    f"is {str(last_checkpoint) if last_checkpoint else 'none (no checkpoint saved yet)'}. Lower "
                    "learning_rate, keep max_grad_norm > 0, or check the data and the model's weights."
                )
        grad_norm = None
        if args.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(trainable, args.max_grad_norm))
            if not math.isfinite(grad_norm) and args.mixed_precision != "fp16":  # fp16: the scaler skips the step
                progress.close()
                _finish_trackers(accelerator)
                raise NonFiniteLossError(
                    f"Non-finite gradient norm at step {step + 1} (sandwich of {[c.name for _, c in slots]}); the last "
                    f"good checkpoint is {last_checkpoint or 'none'}. Lower learning_rate."
                )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        global_step = step + 1
        last_losses = values
        progress.update(1)
        progress.set_postfix({_short(name): f"{value:.3f}" for name, value in values.items()})

        if args.logging_steps and (global_step % args.logging_steps == 0 or global_step == args.max_steps):
            lr = scheduler.get_last_lr()[0]
            record = {"type": "train", "step": global_step, "epoch": epoch, "lr": lr, "loss": values,
                      "subnets": {name: cfg.name for name, cfg in slots}}
            if args.distill_weight > 0:
                record["distill"] = dict(zip(distills, accelerator.reduce(torch.stack(list(distills.values())), "mean").tolist()))
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            rank_record = {"step": global_step, "rank": accelerator.process_index,
                           "loss": dict(zip(totals, local.tolist())),
                           "subnets": {name: cfg.to_dict() for name, cfg in slots}}
            metrics.write(record, rank_record)
            accelerator.log({**{f"train/loss_{k}": v for k, v in values.items()}, "train/lr": lr}, step=global_step)

        if eval_data is not None and args.eval_steps and global_step % args.eval_steps == 0 and global_step < args.max_steps:
            last_eval = _evaluate_and_log(accelerator, model, eval_data, processor, args, global_step, metrics, eval_cache)

        if args.save_steps and global_step % args.save_steps == 0 and global_step < args.max_steps:
            last_checkpoint = _save_checkpoint(accelerator, args, output_dir, global_step)

    progress.close()
    runtime = time.perf_counter() - started
    final_step = max(start_step, args.max_steps)
    if eval_data is not None and final_step > start_step:
        last_eval = _evaluate_and_log(accelerator, model, eval_data, processor, args, final_step, metrics, eval_cache)
    if final_step > start_step or last_checkpoint is None:
        last_checkpoint = _save_checkpoint(accelerator, args, output_dir, final_step)

    # The final artefact is a plain supernet: LoRA merged into the base weights, full model active.
    trained = accelerator.unwrap_model(model)
    if hasattr(trained, "merge_and_unload"):
        trained = trained.merge_and_unload()
    supernet = unwrap_supernet(trained)
    supernet.reset_subnet()
    supernet.eval()
    accelerator.wait_for_everyone()
    supernet.save_pretrained(output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    summary = {
        "global_step": final_step,
        "start_step": start_step,
        "train_runtime_s": round(runtime, 3),
        "steps_per_second": round((final_step - start_step) / runtime, 4) if runtime > 0 else None,
        "num_processes": accelerator.num_processes,
        "subnets_per_step": subnets_per_step,
        "trainable_parameters": trainable_params,
        "lora": bool(args.lora_r),
        "final_loss": last_losses,
        "final_eval": last_eval,
        "last_checkpoint": str(last_checkpoint),
    }
    if accelerator.is_main_process:
        processor.save_pretrained(output_dir)
        (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    logger.info(f"Training done: {json.dumps(summary)}", main_process_only=True)
    accelerator.wait_for_everyone()
    _finish_trackers(accelerator)
    return supernet


def _finish_trackers(accelerator: Accelerator) -> None:
    """Close the trackers (what `end_training` does) but keep the process group: the caller may go on using it."""
    for tracker in accelerator.trackers:
        tracker.finish()


def _short(name: str) -> str:
    return {"largest": "L", "smallest": "S"}.get(name, name.replace("random_", "R"))


def _evaluate_and_log(accelerator, model, eval_data, processor, args, step, metrics, cache) -> dict | None:
    record = None
    if accelerator.is_main_process:
        record = _evaluate(unwrap_supernet(accelerator.unwrap_model(model)), eval_data, processor, args, step, cache)
        metrics.write(record)
        accelerator.log({f"eval/miou_{k}": v for k, v in record["miou"].items()}, step=step)
    accelerator.wait_for_everyone()
    return record


def _save_checkpoint(accelerator: Accelerator, args: SupernetTrainingArguments, output_dir: Path, step: int) -> Path:
    """accelerate `save_state` (model, optimizer, scheduler, RNG) + training_state.json, which is written last:
    a folder without it is an interrupted save and is never resumed from."""
    path = output_dir / CHECKPOINTS_DIR / f"step_{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        state = {"global_step": step, "micro_batches_done": step * args.gradient_accumulation_steps,
                 "num_processes": accelerator.num_processes, "args": dataclasses.asdict(args)}
        (path / STATE_FILE).write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    return path


__all__ = [
    "SupernetTrainingArguments",
    "train_supernet",
    "sandwich_backward",
    "sandwich_subnets",
    "NonFiniteLossError",
    "SeededEpochSampler",
    "SandwichCollator",
    "configure_trainable",
    "build_datasets",
    "resolve_checkpoint",
    "find_latest_checkpoint",
    "stable_seed",
    "LORA_TARGETS",
]
