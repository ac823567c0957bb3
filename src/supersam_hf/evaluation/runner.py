"""`evaluate_model` (mIoU of a model or a subnet through the `sam_miou` metric) and `box_reference_miou`.

Each call loads its own metrics (`load_sam_miou(keep_in_memory=True)`, a few milliseconds once the metric script
is imported): nothing is shared between calls, so an interrupted evaluation leaves nothing behind."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from transformers import SamModel, SamProcessor

from ..arguments import DataArguments, EvaluateArguments, with_keywords
from ..errors import SupersamError
from ..metrics import load_sam_miou
from ..modeling_supersam import SuperSamModel
from ..results import EvaluationResult
from ..search_space import SubnetConfig
from .distributed import GatheredMetric, process_share
from .inputs import MASK_SELECTIONS, PROMPTS, EvaluationData, batches_to_score, resolve_subnet
from .masks import score_batches

logger = logging.getLogger(__name__)

# evaluate_model's keyword conveniences: keyword -> its EvaluateArguments field (the library's older names
# included: `prompt` is --prompt_type), and keyword -> its DataArguments field (`max_images` is --max_eval_images).
EVALUATE_KEYWORDS = {"prompt": "prompt_type", "prompt_type": "prompt_type", "subnet": "subnet",
                     "search_dir": "search_dir", "mask_selection": "mask_selection", "batch_size": "batch_size",
                     "seed": "seed", "device": "device", "max_instances_per_image": "max_instances_per_image"}
EVALUATE_DATA_KEYWORDS = {"max_images": "max_eval_images", "max_eval_images": "max_eval_images",
                          "image_column": "image_column", "mask_column": "mask_column", "mask_kind": "mask_kind"}


def evaluate_model(model: SamModel, dataset, processor: SamProcessor | None = None,
                   args: EvaluateArguments | None = None, data_args: DataArguments | None = None, *,
                   show_progress: bool = True, box_reference: bool = False, state=None,
                   **keywords) -> EvaluationResult:
    """Mean IoU of a SAM model (or of one subnet of a supernet) on a segmentation dataset.

    Args:
        model: a `SamModel`, a `SuperSamModel` (`supersam_hf.loading.load_sam_model`), or a runtime model called
            like one (`onnx_export.OnnxSamModel`; `params` is then None).
        dataset: a `datasets.Dataset` with image and mask columns, a streaming `datasets.IterableDataset` (read
            once, in order: the same scores as the map-style rows), a ready `SamSegmentationData` (its own rows,
            prompts, seed and instance cap), or an `EvaluationData` prepared once for many evaluations.
        processor: the model's `SamProcessor` (`supersam_hf.loading.load_processor`).
        args / data_args: the `EvaluateArguments` / `DataArguments` of `supersam evaluate` (None: defaults; their
            help texts document each field). Read: `subnet` (also a `SubnetConfig` or dict; None: the model as it
            is), `search_dir`, `prompt_type`, `mask_selection` (see `evaluation.masks`), `batch_size`, `seed`,
            `device`, `max_instances_per_image`, `max_eval_images`, `image_column` / `mask_column` / `mask_kind`.
        **keywords: conveniences for those fields (`EVALUATE_KEYWORDS`, `EVALUATE_DATA_KEYWORDS`), e.g.
            `prompt="point", max_images=8`; they override `args` / `data_args` (neither is changed).
        box_reference: with box prompts, also score the filled box prompts in the same pass (`box_reference_miou`).
        state: accelerate's `PartialState` (or `Accelerator`) of a multi-process run: every process calls with the
            same arguments, scores its contiguous share of the batches, and returns the one-process result.

    Returns an `EvaluationResult` (`to_dict()` is eval_results.json): the metric's scores and how they were measured.
    Runs under `torch.no_grad` in eval mode; the model's train/eval mode and active subnet are restored afterwards.
    """
    args, data = with_keywords(args, EvaluateArguments, keywords, EVALUATE_KEYWORDS, "evaluate_model", data_args,
                               EVALUATE_DATA_KEYWORDS)
    subnet = resolve_subnet(args.subnet, args.search_dir)
    _check_arguments(model, processor, args.prompt_type, args.mask_selection, box_reference)
    if args.device is not None:
        model = model.to(args.device)
    active, params = _active_subnet_and_params(model, subnet)
    batches, data_seed, cap = batches_to_score(dataset, processor, args.prompt_type, args.batch_size,
                                               data["max_eval_images"], args.seed, data["image_column"],
                                               data["mask_column"], data["mask_kind"], args.max_instances_per_image)
    distributed = state is not None and state.num_processes > 1
    metrics = _new_metrics(["model", "box_reference"] if box_reference else ["model"], gathered=distributed)
    was_training = model.training
    model.eval()
    try:
        with model.subnet(active) if isinstance(model, SuperSamModel) else contextlib.nullcontext():
            score_batches(model, process_share(batches, state) if distributed else batches, processor,
                          args.mask_selection, metrics, show_progress and (state is None or state.is_local_main_process))
    finally:
        model.train(was_training)
    result = _result({name: metric.compute() for name, metric in metrics.items()}, args.prompt_type,
                     args.mask_selection, data_seed, active, params)
    if cap is not None and batches.num_instances_left_out:
        logger.warning("max_instances_per_image=%d: %d instances of the scored images were left out (the smallest).",
                       cap, batches.num_instances_left_out)
    result.max_instances_per_image, result.num_instances_left_out = cap, int(batches.num_instances_left_out)
    return result


def _new_metrics(names: list[str], gathered: bool = False) -> dict[str, Any]:
    """A fresh in-memory `sam_miou` metric per role (nothing written to the cache folder), owned by one evaluation;
    `gathered`: wrapped in `GatheredMetric` for a multi-process run."""
    metrics = {name: load_sam_miou(keep_in_memory=True, experiment_id=f"supersam-{name}") for name in names}
    return {name: GatheredMetric(metric) for name, metric in metrics.items()} if gathered else metrics


def _scores(computed: dict[str, Any]) -> dict[str, Any]:
    """The metric's scores as plain Python numbers."""
    return {"miou": float(computed["miou"]), "per_image_miou": float(computed["per_image_miou"]),
            "mean_dice": float(computed["mean_dice"]), "num_objects": int(computed["num_objects"]),
            "num_images": int(computed["num_images"])}


def _result(computed: dict[str, dict], prompt: str, mask_selection: str, seed: int, active: SubnetConfig | None,
            params: int | None) -> EvaluationResult:
    """`evaluate_model`'s result from the computed metrics (the model's, and "box_reference" if it was scored) and
    how they were measured."""
    extra = {}
    if "box_reference" in computed:
        extra = {"box_reference_miou": float(computed["box_reference"]["miou"]),
                 "box_reference_per_image_miou": float(computed["box_reference"]["per_image_miou"])}
    return EvaluationResult(
        **_scores(computed["model"]),
        prompt=str(prompt),  # a plain string also when given as PromptType / MaskSelection (YAML card metadata)
        mask_selection=str(mask_selection),
        resolution="original",
        seed=int(seed),
        subnet=active.name if active is not None else None,
        subnet_config=active.to_dict() if active is not None else None,
        params=int(params) if params is not None else None,
        **extra,
    )


def _is_runtime_model(model) -> bool:
    """A non-torch model that evaluation can call like a SamModel: `get_image_embeddings` and `__call__` returning
    `iou_scores` / `pred_masks`, plus `eval` / `train` / `parameters` for device and mode (`OnnxSamModel`)."""
    return all(callable(getattr(model, name, None)) for name in ("get_image_embeddings", "__call__", "eval", "train",
                                                                  "parameters"))


def _check_arguments(model, processor, prompt: str, mask_selection: str, box_reference: bool) -> None:
    if mask_selection not in MASK_SELECTIONS:
        raise SupersamError(f"Unknown mask_selection {mask_selection!r}; choose one of {MASK_SELECTIONS}.")
    if prompt not in PROMPTS:
        raise SupersamError(f"Unknown prompt {prompt!r}; evaluation prompts are {PROMPTS}.")
    if not isinstance(model, SamModel) and not _is_runtime_model(model):
        raise SupersamError(
            f"evaluate_model needs a SamModel, a SuperSamModel or a runtime model called like one (e.g. "
            f"onnx_export.OnnxSamModel), got {type(model).__name__}; load a checkpoint with "
            "supersam_hf.loading.load_sam_model(name_or_path)."
        )
    if box_reference and prompt != "box":
        raise SupersamError("box_reference compares with box prompts: pass prompt='box' (a point gives no such shortcut).")
    if processor is None:
        raise SupersamError("Pass the model's SamProcessor (processor=...; supersam_hf.loading.load_processor).")
    if not isinstance(model, SuperSamModel):  # a supernet resizes its input itself; an exported SAM does not
        pad = getattr(getattr(processor, "image_processor", None), "pad_size", None) or {}
        size = getattr(getattr(getattr(model, "config", None), "vision_config", None), "image_size", None)
        if size is not None and pad.get("height") not in (None, size):
            raise SupersamError(
                f"The model takes {size} px images but the processor pads to {pad['height']} px: use the processor "
                "saved next to the model (an export at a smaller input resolution has its own; "
                "supersam_hf.loading.load_processor(model folder)).")


def _active_subnet_and_params(model, subnet) -> tuple[SubnetConfig | None, int | None]:
    """The subnet that will run (the given one, else the model's active one) and its exported parameter count
    (None for a runtime model such as ONNX Runtime, whose weights are not torch parameters)."""
    if subnet is not None and not isinstance(model, SuperSamModel):
        raise SupersamError("A subnet can only be evaluated on a SuperSamModel (a supernet); this is a plain SamModel.")
    active = subnet if subnet is not None else getattr(model, "active_subnet", None)
    if isinstance(model, SuperSamModel):
        return active, model.count_parameters(active)
    if isinstance(model, SamModel):
        return active, sum(p.numel() for p in model.parameters())
    return active, None


def box_reference_miou(dataset, processor: SamProcessor | None = None, batch_size: int = 4,
                       max_images: int | None = None, seed: int = 0, image_column: str | None = None,
                       mask_column: str | None = None, mask_kind: str | None = None,
                       show_progress: bool = False) -> dict[str, Any]:
    """mIoU of "the box itself as the mask": each object's box prompt, filled, scored as its predicted mask.

    The reference every box-prompt figure should be read against (a model that copies its prompt scores this).
    It scores exactly the objects and boxes `evaluate_model(..., prompt="box")` scores on the same arguments
    (same instance selection, seed, images), through the same metric path at the original image size. Returns the
    metric's fields plus how they were measured: `prompt` "box", `reference` "box", `seed`, `mask_selection`
    None. `processor` defaults to a 64-px one: the reference never looks at pixels and boxes are mapped back to
    the original size, so the result does not depend on it (up to box rounding).
    """
    if processor is None and not isinstance(dataset, EvaluationData):
        from ..data import build_sam_processor

        processor = build_sam_processor(64)
    batches, data_seed, _ = batches_to_score(dataset, processor, "box", batch_size, max_images, seed, image_column,
                                             mask_column, mask_kind)
    metrics = _new_metrics(["box_reference"])
    score_batches(None, batches, processor, "single", metrics, show_progress)
    return {**_scores(metrics["box_reference"].compute()), "prompt": "box", "reference": "box",
            "mask_selection": None, "resolution": "original", "seed": int(data_seed)}
