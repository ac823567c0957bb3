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
from pathlib import Path
from typing import Any

from .arguments import DataArguments, ExportArguments, OutputArguments, with_keywords
from .errors import SupersamError
from .checks import check_finite, is_finite_metric
from .elastic import RESOLUTION
from .errors import UnsupportedSetupError
from .model_card import (dataset_label, find_license, hub_id, metrics_by_prompt, recorded_hub_base_model,
                         write_model_card)
from .modeling_supersam import SuperSamModel
from .onnx_export import INT8_MIOU_DROP_THRESHOLD
from .results import EXPORT_FILE, ExportResult
from .onnx_pipeline import check_onnx_options, export_checked_onnx, measure_miou, onnx_summary
from .hub import push_folder
from .outputs import atomic_output_dir, prepare_output_dir
from .search_space import SubnetConfig

logger = logging.getLogger(__name__)

SUBNET_FILE = EXPORT_FILE  # what ExportResult.save writes
PREPROCESSOR_CONFIG = "preprocessor_config.json"


# export_subnet's keyword conveniences: keyword -> its ExportArguments field (the library's older names included:
# `repo_id` is --hub_model_id, `int8_threshold` --int8_max_miou_drop), and keyword -> its DataArguments field (the
# evaluation dataset named on the card).
EXPORT_KEYWORDS = {name: name for name in (
    "base_model", "license", "datasets", "push_to_hub", "hub_model_id", "hub_private_repo", "commit_message", "onnx",
    "quantize", "int8_max_miou_drop")} | {"repo_id": "hub_model_id", "private": "hub_private_repo",
                                          "int8_threshold": "int8_max_miou_drop"}
EXPORT_DATA_KEYWORDS = {"eval_dataset": "dataset_name", "dataset_name": "dataset_name", "eval_split": "eval_split_name",
                        "eval_split_name": "eval_split_name"}


class ExportedFolder(type(Path())):
    """What `export_subnet` returns: the output folder, a `pathlib.Path` as before (so `out / "README.md"`,
    `SamModel.from_pretrained(out)` and `out == folder` work unchanged), whose `result` is the typed `ExportResult`
    it wrote to `subnet.json` (huggingface_hub's `CommitInfo` is a `str` for the same reason). Paths derived from it
    (`out / "onnx"`) have no result (None)."""

    result: ExportResult | None = None


def export_subnet(supernet: SuperSamModel | Any, subnet: SubnetConfig | dict,
                  args: ExportArguments | str | os.PathLike | None = None, output_args: OutputArguments | None = None,
                  data_args: DataArguments | None = None, *, processor=None, metrics: dict | None = None,
                  eval_data=None, token: str | None = None, output_dir: str | os.PathLike | None = None,
                  overwrite: bool | None = None, **keywords) -> ExportedFolder:
    """Write `subnet` of `supernet` as a standard SAM folder (weights, config, processor, `subnet.json`, model card).

    Args:
        supernet: a `SuperSamModel` (LoRA adapters, or a PEFT wrapper, are merged on a copy; the caller's model is
            not modified). Load a folder or Hub id with `supersam_hf.loading.load_supernet`.
        subnet: a `SubnetConfig` (or its dict) of the supernet's search space.
        args: the `ExportArguments` `supersam export` parses (None: their defaults; its `subnet`, `search_dir` and
            `prompt_type` are the CLI's and not read here): the card's `base_model` (default: the one recorded in
            the supernet; a local path is only named on the card), `license` (default: the base model card's) and
            `datasets`; the upload (`push_to_hub` to `hub_model_id`, default the folder name in your namespace); and
            `onnx` (also `onnx/`, checked against PyTorch in `onnx/parity.json`, with an ONNX Runtime section on the
            card; the `[onnx]` extra) with `quantize="int8"` (an INT8 encoder scored on `eval_data` next to fp32,
            a drop over `int8_max_miou_drop` warned). A path here is the output folder.
        output_args (or output_dir, overwrite): the folder to write; a non-empty one is refused (`FileExistsError`)
            unless `overwrite_output_dir`, which removes only the files this tool wrote there (its manifest).
        data_args: its `dataset_name` / `eval_split_name` name `eval_data` on the card.
        processor: the `SamProcessor` saved alongside (without one the folder has no processor files: a warning).
        metrics: this subnet's evaluation for the card (an `evaluate_model` result, or {"point": ..., "box": ...}).
        eval_data: images (anything `evaluate_model` takes) the exported checkpoint is scored on (PyTorch; with
            `onnx` the ONNX files too); the card shows that for its prompt type in place of `metrics`'s.
        token: the Hub token of the upload (default: `HF_TOKEN` / the stored login).
        **keywords: fields of `args` / `data_args` by name (`license="mit", onnx=True`; the older names are in
            `EXPORT_KEYWORDS` / `EXPORT_DATA_KEYWORDS`); an unknown keyword is refused.

    The folder is written into a temporary sibling and moved into place when complete, so a failure (a full disk
    included) leaves `output_dir` as it was. An output equal to, inside or around the supernet's folder is refused.

    Returns:
        The output folder (`ExportedFolder`, a `Path`); its `.result` is the `ExportResult` of its `subnet.json`.
    """
    args, data, output, overwrite = _resolved_arguments(args, output_args, data_args, output_dir, overwrite, keywords)
    source, inputs = _source_and_inputs(supernet)
    prepare_output_dir(output, overwrite=overwrite, inputs=inputs)  # before any work
    model, subnet = _checked_export_inputs(supernet, subnet, args.onnx, args.quantize, eval_data, processor)
    record, card_args = _record_and_card(model, subnet, source, args, metrics, output)
    sam = _extract_checked(model, subnet, source, metrics)
    # A subnet at a smaller input resolution needs a processor that resizes and pads to that size.
    processor = RESOLUTION.export_processor(processor, model.search_space.layer_plan(subnet))
    _check_eval_resolution(eval_data, sam)
    repo_id = args.hub_model_id or (output.resolve().name if args.push_to_hub else None)
    with atomic_output_dir(output, overwrite=overwrite, inputs=inputs, tool="supersam export") as staging:
        _onnx_and_measurement(sam, staging, processor, record, card_args, args, eval_data, data)
        _write_export(staging, sam, processor, record, {**card_args, "output": staging, "location": output.resolve()},
                      repo_id)
    logger.info("Exported subnet %s (%d parameters) to %s", subnet.name, record.params, output)
    if args.push_to_hub:
        _push(output, repo_id, private=args.hub_private_repo, token=token, subnet=subnet, card_args=card_args,
              commit_message=args.commit_message)
    folder = ExportedFolder(output)
    folder.result = record
    return folder


# -- the steps of an export -------------------------------------------------------------------------------------


def _resolved_arguments(args, output_args, data_args, output_dir, overwrite, keywords: dict
                        ) -> tuple[ExportArguments, dict[str, Any], Path, bool]:
    """`export_subnet`'s settings: its `ExportArguments` with the keywords applied, the card's dataset fields, the
    output folder and whether to overwrite it."""
    if isinstance(args, (str, os.PathLike)):  # export_subnet(supernet, subnet, "folder", ...)
        args, output_dir = None, args if output_dir is None else output_dir
    args, data = with_keywords(args, ExportArguments, keywords, EXPORT_KEYWORDS, "export_subnet", data_args,
                               EXPORT_DATA_KEYWORDS, make=lambda: ExportArguments(subnet=""))
    output_dir = output_dir if output_dir is not None else getattr(output_args, "output_dir", None)
    if output_dir is None:
        raise SupersamError("export_subnet needs the folder to write: pass output_args (OutputArguments) or output_dir.")
    overwrite = overwrite if overwrite is not None else bool(getattr(output_args, "overwrite_output_dir", False))
    return args, data, Path(output_dir), overwrite


def _source_and_inputs(supernet) -> tuple[str | None, list[str]]:
    """Where the supernet was loaded from (its config's `_name_or_path`, or None) and, if that is a local folder,
    it as the one input folder the output must not equal, contain or sit inside."""
    source = getattr(getattr(supernet, "config", None), "_name_or_path", None) or None
    inputs = [source] if source and Path(source).expanduser().is_dir() else []
    return source, inputs


def _checked_export_inputs(supernet, subnet: SubnetConfig | dict, onnx: bool, quantize: str | None, eval_data,
                           processor) -> tuple[SuperSamModel, SubnetConfig]:
    """The supernet with any LoRA adapters merged (on a copy) and the subnet as a `SubnetConfig`, both checked
    (a SuperSamModel, a subnet of its search space, consistent ONNX options) before anything is written."""
    model = _merged(supernet)
    if not isinstance(model, SuperSamModel):
        raise SupersamError(
            f"export_subnet needs a SuperSamModel, got {type(supernet).__name__}; convert a SAM model with "
            "SuperSamModel.from_sam(model), or load a checkpoint with supersam_hf.loading.load_supernet(path)."
        )
    if isinstance(subnet, dict):
        subnet = SubnetConfig.from_dict(subnet)
    model.search_space.validate(subnet)  # before anything is written
    check_onnx_options(onnx, quantize, eval_data, processor)
    return model, subnet


def _check_eval_resolution(eval_data, sam) -> None:
    """Prepared evaluation batches (`EvaluationData`) must hold images at the exported checkpoint's input size."""
    batches = getattr(eval_data, "batches", None)
    if not batches:
        return
    size, expected = batches[0]["pixel_values"].shape[-1], sam.config.vision_config.image_size
    if size != expected:
        raise UnsupportedSetupError(
            f"eval_data holds {size} px images but the subnet exports at {expected} px; prepare it with the export's "
            "processor (supersam_hf.elastic.RESOLUTION.export_processor(processor, plan)) or pass the raw dataset."
        )


def _record_and_card(model: SuperSamModel, subnet: SubnetConfig, source: str | None, args: ExportArguments,
                     metrics: dict | None, output: Path) -> tuple[ExportResult, dict[str, Any]]:
    """The record of subnet.json (the subnet, its and the largest subnet's parameters and MACs, the base model as
    recorded, the metrics) and the model card's arguments."""
    largest = model.search_space.largest()
    sizes = {"params": model.count_parameters(subnet), "macs": model.count_macs(subnet),
             "base_params": model.count_parameters(largest), "base_macs": model.count_macs(largest)}
    recorded, provenance = _provenance(model, source, args.base_model, args.license, args.datasets)
    size = subnet.image_size or model.config.vision_config.image_size
    record = ExportResult(subnet=subnet, **sizes, macs_per=f"one image at {size} px with one point prompt",
                          base_model=recorded or provenance["base_model"], metrics=metrics, output_dir=output)
    return record, dict(model=model, subnet=subnet, sizes=sizes, metrics=metrics, **provenance, output=output)


def _provenance(model: SuperSamModel, source: str | None, base_model: str | None, license: str | None,
                datasets: list[str] | str | None) -> tuple[str | None, dict[str, Any]]:
    """The base model as recorded (given, else the supernet's config; written to subnet.json as is) and the card's
    `base_model` (a Hub id or None), `base_name`, `license` and `datasets`.

    The card's `base_model` metadata must be a Hub id (the Hub rejects anything else); a local base is only named
    by its folder (`base_name`).
    """
    recorded = base_model or getattr(model.config, "base_model", None) or None
    base_name = Path(str(recorded).rstrip("/\\")).name if recorded and not hub_id(recorded) else None
    base_model = hub_id(recorded) or recorded_hub_base_model(model, source)
    base_name = base_model or base_name
    license = license or find_license(source, base_model)
    datasets = [datasets] if isinstance(datasets, str) else (list(datasets) if datasets else None)
    return recorded, {"base_model": base_model, "base_name": base_name, "license": license, "datasets": datasets}


def _extract_checked(model: SuperSamModel, subnet: SubnetConfig, source: str | None, metrics: dict | None):
    """The subnet as a standard `SamModel`, refused if its weights or the given mIoU are not finite (a NaN/inf
    checkpoint or result is never exported)."""
    sam = model.extract_subnet(subnet)
    check_finite(sam, f"subnet {subnet.name} of the supernet {source or ''}".strip())  # never export a NaN checkpoint
    if metrics and "miou" in metrics and not is_finite_metric(metrics["miou"]):
        raise SupersamError(f"The metrics of subnet {subnet.name} hold mIoU {metrics['miou']!r}, not a finite number; a "
                         "NaN/inf result is never exported. Re-evaluate the subnet (check the supernet's weights).")
    return sam


def _measured(sam, subnet: SubnetConfig, eval_data, processor, onnx_report: dict | None, eval_dataset: str | None,
              eval_split: str | None) -> dict[str, Any]:
    """The exported checkpoint's PyTorch mIoU on `eval_data` (already measured by the ONNX step, if it ran), with
    the dataset as the card names it and how it was measured; a non-finite result is refused."""
    if onnx_report is not None and "evaluation" in onnx_report:
        result = dict(onnx_report["evaluation"]["pytorch"])
    else:
        result = measure_miou(sam, eval_data, processor)
    if not is_finite_metric(result.get("miou")):
        raise SupersamError(f"Subnet {subnet.name} scores mIoU {result.get('miou')!r} on the evaluation data, not "
                            "a finite number; a NaN/inf result is never exported. Check the supernet's weights and "
                            "the data.")
    result.update(dataset=dataset_label(eval_dataset), split=eval_split,
                  description="measured by `supersam export` on this checkpoint, PyTorch")
    return {k: v for k, v in result.items() if v is not None}


def _with_measured(metrics: dict | None, measured: dict) -> dict:
    """The card's metrics: the export's own measurement for its prompt type, other prompt types as given."""
    by_prompt = {**metrics_by_prompt(metrics), measured["prompt"]: measured}
    return measured if len(by_prompt) == 1 else by_prompt


def _onnx_and_measurement(sam, staging: Path, processor, record: ExportResult, card_args: dict,
                          args: ExportArguments, eval_data, data: dict[str, Any]) -> None:
    """With `onnx`, the checked ONNX files of the subnet written into the staging folder (with the weights, so the
    atomic move covers them too); with `eval_data`, the exported checkpoint's measured mIoU. Both go into the
    record of subnet.json and the card's arguments."""
    onnx_report = None
    if args.onnx:
        onnx_report = export_checked_onnx(sam, staging, quantize=args.quantize, eval_data=eval_data,
                                          processor=processor,
                                          int8_threshold=args.int8_max_miou_drop or INT8_MIOU_DROP_THRESHOLD)
        record.onnx = onnx_summary(onnx_report)
    card_args["onnx_report"] = onnx_report
    if eval_data is not None:
        measured = _measured(sam, record.subnet, eval_data, processor, onnx_report, data["dataset_name"],
                             data["eval_split_name"])
        record.metrics = card_args["metrics"] = _with_measured(card_args["metrics"], measured)


def _write_export(folder: Path, sam, processor, subnet_record: ExportResult, card_args: dict,
                  repo_id: str | None) -> None:
    """The files of an export: weights + config, processor, subnet.json, model card."""
    sam.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
        write_preprocessor_config(folder, processor)
    else:
        logger.warning(
            "No processor was given or found with the supernet: the export has no processor files, so pipelines and "
            "SamProcessor.from_pretrained cannot load it. Pass processor=SamProcessor(...) to include one."
        )
    subnet_record.save(folder)  # SUBNET_FILE
    write_model_card(**card_args, repo_id=repo_id)


def write_preprocessor_config(folder: Path, processor) -> Path:
    """`preprocessor_config.json`: the image processor's settings where transformers.js (and older transformers)
    read them; `processor.save_pretrained` now writes them only nested in `processor_config.json`, which Python
    keeps reading first, so loading in Python is unchanged."""
    config = {**processor.image_processor.to_dict(), "processor_class": type(processor).__name__}
    path = folder / PREPROCESSOR_CONFIG
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


# -- the supernet ---------------------------------------------------------------------------------------------


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


# -- output folder and upload ---------------------------------------------------------------------------------
def _push(output: Path, repo_id: str, *, private: bool, token: str | None, subnet: SubnetConfig, card_args: dict,
          commit_message: str | None) -> None:
    def rewrite_card(resolved: str) -> None:  # a name without namespace resolved to the user's: show it in the card
        if resolved != repo_id:
            write_model_card(**card_args, repo_id=resolved)

    push_folder(output, repo_id, private=private, token=token, on_repo=rewrite_card,
                commit_message=commit_message or f"Upload SuperSAM subnet {subnet.name}")


# ---------------------------------------------------------------------------------------------------------------


__all__ = ["PREPROCESSOR_CONFIG", "SUBNET_FILE", "ExportedFolder", "export_subnet", "write_preprocessor_config"]
