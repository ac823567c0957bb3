"""The ONNX step of an export: write the files, check them against PyTorch, measure their mIoU, describe them.

`export_subnet(..., onnx=True[, quantize="int8", eval_data=...])` calls `export_checked_onnx` on the extracted
`SamModel`, inside the folder it writes, then puts `onnx_card_section` into the model card:

* the files of `onnx_export.export_onnx` (encoder, point decoder, box decoder) and, with `quantize="int8"`,
  `vision_encoder_quantized.onnx` + `prompt_encoder_mask_decoder_quantized.onnx` (`onnx_export.quantize_int8`,
  transformers.js's "q8" names);
* parity with PyTorch on deterministic inputs (`parity_inputs`: 2 images x 3 prompts, points and boxes), written
  to `onnx/parity.json`: fp32 must match to `PARITY_TOLERANCE` (relative) with identical thresholded masks; the
  INT8 encoder's errors are recorded (quantized, so never exact);
* with evaluation data: mIoU of the PyTorch checkpoint, of the fp32 files and of the INT8 encoder through ONNX
  Runtime, by `evaluate_model` with the same prompts and metric; an INT8 drop over the threshold is a loud warning
  and a note on the card.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import SamConfig, SamModel

from .errors import SupersamError
from .arguments import DEFAULT_PROMPT_TYPE
from .onnx_export import (
    BOX_DECODER_FILE,
    DECODER_FILE,
    DECODER_INT8_FILE,
    ENCODER_FILE,
    ENCODER_INT8_FILE,
    INT8_MIOU_DROP_THRESHOLD,
    ONNX_SUBFOLDER,
    OnnxSamModel,
    check_parity,
    export_onnx,
    int8_drop_warning,
    onnx_usage_snippet,
    quantize_int8,
    transformers_js_snippet,
    require_onnx,
)

logger = logging.getLogger(__name__)

PARITY_FILE = "parity.json"
PARITY_TOLERANCE = 1e-4  # relative error of embeddings and mask logits (fp32 files vs PyTorch)
QUANTIZATIONS = ("int8",)
PARITY_KINDS = ("points", "boxes")


def check_onnx_options(onnx: bool, quantize: str | None, eval_data: Any, processor: Any) -> None:
    """Refuse inconsistent ONNX options before anything is written; check the `[onnx]` extra is installed."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise SupersamError(f"Unknown quantization {quantize!r}; choose one of {QUANTIZATIONS}.")
    if quantize is not None and not onnx:
        raise SupersamError(f"quantize={quantize!r} quantizes the ONNX encoder: also pass onnx=True (--onnx).")
    if quantize is not None and eval_data is None:
        raise SupersamError(
            f"quantize={quantize!r} needs evaluation data: the card records the INT8 encoder's measured mIoU next to "
            "fp32's. Pass eval_data=... (--dataset_name with its split flags)."
        )
    if eval_data is not None and processor is None:
        raise SupersamError("Measuring the exported model's mIoU on eval_data needs its SamProcessor (processor=...).")
    if onnx:
        require_onnx()


def parity_inputs(config: SamConfig, kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic check inputs: 2 random images, 3 prompts each (2 points with mixed labels, or a box), in
    model coordinates. More than the single image and prompt the files were traced with, so dynamic axes are
    exercised too."""
    if kind not in PARITY_KINDS:
        raise SupersamError(f"Unknown parity input kind {kind!r}; choose one of {PARITY_KINDS}.")
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(seed)
    inputs = {"pixel_values": torch.randn(2, config.vision_config.num_channels, size, size, generator=generator)}
    if kind == "points":
        inputs["input_points"] = torch.rand(2, 3, 2, 2, generator=generator) * size
        inputs["input_labels"] = torch.tensor([[[1, 0], [1, 1], [1, 0]]] * 2, dtype=torch.int64)
    else:
        corners = torch.rand(2, 3, 2, 2, generator=generator) * size
        inputs["input_boxes"] = torch.cat([corners.min(dim=2).values, corners.max(dim=2).values], dim=-1)
    return inputs


def parity_passed(parity: dict[str, Any], tolerance: float = PARITY_TOLERANCE) -> bool:
    """fp32 parity: embeddings and mask logits within `tolerance` (relative), identical thresholded masks."""
    return (parity["embeddings_max_rel"] <= tolerance and parity["pred_masks_max_rel"] <= tolerance
            and bool(parity["masks_identical"]))


def _parity(sam: SamModel, folder: Path, int8: bool, boxes: bool) -> dict[str, dict[str, Any]]:
    runner = OnnxSamModel(folder, int8=int8)
    kinds = PARITY_KINDS if boxes else ("points",)
    return {kind: check_parity(sam, runner, parity_inputs(sam.config, kind)) for kind in kinds}


def _miou(model, eval_data, processor, eval_options: dict[str, Any]) -> dict[str, Any]:
    from .evaluation import evaluate_model  # evaluation imports the supernet; only needed with data

    result = evaluate_model(model, eval_data, processor, show_progress=False, **eval_options)
    return {k: result[k] for k in ("miou", "per_image_miou", "mean_dice", "num_objects", "num_images", "prompt",
                                   "mask_selection", "seed")}


def measure_miou(model, eval_data, processor, eval_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """mIoU (and Dice, counts, how measured) of `model` (PyTorch or ONNX Runtime) on `eval_data`, with the prompt
    `eval_data` keeps (an `EvaluationData`), else the default one."""
    options = {"prompt": getattr(eval_data, "prompt", DEFAULT_PROMPT_TYPE), **(eval_options or {})}
    return _miou(model, eval_data, processor, options)


def _evaluate(sam: SamModel, folder: Path, eval_data, processor, int8: bool, threshold: float,
              eval_options: dict[str, Any]) -> dict[str, Any]:
    """mIoU of the PyTorch checkpoint and of the ONNX files (fp32, INT8 encoder) on the same data and prompts."""
    options = {"prompt": getattr(eval_data, "prompt", DEFAULT_PROMPT_TYPE), **eval_options}
    report = {"pytorch": _miou(sam, eval_data, processor, options),
              "onnxruntime_fp32": _miou(OnnxSamModel(folder), eval_data, processor, options)}
    if int8:
        report["onnxruntime_int8"] = _miou(OnnxSamModel(folder, int8=True), eval_data, processor, options)
        fp32, quantized = report["onnxruntime_fp32"]["miou"], report["onnxruntime_int8"]["miou"]
        report["int8_miou_drop"] = fp32 - quantized
        report["int8_drop_threshold"] = threshold
        report["int8_warning"] = int8_drop_warning(fp32, quantized, threshold)
    return report


def export_checked_onnx(
    sam: SamModel,
    output_dir: str | os.PathLike,
    *,
    quantize: str | None = None,
    eval_data=None,
    processor=None,
    int8_threshold: float = INT8_MIOU_DROP_THRESHOLD,
    eval_options: dict[str, Any] | None = None,
    boxes: bool = True,
    opset: int = 17,
) -> dict[str, Any]:
    """Export `sam` to `output_dir/onnx/`, check parity, optionally quantize and measure mIoU; the report.

    `eval_data`: anything `evaluate_model` takes (an `EvaluationData` keeps its prompt); `eval_options`: more
    `evaluate_model` arguments (e.g. mask_selection, max_images). The report (also `onnx/parity.json`) holds
    "files", "parity" ({"fp32": {"points": ..., "boxes": ...}, "int8": ...}), "parity_passed", "tolerance" and,
    with data, "evaluation". Failed fp32 parity and an INT8 drop over `int8_threshold` are logged as warnings.
    """
    check_onnx_options(True, quantize, eval_data, processor)
    sam = sam.eval()
    paths = export_onnx(sam, output_dir, opset=opset, boxes=boxes)
    folder = Path(output_dir) / ONNX_SUBFOLDER
    if quantize == "int8":
        paths["vision_encoder_int8"] = quantize_int8(folder)
        paths["prompt_encoder_mask_decoder_int8"] = folder / DECODER_INT8_FILE
    parity = {"fp32": _parity(sam, folder, int8=False, boxes=boxes)}
    if quantize == "int8":
        parity["int8"] = _parity(sam, folder, int8=True, boxes=boxes)
    passed = all(parity_passed(p) for p in parity["fp32"].values())
    report: dict[str, Any] = {
        "files": sorted(f"{ONNX_SUBFOLDER}/{p.name}" for p in paths.values()),
        "opset": opset,
        "inputs": "2 random images x 3 prompts each (2 points, or a box), deterministic (parity_inputs, seed 0)",
        "tolerance": PARITY_TOLERANCE,
        "parity_passed": passed,
        "parity": parity,
    }
    if not passed:
        logger.warning("WARNING: the fp32 ONNX files differ from PyTorch beyond %g (relative) or in thresholded "
                       "masks: %s", PARITY_TOLERANCE, json.dumps(parity["fp32"]))
    if eval_data is not None:
        report["evaluation"] = _evaluate(sam, folder, eval_data, processor, quantize == "int8", int8_threshold,
                                         eval_options or {})
        if report["evaluation"].get("int8_warning"):
            logger.warning(report["evaluation"]["int8_warning"])
    (folder / PARITY_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def onnx_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The short form for subnet.json: files, parity verdict and worst errors, measured mIoUs."""
    fp32 = report["parity"]["fp32"].values()
    summary: dict[str, Any] = {
        "files": report["files"],
        "parity_passed": report["parity_passed"],
        "embeddings_max_rel": max(p["embeddings_max_rel"] for p in fp32),
        "pred_masks_max_rel": max(p["pred_masks_max_rel"] for p in fp32),
    }
    evaluation = report.get("evaluation") or {}
    for key in ("pytorch", "onnxruntime_fp32", "onnxruntime_int8"):
        if key in evaluation:
            summary[f"{key}_miou"] = evaluation[key]["miou"]
    if "int8_warning" in evaluation:
        summary["int8_warning"] = evaluation["int8_warning"]
    return summary


def _parity_rows(report: dict[str, Any]) -> list[str]:
    rows = ["| files | prompts | embeddings max rel. error | mask logits max rel. error | thresholded mask pixels "
            "differing |", "|---|---|---|---|---|"]
    for precision, label in (("fp32", "fp32"), ("int8", "INT8 encoder")):
        for kind, p in report["parity"].get(precision, {}).items():
            rows.append(f"| {label} | {kind} | {p['embeddings_max_rel']:.2e} | {p['pred_masks_max_rel']:.2e} | "
                        f"{p['mask_pixels_differing']} ({1 - p['mask_agreement']:.3%}) |")
    return rows


def _evaluation_rows(evaluation: dict[str, Any]) -> list[str]:
    names = {"pytorch": "PyTorch (`model.safetensors`)", "onnxruntime_fp32": f"ONNX Runtime, `onnx/{ENCODER_FILE}`",
             "onnxruntime_int8": f"ONNX Runtime, `onnx/{ENCODER_INT8_FILE}` (dynamic INT8)"}
    rows = ["| model | mIoU | mean Dice |", "|---|---|---|"]
    for key, name in names.items():
        if key in evaluation:
            rows.append(f"| {name} | {evaluation[key]['miou']:.4f} | {evaluation[key]['mean_dice']:.4f} |")
    first = evaluation["pytorch"]
    rows.append(f"\nSame metric and prompts for every row: {first['prompt']} prompts, mask selection "
                f"`{first['mask_selection']}`, {first['num_objects']} objects in {first['num_images']} images.")
    if "int8_miou_drop" in evaluation:
        drop, threshold = evaluation["int8_miou_drop"], evaluation["int8_drop_threshold"]
        if evaluation.get("int8_warning"):
            rows.append(f"\n> **Warning:** the INT8 encoder loses {drop:.4f} mIoU against fp32, more than the "
                        f"{threshold:.4f} threshold; prefer `onnx/{ENCODER_FILE}` where accuracy matters.")
        else:
            rows.append(f"\nINT8 changes mIoU by {-drop:+.4f} (within the {threshold:.4f} threshold).")
    return rows


def onnx_card_section(report: dict[str, Any], repo_or_folder: str) -> str:
    """The model card's "ONNX Runtime" section: files, parity with PyTorch, measured mIoUs, usage snippet."""
    files = set(report["files"])
    listing = [f"- `onnx/{ENCODER_FILE}`: `pixel_values` → `image_embeddings`, `image_positional_embeddings` "
               "(once per image)",
               f"- `onnx/{DECODER_FILE}`: `image_embeddings`, `image_positional_embeddings`, `input_points`, "
               "`input_labels` → `iou_scores`, `pred_masks` (per prompt set; three masks per prompt)"]
    if f"{ONNX_SUBFOLDER}/{BOX_DECODER_FILE}" in files:
        listing.append(f"- `onnx/{BOX_DECODER_FILE}`: `image_embeddings`, `image_positional_embeddings`, "
                       "`input_boxes` → `iou_scores`, `pred_masks`")
    if f"{ONNX_SUBFOLDER}/{ENCODER_INT8_FILE}" in files:
        listing.append(f"- `onnx/{ENCODER_INT8_FILE}`: the encoder with dynamic INT8 weights (MatMul/Gemm); "
                       f"`onnx/{DECODER_INT8_FILE}` is the fp32 decoder under the name transformers.js's `q8` "
                       "dtype loads")
    verdict = ("match PyTorch" if report["parity_passed"] else "**do not match PyTorch within the tolerance**")
    lines = ["## ONNX Runtime", "", "ONNX files (optimum's split and names for SAM, the layout transformers.js loads; "
             "batch, prompts and points are dynamic):",
             "", *listing, "",
             f"Parity with PyTorch on {report['inputs']}: the fp32 files {verdict} (tolerance "
             f"{report['tolerance']:g} relative, identical masks after thresholding; `onnx/{PARITY_FILE}`).", "",
             *_parity_rows(report), ""]
    if report.get("evaluation"):
        lines += ["Accuracy through ONNX Runtime:", "", *_evaluation_rows(report["evaluation"]), ""]
    lines.append(onnx_usage_snippet(repo_or_folder))
    if f"{ONNX_SUBFOLDER}/{ENCODER_INT8_FILE}" in files:
        lines += ["", f"For the INT8 encoder, open `onnx/{ENCODER_INT8_FILE}` and `onnx/{DECODER_INT8_FILE}` instead."]
    lines += ["", "## transformers.js", "",
              "The `onnx/` folder has the layout [transformers.js](https://huggingface.co/docs/transformers.js) loads "
              "(`preprocessor_config.json` included), in the browser or in Node (`npm install @huggingface/transformers`):",
              "", transformers_js_snippet(repo_or_folder)]
    return "\n".join(lines)


__all__ = ["PARITY_FILE", "PARITY_TOLERANCE", "QUANTIZATIONS", "check_onnx_options", "export_checked_onnx",
           "measure_miou",
           "onnx_card_section", "onnx_summary", "parity_inputs", "parity_passed"]
