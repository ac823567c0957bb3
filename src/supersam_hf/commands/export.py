"""`supersam export`: one subnet of a supernet → a standard SAM checkpoint folder + model card (optionally pushed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..checks import check_positive
from ..arguments import DataArguments, ExportArguments, ModelArguments, OutputArguments
from ..elastic import RESOLUTION
from ..evaluation import EvaluationData
from ..export import export_subnet
from ..onnx_pipeline import check_onnx_options
from ..loading import load_processor, load_supernet, recorded_base_model
from ..search.results import select_subnet, subnet_metrics
from ..model_card import metrics_by_prompt
from .common import hub_repo_flags, load_data, prepare_output, refuse_streaming


@dataclass(kw_only=True)
class ExportDataArguments(DataArguments):
    """The shared data flags; for export the dataset is optional (it scores the exported model for its card)."""

    dataset_name: Optional[str] = field(
        default=None,
        metadata={"help": "HF dataset whose --eval_split_name scores the exported checkpoint for the card (mIoU, "
                  "model-index); with --onnx also the fp32-ONNX files and INT8."},
    )


ARGUMENTS = (ModelArguments, ExportDataArguments, OutputArguments, ExportArguments)


def _eval_data(data_args: ExportDataArguments, args: ExportArguments, processor):
    """The evaluation images for the ONNX files (None without --dataset_name), prepared once for every model."""
    if data_args.dataset_name is None:
        return None
    refuse_streaming(data_args, "export")
    dataset = load_data(data_args, data_args.eval_split_name, split_flag="--eval_split_name")
    return EvaluationData.prepare(dataset, processor, prompt=args.prompt_type, max_images=data_args.max_eval_images,
                                  image_column=data_args.image_column, mask_column=data_args.mask_column,
                                  mask_kind=data_args.mask_kind)


def format_onnx(summary: dict) -> str:
    """The ONNX lines of the export summary; an INT8 drop over the threshold is its own WARNING line."""
    parity = "passed" if summary["parity_passed"] else "FAILED"
    lines = [f"onnx: {', '.join(summary['files'])}; parity with PyTorch {parity} (embeddings max rel. error "
             f"{summary['embeddings_max_rel']:.2e}, mask logits {summary['pred_masks_max_rel']:.2e})"]
    mious = [(name, summary.get(f"{key}_miou")) for name, key in
             (("PyTorch", "pytorch"), ("ORT fp32", "onnxruntime_fp32"), ("ORT INT8", "onnxruntime_int8"))]
    if any(value is not None for _, value in mious):
        lines.append("mIoU: " + ", ".join(f"{name} {value:.4f}" for name, value in mious if value is not None))
    if summary.get("int8_warning"):
        lines.append(summary["int8_warning"])
    return "\n".join(lines)


def _search_dir(model_args: ModelArguments, args: ExportArguments) -> str | None:
    if args.search_dir:
        return args.search_dir
    spec = args.subnet.strip()
    if spec.endswith(".json") and Path(spec).is_file():
        return str(Path(spec).parent)
    return model_args.model_name_or_path if Path(model_args.model_name_or_path).is_dir() else None


def run(model_args: ModelArguments, data_args: ExportDataArguments, output_args: OutputArguments,
        args: ExportArguments) -> Path:
    """Pick the subnet from the search output, export it (with its search metrics on the card), maybe push it."""
    check_onnx_options(args.onnx, args.quantize, data_args.dataset_name, True)  # a missing extra: before any work
    # Before any work: writable, not the supernet folder (nor inside / around it), empty unless --overwrite_output_dir.
    prepare_output(output_args, model_args.model_name_or_path)
    if data_args.max_eval_images is not None:  # named as the flag, before the library names it max_images
        check_positive("max_eval_images", data_args.max_eval_images)
    search_dir = _search_dir(model_args, args)
    subnet = select_subnet(args.subnet, search_dir)
    metrics = subnet_metrics(search_dir, subnet)
    supernet = load_supernet(model_args.model_name_or_path, revision=model_args.revision, token=model_args.token,
                             device="cpu")
    processor = load_processor(model_args.model_name_or_path, model_args.processor_name_or_path,
                               recorded_base_model(supernet), revision=model_args.revision, token=model_args.token)
    # ONNX mIoU is measured on the exported files: images prepared at the subnet's resolution (its processor).
    eval_data = _eval_data(data_args, args, RESOLUTION.export_processor(processor, supernet.search_space.layer_plan(subnet)))
    repo_id, private = hub_repo_flags(args.hub_model_id, args.hub_private_repo or None, args.repo_id, args.private)
    output = export_subnet(
        supernet, subnet, args, output_args, data_args, processor=processor, metrics=metrics, eval_data=eval_data,
        token=model_args.token, base_model=args.base_model or recorded_base_model(supernet),
        repo_id=repo_id, private=private,  # the deprecated --repo_id / --private resolved (with their warning)
    )
    record = output.result  # the ExportResult written to subnet.json
    measured = metrics_by_prompt(record.metrics).get(args.prompt_type) if eval_data is not None else metrics
    miou = f", mIoU {measured['miou']:.4f}" if isinstance((measured or {}).get("miou"), float) else ""
    print(
        f"supersam export: subnet {subnet.name} ({record.params:,} parameters, "
        f"{record.params / record.base_params:.1%} of the base{miou}) -> {output}"
    )
    if record.onnx is not None:
        print(format_onnx(record.onnx))
    return output
