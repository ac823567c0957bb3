"""Export a subnet of a SuperSAM supernet as a standard SAM checkpoint, with a model card, optionally to the Hub.

The folder `export_subnet` writes is what `SamModel.save_pretrained` + `SamProcessor.save_pretrained` write
(`config.json` with model_type "sam", `model.safetensors`, processor files), plus `subnet.json` (the subnet, its
size and cost) and `README.md`, a model card rendered from the package's `templates/model_card.md` through
`huggingface_hub.ModelCard`. Anything that loads SAM loads it: `SamModel.from_pretrained`,
`pipeline("mask-generation")`. `push_to_hub` uploads the folder with `create_repo` + `upload_folder`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .modeling_supersam import SuperSamModel
from .search_space import SubnetConfig

logger = logging.getLogger(__name__)

CARD_TAGS = ["supersam", "sam", "segment-anything", "pruning", "nas"]
SUBNET_FILE = "subnet.json"
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


def export_subnet(
    supernet: SuperSamModel | Any | str | os.PathLike,
    subnet: SubnetConfig | dict,
    output_dir: str | os.PathLike,
    processor=None,
    metrics: dict | None = None,
    base_model: str | None = None,
    license: str | None = None,
    datasets: list[str] | str | None = None,
    overwrite: bool = False,
    push_to_hub: bool = False,
    repo_id: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> Path:
    """Write `subnet` of `supernet` as a standard SAM folder (weights, config, processor, `subnet.json`, model card).

    Args:
        supernet: a `SuperSamModel` (a PEFT-wrapped one or one with LoRA layers is merged on a copy first; the
            caller's model is not modified), or a folder / Hub id of a saved supernet, a plain SAM checkpoint, or a
            LoRA adapter of one.
        subnet: the subnet to export (a `SubnetConfig` or its dict); must belong to the supernet's search space.
        output_dir: the folder to write. If it exists and is not empty, `FileExistsError` unless `overwrite`.
        processor: the `SamProcessor` (or a folder holding one) to save alongside; default: the one saved with
            the supernet (when it is a path or Hub id).
        metrics: evaluation of this subnet for the card, e.g. the dict `evaluate_model` returns ("miou" and how it
            was measured: "prompt", "mask_selection", "num_images", ...).
        base_model: Hub id of the SAM checkpoint the supernet came from; default: the one recorded in the supernet
            config (or the Hub id the supernet was loaded from). A local path is only named in the card's text (the
            Hub accepts only repo ids as `base_model` metadata).
        license: the card's license; default: the license of the supernet's or the base model's card, if known.
        datasets: Hub ids of the datasets the supernet was trained on, for the card's metadata.
        overwrite: replace the files of an existing non-empty `output_dir` (stale weight files are removed).
        push_to_hub: after writing the folder, upload it to `repo_id` (created if needed; default: the folder name
            in your namespace). The token comes from `token`, else `HF_TOKEN` / the stored login.
        private: create the repo as private.
        commit_message: message of the upload commit.

    Returns:
        The output folder.
    """
    output = Path(output_dir)
    _check_output_dir(output, overwrite)
    model, source, default_processor = _load_supernet(supernet)
    if isinstance(subnet, dict):
        subnet = SubnetConfig.from_dict(subnet)
    model.search_space.validate(subnet)  # before anything is written
    if isinstance(processor, (str, os.PathLike)):
        from transformers import SamProcessor

        processor = SamProcessor.from_pretrained(processor)
    processor = processor if processor is not None else default_processor()

    largest = model.search_space.largest()
    sizes = {
        "params": model.count_parameters(subnet),
        "macs": model.count_macs(subnet),
        "base_params": model.count_parameters(largest),
        "base_macs": model.count_macs(largest),
    }
    # The card's `base_model` must be a Hub id (the Hub rejects anything else); a local base only gets named.
    base_name = Path(str(base_model).rstrip("/\\")).name if base_model and not _hub_id(base_model) else None
    base_model = _hub_id(base_model) or _recorded_base_model(model, source)
    base_name = base_model or base_name
    license = license or _find_license(source, base_model)
    datasets = [datasets] if isinstance(datasets, str) else (list(datasets) if datasets else None)

    sam = model.extract_subnet(subnet)
    if overwrite:
        _remove_stale_weights(output)
    output.mkdir(parents=True, exist_ok=True)
    sam.save_pretrained(output)
    if processor is not None:
        processor.save_pretrained(output)
    else:
        logger.warning(
            "No processor was given or found with the supernet: %s has no processor files, so pipelines and "
            "SamProcessor.from_pretrained cannot load it. Pass processor=SamProcessor(...) to include one.", output
        )
    subnet_record = {
        **subnet.to_dict(),  # top-level kept_layers / mlp_dims: SubnetConfig.from_json(subnet.json) reads it back
        "name": subnet.name,
        **sizes,
        "macs_per": f"one image at {model.config.vision_config.image_size} px with one point prompt",
        "base_model": base_name,
        "metrics": metrics,
    }
    text = json.dumps(subnet_record, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    (output / SUBNET_FILE).write_text(text + "\n", encoding="utf-8")

    card_args = dict(model=model, subnet=subnet, sizes=sizes, metrics=metrics, base_model=base_model,
                     base_name=base_name, license=license, datasets=datasets, output=output)
    card_repo_id = repo_id or (output.resolve().name if push_to_hub else None)
    write_model_card(**card_args, repo_id=card_repo_id)
    logger.info("Exported subnet %s (%d parameters) to %s", subnet.name, sizes["params"], output)

    if push_to_hub:
        _push(output, card_repo_id, private=private, token=token, subnet=subnet, card_args=card_args,
              commit_message=commit_message)
    return output


# -- the supernet ---------------------------------------------------------------------------------------------
def _load_supernet(supernet) -> tuple[SuperSamModel, str | None, Any]:
    """(the supernet with LoRA merged, the path / Hub id it came from or None, a callable giving the default processor)."""
    if isinstance(supernet, (str, os.PathLike)):
        source = str(supernet)
        model = _load_supernet_from(source)
        return model, source, lambda: _load_processor(source, _adapter_base(source))
    model = _merged(supernet)
    if not isinstance(model, SuperSamModel):
        raise ValueError(
            f"export_subnet needs a SuperSamModel (or a path to one), got {type(supernet).__name__}; convert a SAM "
            "model with SuperSamModel.from_sam(model) or SuperSamModel.from_pretrained(path)."
        )
    return model, None, lambda: None


def _load_supernet_from(source: str) -> SuperSamModel:
    path = Path(source)
    if not path.exists() and _hub_id(source) is None:
        raise FileNotFoundError(f"Supernet folder {source} does not exist (and it is not a Hub id 'namespace/name').")
    if path.is_file():
        raise ValueError(f"--supernet {source} is a file; give the folder saved by save_pretrained (or a Hub id).")
    adapter_only = path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()
    if path.is_dir() and not adapter_only and not (path / "config.json").is_file():
        raise ValueError(f"{source} is not a model folder: it has no config.json (nor adapter_config.json).")
    try:
        if adapter_only:  # a LoRA adapter saved by PeftModel.save_pretrained: load its base, then merge
            from peft import PeftModel

            model = PeftModel.from_pretrained(SuperSamModel.from_pretrained(_adapter_base(source)), source)
        else:
            model = SuperSamModel.from_pretrained(source)
    except ValueError as error:  # e.g. a config.json of another model type: already says what is wrong
        raise ValueError(f"Cannot export from {source}: {error}") from error
    except Exception as error:  # corrupt or truncated files, missing weights, unreachable Hub id, ...
        raise ValueError(
            f"Cannot load a supernet from {source}: {type(error).__name__}: {error}. Expected a folder written by "
            "SuperSamModel.save_pretrained (config.json + model.safetensors) or a SAM checkpoint."
        ) from error
    return _merged(model, copy_first=False).eval()


def _merged(model, copy_first: bool = True):
    """The model with any LoRA (PEFT) adapters merged into its weights and the adapter layers removed.

    Handles a `PeftModel` wrapper (`merge_and_unload`) and adapters injected into the model itself (transformers'
    `load_adapter` / `add_adapter`, peft's `inject_adapter_in_model`). Merges a copy unless `copy_first` is False.
    """
    try:
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # without peft there can be no adapters
        return model
    has_layers = any(isinstance(m, BaseTunerLayer) for m in model.modules())
    if not isinstance(model, PeftModel) and not has_layers:
        return model
    if copy_first:
        model = copy.deepcopy(model)
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in model.__dict__:
            delattr(model, attr)
    model._hf_peft_config_loaded = False
    return model


def _adapter_base(source: str) -> str | None:
    """The base model of a folder holding only a LoRA adapter (`adapter_config.json`), else None."""
    path = Path(source)
    if not (path / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return None
    return json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]


def _load_processor(*sources: str | None):
    """The `SamProcessor` saved in the first of `sources` that has one, else None."""
    from transformers import SamProcessor

    for source in filter(None, sources):
        try:
            return SamProcessor.from_pretrained(source)
        except (OSError, ValueError, TypeError) as error:
            logger.info("No processor in %s (%s).", source, error)
    return None


# -- card metadata --------------------------------------------------------------------------------------------
def _hub_id(value: str | None) -> str | None:
    """`value` if it looks like a Hub model id ("namespace/name") and is not a local path, else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not value or Path(value).exists() or value.count("/") != 1:
        return None
    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


def _recorded_base_model(model: SuperSamModel, source: str | None) -> str | None:
    """The base SAM's Hub id: recorded in the config (`base_model`), else the Hub id the model was loaded from."""
    config = model.config
    for candidate in (getattr(config, "base_model", None), getattr(config, "base_model_name_or_path", None),
                      getattr(config, "_name_or_path", None), source):
        if isinstance(candidate, str) and _hub_id(candidate):
            return candidate
    return None


def _find_license(source: str | None, base_model: str | None) -> str | None:
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
):
    """Render the package's model card template for this subnet into `output/README.md`; returns the `ModelCard`.

    `base_model` (a Hub id or None) goes into the metadata; `base_name` names the base in the text (default:
    `base_model`)."""
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
        repo_id=repo_id or str(output),
        training_description=_training_description(model),
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


# -- output folder and upload ---------------------------------------------------------------------------------
def _check_output_dir(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"Output {output} exists and is not a folder.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"Output folder {output} is not empty; choose a new folder or pass overwrite=True (--overwrite).")


def _remove_stale_weights(output: Path) -> None:
    """Before overwriting: remove weight files of an earlier export so old shards cannot mix with the new ones."""
    if not output.is_dir():
        return
    for pattern in ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin"):
        for stale in output.glob(pattern):
            if stale.is_file():
                stale.unlink()


def _push(output: Path, repo_id: str, *, private: bool, token: str | None, subnet: SubnetConfig, card_args: dict,
          commit_message: str | None) -> None:
    from huggingface_hub import create_repo, get_token, upload_folder

    token = token or get_token()
    if not token:
        raise ValueError(
            f"Cannot push to the Hub: no Hugging Face token. Set the HF_TOKEN environment variable, run "
            f"`hf auth login`, or pass --token (token=...). The export is kept in {output}; upload it later with "
            f"`hf upload {repo_id} {output}`."
        )
    try:
        repo_url = create_repo(repo_id, private=private, exist_ok=True, token=token)
        if repo_url.repo_id != repo_id:  # a name without namespace resolved to the user's: show it in the card
            write_model_card(**card_args, repo_id=repo_url.repo_id)
        commit = upload_folder(
            folder_path=str(output),
            repo_id=repo_url.repo_id,
            token=token,
            commit_message=commit_message or f"Upload SuperSAM subnet {subnet.name}",
        )
    except Exception as error:  # HTTP errors (401, 403, ...) and connection failures: say so without a traceback
        raise ValueError(
            f"Pushing {output} to the Hub repo {repo_id} failed ({type(error).__name__}: {error}). The export is kept "
            f"in {output}."
        ) from error
    print(f"Pushed {output} to {repo_url}: {commit.commit_url}")


# ---------------------------------------------------------------------------------------------------------------
# `supersam export`
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ExportArguments:
    """Arguments of `supersam export` / `examples/export.py`."""

    supernet: str = field(metadata={"help": "Trained supernet: a folder written by save_pretrained, or a Hub id."})
    subnet: str = field(
        metadata={
            "help": "Which subnet: 'best' (best_subnet.json of the search), 'pareto:N' (the N-th Pareto-front subnet), "
            "a JSON file (e.g. a subnet.json) or inline JSON with kept_layers and mlp_dims."
        }
    )
    output: str = field(metadata={"help": "Folder to write the standard SAM checkpoint, processor and model card to."})
    search_dir: str | None = field(
        default=None,
        metadata={
            "help": "Search output folder (pareto.json, best_subnet.json, search_results.json); default: the folder "
            "of a --subnet JSON file, else the supernet folder."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Write into a non-empty --output folder."})
    base_model: str | None = field(
        default=None, metadata={"help": "Hub id of the base SAM for the card (default: recorded in the supernet)."}
    )
    license: str | None = field(default=None, metadata={"help": "License for the card (default: the base model's)."})
    datasets: list[str] | None = field(
        default=None, metadata={"help": "Hub ids of the training datasets, for the card's metadata."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the exported folder to the Hub."})
    repo_id: str | None = field(
        default=None, metadata={"help": "Hub repo to push to, 'namespace/name' (default: the --output folder name)."}
    )
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    token: str | None = field(
        default=None,
        metadata={"help": "Hub token with write access (default: HF_TOKEN or the stored `hf auth login` token; "
                          "prefer those, a flag shows up in shell history)."},
    )
    commit_message: str | None = field(default=None, metadata={"help": "Commit message of the upload."})


def run_export(args: ExportArguments) -> Path:
    """Pick the subnet from the search output, export it (with its search metrics on the card), maybe push it."""
    from .search import select_subnet

    search_dir = _default_search_dir(args)
    subnet = select_subnet(args.subnet, search_dir)
    metrics = _search_metrics(search_dir, subnet)
    output = export_subnet(
        args.supernet,
        subnet,
        args.output,
        metrics=metrics,
        base_model=args.base_model,
        license=args.license,
        datasets=args.datasets,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
        repo_id=args.repo_id,
        private=args.private,
        token=args.token,
        commit_message=args.commit_message,
    )
    record = json.loads((output / SUBNET_FILE).read_text(encoding="utf-8"))
    miou = f", mIoU {metrics['miou']:.4f}" if isinstance((metrics or {}).get("miou"), float) else ""
    print(
        f"supersam export: subnet {subnet.name} ({record['params']:,} parameters, "
        f"{record['params'] / record['base_params']:.1%} of the base{miou}) -> {output}"
    )
    return output


def _default_search_dir(args: ExportArguments) -> str | None:
    if args.search_dir:
        return args.search_dir
    spec = args.subnet.strip()
    if spec.endswith(".json") and Path(spec).is_file():
        return str(Path(spec).parent)
    return args.supernet if Path(args.supernet).is_dir() else None


def _search_metrics(search_dir: str | None, subnet: SubnetConfig) -> dict | None:
    """How the search measured `subnet`: its entry in search_results.json (with the search's settings: prompt, mask
    selection, images) or, failing that, in pareto.json / best_subnet.json. None if it was not scored there."""
    from .search import BEST_FILE, PARETO_FILE, RESULTS_FILE

    if not search_dir or not Path(search_dir).is_dir():
        return None
    settings: dict = {}
    entries: list[dict] = []
    for name in (RESULTS_FILE, PARETO_FILE, BEST_FILE):
        try:
            data = json.loads((Path(search_dir) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("evaluations"), list):  # search_results.json
            settings = data.get("settings") or {}
            entries += data["evaluations"]
        elif isinstance(data, list):  # pareto.json
            entries += data
        elif isinstance(data, dict):  # best_subnet.json
            entries.append(data)
    scored = [e for e in entries if isinstance(e, dict) and isinstance(e.get("miou"), (int, float))]
    entry = next((e for e in scored if _entry_subnet(e) == subnet), None)
    if entry is None:
        return None
    metrics = {k: float(entry[k]) for k in ("miou", "per_image_miou", "mean_dice") if isinstance(entry.get(k), (int, float))}
    reference = next((e for e in scored if e.get("reference")), None)
    if reference is not None and reference is not entry:
        metrics["largest_subnet_miou"] = float(reference["miou"])
    if isinstance(entry.get("latency_ms"), (int, float)):
        metrics["latency_ms"] = float(entry["latency_ms"])
    for key in ("dataset", "split", "prompt", "mask_selection", "num_images", "max_images", "eval_seed"):
        if settings.get(key) is not None:
            metrics[key] = settings[key]
    metrics["measured_by"] = f"supersam search ({RESULTS_FILE if settings else PARETO_FILE}), on the supernet's weights"
    return metrics


def _entry_subnet(entry: dict) -> SubnetConfig | None:
    from .evaluation import parse_subnet

    try:
        return parse_subnet(entry)
    except ValueError:
        return None
