"""`supersam evaluate`: mIoU of a model (SAM, supernet or export) or of one subnet; writes eval_results.json.

With box prompts the results also hold `box_reference_miou`: the mIoU of "the box itself as the mask" on the same
objects, through the same metric, the trivial reference a box-prompt figure should be read against."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from ..arguments import DataArguments, ModelArguments, OutputArguments, prompt_type_field
from ..data import load_segmentation_dataset
from ..evaluation import MASK_SELECTIONS, PROMPTS, evaluate_model, parse_subnet
from ..loading import load_processor, load_sam_model, recorded_base_model
from ..search.results import select_subnet

RESULTS_FILE = "eval_results.json"


@dataclass(kw_only=True)
class EvaluateArguments:
    """What `supersam evaluate` measures (model, data and output flags are the shared ones)."""

    subnet: Optional[str] = field(
        default=None,
        metadata={"help": "Subnet of a supernet to evaluate: a JSON file or inline JSON with kept_layers and mlp_dims, "
                  "or 'best' / 'pareto:N' together with --search_dir. Default: the whole model."},
    )
    search_dir: Optional[str] = field(default=None, metadata={"help": "Output folder of `supersam search`."})
    prompt_type: Literal["point", "box"] = prompt_type_field("point or box")
    mask_selection: Literal["single", "oracle"] = field(
        default="single",
        metadata={"help": "single: the output with the highest predicted IoU (the model's own choice); oracle: the best "
                  "of the three outputs against the ground truth (as the SuperSAM paper reports)."},
    )
    batch_size: int = field(default=4, metadata={"help": "Images per forward."})
    seed: int = field(default=0, metadata={"help": "Seed of the prompts (points drawn inside each mask)."})
    device: Optional[str] = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})


ARGUMENTS = (ModelArguments, DataArguments, OutputArguments, EvaluateArguments)


def format_results(result: dict[str, Any]) -> str:
    """A small two-column text table of an `evaluate_model` result."""
    rows = [
        ("mIoU", f"{result['miou']:.4f}"),
        ("per-image mIoU", f"{result['per_image_miou']:.4f}"),
        ("mean Dice", f"{result['mean_dice']:.4f}"),
        ("objects / images", f"{result['num_objects']} / {result['num_images']}"),
        ("prompt", result["prompt"]),
        ("mask selection", result["mask_selection"]),
        ("resolution", result["resolution"]),
        ("seed", str(result["seed"])),
        ("subnet", result["subnet"] or "(whole model)"),
        ("parameters", f"{result['params']:,}" if result.get("params") is not None else "?"),
    ]
    if "box_reference_miou" in result:
        rows.insert(1, ("box-as-mask mIoU", f"{result['box_reference_miou']:.4f}  (reference: the box prompt itself)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _subnet(args: EvaluateArguments):
    if args.subnet is None:
        return None
    spec = args.subnet.strip()
    if spec == "best" or spec.startswith("pareto:"):
        if args.search_dir is None:
            raise ValueError(f"--subnet {spec} needs --search_dir (the output folder of `supersam search`).")
        return select_subnet(spec, args.search_dir)
    return parse_subnet(spec)


def run(model_args: ModelArguments, data_args: DataArguments, output_args: OutputArguments,
        args: EvaluateArguments) -> dict[str, Any]:
    """Load model, processor and data, evaluate, print a table and write `<output_dir>/eval_results.json`."""
    if args.mask_selection not in MASK_SELECTIONS:
        raise ValueError(f"--mask_selection must be one of {MASK_SELECTIONS}, got {args.mask_selection!r}.")
    if args.prompt_type not in PROMPTS:
        raise ValueError(f"--prompt_type must be one of {PROMPTS}, got {args.prompt_type!r}.")
    output = Path(output_args.output_dir)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output_dir {output} exists and is not a folder.")
    if (output / RESULTS_FILE).exists() and not output_args.overwrite_output_dir:
        raise FileExistsError(f"{output / RESULTS_FILE} exists; pass --overwrite_output_dir or choose another --output_dir.")
    subnet = _subnet(args)
    model = load_sam_model(model_args.model_name_or_path, revision=model_args.revision, token=model_args.token,
                           device=args.device)
    processor = load_processor(model_args.model_name_or_path, model_args.processor_name_or_path,
                               recorded_base_model(model), revision=model_args.revision, token=model_args.token)
    split = data_args.eval_split_name
    dataset = load_segmentation_dataset(data_args.dataset_name, split=split, config_name=data_args.dataset_config_name)
    result = evaluate_model(
        model, dataset, processor, subnet=subnet, prompt=args.prompt_type, mask_selection=args.mask_selection,
        batch_size=args.batch_size, max_images=data_args.max_eval_images, seed=args.seed,
        image_column=data_args.image_column, mask_column=data_args.mask_column, mask_kind=data_args.mask_kind,
        box_reference=args.prompt_type == "box",  # what copying the box prompt scores, in the same pass
    )
    output.mkdir(parents=True, exist_ok=True)
    (output / RESULTS_FILE).write_text(json.dumps(result, indent=2) + "\n")
    print(f"supersam evaluate: {model_args.model_name_or_path} on {data_args.dataset_name}" + (f" [{split}]" if split else ""))
    print(format_results(result))
    print(f"wrote {output / RESULTS_FILE}")
    return result
