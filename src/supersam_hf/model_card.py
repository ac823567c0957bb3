"""The model card of an exported subnet: metadata (base model, license, datasets, tags) and the subnet's numbers.

Rendered from the package's `templates/model_card.md` through `huggingface_hub.ModelCard`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import yaml

from .arguments import DEFAULT_PROMPT_TYPE
from .modeling_supersam import SuperSamModel
from .onnx_pipeline import onnx_card_section
from .results import TrainingResult
from .search_space import SubnetConfig
from .types import EvaluationPromptType

logger = logging.getLogger(__name__)

CARD_TAGS = ["supersam", "sam", "segment-anything", "pruning", "nas"]
# The card always has one row per prompt type (a measured result, or a line saying how to measure it).
CARD_PROMPTS = EvaluationPromptType.values()
# Float metrics of `evaluate_model` results, with their display names: the table's columns come first.
METRIC_NAMES = {
    "miou": "mIoU",
    "per_image_miou": "per-image mIoU",
    "mean_dice": "mean Dice",
    "box_reference_miou": "the box itself as the mask",
    "box_reference_per_image_miou": "the box itself as the mask, per-image mIoU",
    "largest_subnet_miou": "mIoU of the largest subnet (the whole supernet), same measurement",
    "latency_ms": "latency, ms (on the search machine)",
}
TABLE_METRICS = ("miou", "per_image_miou", "mean_dice", "box_reference_miou")
# Entries of a metrics dict the card shows elsewhere (subnet table, subnet.json) rather than under "how measured".
METRIC_SKIP = {"subnet", "subnet_config", "params", "macs", "description", "per_image"}


def metrics_by_prompt(metrics: Mapping | None) -> dict[str, Mapping]:
    """`metrics` as {prompt: result}: one `evaluate_model` result (an `EvaluationResult` or its dict; keyed by
    its "prompt"; "box" if it names none)
    or a dict of results keyed by prompt type ("point" / "box")."""
    if not metrics:
        return {}
    if any(key in CARD_PROMPTS and isinstance(value, Mapping) for key, value in metrics.items()):
        return {key: value for key, value in metrics.items() if key in CARD_PROMPTS and isinstance(value, Mapping)}
    return {str(metrics.get("prompt") or DEFAULT_PROMPT_TYPE): metrics}


def format_count(n: float, unit: str = "") -> str:
    """A count with a G / M / k prefix and sensible digits: 487.8 G, 96.3 M, 4.27 M, 812 k (unit appended)."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            value = n / scale
            return f"{value:.2f} {prefix}{unit}" if value < 10 else f"{value:.1f} {prefix}{unit}"
    return f"{n:,.0f} {unit}".rstrip()


def format_macs(macs: float) -> str:
    """MACs as the card and the demo print them: "487.8 GMACs", "96.3 MMACs"."""
    return format_count(macs, "MACs")


def _valid_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_id(value: str | None) -> str | None:
    """`value` if it looks like a Hub model id ("namespace/name") and is not a local path, else None."""
    if not value or Path(value).exists() or value.count("/") != 1:
        return None
    return value if _valid_repo_id(value) else None


LOCAL_DATA = "local data"


def dataset_label(value) -> str:
    """How the card names a dataset: its Hub name, or "local data" for a folder or files on this machine (a card
    never carries a machine path)."""
    name = str(value) if value else ""
    if not name or Path(name).expanduser().exists() or name.startswith((".", "~", "/")) or "\\" in name:
        return LOCAL_DATA
    return name if name.count("/") <= 1 and _valid_repo_id(name) else LOCAL_DATA


def recorded_hub_base_model(model: SuperSamModel, source: str | None) -> str | None:
    """The base SAM's Hub id: recorded in the config (`base_model`), else the Hub id the model was loaded from."""
    config = model.config
    for candidate in (getattr(config, "base_model", None), getattr(config, "base_model_name_or_path", None),
                      getattr(config, "_name_or_path", None), source):
        if isinstance(candidate, str) and hub_id(candidate):
            return candidate
    return None


def find_license(source: str | None, base_model: str | None) -> str | None:
    """License of the supernet's own card (a folder's README.md), else of the base model's card (cache or Hub)."""
    from huggingface_hub import ModelCard, constants, hf_hub_download, try_to_load_from_cache

    cards = []
    if source and (Path(source) / "README.md").is_file():
        cards.append(Path(source) / "README.md")
    if base_model:
        cached = try_to_load_from_cache(base_model, "README.md")
        if isinstance(cached, str):
            cards.append(Path(cached))
        elif not constants.HF_HUB_OFFLINE:
            try:
                cards.append(Path(hf_hub_download(base_model, "README.md")))
            except (OSError, ValueError) as error:  # offline, no card, private repo (Hub errors are OSErrors)
                logger.info("Could not read the model card of %s for its license (%s).", base_model, error)
    for card in cards:
        try:
            license = ModelCard.load(card).data.license
        except (OSError, ValueError, yaml.YAMLError):  # an unreadable card or card metadata: no license from it
            continue
        if license:
            return license
    return None


# -- the model card -------------------------------------------------------------------------------------------
def model_card_template() -> Path:
    """Path of the model card template shipped with the package (`templates/model_card.md`)."""
    return Path(str(resources.files("supersam_hf") / "templates" / "model_card.md"))


def write_model_card(
    *,
    model: SuperSamModel,
    subnet: SubnetConfig,
    sizes: dict,
    output: Path,
    metrics: dict | None = None,
    base_model: str | None = None,
    base_name: str | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
    repo_id: str | None = None,
    onnx_report: dict | None = None,
    location: str | os.PathLike | None = None,
):
    """Render the package's model card template for this subnet into `output/README.md`; returns the `ModelCard`.

    `base_model` (a Hub id or None) goes into the metadata; `base_name` names the base in the text (default:
    `base_model`). `onnx_report` (`onnx_pipeline.export_checked_onnx`) adds the ONNX Runtime section."""
    from huggingface_hub import ModelCard, ModelCardData

    model_name = repo_id.split("/")[-1] if repo_id else f"SuperSAM subnet {subnet.name}"
    metrics = _card_metrics(metrics)
    eval_results = _eval_results(metrics, datasets) or None
    # Snippets name the Hub repo, else the folder relative to where it sits: never a path of this machine.
    model_id = repo_id or f"./{Path(location or output).name}"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="mask-generation",
        license=license,
        base_model=base_model,
        tags=list(CARD_TAGS),
        datasets=datasets,
        model_name=model_name if eval_results else None,
        eval_results=eval_results,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(model_card_template()),
        model_name=model_name,
        base_model_name=base_name or base_model or "a SAM checkpoint",
        **_subnet_fields(model, subnet, sizes),
        metrics_table=_metrics_table(metrics),
        metrics_description=_metrics_description(metrics),
        usage=usage_snippet(model_id),
        training_description=_training_description(model),
        onnx_section=onnx_card_section(onnx_report, model_id) if onnx_report else "",
    )
    card.save(output / "README.md")
    return card


def _subnet_fields(model: SuperSamModel, subnet: SubnetConfig, sizes: dict) -> dict:
    """The card template's fields that describe the subnet against its base: layers, sizes, MACs, input size."""
    vision = model.config.vision_config
    params, base_params, macs, base_macs = sizes["params"], sizes["base_params"], sizes["macs"], sizes["base_macs"]
    return dict(
        num_layers=len(subnet.kept_layers), base_num_layers=vision.num_hidden_layers,
        params=_count(params), base_params=_count(base_params), macs=format_macs(macs), base_macs=format_macs(base_macs),
        image_size=(f"{subnet.image_size} px vs. {vision.image_size}" if subnet.image_size not in (None, vision.image_size)
                    else vision.image_size),
        size_reduction=(
            f"This model has {params / base_params:.1%} of the base's parameters ({1 - params / base_params:.1%} "
            f"fewer) and needs {macs / base_macs:.1%} of its MACs ({1 - macs / base_macs:.1%} fewer)."
        ),
        kept_layers=list(subnet.kept_layers), mlp_dims=list(subnet.mlp_dims), mlp_dim=max(subnet.mlp_dims),
        subnet_name=subnet.name, subnet_json=json.dumps(subnet.to_dict()),
    )


SUPERNET_TAGS = ["supersam", "sam", "segment-anything", "supernet", "nas"]


def write_supernet_card(supernet: SuperSamModel, output: Path, *, repo_id: str, summary: TrainingResult | None = None,
                        datasets: list[str] | None = None, license: str | None = None):
    """`output/README.md` for a trained supernet pushed to the Hub: it says that this is a supernet (not a SAM
    checkpoint to use as is), how to export a standard SAM subnet from it, its search space and training summary."""
    from huggingface_hub import ModelCard, ModelCardData

    base = recorded_hub_base_model(supernet, None)
    hub_datasets = [d for d in (datasets or []) if dataset_label(d) != LOCAL_DATA] or None
    data = ModelCardData(library_name="supersam_hf", license=license, base_model=base, tags=list(SUPERNET_TAGS),
                         datasets=hub_datasets)
    space = supernet.search_space
    largest, smallest = space.largest(), space.smallest()
    name = repo_id.split("/")[-1]
    lines = [
        "---", data.to_yaml(), "---", "", f"# {name}", "",
        f"A **SuperSAM supernet** trained from **{base or 'a SAM checkpoint'}** with "
        "[`supersam_hf`](https://github.com/supersam-hf/supersam_hf): a weight-sharing network whose subnetworks "
        "(fewer encoder layers, narrower MLPs) are smaller Segment Anything models. It is not meant to be used as is: "
        "search it for the subnet that fits your budget and export that subnet as a standard `SamModel` checkpoint, "
        "which plain `transformers` (and transformers.js, ONNX Runtime) load.", "",
        "## Export a SAM model from it", "",
        "With the command line (`pip install supersam_hf`; `supersam search` scores subnets on your data):", "",
        "```bash",
        f"supersam search --model_name_or_path {repo_id} --dataset_name <your dataset> --output_dir search",
        f"supersam export --model_name_or_path {repo_id} --subnet best --search_dir search --output_dir sam-small",
        "```", "",
        "Or in Python, with a subnet of your choice:", "",
        "```python",
        "from supersam_hf.export import export_subnet",
        "from supersam_hf.loading import load_processor, load_supernet",
        "",
        f'supernet = load_supernet("{repo_id}", device="cpu")',
        "subnet = supernet.search_space.smallest()  # or one picked by `supersam search`",
        f'export_subnet(supernet, subnet, "./sam-small", processor=load_processor("{repo_id}"))',
        "```", "",
        "## Search space", "",
        f"- encoder layers that may be dropped: `{list(space.elastic_layers)}` (at least {space.min_layers} of "
        f"{space.num_layers} kept)",
        f"- MLP width choices per layer: `{[list(c) for c in space.mlp_dim_choices]}`",
        f"- largest subnet: {_count(supernet.count_parameters(largest))} parameters; smallest: "
        f"{_count(supernet.count_parameters(smallest))}",
    ]
    if summary:
        final = summary.final_eval or {}
        lines += ["", "## Training", "",
                  f"Sandwich-rule training, {summary.global_step} steps ({'LoRA' if summary.lora else 'full'}"
                  f" fine-tuning of the trainable parts), datasets: {', '.join(map(dataset_label, datasets or [])) or 'not recorded'}."]
        if final.get("miou"):
            lines.append(f"Validation mIoU ({final.get('prompt')} prompts) at the end: " + ", ".join(
                f"{k} subnet {v:.4f}" for k, v in final["miou"].items()) + ".")
    card = ModelCard("\n".join(lines) + "\n")
    card.save(Path(output) / "README.md")
    return card


def _count(n: int) -> str:
    return f"{format_count(n)} ({n:,})" if n >= 1e3 else f"{n:,}"


def usage_snippet(model_id: str) -> str:
    """The card's (and README's) Python snippet: a point prompt with `SamModel` + `SamProcessor`, then every object
    with the mask-generation pipeline. It defines its own image, so it runs as written."""
    return f'''```python
import torch
from PIL import Image, ImageDraw
from transformers import SamModel, SamProcessor, pipeline

image = Image.new("RGB", (640, 480), "white")  # your image: Image.open("photo.jpg").convert("RGB")
ImageDraw.Draw(image).ellipse((200, 150, 440, 330), fill="red")

model = SamModel.from_pretrained("{model_id}")
processor = SamProcessor.from_pretrained("{model_id}")
inputs = processor(images=image, input_points=[[[320, 240]]], return_tensors="pt")  # one point on the object
with torch.no_grad():
    outputs = model(**inputs)
masks = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
print(masks[0].shape, outputs.iou_scores)  # 3 candidate masks at the image's size, and their predicted IoU

generator = pipeline("mask-generation", model="{model_id}")  # every object of the image
result = generator(image, points_per_crop=16, points_per_batch=64)  # a 16 x 16 grid of point prompts
print(len(result["masks"]), "masks")
```'''


def _card_metrics(metrics: dict | None) -> dict | None:
    """The metrics as the card shows them: every dataset named by `dataset_label`, any other path by its name (a
    card never carries a path of the exporting machine)."""
    if not metrics:
        return metrics
    def clean(key, value):
        if key == "dataset":
            return dataset_label(value)
        if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~") or Path(value).exists()):
            return Path(value).name  # a file or folder of this machine: by its name only
        return value

    cleaned = {prompt: {key: clean(key, value) for key, value in result.items()}
               for prompt, result in metrics_by_prompt(metrics).items()}
    return next(iter(cleaned.values())) if len(cleaned) == 1 else cleaned


def _eval_results(metrics: dict | None, datasets: list[str] | None) -> list:
    """model-index entries, one per measured prompt type, on the evaluation dataset: the one recorded with the
    metrics, else the (first) training dataset, whose images the search scores subnets on, else "local data"."""
    from huggingface_hub import EvalResult

    results = []
    for prompt, result in metrics_by_prompt(metrics).items():
        miou = result.get("miou")
        dataset = dataset_label(result.get("dataset") or (datasets or [None])[0])
        if isinstance(miou, (int, float)):
            results.append(EvalResult(
                task_type="mask-generation", dataset_type="local" if dataset == LOCAL_DATA else dataset,
                dataset_name=dataset,
                dataset_split=result.get("split"), metric_type="mean_iou", metric_name=f"mIoU ({prompt} prompt)",
                metric_value=float(miou),
            ))
    return results


def _metrics_table(metrics: dict | None) -> str:
    """One row per prompt type: mIoU of the model's own (single) mask choice, and for box prompts the score of the
    box itself as the mask, the reference a box-prompt figure should be read against."""
    by_prompt = metrics_by_prompt(metrics)
    header = ["prompt", *(METRIC_NAMES[k] for k in TABLE_METRICS), "images / objects"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for prompt in CARD_PROMPTS:
        result = by_prompt.get(prompt)
        if result is None:
            lines.append(f"| {prompt} | not measured: `supersam evaluate --prompt_type {prompt} ...` |"
                         + " |" * (len(header) - 2))
            continue
        cells = [f"{result[k]:.4f}" if isinstance(result.get(k), (int, float)) else "—" for k in TABLE_METRICS]
        counts = f"{result.get('num_images', '?')} / {result.get('num_objects', '?')}"
        lines.append(f"| {prompt} (one per object, {result.get('mask_selection') or 'single'} mask) | "
                     + " | ".join(cells) + f" | {counts} |")
    if not by_prompt:
        lines.append("\nNot evaluated at export time. Export with a dataset (`supersam export --dataset_name ...`, "
                     "`export_subnet(..., eval_data=...)`) to put its measured mIoU here and in the metadata, or "
                     "measure it with `supersam evaluate` (mIoU of point or box prompts on a segmentation dataset).")
    return "\n".join(lines)


def _metrics_description(metrics: dict | None) -> str:
    """How each prompt's metrics were measured: every other entry of its result (images, dataset, seed, ...)."""
    parts = []
    for prompt, result in metrics_by_prompt(metrics).items():
        described = [(k, v) for k, v in result.items()
                     if k not in TABLE_METRICS and k not in METRIC_SKIP and v is not None and k != "num_objects"]
        details = "\n".join(
            f"- {METRIC_NAMES[k]}: {v:.4f}" if k in METRIC_NAMES and isinstance(v, float)
            else f"- `{k}`: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in described
        )
        text = str(result.get("description", "")).strip()
        parts.append(f"How the {prompt}-prompt row was measured" + (f" ({text})" if text else "") + ":\n\n" + details)
    return "\n\n".join(parts)


def _training_description(model: SuperSamModel) -> str:
    config = model.config
    space = model.search_space
    widths = sorted({d for choices in space.mlp_dim_choices for d in choices})
    prioritized = (
        "MLP neurons were ordered by importance and layer drop probabilities measured on calibration images "
        "(Wanda-style prioritization), then "
        if getattr(config, "prioritized", False)
        else ""
    )
    return (
        f"The base was converted into a SuperSAM supernetwork ({prioritized}trained with the sandwich rule so that "
        f"its subnetworks share weights). Search space: encoder layers {list(space.elastic_layers)} may be dropped "
        f"(at least {space.min_layers} of {space.num_layers} kept) and each layer's MLP width is one of {widths}. "
        "A search over this space picked this subnet under size and compute constraints; its weights are sliced "
        "out of the supernet without further training."
    )


__all__ = [
    "CARD_PROMPTS",
    "CARD_TAGS",
    "METRIC_NAMES",
    "LOCAL_DATA",
    "dataset_label",
    "find_license",
    "format_count",
    "format_macs",
    "hub_id",
    "metrics_by_prompt",
    "model_card_template",
    "recorded_hub_base_model",
    "usage_snippet",
    "write_model_card",
    "write_supernet_card",
]
