"""The model card of an exported subnet: metadata (base model, license, datasets, tags) and the subnet's numbers.

Rendered from the package's `templates/model_card.md` through `huggingface_hub.ModelCard`.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path

from .modeling_supersam import SuperSamModel
from .onnx_pipeline import onnx_card_section
from .search_space import SubnetConfig

logger = logging.getLogger(__name__)

CARD_TAGS = ["supersam", "sam", "segment-anything", "pruning", "nas"]
# Float metrics of `evaluate_model` results worth a row in the card's table, with their display names.
METRIC_NAMES = {
    "miou": "mIoU",
    "per_image_miou": "per-image mIoU",
    "mean_dice": "mean Dice",
    "largest_subnet_miou": "mIoU of the largest subnet (the whole supernet), same measurement",
    "latency_ms": "latency, ms (on the search machine)",
}
# Entries of a metrics dict the card shows elsewhere (subnet table, subnet.json) rather than under "how measured".
METRIC_SKIP = {"subnet", "subnet_config", "params", "macs", "description", "per_image"}


def hub_id(value: str | None) -> str | None:
    """`value` if it looks like a Hub model id ("namespace/name") and is not a local path, else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not value or Path(value).exists() or value.count("/") != 1:
        return None
    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


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
            except Exception as error:  # offline, no card, private repo...: the card then has no license
                logger.info("Could not read the model card of %s for its license (%s).", base_model, error)
    for card in cards:
        try:
            license = ModelCard.load(card).data.license
        except Exception:
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
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    model_name = repo_id.split("/")[-1] if repo_id else f"SuperSAM subnet {subnet.name}"
    eval_results = None
    miou = (metrics or {}).get("miou")
    # Structured results (model-index) need the evaluation dataset: the one recorded with the metrics, else the
    # (first) training dataset, whose images the search scores subnets on.
    dataset = (metrics or {}).get("dataset") or (datasets or [None])[0]
    if isinstance(miou, (int, float)) and dataset:
        eval_results = [
            EvalResult(
                task_type="mask-generation",
                dataset_type=str(dataset),
                dataset_name=str(dataset),
                dataset_split=metrics.get("split"),
                metric_type="mean_iou",
                metric_name="mIoU",
                metric_value=float(miou),
            )
        ]
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
    vision = model.config.vision_config
    params, base_params, macs, base_macs = sizes["params"], sizes["base_params"], sizes["macs"], sizes["base_macs"]
    card = ModelCard.from_template(
        card_data,
        template_path=str(model_card_template()),
        model_name=model_name,
        base_model_name=base_name or base_model or "a SAM checkpoint",
        num_layers=len(subnet.kept_layers),
        base_num_layers=vision.num_hidden_layers,
        params=_count(params),
        base_params=_count(base_params),
        macs=_count(macs),
        base_macs=_count(base_macs),
        image_size=vision.image_size,
        size_reduction=(
            f"This model has {params / base_params:.1%} of the base's parameters ({1 - params / base_params:.1%} "
            f"fewer) and needs {macs / base_macs:.1%} of its MACs ({1 - macs / base_macs:.1%} fewer)."
        ),
        kept_layers=list(subnet.kept_layers),
        mlp_dims=list(subnet.mlp_dims),
        mlp_dim=max(subnet.mlp_dims),
        subnet_name=subnet.name,
        subnet_json=json.dumps(subnet.to_dict()),
        metrics_table=_metrics_table(metrics),
        metrics_description=_metrics_description(metrics),
        repo_id=repo_id or str(location or output),  # location: where the folder ends up (written elsewhere)
        training_description=_training_description(model),
        onnx_section=onnx_card_section(onnx_report, repo_id or str(location or output)) if onnx_report else "",
    )
    card.save(output / "README.md")
    return card


def _count(n: int) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix} ({n:,})"
    return f"{n:,}"


def _metrics_table(metrics: dict | None) -> str:
    if not metrics:
        return (
            "Not evaluated at export time. Measure it with `supersam evaluate` (mIoU of point or box prompts on a "
            "segmentation dataset)."
        )
    rows = [(METRIC_NAMES.get(k, k), v) for k, v in metrics.items() if isinstance(v, float)]
    if not rows:
        return "No numeric metrics were recorded."
    return "\n".join(["| metric | value |", "|---|---|", *(f"| {name} | {value:.4f} |" for name, value in rows)])


def _metrics_description(metrics: dict | None) -> str:
    """How the metrics were measured: every non-float entry of the metrics dict (prompt, images, dataset, ...)."""
    if not metrics:
        return ""
    described = [(k, v) for k, v in metrics.items() if not isinstance(v, float) and v is not None and k not in METRIC_SKIP]
    text = str(metrics.get("description", "")).strip()
    details = "\n".join(f"- `{k}`: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in described)
    parts = [p for p in (text, "How it was measured:\n\n" + details if details else "") if p]
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


__all__ = ["CARD_TAGS", "METRIC_NAMES", "find_license", "hub_id", "model_card_template", "recorded_hub_base_model", "write_model_card"]
