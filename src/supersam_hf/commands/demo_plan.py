"""What `supersam demo` will run, sized to the machine, and roughly how long it takes (said before it starts); the
recipes of its training stages (`stage_training_arguments`).

The stand-in run (no `--model_name_or_path`) uses fixed presets. With a real checkpoint (e.g. SAM ViT-B, 1024 px)
the presets would take days on a CPU, so the demo times one forward of the base on one image here and sizes the
training steps, calibration images, search budget and evaluation images to a time budget
(`--time_budget_minutes`); sizes given explicitly are kept. The estimate is rough: it counts forward-equivalents
per stage (backward ≈ 2 forwards, a sandwich step ≈ 2.6 full-model passes, calibration ≈ 6.5 encoder passes per
image) and multiplies them by the measured forward time.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import SamConfig, SamModel

from ..configuration_supersam import build_sam_config
from ..data import SamCollator, SamSegmentationData, make_hard_shapes, model_inputs
from ..loading import load_sam_model
from ..losses import sam_loss
from ..standin import STANDIN_DIR, load_standin
from ..training import SupernetTrainingArguments
from ..training.mask_outputs import capture_single_output, single_output
from ..types import PromptType
from .demo_arguments import SIZE_FIELDS, DemoArguments, base_source

# The stand-in base (benchmarks/results/base_recipe.md): patch 8, window 8, 4 layers. A step costs 1.38x the earlier
# patch-16 / 8-layer base's, so 2000 base steps (not the recipe's 2400) keep the default demo near ~12 min on 2 idle
# cores (an estimate; the earlier default took 7 min). Quick: 100 steps on B, since the shipped stand-in's 128-channel
# decoder makes a step ~1.6x the first stand-in's: 150 steps took 199-205 s on one thread, over the 3-minute goal
# beside a busy core; 100 take 154 s there and 113 s on 2 idle cores (benchmarks/results/standin_base.md).
PRESETS = {
    "default": dict(image_size=128, patch_size=8, window_size=8, hidden_size=128, num_layers=4, num_train_images=1500,
                    num_eval_images=32, num_calibration_images=32, base_steps=2000, train_steps=400, search_budget=24,
                    batch_size=4, gradient_accumulation_steps=1),
    "quick": dict(image_size=128, patch_size=8, window_size=8, hidden_size=128, num_layers=4, num_train_images=400,
                  num_eval_images=16, num_calibration_images=16, base_steps=900, train_steps=100, search_budget=10,
                  batch_size=4, gradient_accumulation_steps=1),
}
# With a given checkpoint: the training defaults sized for SAM ViT-B (batch 1, accumulation to 2 images).
MODEL_BATCH = dict(batch_size=1, gradient_accumulation_steps=2)
DEFAULT_TIME_BUDGET_MINUTES = {"default": 30.0, "quick": 10.0}
MIN_SEARCH_BUDGET = 4

# Forward-equivalents (of the full model on one image) per unit of work.
TRAIN_PASSES = 3.0  # forward + backward of the full model
SANDWICH_PASSES = 2.6  # largest (1) + smallest (~0.3) + two random subnets (~0.65 each), in full-model units
# A sandwich step over a measured full training step (`time_train_step`): data, optimizer and per-step overheads are
# paid once, not per subnet. Measured with the stand-in on a shared machine: quick demo (150 steps each) 321 s /
# 204 s = 1.57 and 170 s / 80 s = 2.13; default demo (400 steps) 361 s / 135 s = 2.68 (the load changed within
# runs). 1.9 puts the whole-run estimates of three measured runs within 25 % of their wall time (+22 %, -12 %,
# -19 %; benchmarks/results/standin_base.md), where 2.1 would put the fastest one at +28 %.
SANDWICH_STEP_RATIO = 1.9
# With a small base (measured steps): Python and library imports, model loads, dataset saving, export writes.
STARTUP_SECONDS = 20.0
CHECKPOINTING_OVERHEAD = 4.0 / 3.0  # one more forward per backward
CALIBRATION_PASSES = 6.5  # convert: 78 encoder-layer calls per image at 12 layers
SUBNET_FORWARD = 0.6  # an average searched subnet's share of the full model's forward


# The stand-in base's recipe (benchmarks/results/base_recipe.md): patch 8 (a 16x16 token grid and 64x64 masks at
# 128 px), 4 layers, mixed point/box prompts (3 points in 4), lr 1e-3 with cosine decay.
BASE_LEARNING_RATE = 1e-3
BASE_PROMPT_TYPE = PromptType.MIXED.value  # a base trained on boxes alone never learns to follow a single point
# Three point-prompted micro-batches in four: at 2000 steps, point mIoU on A 0.633 (vs 0.570 at 2400 steps with half
# points) with box mIoU unchanged (0.688 vs 0.679): one point is the harder prompt to learn.
BASE_POINT_FRACTION = 0.75
# Domain B's learning rate (benchmarks/results/target_recipe.md: the stand-in base fine-tuned 400 steps on B scores
# 0.513 / 0.544 / 0.557 box mIoU at 2e-4 / 5e-4 / 1e-3); a pretrained checkpoint keeps the gentler 2e-4.
TARGET_LEARNING_RATE = {"stand-in": 1e-3, "checkpoint": 2e-4}


@dataclass
class DemoPlan:
    """The sizes one demo run uses (stored in demo_state.json, so --resume continues with the same ones)."""

    sizes: dict[str, Any]
    forward_seconds: float
    estimate_seconds: dict[str, float] = field(default_factory=dict)
    threads: int | None = None  # torch's intra-op threads the forward was timed with (the run's)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DemoPlan":
        return cls(dict(data["sizes"]), float(data["forward_seconds"]), dict(data.get("estimate_seconds", {})),
                   data.get("threads"))

    @property
    def total_minutes(self) -> float:
        return sum(self.estimate_seconds.values()) / 60.0


@dataclass
class ThreadChoice:
    count: int
    reason: str


# A small model (the stand-in: 128 px, 4 layers) gains little from a second intra-op thread, and on a busy CPU
# torch's threads spin against other processes (measured: 17x slower training with one other busy process): so at
# most this many threads for it, and never more than the cores free now.
SMALL_MODEL_MAX_THREADS = 2


def pick_num_threads(small_model: bool, cores: int | None = None, load: float | None = None) -> ThreadChoice:
    """torch's intra-op thread count for this run: the cores this process may use (`os.sched_getaffinity`) minus
    those busy now (the 1-minute load average, `os.getloadavg`), at least 1; for a small model at most
    `SMALL_MODEL_MAX_THREADS`. An explicit `OMP_NUM_THREADS` is kept. Returns the count and one line saying why."""
    explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return ThreadChoice(int(explicit), f"{explicit} torch thread{'s' if explicit != '1' else ''} (OMP_NUM_THREADS)")
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    free = max(1, int(cores - load + 0.5))
    count = min(free, SMALL_MODEL_MAX_THREADS) if small_model else free
    return ThreadChoice(count, f"{count} torch thread{'s' if count > 1 else ''} ({cores} cores, load {load:.1f}: "
                               f"{free} free{'; a small model' if small_model else ''})")


@torch.no_grad()
def time_forward(model, processor, image, batch_size: int = 1) -> float:
    """Seconds of one forward of `model` on a micro-batch of `batch_size` copies of `image`, one box prompt each
    (a big model: one timed forward; a small one: the median of 3 after a warm-up, since overhead dominates it)."""
    width, height = image.size
    box = [width * 0.25, height * 0.25, width * 0.75, height * 0.75]
    inputs = processor(images=[image] * batch_size, input_boxes=[[box]] * batch_size, return_tensors="pt")
    param = next(model.parameters())
    inputs = {k: v.to(param.device, param.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()
              if k in ("pixel_values", "input_boxes")}
    model.eval()
    times = []
    for _ in range(4):
        started = time.perf_counter()
        model(**inputs, multimask_output=True)
        times.append(time.perf_counter() - started)
        if times[0] > 1.0:  # a big model: one timed forward is enough (and the first one is not much slower)
            return times[0]
    return sorted(times[1:])[1]


def time_train_step(model, processor, dataset, batch_size: int) -> float:
    """Seconds of one real training step of a copy of `model` (collating a micro-batch of `dataset` rows with box
    prompts, forward, SAM's loss with both calling conventions, backward, AdamW): the mean of 2 after a warm-up.
    For a small model (the stand-in) the per-step overheads around the forward dominate, which a forward alone
    misses; `model` itself is not changed."""
    student = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)
    data = SamSegmentationData(dataset, processor, prompt="box", seed=0)
    collate = SamCollator(prompt="box")
    times = []
    for _ in range(3):
        started = time.perf_counter()
        batch = collate([data[i % len(data)] for i in range(batch_size)])
        with capture_single_output(student.mask_decoder) as captured:
            outputs = student(**model_inputs(batch), multimask_output=True)
        masks, scores = single_output(student.mask_decoder, captured)
        loss = sam_loss(outputs.pred_masks, outputs.iou_scores, batch["labels"], batch["instance_mask"],
                        loss_type="dice_bce", single_masks=masks, single_iou_scores=scores)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return sum(times[1:]) / len(times[1:])


def estimate_seconds(sizes: dict[str, Any], forward: float, stand_in: str, gradient_checkpointing: bool,
                     num_searches: int, train_step: float | None = None) -> dict[str, float]:
    """Rough seconds per stage of a demo run with `sizes`, from the forward time of one micro-batch (`forward`;
    evaluation and search are counted per image, as that time over the batch size). `stand_in`: where the base
    comes from (`base_source`): "trained" here, "shipped" (only scored on A) or "given". `train_step`: the measured
    seconds of one training step of a micro-batch (`time_train_step`), used instead of 3 forwards when given."""
    micro, forward = forward, forward / sizes["batch_size"]
    full_step = (train_step or TRAIN_PASSES * micro) * sizes["gradient_accumulation_steps"]
    full_step *= CHECKPOINTING_OVERHEAD if gradient_checkpointing else 1.0
    n_eval = sizes["num_eval_images"]
    evaluations = (4 + 2 * num_searches) * n_eval * forward  # 2 prompts x (zero-shot, fine-tuned, each export)
    estimate = {
        "calibration": sizes["num_calibration_images"] * CALIBRATION_PASSES * forward,
        # the fine-tuning baseline + the sandwich
        "training": sizes["train_steps"] * full_step * (1.0 + (SANDWICH_STEP_RATIO if train_step else SANDWICH_PASSES)),
        "search": num_searches * sizes["search_budget"] * n_eval * SUBNET_FORWARD * forward,
        "evaluation": evaluations,
    }
    if train_step:
        estimate["startup"] = STARTUP_SECONDS
    if stand_in == "trained":
        estimate["stand-in base"] = sizes["base_steps"] * full_step + 2 * n_eval * forward
    elif stand_in == "shipped":
        estimate["stand-in base"] = 2 * n_eval * forward  # scored on A (box and point)
    return {k: round(v, 1) for k, v in estimate.items()}


def size_to_budget(sizes: dict[str, Any], forward: float, budget_seconds: float, explicit: set[str],
                   gradient_checkpointing: bool, num_searches: int) -> dict[str, Any]:
    """Sizes for a given checkpoint: ~10 % of the budget to calibration, ~60 % to training (the fine-tuning
    baseline and the sandwich), ~30 % to search + evaluation; never above the presets; explicit sizes are kept.
    `forward` is the time of one micro-batch forward at `sizes["batch_size"]`."""
    sized = dict(sizes)
    micro, forward = forward, forward / sizes["batch_size"]
    if "num_calibration_images" not in explicit:
        affordable = int(0.1 * budget_seconds / (CALIBRATION_PASSES * forward))
        sized["num_calibration_images"] = max(1, min(sizes["num_calibration_images"], affordable))
    step = TRAIN_PASSES * micro * sized["gradient_accumulation_steps"] * (1.0 + SANDWICH_PASSES)
    step *= CHECKPOINTING_OVERHEAD if gradient_checkpointing else 1.0
    if "train_steps" not in explicit:
        sized["train_steps"] = max(1, min(sizes["train_steps"], int(0.6 * budget_seconds / step)))
    search_share = 0.3 * budget_seconds / forward  # forward-equivalents for search + evaluation
    if "search_budget" not in explicit:  # keep the search meaningful first, then give the rest to more images
        per_image = 4 + 2 * num_searches + num_searches * SUBNET_FORWARD * sizes["search_budget"]
        if search_share < per_image:
            spare = search_share - (4 + 2 * num_searches)
            sized["search_budget"] = max(MIN_SEARCH_BUDGET, min(sizes["search_budget"],
                                                                int(spare / (num_searches * SUBNET_FORWARD))))
    if "num_eval_images" not in explicit:
        per_image = 4 + 2 * num_searches + num_searches * SUBNET_FORWARD * sized["search_budget"]
        sized["num_eval_images"] = max(1, min(sizes["num_eval_images"], int(search_share / per_image)))
    return sized


def describe(plan: DemoPlan, model_name: str | None, num_searches: int, gradient_checkpointing: bool,
             threads: str | None = None) -> str:
    """What the run will do and roughly how long, in a few lines (printed before anything long starts)."""
    s = plan.sizes
    batch = (f"{s['batch_size']} image{'s' if s['batch_size'] > 1 else ''} x {s['gradient_accumulation_steps']} "
             "accumulated" if s["gradient_accumulation_steps"] > 1 else f"{s['batch_size']} images")
    base = (f"train a stand-in base on domain A ({s['base_steps']} steps); " if model_name is None
            else f"base {model_name} (one forward of a micro-batch: {plan.forward_seconds:.3f} s here); ")
    parts = "; ".join(f"{name} ~{seconds / 60:.1f}" for name, seconds in plan.estimate_seconds.items())
    return (
        f"plan: {base}convert on {s['num_calibration_images']} calibration images; {s['train_steps']} training steps "
        f"of {batch} for the supernet and for the fine-tuned baseline"
        f"{' (gradient checkpointing)' if gradient_checkpointing else ''}; {num_searches} searches x "
        f"{s['search_budget']} subnets on {s['num_eval_images']} search images; every model evaluated with box and "
        f"point prompts on {s['num_eval_images']} test images.\n"
        f"[supersam demo] estimated ~{plan.total_minutes:.0f} min on this machine"
        f"{' with ' + threads if threads else ''} (rough; minutes: {parts})"
    )


def stage_training_arguments(output_dir: Path, model_path: Path | str, data_dir: Path, steps: int, sizes: dict,
                             largest_only: bool, learning_rate: float, prompt_type: str, seed: int,
                             point_fraction: float = 0.5, gradient_checkpointing: bool = False,
                             resume: str | None = None) -> SupernetTrainingArguments:
    """The arguments of one demo training stage (the base, the fine-tuned baseline, the supernet), also used by the
    benchmarks that retrain a stage of a finished demo run under other settings."""
    return SupernetTrainingArguments(
        model_name_or_path=str(model_path),
        dataset_name=str(data_dir),
        train_split_name="train",
        output_dir=str(output_dir),
        overwrite_output_dir=resume is None,
        resume_from_checkpoint=resume,
        max_steps=steps,
        per_device_train_batch_size=sizes["batch_size"],
        gradient_accumulation_steps=sizes["gradient_accumulation_steps"],
        gradient_checkpointing=gradient_checkpointing,
        learning_rate=learning_rate,
        warmup_steps=max(1, steps // 20),
        num_random_subnets=0 if largest_only else 2,
        largest_only=largest_only,
        prompt_type=prompt_type,
        point_fraction=point_fraction,
        # dice + BCE: the stand-in base learns from scratch, where SAM's 20:1 focal weighting stalls at empty masks.
        loss_type="dice_bce",
        save_steps=max(1, steps // 4),  # a kill loses at most a quarter of the stage
        save_total_limit=1,
        eval_steps=0,
        seed=seed,
    )


def target_learning_rate(args: DemoArguments) -> float:
    """Domain B's learning rate: --learning_rate, else the one for the base's kind (`TARGET_LEARNING_RATE`)."""
    if args.learning_rate is not None:
        return args.learning_rate
    return TARGET_LEARNING_RATE["stand-in" if args.model_name_or_path is None else "checkpoint"]


def stand_in_config(args: DemoArguments, sizes: dict):
    """The `SamConfig` of a base trained here (--train_base) at the plan's sizes (the decoder's width: the shipped
    stand-in's unless --decoder_channels)."""
    decoder_channels = args.decoder_channels or SamConfig.from_pretrained(STANDIN_DIR).vision_config.output_channels
    return build_sam_config(image_size=sizes["image_size"], patch_size=sizes["patch_size"],
                            hidden_size=sizes["hidden_size"], num_hidden_layers=sizes["num_layers"],
                            num_attention_heads=4, window_size=sizes["window_size"],
                            output_channels=decoder_channels)


def make_plan(args: DemoArguments, processor) -> DemoPlan:
    """Sizes of this run (presets, explicit flags, and for a given model the machine's speed) and its estimate."""
    preset = dict(PRESETS["quick" if args.quick else "default"])
    if args.model_name_or_path is not None:
        preset.update(MODEL_BATCH)
    explicit = {key for key in SIZE_FIELDS if getattr(args, key) is not None}
    sizes = {**preset, **{key: getattr(args, key) for key in explicit}}
    started = time.perf_counter()
    sample = make_hard_shapes(4, 256 if args.model_name_or_path else sizes["image_size"], seed=args.seed, domain="B")
    per_image = (time.perf_counter() - started) / 4  # generating a synthetic image (the data stage's cost)
    source, step = base_source(args), None
    if source == "given":
        model = load_sam_model(args.model_name_or_path, device="cpu")
    else:  # a small model: time a real training step too
        torch.manual_seed(args.seed)
        model = SamModel(stand_in_config(args, sizes)) if source == "trained" else load_standin(device="cpu")[0]
    forward = time_forward(model, processor, sample[0]["image"], sizes["batch_size"])
    if source == "given":
        minutes = args.time_budget_minutes or DEFAULT_TIME_BUDGET_MINUTES["quick" if args.quick else "default"]
        sizes = size_to_budget(sizes, forward, minutes * 60.0, explicit, args.gradient_checkpointing,
                               len(args.size_reductions))
    else:
        step = time_train_step(model, processor, sample, sizes["batch_size"])
    estimate = estimate_seconds(sizes, forward, source, args.gradient_checkpointing, len(args.size_reductions),
                                train_step=step)
    if args.dataset_name is None:
        images = sizes["num_train_images"] * (2 if source == "trained" else 1) + 4 * sizes["num_eval_images"]
        estimate["data"] = round(images * per_image, 1)
    return DemoPlan(sizes, round(forward, 4), estimate, threads=torch.get_num_threads())


__all__ = ["DEFAULT_TIME_BUDGET_MINUTES", "DemoPlan", "MODEL_BATCH", "PRESETS", "ThreadChoice", "describe",
           "estimate_seconds", "make_plan", "pick_num_threads", "size_to_budget", "stage_training_arguments",
           "stand_in_config", "target_learning_rate", "time_forward", "time_train_step"]
