"""Calibration: the images (found and decoded by `data/`'s column and image handling) and the pass that runs them
through the full model once per batch, then each encoder layer's removal from its cached input."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..data import IMAGE_COLUMN_CANDIDATES, to_rgb_image
from ..data.columns import _decode_image_paths, _pick_column
from ..errors import DataError, SupersamError
from .recorders import LayerInputCache, sum_across_processes

logger = logging.getLogger(__name__)


# -- reading -----------------------------------------------------------------------------------------------------------
def calibration_dataset(dataset, image_column: str | None, num_images: int) -> tuple[str, Any]:
    """The image column (`image_column`, else a common image column name, as training finds it) and the dataset with
    a column of image file paths decoded as images. An empty dataset is refused; fewer rows than `num_images` warn."""
    column = _pick_column(dataset.column_names, image_column, IMAGE_COLUMN_CANDIDATES, "image")
    if len(dataset) == 0:
        raise DataError("The calibration dataset is empty; prioritize needs at least one image.")
    if num_images > len(dataset):
        logger.warning(
            "num_images=%d but the dataset has only %d rows: calibrating on all of them.", num_images, len(dataset)
        )
    return column, _decode_image_paths(dataset, column)


def _usable_image(value: Any, intensity_normalization: str) -> Image.Image | None:
    """The cell as an RGB image (`data.to_rgb_image`), or None if it holds no usable image."""
    if value is None:
        return None
    try:
        image = to_rgb_image(value, intensity_normalization)
    except (ValueError, TypeError, OSError):
        return None
    return image if image.width > 0 and image.height > 0 else None


def calibration_batches(dataset, column: str, num_images: int, batch_size: int, seed: int, stats: dict,
                        intensity_normalization: str = "percentile") -> Iterator[list[Image.Image]]:
    """Batches of usable RGB images, taken in a seeded random order until `num_images` are found (unusable cells
    are skipped and counted in `stats`)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    images_only = dataset.select_columns([column])
    batch: list[Image.Image] = []
    for start in range(0, len(order), batch_size):
        if stats["used"] >= num_images:
            break
        for value in images_only[order[start : start + batch_size]][column]:
            image = _usable_image(value, intensity_normalization)
            if image is None:
                stats["skipped"] += 1
                continue
            batch.append(image)
            stats["used"] += 1
            if len(batch) == batch_size or stats["used"] == num_images:
                yield batch
                batch = []
            if stats["used"] >= num_images:
                break
    if batch:
        yield batch


# -- the pass: full model once, then each layer's removal from its cached input -----------------------------------------
def layer_calls_per_image(num_layers: int, measure_layers: bool = True) -> int:
    """Encoder-layer forwards per calibration image: the full pass (`L`), plus, when measuring layer importance,
    the layers after each removed layer i (`L - 1 - i`, the prefix is reused): `L + L (L - 1) / 2` in all, i.e.
    `(L + 1) / 2` encoder passes (6.5 for ViT-B's 12 layers instead of 13 when every removal reran the encoder)."""
    return num_layers + (num_layers * (num_layers - 1) // 2 if measure_layers else 0)


def _removal_costs(model, cache: LayerInputCache, full: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """For each encoder layer i, `(i, sum over the batch of 1 - cos(E, E_-i))`: `E_-i` = the neck applied to layers
    i+1..L-1 run from layer i's cached input, the same computation as the full encoder with layer i as the identity
    (`full` = `E`, flattened per image, float32). Yields after each layer, so callers can report progress."""
    encoder = model.vision_encoder
    for i in range(len(encoder.layers)):
        hidden = cache.pop(i)
        for layer in encoder.layers[i + 1 :]:
            hidden = layer(hidden)
        without = encoder.neck(hidden).flatten(1).float()
        cos = F.cosine_similarity(full, without, dim=1)
        yield i, (1.0 - cos).double().sum().cpu()


@torch.no_grad()
def calibrate(model, batches: Iterator[torch.Tensor], recorders: tuple, measure_layers: bool, num_images: int,
              show_progress: bool) -> torch.Tensor:
    """Run the calibration batches (pixel values) through the full model once each, recording MLP and embedding
    statistics into `recorders` (each has a `recording()` context), and, if `measure_layers`, every layer's removal
    from its cached input. Returns the per-layer removal costs summed over images (zeros if not measured).

    Memory: a batch's L layer inputs are cached until their removal run (float32 ViT-B at 1024 px: ~150 MB per
    image). The bar counts images; inside a batch it advances in proportion to the layer calls done, with the
    removed layer as postfix, so a slow batch still shows progress and an honest time estimate."""
    layers = model.vision_encoder.layers
    num_layers = len(layers)
    per_image = layer_calls_per_image(num_layers, measure_layers)
    removal_cost = torch.zeros(num_layers, dtype=torch.float64)
    removals = f", then each of the {num_layers} layers is removed in turn from its cached input" if measure_layers else ""
    logger.info(
        "Calibrating on %d image(s): the full model records MLP neuron statistics%s (%d encoder-layer calls per "
        "image = %.1f encoder passes).", num_images, removals, per_image, per_image / num_layers,
    )
    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
    bar = tqdm(total=num_images, desc="prioritize: calibrating", unit="img", bar_format=bar_format,
               disable=not show_progress)
    done, start = 0, time.perf_counter()
    cache = LayerInputCache(layers)
    with bar:
        for pixel_values in batches:
            size = pixel_values.shape[0]
            with contextlib.ExitStack() as stack:
                for recorder in (*recorders, cache) if measure_layers else recorders:
                    stack.enter_context(recorder.recording())
                full = model.get_image_embeddings(pixel_values).flatten(1).float()
            bar.update(size * num_layers / per_image)
            if measure_layers:
                for i, cost in _removal_costs(model, cache, full):
                    removal_cost[i] += cost
                    bar.set_postfix_str(f"layer {i + 1}/{num_layers} removed", refresh=False)
                    bar.update(size * (num_layers - 1 - i) / per_image)
            done += size
            bar.update(done - bar.n)  # exact image count at the end of each batch (no float drift)
            logger.info("Calibrated %d/%d image(s) (%.1f s).", done, num_images, time.perf_counter() - start)
    return removal_cost


def measure(model, dataset, processor, column: str, recorders: tuple, args, intensity_normalization: str,
            show_progress: bool, state=None) -> tuple[torch.Tensor, int]:
    """One calibration pass of the full model (in eval mode, set by the caller) over up to
    `args.num_calibration_images` usable images of `column`, in batches of `args.calibration_batch_size` drawn with
    `args.seed`, on the model's device and dtype: fills `recorders` and returns the per-layer removal costs (summed
    over images; measured if `args.measure_layers`) and how many images were used. No usable image is an error;
    skipped rows and fewer images than asked for are warnings. `state`: see `prioritize`."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    stats = {"used": 0, "skipped": 0}
    num_images = args.num_calibration_images
    target = min(num_images, len(dataset))
    batches = calibration_batches(dataset, column, target, args.calibration_batch_size, args.seed, stats,
                                  intensity_normalization)
    distributed = state is not None and state.num_processes > 1
    if distributed:  # every process walks the same selection (so `stats` agree) and runs its own batches
        rank, size = state.process_index, state.num_processes
        batches = (batch for k, batch in enumerate(batches) if k % size == rank)
        show_progress = show_progress and state.is_local_main_process
    inputs = (processor(images=images, return_tensors="pt")["pixel_values"].to(device=device, dtype=dtype) for images in batches)
    share = -(-target // state.num_processes) if distributed else target
    removal_cost = calibrate(model, inputs, recorders, args.measure_layers, share, show_progress)
    if distributed:
        removal_cost = sum_across_processes(removal_cost, recorders, device)

    used = stats["used"]
    if used == 0:
        raise SupersamError(
            f"No usable image in column {column!r}: {stats['skipped']} row(s) examined, none held a decodable "
            "image (PIL image, image bytes/path, or an (H, W) / (H, W, C) / (C, H, W) array)."
        )
    if stats["skipped"]:
        logger.warning("Skipped %d row(s) of column %r without a usable image.", stats["skipped"], column)
    if used < num_images:
        logger.warning("Calibrated on %d image(s) instead of the requested num_images=%d.", used, num_images)
    return removal_cost, used
