"""`prioritize`: the stage that measures a supernet on calibration images and writes its search space."""

from __future__ import annotations

import logging

from ..arguments import ConvertArguments, DataArguments, with_keywords
from ..errors import DataError, SupersamError
from ..modeling_supersam import SuperSamModel
from ..search_space import check_image_size_choices
from .calibration import calibration_dataset, measure
from .recorders import EmbeddingRecorder, MlpNormRecorder
from .report import LAYER_IMPORTANCE_MEASURE, EmbeddingOrder, PrioritizationReport
from .scores import embedding_order_from, order_mlp_neurons, set_elastic_depth

logger = logging.getLogger(__name__)

# How many encoder layers become elastic by default, in `supersam convert`, `prioritize` and the demo: all but
# DEFAULT_KEPT_LAYERS (at least half of them), so that subnets 70 % smaller than the base exist (ViT-B: 10 of 12).
# Drop probabilities scale with measured importance, so important layers still rarely drop during training.
DEFAULT_KEPT_LAYERS = 2

# prioritize's keyword conveniences: keyword -> its ConvertArguments field (the library's older names included:
# `num_images` is --num_calibration_images), and keyword -> its DataArguments field.
PRIORITIZE_KEYWORDS = {name: name for name in (
    "num_calibration_images", "calibration_batch_size", "reorder", "measure_layers", "num_elastic_layers",
    "max_drop_prob", "keep_first_layer", "image_size_choices", "seed")} | {"num_images": "num_calibration_images",
                                                     "batch_size": "calibration_batch_size"}
PRIORITIZE_DATA_KEYWORDS = {"image_column": "image_column", "intensity_normalization": "intensity_normalization"}


def default_num_elastic_layers(num_layers: int, keep_first_layer: bool = True) -> int:
    """How many layers `prioritize` makes elastic by default: all but `DEFAULT_KEPT_LAYERS`, at least half of
    them (rounded down), at most the candidates (every layer but the first with `keep_first_layer`)."""
    wanted = max(num_layers // 2, num_layers - DEFAULT_KEPT_LAYERS)
    return max(0, min(wanted, num_layers - (1 if keep_first_layer else 0)))


def prioritize(model: SuperSamModel, dataset, processor, args: ConvertArguments | None = None,
               data_args: DataArguments | None = None, *, show_progress: bool = True, state=None,
               **keywords) -> PrioritizationReport:
    """Measure `model`'s image encoder on calibration images and write the search space into `model.config`.

    Args:
        model: the supernet (`SuperSamModel`); modified in place (MLP neuron, channel and head order; config).
        dataset: a `datasets.Dataset` with an image column (found and decoded as training does).
        processor: the model's `SamProcessor` (resizes, normalises and pads the images).
        args: the `ConvertArguments` the CLI parses (`supersam convert`'s flags, documented there; None: their
            defaults; `device` is where the CLI loads the model and is not read here).
        data_args: the `DataArguments` the CLI parses; read: `image_column`, `intensity_normalization`.
        show_progress: show a tqdm progress bar.
        state: accelerate's `PartialState` of a multi-process run (every process calls with the same arguments):
            the calibration batches are dealt round-robin to the processes, and the statistics (sums over images)
            are gathered and added up, so every process ends with the same model and report as one process would
            (equal up to the order of floating-point additions). None: this process calibrates on everything.
        **keywords: conveniences for the fields of `args` / `data_args` (`PRIORITIZE_KEYWORDS`,
            `PRIORITIZE_DATA_KEYWORDS`, e.g. `num_images=32`); they override `args` / `data_args` (neither object is
            changed). An unknown keyword is refused.

    Elastic layers are the `num_elastic_layers` (default: `default_num_elastic_layers`) candidates of lowest
    importance (`1 - cos` of the image embeddings without each layer, see the package docstring), with
    `drop_probabilities`; `min_layers = num_layers - num_elastic_layers` (at least 1). Everything runs at the full
    model under `torch.no_grad` on the model's device and dtype, in eval mode; the previous subnet and train/eval
    mode are restored afterwards. Statistics live only inside this call. `image_size_choices`, when given, replaces
    the space's input resolutions (checked first: whole patches, the full resolution among them).
    """
    args, data = with_keywords(args, ConvertArguments, keywords, PRIORITIZE_KEYWORDS, "prioritize", data_args,
                               PRIORITIZE_DATA_KEYWORDS)
    _check_prioritize_arguments(model, dataset, args)
    layers = list(model.vision_encoder.layers)
    candidates, num_elastic_layers = _elastic_candidates(len(layers), args.num_elastic_layers, args.keep_first_layer)
    column, dataset = calibration_dataset(dataset, data["image_column"], args.num_calibration_images)
    previous_subnet, was_training = model.active_subnet, model.training
    recorders = (MlpNormRecorder(layers), EmbeddingRecorder(layers))
    model.reset_subnet()
    model.eval()
    try:
        removal_cost, used = measure(model, dataset, processor, column, recorders, args,
                                     data["intensity_normalization"], show_progress, state)
        summaries, permutations = order_mlp_neurons(layers, recorders[0], args.reorder)
        embedding_order = embedding_order_from(model, recorders[1], apply=args.reorder)
        importance = None
        if args.measure_layers:
            importance = set_elastic_depth(model.config, (removal_cost / used).tolist(), candidates,
                                           num_elastic_layers, args.max_drop_prob)
        if args.reorder and args.measure_layers:
            model.config.prioritized = True
        if args.image_size_choices is not None:
            model.config.image_size_choices = sorted(int(s) for s in args.image_size_choices)
    finally:
        model.train(was_training)
        _restore_subnet(model, previous_subnet)
    return _logged_report(model.config, used, len(layers), importance, args, summaries, permutations, embedding_order)


def _logged_report(config, used: int, num_layers: int, importance: list[float] | None, args: ConvertArguments,
                   summaries: list[dict[str, float]], permutations: list[list[int]],
                   embedding_order: EmbeddingOrder) -> PrioritizationReport:
    """The `PrioritizationReport` of a finished `prioritize` (depth settings as now in `config`), logged."""
    report = PrioritizationReport(
        num_images=used,
        num_layers=num_layers,
        measure=LAYER_IMPORTANCE_MEASURE,
        layer_importance=importance,
        elastic_layers=list(config.elastic_layers),
        layer_drop_probs=list(config.layer_drop_probs),
        min_layers=int(config.min_layers),
        max_drop_prob=float(args.max_drop_prob),
        reordered=bool(args.reorder),
        neuron_scores=summaries,
        permutations=permutations,
        embedding_order=embedding_order,
    )
    logger.info(
        "Prioritized on %d image(s): elastic layers %s with drop probabilities %s.",
        used, report.elastic_layers, [round(p, 3) for p in report.layer_drop_probs],
    )
    return report


def _check_prioritize_arguments(model, dataset, args: ConvertArguments) -> None:
    """Refuse what `prioritize` cannot work with before anything runs: not a supernet, a drop probability outside
    [0, 1), no images or batch, a DatasetDict or anything without columns; warn when the model was already
    prioritized (measured again, its depth settings replaced)."""
    if not isinstance(model, SuperSamModel):
        raise SupersamError(
            f"prioritize needs a SuperSamModel, got {type(model).__name__}; convert with SuperSamModel.from_sam(model) "
            "or load with SuperSamModel.from_pretrained(path)."
        )
    if not 0.0 <= args.max_drop_prob < 1.0:
        raise SupersamError(f"max_drop_prob={args.max_drop_prob} must be in [0, 1).")
    if args.num_calibration_images < 1:
        raise SupersamError(f"num_images={args.num_calibration_images} must be at least 1.")
    if args.calibration_batch_size < 1:
        raise SupersamError(f"batch_size={args.calibration_batch_size} must be at least 1.")
    if args.image_size_choices is not None:
        vision = model.config.vision_config
        check_image_size_choices(vision.image_size, [int(s) for s in args.image_size_choices], vision.patch_size)
    if isinstance(dataset, dict) or not hasattr(dataset, "column_names"):
        splits = f" of splits {list(dataset.keys())}; pick one" if hasattr(dataset, "keys") else ""
        raise DataError(f"Expected a datasets.Dataset with an image column, got a {type(dataset).__name__}{splits}.")
    if model.config.prioritized:
        logger.warning(
            "This model was already prioritized; measuring again on these images and re-ordering (exact: the full "
            "model's outputs do not change) and replacing the search space's depth settings."
        )


def _elastic_candidates(num_layers: int, num_elastic_layers: int | None, keep_first_layer: bool) -> tuple[list[int], int]:
    """The layers that may become elastic and how many will (default: `default_num_elastic_layers`); a count
    outside [0, candidates] is refused."""
    candidates = list(range(1 if keep_first_layer else 0, num_layers))
    if num_elastic_layers is None:
        num_elastic_layers = default_num_elastic_layers(num_layers, keep_first_layer)
    if not 0 <= num_elastic_layers <= len(candidates):
        raise DataError(
            f"num_elastic_layers={num_elastic_layers} must be between 0 and {len(candidates)} (the layers that may be "
            f"made elastic{' with keep_first_layer=True' if keep_first_layer else ''})."
        )
    return candidates, num_elastic_layers


def _restore_subnet(model: SuperSamModel, subnet) -> None:
    """Re-activate `subnet` (None = full model); if the new search space no longer contains it, stay at full."""
    if subnet is None:
        model.reset_subnet()
        return
    try:
        model.set_subnet(subnet)
    except ValueError as error:
        model.reset_subnet()
        logger.warning(
            "The previously active subnet %s is not in the new search space (%s); the full model is active.",
            subnet.name, error,
        )
