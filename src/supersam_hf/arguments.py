"""The one argument vocabulary every stage shares (Hugging Face example-script names).

`ModelArguments`, `DataArguments` and `OutputArguments` are parsed by every `supersam` stage together with the
stage's own dataclass (`HfArgumentParser((ModelArguments, DataArguments, OutputArguments, StageArguments))`);
`SupernetTrainingArguments` inherits all three, so Python code can still build one object. The dataclasses are
keyword-only: give every field by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from .errors import SupersamError
from .onnx_export import INT8_MIOU_DROP_THRESHOLD
from .types import (EvaluationPromptType, IntensityNormalization, LatencyBackend, LogLevel, MaskSelection, PromptType,
                    SearchStrategy)

PROMPT_CHOICES = PromptType.values()
# One default everywhere (train, search, evaluate, demo, the model card): a box is what SAM users mostly give, and
# it is unambiguous (a single point may mean a part or the whole object), so scores measured with it are stable.
DEFAULT_PROMPT_TYPE = PromptType.BOX.value
LOG_LEVELS = LogLevel.values()


def prompt_type_field(choices: str = "point, box or mixed") -> "field":
    """The shared `--prompt_type` field (same name and default in every stage that draws prompts)."""
    return field(
        default=DEFAULT_PROMPT_TYPE,
        metadata={"help": f"Prompt per object: {choices} (default {DEFAULT_PROMPT_TYPE}, the prompt SAM users mostly give)."},
    )


@dataclass(kw_only=True)
class ModelArguments:
    """The model a stage reads: a SAM checkpoint, a supernet or an export (Hub id, HF cache or folder)."""

    model_name_or_path: str = field(
        metadata={"help": "The model this stage reads: a Hub id (e.g. facebook/sam-vit-base), a cached Hub snapshot "
                  "or a folder written by save_pretrained (a SAM checkpoint, a supernet or an export)."}
    )
    revision: Optional[str] = field(default=None, metadata={"help": "Hub branch, tag or commit of the model."})
    token: Optional[str] = field(
        default=None,
        metadata={"help": "Hub token (default: HF_TOKEN or the stored `hf auth login` token; prefer those, a flag "
                  "shows up in shell history)."},
    )
    processor_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "SamProcessor to use (default: the one next to the model, else the base model recorded "
                  "in a supernet)."},
    )


@dataclass(kw_only=True)
class DataArguments:
    """The dataset a stage reads (`supersam_hf.data.load_segmentation_dataset`) and how its rows become examples."""

    dataset_name: str = field(
        metadata={"help": "HF dataset: a Hub name, a save_to_disk folder, local data files (parquet/json/csv/"
                  "imagefolder), a COCO annotation file (instances_*.json; an SA-1B per-image JSON or a folder of "
                  "them) or a folder with images/ and masks/."}
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    train_split_name: str = field(default="train", metadata={"help": "Split to train or calibrate on."})
    eval_split_name: Optional[str] = field(
        default=None,
        metadata={"help": "Split to evaluate or search on (default: train, or the dataset's only split)."},
    )
    image_column: Optional[str] = field(default=None, metadata={"help": "Image column (default: auto-detect)."})
    mask_column: Optional[str] = field(default=None, metadata={"help": "Mask column (default: auto-detect)."})
    mask_kind: Optional[str] = field(  # not MaskKind: a bad kind gets the data stage's message, not argparse's
        default=None,
        metadata={"help": "How masks are stored: instance (id map), masks (binary stack), semantic (class map) or "
                  "coco (objects with polygons / RLE); default: auto-detect from the first row. A kind that "
                  "contradicts the data is refused."},
    )
    image_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Folder of the images of a COCO / SA-1B annotation file (default: next to the file, its "
                  "images/, or COCO's ../<split>/)."},
    )
    category_ids: Optional[list[int]] = field(
        default=None,
        metadata={"help": "COCO-style objects: keep only these category ids (default: all). Crowd regions are "
                  "always skipped."},
    )
    min_mask_area: int = field(
        default=16,
        metadata={"help": "Objects with fewer pixels (at the image's resolution) are left out; an annotation that "
                  "decodes to no pixel is skipped and counted."},
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the dataset as a stream (datasets.IterableDataset): rows decoded on the fly, nothing "
                  "downloaded first, split across processes, resumable exactly (train, evaluate, convert)."},
    )
    shuffle_buffer_size: int = field(
        default=1000,
        metadata={"help": "With --streaming: training shuffles rows in blocks of this many (and the shards per "
                  "epoch); memory is that many undecoded rows per data worker."},
    )
    intensity_normalization: IntensityNormalization = field(
        default=IntensityNormalization.PERCENTILE.value,
        metadata={"help": "How images that are not 8-bit (16-bit, 12-bit, float microscopy) reach 0-255: percentile "
                  "(per image, 1st-99.8th percentile, as microscopy tools do), range (dtype range: 16-bit /257) or "
                  "minmax. The same in every stage."},
    )
    max_train_images: Optional[int] = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_images: Optional[int] = field(default=None, metadata={"help": "Use only the first N evaluation images."})


@dataclass(kw_only=True)
class OutputArguments:
    """Where a stage writes: always a folder."""

    output_dir: str = field(metadata={"help": "Folder this stage writes into."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into an output_dir that already holds this stage's output."}
    )


@dataclass(kw_only=True)
class RunArguments:
    """How the command runs (not recorded with results)."""

    log_level: LogLevel = field(
        default=LogLevel.INFO.value, metadata={"help": "Logging level of supersam_hf's messages."}
    )
    debug: bool = field(default=False, metadata={"help": "Show the full traceback of an error (also SUPERSAM_DEBUG=1)."})


@dataclass(kw_only=True)
class EvaluateArguments:
    """What `supersam evaluate` / `evaluate_model` measures (model, data and output flags are the shared ones)."""

    subnet: Optional[str] = field(
        default=None,
        metadata={"help": "Subnet of a supernet to evaluate: a JSON file or inline JSON with kept_layers and mlp_dims, "
                  "or 'best' / 'pareto:N' together with --search_dir. Default: the whole model."},
    )
    search_dir: Optional[str] = field(default=None, metadata={"help": "Output folder of `supersam search`."})
    prompt_type: EvaluationPromptType = prompt_type_field("point or box")
    mask_selection: MaskSelection = field(
        default=MaskSelection.SINGLE.value,
        metadata={"help": "single: of the three multimask outputs, the one with the highest predicted IoU (the model's "
                  "own choice); oracle: the best of the three against the ground truth (as the SuperSAM paper "
                  "reports); single_output: the model called with multimask_output=False (its one mask, the usual "
                  "call with a box prompt)."},
    )
    batch_size: int = field(default=4, metadata={"help": "Images per forward."})
    max_instances_per_image: Optional[int] = field(
        default=None,
        metadata={"help": "Score at most this many instances per image (the largest); default: every instance. The "
                  "cap and the number of instances it left out are written to eval_results.json."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the prompts (points drawn inside each mask)."})
    device: Optional[str] = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})
    onnx: bool = field(
        default=False,
        metadata={"help": "Evaluate the ONNX files of an export (--model_name_or_path: the export folder, holding "
                  "onnx/) through ONNX Runtime on CPU, with the same metric. Needs `pip install supersam_hf[onnx]`."},
    )
    onnx_int8: bool = field(
        default=False, metadata={"help": "With --onnx: use onnx/vision_encoder_quantized.onnx (`supersam export --quantize int8`)."}
    )


@dataclass(kw_only=True)
class SearchArguments:
    """Budgets and strategy of `supersam search` / `search_subnets` (model, data and output flags are the shared ones)."""

    budget: int = field(default=40, metadata={"help": "Subnets to score (mIoU evaluations), the largest-subnet reference included."})
    max_params: Optional[int] = field(default=None, metadata={"help": "Parameter budget of the exported checkpoint."})
    max_macs: Optional[int] = field(default=None, metadata={"help": "MAC budget per image (one prompt)."})
    max_latency_ms: Optional[float] = field(
        default=None, metadata={"help": "Latency budget, median ms on one image, timed as --latency_backend says."}
    )
    min_size_reduction: Optional[float] = field(
        default=None, metadata={"help": "At least this fraction fewer parameters than the largest subnet (0.5 = half)."}
    )
    strategy: SearchStrategy = field(
        default=SearchStrategy.OPENTUNER.value, metadata={"help": "opentuner, or random (uniform sampling, for comparison)."}
    )
    technique: str = field(default="AUCBanditMetaTechniqueA", metadata={"help": "OpenTuner technique (--technique)."})
    seed: int = field(default=0, metadata={"help": "Seed of the search strategy."})
    resume: bool = field(default=False, metadata={"help": "Continue the search in --output_dir, reusing its scored subnets."})
    prompt_type: EvaluationPromptType = prompt_type_field("point or box")
    mask_selection: MaskSelection = field(
        default=MaskSelection.SINGLE.value, metadata={"help": "single (highest predicted IoU) or oracle (best of three vs ground truth)."}
    )
    batch_size: int = field(default=4, metadata={"help": "Images per forward when scoring."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the evaluation prompts."})
    latency_repeats: int = field(default=5, metadata={"help": "Timed forwards per latency measurement."})
    latency_backend: LatencyBackend = field(
        default=LatencyBackend.TORCH.value,
        metadata={"help": "What --max_latency_ms bounds: torch (the extracted subnet's PyTorch forward on --device) "
                  "or onnxruntime (the exported subnet's image encoder in ONNX Runtime on this CPU, cached per subnet "
                  "in --output_dir/ort_latency_cache.json; needs `pip install supersam_hf[onnx]`)."},
    )
    device: Optional[str] = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})
    max_proposals: Optional[int] = field(
        default=None,
        metadata={"help": "Stop after this many proposals even if the budget is not spent (default max(100, 25 x "
                  "budget)); reached when the feasible space is smaller than the budget."},
    )


@dataclass(kw_only=True)
class ExportArguments:
    """Which subnet `supersam export` writes and what its card says (model and output flags are the shared ones).

    `export_subnet` reads every field but `subnet` / `search_dir` (the CLI's choice of subnet: the library takes the
    subnet itself) and `prompt_type` (the prompt of the CLI's evaluation images)."""

    subnet: str = field(
        metadata={"help": "Which subnet: 'best' (best_subnet.json of the search), 'pareto:N' (the N-th Pareto-front "
                  "subnet), a JSON file (e.g. a subnet.json) or inline JSON with kept_layers and mlp_dims."}
    )
    search_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Search output folder (pareto.json, best_subnet.json, search_results.json); default: the "
                  "folder of a --subnet JSON file, else the model folder."},
    )
    base_model: Optional[str] = field(
        default=None, metadata={"help": "Hub id of the base SAM for the card (default: recorded in the supernet)."}
    )
    license: Optional[str] = field(default=None, metadata={"help": "License for the card (default: the base model's)."})
    datasets: Optional[list[str]] = field(
        default=None, metadata={"help": "Hub ids of the training datasets, for the card's metadata."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the exported folder to the Hub."})
    hub_model_id: Optional[str] = field(
        default=None,
        metadata={"help": "Hub repo to push to, 'namespace/name' or 'name' (default: the --output_dir folder name, "
                  "in your namespace)."},
    )
    hub_private_repo: bool = field(
        default=False, metadata={"help": "Create the Hub repo as private (default: public)."}
    )
    repo_id: Optional[str] = field(default=None, metadata={"help": "Deprecated alias of --hub_model_id."})
    private: bool = field(default=False, metadata={"help": "Deprecated alias of --hub_private_repo."})
    commit_message: Optional[str] = field(default=None, metadata={"help": "Commit message of the upload."})
    onnx: bool = field(
        default=False,
        metadata={"help": "Also write onnx/ (image encoder | prompt encoder + mask decoder, optimum's split), checked "
                  "against PyTorch (onnx/parity.json). Needs `pip install supersam_hf[onnx]`."},
    )
    quantize: Optional[Literal["int8"]] = field(
        default=None,
        metadata={"help": "int8: also write a dynamic-INT8 encoder and record its mIoU next to fp32's on the card "
                  "(needs --onnx and --dataset_name)."},
    )
    int8_max_miou_drop: float = field(
        default=INT8_MIOU_DROP_THRESHOLD, metadata={"help": "Warn when INT8 loses more mIoU than this against fp32."}
    )
    prompt_type: EvaluationPromptType = prompt_type_field("point or box")


@dataclass(kw_only=True)
class ConvertArguments:
    """Calibration settings of `supersam convert` / `prioritize` (model, data and output flags are the shared ones)."""

    num_calibration_images: int = field(default=32, metadata={"help": "Calibration images (from the train split)."})
    calibration_batch_size: int = field(default=4, metadata={"help": "Images per encoder forward during calibration."})
    num_elastic_layers: Optional[int] = field(
        default=None, metadata={"help": "Layers that subnets may drop (the least important; default: all but two, at least half; the demo uses the same)."}
    )
    max_drop_prob: float = field(
        default=0.5,
        metadata={"help": "Drop probability of the cheapest layer to remove (others scale with importance); in [0, 1)."},
    )
    keep_first_layer: bool = field(default=True, metadata={"help": "Never make encoder layer 0 elastic."})
    reorder: bool = field(
        default=True, metadata={"help": "Permute each encoder MLP's hidden neurons (and the embedding channels) most "
                                "important first (--no_reorder: keep their order)."}
    )
    measure_layers: bool = field(
        default=True, metadata={"help": "Measure layer importance and set the elastic layers and their drop "
                                "probabilities (--no_measure_layers: leave the config's depth settings as they are)."}
    )
    image_size_choices: Optional[list[int]] = field(
        default=None,
        metadata={"help": "Input resolutions (pixels) the subnets may take, the base's among them, each a whole number "
                  "of patches, e.g. 1024 768 512 384 256 for a ViT-B (default: 50, 75 and 100 %% of the base's)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the calibration image selection."})
    device: Optional[str] = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})


def with_keywords(args: Any, cls: type, keywords: dict[str, Any], renames: dict[str, str], function: str,
                  data_args: Any = None, data_renames: dict[str, str] | None = None,
                  make: Any = None) -> tuple[Any, dict[str, Any]]:
    """A stage function's arguments object with its keyword conveniences applied (the caller's object is not changed).

    `args`: the stage dataclass (`cls`) or None (its defaults: `make()` if given, else `cls()`). `keywords`: the keywords the caller gave besides
    `args`; `renames` maps each accepted keyword (the library's older names included) onto its field of `cls`,
    `data_renames` those that are `DataArguments` fields. Returns `(args, data)`: the stage object and a dict of the
    `DataArguments` fields in `data_renames` (from `data_args` when given, else their defaults, then the keywords).
    An unknown keyword, or an `args` of another type, is a `SupersamError` naming it."""
    if args is None:
        args = make() if make is not None else cls()
    elif not isinstance(args, cls):
        raise SupersamError(f"{function}: args must be a {cls.__name__} (supersam_hf.arguments), got "
                            f"{type(args).__name__}; pass the other settings by keyword.")
    data_renames = data_renames or {}
    unknown = sorted(set(keywords) - set(renames) - set(data_renames))
    if unknown:
        accepted = ", ".join(sorted({*renames, *data_renames}))
        raise SupersamError(f"{function}: unknown keyword argument(s) {', '.join(unknown)}; accepted: {accepted}.")
    data_fields = {f.name: None if f.default is dataclasses.MISSING else f.default
                   for f in dataclasses.fields(DataArguments)}
    data = {name: (getattr(data_args, name) if data_args is not None else data_fields[name])
            for name in data_renames.values()}
    data.update({data_renames[k]: v for k, v in keywords.items() if k in data_renames})
    changes = {renames[k]: v for k, v in keywords.items() if k in renames}
    return (dataclasses.replace(args, **changes) if changes else args), data


__all__ = [
    "ConvertArguments",
    "DEFAULT_PROMPT_TYPE",
    "DataArguments",
    "EvaluateArguments",
    "ExportArguments",
    "LOG_LEVELS",
    "ModelArguments",
    "OutputArguments",
    "PROMPT_CHOICES",
    "RunArguments",
    "SearchArguments",
    "prompt_type_field",
    "with_keywords",
]
