"""The flags of `supersam demo` (`DemoArguments`) and the checks that refuse a contradictory run before it starts."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..arguments import prompt_type_field
from ..errors import SupersamError
from ..loading import load_config_dict
from ..types import PromptType, SizeMetric

SIZE_REDUCTIONS = (0.3, 0.5, 0.7)  # the demo's budgets: at least this fraction fewer parameters than the base
SIZE_FIELDS = ("image_size", "patch_size", "window_size", "hidden_size", "num_layers", "num_train_images", "num_eval_images",
               "num_calibration_images", "base_steps", "train_steps", "search_budget", "batch_size",
               "gradient_accumulation_steps")


@dataclass(kw_only=True)
class DemoArguments:
    output_dir: str = field(default="runs/demo", metadata={"help": "Folder for every artifact of the run."})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A SAM checkpoint: Hub id (e.g. facebook/sam-vit-base), cached Hub snapshot or folder. The "
                  "run is then sized to --time_budget_minutes on this machine (said before it starts). Default: "
                  "train a small stand-in base on synthetic domain A."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "An HF segmentation dataset (save_to_disk folder, local files or Hub name) used as domain B: "
                  "its train split trains, its validation split (else a part carved from train) is searched on, its "
                  "test split (else a carved part) is the test set. Default: synthetic domain B."},
    )
    train_base: bool = field(
        default=False,
        metadata={"help": "Train a small stand-in base from scratch on synthetic domain A first (--base_steps; sized "
                  "by --image_size, --hidden_size, ...) instead of starting from the pretrained stand-in shipped with "
                  "supersam_hf (supersam-hf/sam-standin-shapes)."},
    )
    quick: bool = field(
        default=False,
        metadata={"help": "Smaller presets for the synthetic demo (about half the steps and images); with "
                  "--model_name_or_path a time budget of 10 minutes instead of 30. The run says at its start how long "
                  "it should take here."},
    )
    time_budget_minutes: float | None = field(
        default=None,
        metadata={"help": "With --model_name_or_path: size steps, calibration, search and evaluation images to about "
                  "this many minutes here (default 30, 10 with --quick); explicit size flags are kept."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete an earlier demo run in --output_dir and start afresh."}
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Continue an earlier run in --output_dir: finished stages are skipped, an interrupted training "
                  "resumes from its last checkpoint and an interrupted search from its scored subnets."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of data, training and search."})
    prompt_type: str = prompt_type_field("point, box or mixed (training; the search uses box for mixed; every model is "
                                         "reported with box and point prompts)")
    # Sizes. None = the preset (stand-in) or sized to the machine (given model); tests set tiny values.
    image_size: int | None = field(default=None, metadata={"help": "With --train_base: image size of the base."})
    patch_size: int | None = field(default=None, metadata={"help": "With --train_base: patch size of the base (token grid = image / patch)."})
    window_size: int | None = field(default=None, metadata={"help": "With --train_base: attention window (in tokens) of the base."})
    hidden_size: int | None = field(default=None, metadata={"help": "With --train_base: encoder width of the base."})
    num_layers: int | None = field(default=None, metadata={"help": "With --train_base: encoder layers of the base."})
    num_train_images: int | None = field(default=None, metadata={"help": "Synthetic training images per domain."})
    num_eval_images: int | None = field(default=None, metadata={"help": "Images of B's search and test splits (each)."})
    num_calibration_images: int | None = field(default=None, metadata={"help": "Calibration images of convert."})
    base_steps: int | None = field(default=None, metadata={"help": "With --train_base: steps of base training on A."})
    train_steps: int | None = field(default=None, metadata={"help": "Steps of supernet training (and of the fine-tuning baseline) on B."})
    search_budget: int | None = field(default=None, metadata={"help": "Subnets evaluated per search."})
    decoder_channels: int | None = field(
        default=None, metadata={"help": "With --train_base: image-embedding / mask-decoder width of the base (default 128, the shipped stand-in's)."}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "Images per micro-batch (default 4 for the stand-in, 1 for a given model)."}
    )
    gradient_accumulation_steps: int | None = field(
        default=None, metadata={"help": "Micro-batches per training step (default 1 for the stand-in, 2 for a given model)."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute encoder activations in the backward pass (less memory, ~1/3 slower)."}
    )
    size_reductions: list[float] = field(
        default_factory=lambda: list(SIZE_REDUCTIONS),
        metadata={"help": "Search budgets: at least this fraction fewer parameters (or MACs, see --size_metric) than the base."},
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate on domain B, the same for the supernet and the fine-tuned baseline (default "
                  "1e-3 with the stand-in base, which scores ~0 on B zero-shot and must nearly learn B; 2e-4 with a "
                  "given pretrained checkpoint)."},
    )
    image_size_choices: list[int] | None = field(
        default=None,
        metadata={"help": "Input resolutions (pixels) the supernet's subnets may take, the base's among them, whole "
                  "patches (default: 50, 75 and 100 %% of the base's; e.g. 32 48 64 96 128 with the stand-in reaches "
                  "under 5 %% of its MACs), as `supersam convert --image_size_choices` sets them."},
    )
    size_metric: str = field(  # checked by run_demo (its message), values from SizeMetric
        default=SizeMetric.MACS.value,
        metadata={"help": "What --size_reductions reduce: macs (default: what makes a subnet faster, and the stand-in's "
                  "smallest subnet reaches 7 %% of its MACs but only 53 %% of its parameters, most of them in the decoder) or params."},
    )


# What only a base trained here (--train_base) uses: the shipped stand-in and a given model have their own sizes.
TRAIN_BASE_FIELDS = ("image_size", "patch_size", "window_size", "hidden_size", "num_layers", "decoder_channels",
                     "base_steps")


def base_source(args: DemoArguments) -> str:
    """Where the demo's base comes from: "given" (--model_name_or_path), "trained" (--train_base) or "shipped"."""
    if args.model_name_or_path is not None:
        return "given"
    return "trained" if args.train_base else "shipped"


def check_arguments(args: DemoArguments) -> None:
    """Refuse contradictory or out-of-range flags in one line each, before anything is loaded or written."""
    if args.prompt_type not in PromptType.values():
        raise SupersamError(f"--prompt_type must be point, box or mixed, got {args.prompt_type!r}.")
    if args.size_metric not in SizeMetric.values():
        raise SupersamError(f"--size_metric must be params or macs, got {args.size_metric!r}.")
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise SupersamError(f"--learning_rate must be > 0, got {args.learning_rate}.")
    if args.model_name_or_path is not None and args.train_base:
        raise SupersamError("--train_base trains a base here, --model_name_or_path gives one; pass one of them.")
    if base_source(args) != "trained":
        given = [f"--{name}" for name in TRAIN_BASE_FIELDS if getattr(args, name) is not None]
        if given:
            raise SupersamError(f"{', '.join(given)} size a base trained here; the "
                                f"{'given model' if args.model_name_or_path else 'shipped stand-in'} has its own sizes: "
                                "drop them, or add --train_base.")
    if args.model_name_or_path is not None:
        load_config_dict(args.model_name_or_path)  # refuse anything but a SAM checkpoint before anything runs


__all__ = ["DemoArguments", "SIZE_FIELDS", "SIZE_REDUCTIONS", "TRAIN_BASE_FIELDS", "base_source", "check_arguments"]
