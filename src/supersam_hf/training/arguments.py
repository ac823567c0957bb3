"""`SupernetTrainingArguments`: the shared model / data / output vocabulary plus the sandwich rule's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import SupersamError
from ..arguments import DataArguments, ModelArguments, OutputArguments, prompt_type_field
from ..data import MASK_KINDS, PROMPT_TYPES
from ..losses import LOSS_TYPES
from ..types import LossType, LrSchedulerType, MixedPrecision, PromptType

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
SCHEDULERS = LrSchedulerType.values()
MIXED_PRECISION = MixedPrecision.values()
# `--report_to`: "none", "all" (every tracker installed) or any of accelerate's trackers (`Accelerator(log_with=)`).
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab")
REPORT_TO = ("none", "all", *TRACKERS)


@dataclass(kw_only=True)
class SupernetTrainingArguments(OutputArguments, DataArguments, ModelArguments):
    """Arguments of `train_supernet` (flags of `supersam train` and `examples/train_supernet.py`, or a JSON/YAML file).

    The model, data and output fields are the shared vocabulary (`supersam_hf.arguments`); give fields by name.
    """

    eval_split_name: Optional[str] = field(
        default=None,
        metadata={"help": "Split to evaluate on during training (default: the dataset's 'validation' split, else its "
                  "'test' split, when eval_steps > 0; see eval_steps)."},
    )
    validation_fraction: float = field(
        default=0.0,
        metadata={"help": "Hold out this fraction of the train split (seeded, deterministic) for evaluation (instead of "
                  "eval_split_name)."},
    )
    max_instances_per_image: int = field(
        default=16,
        metadata={"help": "Training keeps at most this many instances (prompts) per image, the largest, to bound memory; "
                  "the log and training_summary.json say how many were left out. Validation scores every instance."},
    )
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps to train (each one a full sandwich)."})
    # Sized for SAM ViT-B at 1024 px: one image per micro-batch fits one GPU and a laptop CPU (~11 GB RSS on CPU,
    # vs ~18 GB at 2); accumulation keeps the effective batch of 2 images per optimizer step.
    per_device_train_batch_size: int = field(
        default=1, metadata={"help": "Images per device per micro-batch (1 fits SAM ViT-B at 1024 px on one device)."}
    )
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "Images per batch during evaluation."})
    gradient_accumulation_steps: int = field(
        default=2,
        metadata={"help": "Micro-batches per optimizer step (effective batch = this x per_device_train_batch_size x "
                  "processes; default 2 x 1)."},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute each encoder layer's activations in the backward pass instead of storing them: "
                  "less memory, ~1/3 more compute (works for every subnet)."},
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not applied to biases and norms)."})
    lr_scheduler_type: LrSchedulerType = field(
        default=LrSchedulerType.COSINE.value, metadata={"help": "Learning-rate schedule (transformers.get_scheduler)."}
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
    loss_type: LossType = field(
        default=LossType.FOCAL_DICE.value, metadata={"help": "Mask loss (SAM's focal+dice by default) plus the IoU-head MSE."}
    )
    iou_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight of the IoU-head MSE (the predicted IoU that picks among the three masks) in the loss."}
    )
    prompt_type: PromptType = prompt_type_field("point, box, or mixed (point or box per micro-batch, seeded)")
    point_fraction: float = field(
        default=0.5,
        metadata={"help": "With prompt_type=mixed: the share of micro-batches prompted by one point (the rest by a box)."},
    )
    max_eval_images: Optional[int] = field(default=64, metadata={"help": "Validation images per evaluation (None: all)."})
    trainable: str = field(
        default="encoder,decoder",
        metadata={"help": f"Comma-separated parts that train, among {TRAINABLE_PARTS}; the rest is frozen."},
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (0: full fine-tuning of the trainable parts)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path."})
    lora_config: Optional[str] = field(
        default=None,
        metadata={"help": "A JSON file of peft.LoraConfig fields (target_modules, rank_pattern, use_dora, ...), "
                  "instead of --lora_r/--lora_alpha/--lora_dropout; without target_modules, the attention of the "
                  "trainable parts is adapted. The encoder MLPs (sliced for elastic width) cannot be targeted."},
    )
    logging_steps: int = field(default=10, metadata={"help": "Append losses to metrics.jsonl every N steps (0: off)."})
    save_steps: int = field(default=500, metadata={"help": "Save a resumable checkpoint every N steps (0: only at the end)."})
    save_total_limit: Optional[int] = field(
        default=2,
        metadata={"help": "Keep only the N newest checkpoints under output_dir/checkpoints (a SAM ViT-B one is ~1.1 GB); "
                  "older ones this tool wrote are deleted, other folders never. None: keep all."},
    )
    eval_steps: int = field(
        default=500,
        metadata={"help": "mIoU of the largest and smallest subnet every N steps and at the end, on eval_split_name, else "
                  "on validation_fraction of the train split, else on the dataset's 'validation' (or 'test') split; "
                  "without any of them nothing is evaluated. 0: only at the end, and only on eval_split_name or "
                  "validation_fraction."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of everything random: data order, prompts, subnets, init."})
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "'latest' (newest under output_dir/checkpoints) or a checkpoint folder."}
    )
    mixed_precision: MixedPrecision = field(default=MixedPrecision.NO.value, metadata={"help": "accelerate mixed precision."})
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={"help": f"Experiment trackers, through accelerate: 'none', 'all' (every one installed) or one or more "
                  f"of {', '.join(TRACKERS)} (space- or comma-separated). Local files go under output_dir (TensorBoard: "
                  "output_dir/runs). `pip install supersam_hf[trackers]` installs tensorboard, wandb and trackio."},
    )
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "At the end, upload the trained supernet (weights, processor, a model card saying it is a "
                  "supernet and how to export from it) to --hub_model_id."},
    )
    hub_model_id: Optional[str] = field(
        default=None, metadata={"help": "Hub repo of --push_to_hub (default: the output_dir folder name, your namespace)."}
    )
    hub_private_repo: bool = field(
        default=False, metadata={"help": "Create the --push_to_hub repo as private (default: public)."}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})

    def trackers(self) -> list[str]:
        """`report_to` as a list of tracker names ([] for "none"; ["all"] for every installed one); a string, a
        list and comma-separated names are all accepted."""
        values = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to or [])
        names = [name.strip() for value in values for name in str(value).split(",") if name.strip()]
        return [] if names in ([], ["none"]) else list(dict.fromkeys(names))

    def uses_lora(self) -> bool:
        return bool(self.lora_r or self.lora_config)

    def lora_config_fields(self) -> dict:
        """The fields of `lora_config` (a JSON object), checked to be `peft.LoraConfig` fields; {} without it."""
        if not self.lora_config:
            return {}
        import dataclasses as dc
        import json
        from pathlib import Path

        from peft import LoraConfig

        from ..errors import SupersamError

        path = Path(self.lora_config).expanduser()
        if not path.is_file():
            raise SupersamError(f"--lora_config {self.lora_config}: no such file; give a JSON file of LoraConfig fields.")
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise SupersamError(f"--lora_config {self.lora_config} is not valid JSON ({error}).") from None
        if not isinstance(fields, dict):
            raise SupersamError(f"--lora_config {self.lora_config}: expected a JSON object of LoraConfig fields.")
        known = {f.name for f in dc.fields(LoraConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise SupersamError(f"--lora_config {self.lora_config}: {', '.join(unknown)}: not a peft.LoraConfig field "
                                "(see https://huggingface.co/docs/peft/package_reference/lora).")
        return fields

    def trainable_parts(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.trainable.split(",") if p.strip())

    def validate(self) -> None:
        """Raise `ValueError` naming the first bad argument (called by `train_supernet` before anything runs)."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise SupersamError(message)

        need(self.max_steps >= 1, f"--max_steps must be >= 1, got {self.max_steps}.")
        need(self.per_device_train_batch_size >= 1, "--per_device_train_batch_size must be >= 1.")
        need(self.per_device_eval_batch_size >= 1, "--per_device_eval_batch_size must be >= 1.")
        need(self.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be >= 1.")
        need(self.learning_rate > 0, f"--learning_rate must be > 0, got {self.learning_rate}.")
        need(self.weight_decay >= 0 and self.warmup_steps >= 0 and self.max_grad_norm >= 0,
             "--weight_decay, --warmup_steps and --max_grad_norm must be >= 0.")
        need(self.num_random_subnets >= 0,
             f"--num_random_subnets must be >= 0 (sampled subnets besides the largest and smallest), got {self.num_random_subnets}.")
        need(self.distill_weight >= 0, f"--distill_weight must be >= 0, got {self.distill_weight}.")
        need(self.iou_loss_weight >= 0, f"--iou_loss_weight must be >= 0, got {self.iou_loss_weight}.")
        need(self.loss_type in LOSS_TYPES, f"Unknown --loss_type {self.loss_type!r}; valid types are {LOSS_TYPES}.")
        need(self.prompt_type in PROMPT_TYPES, f"Unknown --prompt_type {self.prompt_type!r}; valid types are {PROMPT_TYPES}.")
        need(0.0 <= self.point_fraction <= 1.0,
             f"--point_fraction must be between 0 and 1 (the share of point-prompted micro-batches), got {self.point_fraction}.")
        need(self.mask_kind is None or self.mask_kind in MASK_KINDS,
             f"Unknown --mask_kind {self.mask_kind!r}; valid kinds are {MASK_KINDS} (or None to auto-detect).")
        need(self.lr_scheduler_type in SCHEDULERS, f"Unknown --lr_scheduler_type {self.lr_scheduler_type!r}; choose one of {SCHEDULERS}.")
        need(self.mixed_precision in MIXED_PRECISION, f"Unknown --mixed_precision {self.mixed_precision!r}; choose one of {MIXED_PRECISION}.")
        _check_trackers(self.trackers())
        parts = self.trainable_parts()
        unknown = [p for p in parts if p not in TRAINABLE_PARTS]
        need(bool(parts) and not unknown, f"--trainable {self.trainable!r}: give a comma-separated subset of {TRAINABLE_PARTS}.")
        if self.lora_r:
            need(self.lora_r > 0 and self.lora_alpha > 0, "--lora_r and --lora_alpha must be > 0 (lora_r=0 turns LoRA off).")
            need(0 <= self.lora_dropout < 1, f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if self.lora_r and self.lora_config:
            raise SupersamError("Give --lora_config (a LoraConfig JSON, rank included) or --lora_r/--lora_alpha/"
                                "--lora_dropout, not both.")
        lora_fields = self.lora_config_fields()
        if self.uses_lora() and not lora_fields.get("target_modules"):
            need(any(p in LORA_TARGETS for p in parts), "LoRA adapts attention of the encoder/decoder: put one of them in --trainable.")
        need(0 <= self.validation_fraction < 1, f"--validation_fraction must be in [0, 1), got {self.validation_fraction}.")
        need(not (self.eval_split_name and self.validation_fraction),
             "Give --eval_split_name or --validation_fraction, not both.")
        need(self.max_train_images is None or self.max_train_images >= 1, "--max_train_images must be >= 1 (or None for all).")
        need(self.max_instances_per_image >= 1, "--max_instances_per_image must be >= 1.")
        need(self.shuffle_buffer_size >= 1, f"--shuffle_buffer_size must be >= 1, got {self.shuffle_buffer_size}.")
        need(self.min_mask_area >= 0, f"--min_mask_area must be >= 0, got {self.min_mask_area}.")
        need(self.max_eval_images is None or self.max_eval_images >= 1, "--max_eval_images must be >= 1 (or None for all).")
        need(self.save_total_limit is None or self.save_total_limit >= 1,
             f"--save_total_limit must be >= 1 (or None to keep every checkpoint), got {self.save_total_limit}.")
        need(min(self.logging_steps, self.save_steps, self.eval_steps, self.dataloader_num_workers) >= 0,
             "--logging_steps, --save_steps, --eval_steps and --dataloader_num_workers must be >= 0.")


def _check_trackers(names: list[str]) -> None:
    """Every named tracker is one accelerate knows and is installed ("all" and "none" stand alone): accelerate
    itself would silently skip a tracker whose package is missing."""
    from accelerate.utils import LoggerType
    from accelerate.tracking import get_available_trackers

    from ..errors import SupersamError, UnsupportedSetupError

    unknown = [name for name in names if name not in REPORT_TO]
    if unknown:
        raise SupersamError(f"--report_to {' '.join(unknown)}: unknown tracker; choose 'none', 'all' or any of "
                            f"{', '.join(TRACKERS)}.")
    if len(names) > 1 and ("none" in names or "all" in names):
        raise SupersamError(f"--report_to {' '.join(names)}: 'none' and 'all' stand alone; give one of them or a "
                            "list of trackers.")
    available = {str(LoggerType(tracker)) for tracker in get_available_trackers()}
    missing = [name for name in names if name not in ("all", "none") and name not in available]
    if missing:
        raise UnsupportedSetupError(
            f"--report_to {' '.join(missing)}: not installed; pip install 'supersam_hf[trackers]' (tensorboard, wandb, "
            f"trackio) or pip install {' '.join(missing)}."
        )


__all__ = ["LORA_TARGETS", "PART_PREFIXES", "REPORT_TO", "SupernetTrainingArguments", "TRACKERS", "TRAINABLE_PARTS"]
